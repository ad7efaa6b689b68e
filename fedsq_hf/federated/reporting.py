"""The default callbacks that report a run: progress bar, history and summary, best and final models,
plots, Accelerate trackers (and the Hub, `hub_push`). Only the main process writes."""

from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from ..gate_drift import plot_drift
from ..serialization import atomic_write_bytes, atomic_write_json
from .arguments import FederatedArguments
from .callbacks import DefaultFlowCallback, FederatedCallback
from .gate_drift_callback import GateDriftCallback
from .gate_warmup import GateWarmupCallback
from .hub_push import HubPushCallback
from .partition import plot_partition
from .plots import plot_metrics

__all__ = ["ProgressCallback", "HistoryCallback", "BestModelCallback", "PlotCallback", "TrackerCallback",
           "default_callbacks"]


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
            lines = "".join(json.dumps(h) + "\n" for h in state.history)
            atomic_write_bytes(os.path.join(args.output_dir, "history.jsonl"), lines.encode())

    def on_train_end(self, args, state, control, summary=None, **kwargs):
        if state.is_world_process_zero:
            atomic_write_json(os.path.join(args.output_dir, "summary.json"), summary)


class BestModelCallback(FederatedCallback):
    """`best/` whenever a round sets a new best `--metric-for-best-model`, `final/` at the end."""

    def on_round_end(self, args, state, control, is_best=False, trainer=None, **kwargs):
        if is_best and state.is_world_process_zero:
            trainer.model.save_pretrained(os.path.join(args.output_dir, "best"))

    def on_train_end(self, args, state, control, trainer=None, **kwargs):
        if state.is_world_process_zero:
            trainer.model.save_pretrained(os.path.join(args.output_dir, "final"))


class PlotCallback(FederatedCallback):
    """`partition.png` + `partition.json` at the start; `metrics.png` (and `gate_drift.png`) at the end."""

    def on_train_begin(self, args, state, control, trainer=None, **kwargs):
        if state.is_world_process_zero and trainer.partition_summary is not None:
            atomic_write_json(os.path.join(args.output_dir, "partition.json"), trainer.partition_summary)
            plot_partition(trainer.partition_summary, os.path.join(args.output_dir, "partition.png"),
                           f"{args.partition} partition, {args.num_clients} clients",
                           label_names=list(trainer.model.config.id2label.values()))

    def on_train_end(self, args, state, control, trainer=None, **kwargs):
        if not state.is_world_process_zero:
            return
        label = f"{trainer.run_config.get('model', 'model')} + {trainer.strategy.name}"
        plot_metrics(state.history, os.path.join(args.output_dir, "metrics.png"), label, state.best_round)
        if any(h.get("gate_drift") is not None for h in state.history):
            plot_drift(state.history, os.path.join(args.output_dir, "gate_drift.png"),
                       f"{trainer.run_config.get('model', 'model')}: own gates vs pretrained")


class TrackerCallback(FederatedCallback):
    """Every round's numbers to the Accelerate trackers of `--report-to` (TensorBoard, W&B, ...)."""

    def on_train_begin(self, args, state, control, trainer=None, **kwargs):
        config = {k: v for k, v in trainer.run_config.items() if isinstance(v, (int, float, str, bool))}
        trainer.accelerator.init_trackers("fedsq-hf", config=config)

    def on_round_end(self, args, state, control, record=None, trainer=None, **kwargs):
        trainer.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["round"])

    def on_train_end(self, args, state, control, trainer=None, **kwargs):
        trainer.accelerator.end_training()


def default_callbacks(args: FederatedArguments) -> list[FederatedCallback]:
    """What every run reports with: intervals, the gate warm-up and gate drift (when asked), progress, history and summary,
    best/final models, plots, and (when asked) trackers and the Hub."""
    warmup = GateWarmupCallback.from_args(args)  # these two before the reporting ones: they add to each round's record
    drift = [GateDriftCallback(args.gate_drift_samples)] if args.gate_drift_samples else []
    callbacks = [DefaultFlowCallback(), *([warmup] if warmup else []), *drift, ProgressCallback(), HistoryCallback(),
                 BestModelCallback(), PlotCallback()]
    return callbacks + ([TrackerCallback()] if args.report_to != "none" else []) \
        + ([HubPushCallback()] if args.push_to_hub else [])
