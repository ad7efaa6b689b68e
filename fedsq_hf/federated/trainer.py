"""Federated simulation on Accelerate: each process trains its share of a round's clients one after
another on one model instance (`ClientTrainer`); one all-reduce per round aggregates across processes.

Every random choice is seeded from (seed, round[, client]), so a run gives the same global weights
on 1 or N processes and after an interrupt + resume. There is therefore no RNG stream to save:
a checkpoint holds the global state, the server optimizer state and the `FederatedState`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import reduce

from ..errors import CheckpointError, FedSQError
from ..modeling_fedsq import FedSQModel
from .aggregation import GlobalState, gather_client_updates
from .arguments import FederatedArguments, make_accelerator
from .callbacks import CallbackHandler, FederatedCallback, FederatedControl
from .checkpoint import RESUME_KEYS, START_OVER, checkpoint_name, load_checkpoint, save_checkpoint
from .client import ClientTrainer, client_seed, diverged
from .evaluation import Evaluator
from .metrics import MetricsFn, classification_metric_names, greater_is_better
from .optim import round_learning_rates
from .output_dir import OutputDirLock, claim_output_dir
from .reporting import default_callbacks
from .samples import as_samples
from .sampling import assign_clients, dropped_clients, sample_clients
from .state import FederatedState
from .strategies import ClientUpdate, Strategy

__all__ = ["FederatedTrainer"]

logger = logging.getLogger(__name__)


class FederatedTrainer:
    """Simulate a federation of `len(partitions)` clients training `model` with `strategy`.

    Args:
        model: the global model (FedSQ or plain); its floating state is what gets aggregated.
        strategy: server-side algorithm (see `fedsq_hf.federated.strategies`).
        train_data / eval_data: `StreamedSamples` or `PreloadedSamples`, or (pixels, labels) tensors
            taken as model-ready.
        partitions: sample indices of each client into `train_data`.
        args: run arguments; `run_config` (everything, JSON-ready) goes into summary and checkpoints.
        callbacks: added after `default_callbacks(args)`.
        compute_metrics: `EvalPrediction -> dict` (default: accuracy, top-5 accuracy, macro-F1).
    """

    def __init__(self, model: FedSQModel, strategy: Strategy,
                 train_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
                 eval_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
                 partitions: list[np.ndarray], args: FederatedArguments, run_config: dict[str, Any] | None = None,
                 partition_summary: dict[str, Any] | None = None, accelerator: Accelerator | None = None,
                 callbacks: list[FederatedCallback] | None = None, compute_metrics: MetricsFn | None = None) -> None:
        self.args, self.strategy, self.partitions = args, strategy, partitions
        self.accelerator = acc = accelerator or make_accelerator(args)
        self.model = model.to(acc.device)
        self.train_set, self.eval_set = as_samples(train_data), as_samples(eval_data)
        self.client = ClientTrainer(self.model, self.train_set, args, acc)
        self.evaluator = Evaluator(self.model, self.eval_set, 2 * args.batch_size, args.num_workers, acc, compute_metrics)
        known = classification_metric_names(model.config.num_labels)
        if compute_metrics is None and args.metric_for_best_model not in known:  # else checked at the first evaluation
            raise FedSQError(f"--metric-for-best-model {args.metric_for_best_model!r} is not among the evaluation's "
                             f"metrics {sorted(known)}; pick one of them, or pass a compute_metrics that returns it.")
        self.sizes = torch.tensor([float(len(p)) for p in partitions])
        self.run_config = {**(run_config or {}), "num_labels": model.config.num_labels, "backbone": model.config.backbone,
                           "backbone_sha256": model.config.backbone_sha256, "strategy_config": strategy.describe()}
        self.partition_summary = partition_summary
        self.model_state = GlobalState(self.model, self.sizes)
        self.flat, self.fedbn = self.model_state.flat, self.model_state.fedbn
        self.learning_rates = round_learning_rates(args)
        self.state = FederatedState(
            max_rounds=args.rounds, metric_for_best_model=args.metric_for_best_model,
            greater_is_better=greater_is_better(args.metric_for_best_model, args.greater_is_better),
            run={k: self.run_config.get(k) for k in RESUME_KEYS},
            is_world_process_zero=acc.is_main_process, is_local_process_zero=acc.is_local_main_process)
        self.control = FederatedControl()
        self.output_lock: OutputDirLock | None = None  # held while training (build_trainer takes it earlier)
        self.callback_handler = CallbackHandler(default_callbacks(args) + list(callbacks or []))
        self._event("on_init_end")

    def _event(self, event: str, **kwargs: Any) -> None:
        self.control = self.callback_handler.call_event(event, self.args, self.state, self.control, trainer=self, **kwargs)

    # -- the run -------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the rounds (from the last checkpoint with `args.resume`) until the last or until a callback
        stops the run; returns the summary."""
        if self.output_lock is None:
            self.output_lock = claim_output_dir(self.args.output_dir, self.accelerator, self.args.resume,
                                                self.args.overwrite_output_dir)
        try:
            return self._train()
        finally:
            self.close()

    def close(self) -> None:
        """Free the output folder of a trainer that will not train (training frees it when it ends)."""
        if self.output_lock is not None:
            self.output_lock.release()
            self.output_lock = None

    def _train(self) -> dict[str, Any]:
        state = self.state
        if self.args.resume:
            self.load_checkpoint()
        self._event("on_train_begin")
        while state.round < state.max_rounds and not self.control.should_training_stop:
            self._event("on_round_begin")
            record = self.run_round(state.round + 1)
            if self.control.should_evaluate:
                self._evaluate_into(record)
            state.round = record["round"]
            state.history.append(record)
            self._event("on_round_end", record=record, is_best=state.update_best(record))
            if self.control.should_save or self.control.should_training_stop:
                self._event("on_save", checkpoint=self.save_checkpoint())
            self.accelerator.wait_for_everyone()
        summary = self.summary()
        self._event("on_train_end", summary=summary)
        self.accelerator.wait_for_everyone()
        return summary

    def run_round(self, round_: int) -> dict[str, Any]:
        """Sample clients, train this process's share, aggregate across processes, update the global model."""
        args, acc, start = self.args, self.accelerator, time.perf_counter()
        clients = sample_clients(args.seed, round_, len(self.partitions), args.clients_per_round or len(self.partitions))
        dropped = dropped_clients(args.seed, round_, clients, args.dropout_rate)
        active = [c for c in clients if c not in dropped]
        assignment = assign_clients(active, self.sizes.int().tolist(), acc.num_processes)
        trained_share = self._train_share(round_, assignment[acc.process_index], active)
        trained = time.perf_counter()
        stats, failed = self._aggregate(round_, active, max(len(a) for a in assignment), *trained_share)
        weight = float(stats[0])
        record = {"round": round_, "clients": clients, "dropped_clients": dropped, "failed_clients": failed,
                  "lr": self.learning_rates[round_ - 1], "train_loss": float(stats[1]) / weight if weight else None,
                  "bytes_aggregated": int(stats[2]) * self.global_state.numel() * 4}
        end = time.perf_counter()
        record.update(wall_time=end - start, train_time=trained - start, aggregate_time=end - trained, evaluation_time=0.0)
        return record

    def _train_share(self, round_: int, mine: list[int], active: list[int]):
        """Train this process's clients one after another; returns (weighted sum of their states, or None
        for a per-client strategy; their updates, for one; statistics; FedBN rows of the round's clients)."""
        args, per_client = self.args, self.strategy.needs_client_updates
        summed = None if per_client else torch.zeros_like(self.global_state)
        updates, stats = [], torch.zeros(3 + len(self.partitions), dtype=torch.float64)  # samples, loss*samples, ok
        local = torch.zeros(len(active), self.fedbn.flat.numel if self.fedbn else 0, dtype=torch.float64)
        for client in mine:
            self.model_state.start_client(client)
            result = self.client.train(self.partitions[client], client_seed(args.seed, round_, client),
                                       self.learning_rates[round_ - 1], self.strategy)
            self._event("on_client_end", client=client, result=result)
            if diverged(result.losses, args.divergence_factor, self.model.config.num_labels) or not self.flat.is_finite():
                stats[3 + client] = 1  # failed
                continue
            if per_client:
                updates.append(ClientUpdate(client, self.flat.read() - self.global_state, result.num_samples,
                                            {"train_loss": result.train_loss}))
            else:
                self.flat.add_to(summed, result.num_samples)
            stats[:3] += torch.tensor([result.num_samples, result.train_loss * result.num_samples, 1.0], dtype=torch.float64)
            if self.fedbn:
                local[active.index(client)] = self.fedbn.flat.read().double()
        return summed, updates, stats, local

    def _aggregate(self, round_: int, active: list[int], rows: int, summed: torch.Tensor | None,
                   updates: list[ClientUpdate], stats: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """One all-reduce (statistics, FedBN rows, the summed update of a linear strategy), the strategy's
        aggregate and server update; returns the round's statistics and failed clients."""
        acc = self.accelerator
        parts = [stats, local.flatten()] + ([] if summed is None else [summed.double()])
        packed = reduce(torch.cat(parts).to(acc.device), reduction="sum").cpu()
        stats, local = packed[: len(stats)], packed[len(stats) : len(stats) + local.numel()].view_as(local)
        failed = [int(i) for i in torch.nonzero(stats[3:]).flatten()]
        if self.fedbn:
            kept = [i for i, c in enumerate(active) if c not in failed]
            self.fedbn.update([active[i] for i in kept], local[kept])
        if failed and acc.is_main_process:
            logger.warning("round %d: excluded clients %s (diverging or non-finite loss, or non-finite update)", round_, failed)
        weight = float(stats[0])
        if weight > 0:
            if summed is None:
                update = self.strategy.aggregate_clients(gather_client_updates(acc, updates, rows, len(self.global_state)))
            else:  # from the sum of weighted (local - global)
                update = self.strategy.aggregate(packed[len(stats) + local.numel():].float().sub_(self.global_state, alpha=weight), weight)
            self.strategy.server_update(self.global_state, update)
            if not bool(torch.isfinite(self.global_state).all()):  # not written: the last checkpoint stays good
                raise FedSQError(f"Round {round_}: the server update made the global model non-finite; lower "
                                 "--server-lr (or --lr), or try --strategy fedavg.")
            self.state.failed_streak = 0
        elif active:  # clients trained, none usable (a round where every client dropped out is no failure)
            self.state.failed_streak += 1
        self.model_state.write()
        streak = self.state.failed_streak
        if streak >= self.args.max_failed_rounds or streak == round_ == self.state.max_rounds:  # never a usable round
            raise FedSQError(
                f"{streak} consecutive rounds had no usable client update (all clients failed); "
                "the global model was kept unchanged. Lower --lr (or a raised --weight-decay or --mu), or check the data.")
        return stats, failed

    def _evaluate_into(self, record: dict[str, Any]) -> None:
        start = time.perf_counter()
        metrics = self.evaluator.evaluate()
        if not math.isfinite(metrics["loss"]):  # finite but huge weights (e.g. --server-lr 1e30): not written either
            raise FedSQError(f"Round {record['round']}: the global model's evaluation loss is {metrics['loss']} (its "
                             "outputs are non-finite); lower --server-lr, --lr, --mu or --weight-decay.")
        if self.state.metric_for_best_model not in metrics:
            raise FedSQError(f"--metric-for-best-model {self.state.metric_for_best_model!r} is not among the "
                             f"evaluation's metrics {sorted(metrics)}; pick one of them.")
        record.update({f"eval_{k}": v for k, v in metrics.items()})
        if self.fedbn:  # say which BatchNorm the global model was evaluated with
            seen = int(self.fedbn.seen.sum())
            record["eval_bn"] = f"sample-weighted mean of {seen} clients' BatchNorms" if seen else "pretrained"
        record["evaluation_time"] = time.perf_counter() - start
        record["wall_time"] += record["evaluation_time"]
        self._event("on_evaluate", metrics=metrics)

    def summary(self) -> dict[str, Any]:
        """What `train()` returns and `summary.json` holds."""
        return {**self.state.summary(), "num_processes": self.accelerator.num_processes, "config": self.run_config}

    @property
    def global_state(self) -> torch.Tensor:
        """The global model's shared tensors as one flat fp32 vector (strategies update it in place)."""
        return self.model_state.vector

    def save_checkpoint(self) -> str:
        """`checkpoints/round-N/` of the current state (written by the main process); returns its path."""
        folder = os.path.join(self.args.output_dir, "checkpoints")
        if not self.state.is_world_process_zero:
            return os.path.join(folder, checkpoint_name(self.state.round))
        tensors = {**self.model_state.tensors(), **{f"strategy.{k}": v for k, v in self.strategy.state_dict().items()}}
        if self.model.config.calibrated and self.model.structural is not None:  # re-frozen gates: not the backbone's
            tensors.update({f"structural.{k}": v for k, v in self.model.structural.state_dict().items()})
        return save_checkpoint(folder, self.state, tensors)

    def load_checkpoint(self) -> None:
        folder = os.path.join(self.args.output_dir, "checkpoints")
        state, tensors = load_checkpoint(folder, self.state.run)
        if not self.model_state.load(tensors):
            raise CheckpointError(f"--resume: the checkpoint in {folder!r} does not match this model (missing tensors "
                                  f"or another size); it was damaged or is of another model: {START_OVER}.")
        self.strategy.load_state_dict({k[len("strategy."):]: v for k, v in tensors.items() if k.startswith("strategy.")})
        structural = {k[len("structural."):]: v for k, v in tensors.items() if k.startswith("structural.")}
        if structural:
            self.model.structural.load_state_dict(structural)
            self.model.config.calibrated = True
        current = self.state  # this run's settings; the checkpoint's progress, best recomputed under them
        current.round, current.history, current.failed_streak = state.round, state.history, state.failed_streak
        for record in current.history:
            current.update_best(record)
