"""The default callbacks that report a run: progress bar, history and summary, best and final models,
plots and Accelerate trackers. Only the main process writes."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from ...plotting import plot_drift, plot_metrics, plot_partition
from ...serialization import atomic_write_json
from ..io import write_history
from .base import FederatedCallback

__all__ = ["ProgressCallback", "HistoryCallback", "BestModelCallback", "PlotCallback", "TrackerCallback"]


class ProgressCallback(FederatedCallback):
    """A tqdm bar over the rounds (local main process only; `--disable-tqdm` hides it)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_rounds, initial=state.round, desc="rounds",
                        disable=args.disable_tqdm or not state.is_local_process_zero)

    def on_round_end(self, args, state, control, record=None, **kwargs):
        self.bar.update(1)
        self.bar.set_postfix({k.removeprefix("eval_"): v for k, v in record.items()
                              if k in ("train_loss", state.best_key) and v is not None})

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class HistoryCallback(FederatedCallback):
    """`history.jsonl` after every round, `summary.json` at the end."""

    def on_round_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_history(args.output_dir, state.history)

    def on_train_end(self, args, state, control, summary=None, **kwargs):
        if state.is_world_process_zero:
            atomic_write_json(os.path.join(args.output_dir, "summary.json"), summary)


class BestModelCallback(FederatedCallback):
    """`best/` whenever a round sets a new best `--metric-for-best-model`, `final/` at the end."""

    def on_round_end(self, args, state, control, is_best=False, model=None, **kwargs):
        if is_best and state.is_world_process_zero:
            model.save_pretrained(os.path.join(args.output_dir, "best"))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            model.save_pretrained(os.path.join(args.output_dir, "final"))


class PlotCallback(FederatedCallback):
    """`partition.png` + `partition.json` at the start; `metrics.png` (and `gate_drift.png`) at the end."""

    def on_train_begin(self, args, state, control, partition_summary=None, model=None, **kwargs):
        if state.is_world_process_zero and partition_summary is not None:
            atomic_write_json(os.path.join(args.output_dir, "partition.json"), partition_summary)
            plot_partition(partition_summary, os.path.join(args.output_dir, "partition.png"),
                           f"{args.partition} partition, {args.num_clients} clients",
                           label_names=list(model.config.id2label.values()))

    def on_train_end(self, args, state, control, run_config=None, **kwargs):
        if not state.is_world_process_zero:
            return
        model, strategy = run_config.get("model", "model"), run_config["strategy_config"]["name"]
        plot_metrics(state.history, os.path.join(args.output_dir, "metrics.png"), f"{model} + {strategy}", state.best_round)
        if any(h.get("gate_drift") is not None for h in state.history):
            plot_drift(state.history, os.path.join(args.output_dir, "gate_drift.png"), f"{model}: own gates vs pretrained")


class TrackerCallback(FederatedCallback):
    """Every round's numbers to the Accelerate trackers of `--report-to` (TensorBoard, W&B, ...)."""

    def on_train_begin(self, args, state, control, accelerator=None, run_config=None, **kwargs):
        config = {k: v for k, v in run_config.items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("fedsq-hf", config=config)

    def on_round_end(self, args, state, control, record=None, accelerator=None, **kwargs):
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["round"])

    def on_train_end(self, args, state, control, accelerator=None, **kwargs):
        accelerator.end_training()
