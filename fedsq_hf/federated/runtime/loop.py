"""The server's round loop, the same in every runtime: events for the callbacks, evaluation, the gate
warm-up, checkpoints and exact resume, the failure rules and the summary. A runtime subclasses `RoundLoop`
and implements `run_round`: deliver the round's clients their fit, take their updates into a
`RoundAggregate`, and hand it to `finish_round`.

Every random choice is seeded from (seed, round[, client]), so a run gives the same global weights in
every runtime and after an interrupt + resume. There is therefore no RNG stream to save: a checkpoint
holds the global state, the server optimizer state and the `FederatedState`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast

from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..callbacks import CallbackHandler, FederatedCallback, FederatedControl, default_callbacks
from ..client import make_accelerator
from ..data import as_samples
from ..io import FederatedState, OutputDirLock, claim_output_dir, clear_previous_run
from ..protocol import UpdateCodec, client_seed, make_codec
from ..server import (Evaluator, FlatUpdate, GateWarmup, GlobalModel, MetricsFn, RoundAggregate, Strategy,
                      classification_metric_names, dropped_clients, greater_is_better, round_learning_rates,
                      sample_clients)
from .checkpoints import TrainerCheckpoints
from .privacy import RunPrivacy

if TYPE_CHECKING:
    from ..cli.arguments import FederatedArguments

__all__ = ["RoundLoop", "run_accelerator"]

logger = logging.getLogger(__name__)


def run_accelerator(args: FederatedArguments) -> Accelerator:
    """The Accelerator of a run: the clients' device and precision, and the trackers of `--report-to`."""
    return make_accelerator(args, log_with=None if args.report_to == "none" else args.report_to,
                            project_dir=args.output_dir)


class RoundLoop(TrainerCheckpoints):
    """The rounds of a federation of `num_clients` clients training `model` with `strategy`.

    Args:
        model: the global model (FedSQ or plain); its shared floating state is what gets aggregated.
        strategy: server-side algorithm (see `fedsq_hf.federated.server.strategies`).
        eval_data: the server's evaluation samples (`StreamedSamples`, `PreloadedSamples`, or model-ready
            (pixels, labels) tensors).
        args: run arguments; `run_config` (everything, JSON-ready) goes into summary and checkpoints.
        callbacks: added after `default_callbacks(args)`.
        compute_metrics: `EvalPrediction -> dict` (default: accuracy, top-5 accuracy, macro-F1).
        codec: how client updates travel (default: `args.update_codec`).
    """

    def __init__(self, model: FedSQModel, strategy: Strategy,
                 eval_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor], num_clients: int,
                 args: FederatedArguments, run_config: dict[str, Any] | None = None,
                 partition_summary: dict[str, Any] | None = None, accelerator: Accelerator | None = None,
                 callbacks: list[FederatedCallback] | None = None, compute_metrics: MetricsFn | None = None,
                 codec: UpdateCodec | None = None) -> None:
        self.args, self.strategy, self.num_clients = args, strategy, num_clients
        self.accelerator = acc = accelerator or run_accelerator(args)
        self.model = model.to(acc.device)
        self.eval_set = as_samples(eval_data)
        self.codec = codec or make_codec(args.update_codec)
        self.evaluator = Evaluator(self.model, self.eval_set, 2 * args.batch_size, args.num_workers, acc, compute_metrics)
        known = classification_metric_names(model.config.num_labels)
        if compute_metrics is None and args.metric_for_best_model not in known:  # else checked at the first evaluation
            raise FedSQError(f"--metric-for-best-model {args.metric_for_best_model!r} is not among the evaluation's "
                             f"metrics {sorted(known)}; pick one of them, or pass a compute_metrics that returns it.")
        self.run_config = {**(run_config or {}), "num_labels": model.config.num_labels, "backbone": model.config.backbone,
                           "backbone_sha256": model.config.backbone_sha256, "strategy_config": strategy.describe(),
                           "update_codec": self.codec.name,  # what these lead to, as a resume compares them:
                           "pretrained_cfg": json.loads(json.dumps(model.config.pretrained_cfg)),  # the preprocessing
                           "greater_is_better": greater_is_better(args.metric_for_best_model, args.greater_is_better)}
        self.partition_summary = partition_summary
        self.global_model = GlobalModel(self.model, num_clients)
        self.privacy = RunPrivacy(args, strategy, self.global_model, model.config.bn_mode)
        self.learning_rates = round_learning_rates(args.lr, args.rounds, args.lr_scheduler, args.warmup_rounds)
        rule = args.gate_rule()
        self.gate_warmup = None if rule is None else GateWarmup(rule, args.gate_probe_samples, args.client_eval_samples)
        self.state = FederatedState(
            max_rounds=args.rounds, metric_for_best_model=args.metric_for_best_model,
            greater_is_better=self.run_config["greater_is_better"],
            run={k: self.run_config.get(k) for k in self.resume_marks()},
            is_world_process_zero=acc.is_main_process, is_local_process_zero=acc.is_local_main_process)
        self.control = FederatedControl()
        self.output_lock: OutputDirLock | None = None  # held while training (the builder takes it earlier)
        self.callback_handler = CallbackHandler(default_callbacks(args) + list(callbacks or []))
        self._event("on_init_end")

    def _event(self, event: str, **kwargs: Any) -> None:
        self.control = self.callback_handler.call_event(
            event, self.args, self.state, self.control, model=self.model, accelerator=self.accelerator,
            eval_dataset=self.eval_set, run_config=self.run_config, **kwargs)

    # -- the run -------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the rounds (from the last checkpoint with `args.resume`) until the last or until a callback
        stops the run; returns the summary."""
        if self.output_lock is None:
            self.output_lock = claim_output_dir(self.args.output_dir, self.accelerator, self.args.resume,
                                                self.args.overwrite_output_dir)
        try:
            if self.args.overwrite_output_dir and self.accelerator.is_main_process:
                cleared = clear_previous_run(self.args.output_dir)
                if cleared:
                    logger.info("--overwrite-output-dir: removed the previous run's %s.", ", ".join(cleared))
            return self._train()
        finally:
            self.close()

    def close(self) -> None:
        """Free the output folder of a loop that will not train (training frees it when it ends)."""
        if self.output_lock is not None:
            self.output_lock.release()
            self.output_lock = None

    def _train(self) -> dict[str, Any]:
        state, acc = self.state, self.accelerator
        if self.args.resume:
            self.load_checkpoint()
        if self.gate_warmup is not None and self.gate_warmup.start(self.model, state.history, self.eval_set, acc.device):
            self.check_frozen_structural()  # resumed after the freeze
        elif self.gate_warmup is not None:
            self.check_warmup_state()
            if acc.is_main_process:
                logger.info("Gate warm-up: training without fixed gates; they freeze by %s.", self.gate_warmup.rule)
        self._event("on_train_begin", partition_summary=self.partition_summary)
        while state.round < state.max_rounds and not self.control.should_training_stop:
            round_ = state.round + 1
            if not self.privacy.allows(round_, acc.is_main_process):
                break
            self.strategy.begin_round(round_)
            self.privacy.begin_round(acc)
            decision = None if self.gate_warmup is None else self.gate_warmup.begin_round(self.model, round_, state.history)
            if decision is not None and acc.is_main_process:
                logger.info("Round %d: gates fixed (%s) after %d warm-up round(s): %s.", round_, decision.source,
                            round_ - 1, decision.reason)
            self._event("on_round_begin")
            record = self.run_round(round_)
            if self.control.should_evaluate:
                self._evaluate_into(record)
            if self.gate_warmup is not None:
                measured = self.gate_warmup.measure(self.model, acc.autocast)
                measured = None if measured is None else broadcast(measured.to(acc.device)).cpu()  # one decision everywhere
                self.gate_warmup.end_round(self.model, record, state.history, measured)
            state.round = round_
            state.history.append(record)
            self._event("on_round_end", record=record, is_best=state.update_best(record))
            if self.control.should_save or self.control.should_training_stop:
                self._event("on_save", checkpoint=self.save_checkpoint())
            acc.wait_for_everyone()
        summary = self.summary()
        self._event("on_train_end", summary=summary)
        acc.wait_for_everyone()
        return summary

    def run_round(self, round_: int) -> dict[str, Any]:
        """Train round `round_` and update the global model; returns the round's record (see `round_record`)."""
        raise NotImplementedError

    def round_clients(self, round_: int) -> tuple[list[int], list[int], list[int]]:
        """(sampled, dropped out, active) clients of `round_`, seeded by (seed, round): the same in every runtime."""
        args = self.args
        clients = sample_clients(args.seed, round_, self.num_clients, args.clients_per_round or self.num_clients)
        dropped = dropped_clients(args.seed, round_, clients, args.dropout_rate)
        return clients, dropped, [c for c in clients if c not in dropped]

    def fit_config(self, round_: int, client: int) -> dict[str, Any]:
        """The round config `client` gets in `round_`, its seed from (seed, round, client)."""
        warmup, asked = self.gate_warmup, {}
        if warmup is not None and warmup.eval_samples:
            asked["eval_samples"] = warmup.eval_samples  # federated evaluation of the warm-up's models
        if warmup is not None and warmup.label_share:
            asked["label_share"] = True
        return {"lr": self.learning_rates[round_ - 1], **self.strategy.configure_fit(round_),
                "seed": client_seed(self.args.seed, round_, client), **asked}

    def finish_round(self, round_: int, aggregate: RoundAggregate, updates: list[FlatUpdate] | None = None) -> None:
        """The server's step from the round's aggregate (`updates`: every client's, where a runtime gathered
        them), and the failure rules: a run with no usable update for `--max-failed-rounds` rounds in a row,
        or in any round of the whole run, stops."""
        if aggregate.failed and self.accelerator.is_main_process:
            logger.warning("round %d: excluded clients %s (diverging or non-finite loss, or non-finite update, or "
                           "no reply)", round_, aggregate.failed)
        if aggregate.step(self.strategy, self.global_model, round_, updates):
            self.state.failed_streak = 0
        elif aggregate.active:  # clients trained, none usable (a round where every client dropped out is no failure)
            self.state.failed_streak += 1
        streak = self.state.failed_streak
        if streak >= self.args.max_failed_rounds or streak == round_ == self.state.max_rounds:  # never a usable round
            raise FedSQError(
                f"{streak} consecutive rounds had no usable client update (all clients failed); "
                "the global model was kept unchanged. Lower --lr (or a raised --weight-decay or --mu), or check the data.")

    def round_record(self, round_: int, clients: list[int], dropped: list[int], aggregate: RoundAggregate,
                     start: float, trained: float) -> dict[str, Any]:
        """A round's history entry: who took part, the train loss and traffic, and where the time went."""
        end = time.perf_counter()
        record = {"round": round_, "clients": clients, "dropped_clients": dropped, "failed_clients": aggregate.failed,
                  "lr": self.learning_rates[round_ - 1], "train_loss": aggregate.train_loss,
                  "bytes_aggregated": aggregate.num_bytes, "wall_time": end - start, "train_time": trained - start,
                  "aggregate_time": end - trained, "evaluation_time": 0.0, "update_agreement": aggregate.update_agreement,
                  "update_alignment": aggregate.update_alignment, **self.strategy.round_metrics()}
        if aggregate.client_balanced_accuracy is not None:
            record.update(client_balanced_accuracy=aggregate.client_balanced_accuracy,
                          client_eval_samples=int(aggregate.eval_samples.sum()))
        if aggregate.client_label_share is not None:
            record["client_label_share"] = aggregate.client_label_share
        return {**record, **self.privacy.record(round_, self.state.history, record)}

    def _evaluate_into(self, record: dict[str, Any]) -> None:
        start = time.perf_counter()
        metrics = self.evaluator.evaluate()
        if not math.isfinite(metrics["loss"]):  # finite but huge weights (e.g. --server-lr 1e30): not written either
            dp = ", or raise --dp-target-epsilon / lower --dp-noise-multiplier" if self.privacy.dp is not None else ""
            raise FedSQError(f"Round {record['round']}: the global model's evaluation loss is {metrics['loss']} (its "
                             f"outputs are non-finite); lower --server-lr, --lr, --mu or --weight-decay{dp}.")
        if self.state.metric_for_best_model not in metrics:
            raise FedSQError(f"--metric-for-best-model {self.state.metric_for_best_model!r} is not among the "
                             f"evaluation's metrics {sorted(metrics)}; pick one of them.")
        record.update({f"eval_{k}": v for k, v in metrics.items()})
        if self.global_model.local_states:  # say which BatchNorm the global model was evaluated with
            record["eval_bn"] = self.global_model.local_states.describe()
        record["evaluation_time"] = time.perf_counter() - start
        record["wall_time"] += record["evaluation_time"]
        self._event("on_evaluate", metrics=metrics)

    def summary(self) -> dict[str, Any]:
        """What `train()` returns and `summary.json` holds."""
        summary = {**self.state.summary(), "num_processes": self.accelerator.num_processes, "config": self.run_config}
        summary.update(self.privacy.summary(self.state.round, self.state.history))
        if self.gate_warmup is not None:
            summary["gate_warmup"] = self.gate_warmup.summary(self.model, self.state.history, len(self.eval_set))
        return summary
