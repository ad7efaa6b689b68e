"""Federated simulation on Accelerate: clients train one after another on one model instance per
process; one all-reduce per round aggregates across processes.

Every random choice is seeded from (seed, round[, client]), so a run gives the same global weights
on 1 or N processes and after an interrupt + resume. There is therefore no RNG stream to save:
a checkpoint holds the global state, the server optimizer state, the round and the history.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import reduce
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from tqdm.auto import tqdm

from ..errors import CheckpointError, FedSQError
from ..gate_drift import GateRecorder, gate_drift, plot_drift
from ..hub import ensure_repo, model_card, percent, push_to_hub
from ..modeling_fedsq import FedSQModel
from ..serialization import atomic_write_bytes, atomic_write_json, load_weights, save_weights
from .arguments import FederatedArguments
from .partition import plot_partition
from .samples import ClientBatches, OrderedBatches, PreloadedSamples, make_loader, model_inputs
from .strategies import Strategy
from ..plotting import pyplot, save_figure

__all__ = ["FederatedTrainer", "as_samples", "client_seed", "diverged", "make_accelerator"]

logger = logging.getLogger(__name__)

# The fields of a run that a checkpoint must share to be resumed.
_RESUME_KEYS = ("backbone", "num_labels", "num_clients", "model", "bn_mode", "partition", "alpha", "seed", "strategy")


def _batchnorm_keys(model: FedSQModel) -> set[str]:
    """State-dict keys of the quantitative copy's BatchNorm layers (parameters and statistics)."""
    prefix = "dual_copy.quantitative."
    return {f"{prefix}{name}.{key}" for name, m in model.quantitative.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for key in m.state_dict()}


def client_seed(seed: int, round_: int, client: int = -1) -> int:
    return int(np.random.SeedSequence([seed, round_, client + 1]).generate_state(1)[0])


def diverged(losses: list[float], factor: float, num_labels: int) -> bool:
    """True if a client's training went wrong: no or non-finite losses, or (factor > 0) the mean loss of
    its last steps above `factor` times its first loss (at least the chance-level loss, log(num_labels),
    so that a client starting near zero loss is not flagged for ordinary noise)."""
    if not losses or not np.all(np.isfinite(losses)):
        return True
    tail = losses[-max(1, len(losses) // 4):]
    return factor > 0 and float(np.mean(tail)) > factor * max(losses[0], float(np.log(max(num_labels, 2))))


def make_accelerator(args: FederatedArguments) -> Accelerator:
    """The run's Accelerator. Without a GPU, `torchrun`/`accelerate launch` give a MULTI_CPU (gloo) group."""
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) \
        or torch.backends.mps.is_available()
    return Accelerator(
        cpu=not accelerated,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
    )


def as_samples(data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor]) -> torch.utils.data.Dataset:
    """Samples as the loaders take them; a (pixels, labels) tuple is taken as model-ready tensors."""
    return PreloadedSamples(*data) if isinstance(data, tuple) else data


class FederatedTrainer:
    """Simulate a federation of `len(partitions)` clients training `model` with `strategy`.

    Args:
        model: the global model (FedSQ or plain); its floating state is what gets aggregated.
        strategy: server-side algorithm (see `fedsq_hf.federated.strategies`).
        train_data / eval_data: `StreamedSamples` or `PreloadedSamples`, or (pixels, labels) tensors
            taken as model-ready.
        partitions: sample indices of each client into `train_data`.
        args: run arguments; `run_config` (everything, JSON-ready) goes into summary and checkpoints.
    """

    def __init__(
        self,
        model: FedSQModel,
        strategy: Strategy,
        train_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
        eval_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
        partitions: list[np.ndarray],
        args: FederatedArguments,
        run_config: dict[str, Any] | None = None,
        partition_summary: dict[str, Any] | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.args = args
        self.accelerator = accelerator or make_accelerator(args)
        self.model = model.to(self.accelerator.device)
        self.strategy = strategy
        device = self.accelerator.device
        self.train_set, self.eval_set = as_samples(train_data), as_samples(eval_data)
        self.partitions = partitions
        # One loader each for the whole run: its workers serve every client of every round.
        self.client_batches = ClientBatches(args.batch_size)
        self.train_loader = make_loader(self.train_set, self.client_batches, args.num_workers, device)
        shard = np.array_split(np.arange(len(self.eval_set)), self.accelerator.num_processes)[self.accelerator.process_index]
        self.eval_loader = make_loader(self.eval_set, OrderedBatches(shard, 2 * args.batch_size), args.num_workers, device)
        self.run_config = dict(run_config or {})
        self.run_config.update(num_labels=model.config.num_labels, backbone=model.config.backbone,
                               strategy_config=strategy.describe())
        self.partition_summary = partition_summary
        state = model.state_dict()
        local = _batchnorm_keys(model) if model.config.bn_mode == "local" else set()
        self._tensors = [t for k, t in state.items() if t.is_floating_point() and k not in local]
        self.global_state = self._read_state()
        # FedBN (bn_mode "local"): each client keeps its own BatchNorm tensors; they are never averaged.
        self._local_tensors = [t for k, t in state.items() if t.is_floating_point() and k in local]
        self.pretrained_local = self._read_state(self._local_tensors)
        self.client_local = torch.zeros(len(partitions), self.pretrained_local.numel())
        self.client_seen = torch.zeros(len(partitions), dtype=torch.bool)
        # Integer buffers (BatchNorm's num_batches_tracked) are not federated state: every client starts
        # from the pretrained value, so a run's result does not depend on which process trained what.
        self._counters = [(t, t.clone()) for t in state.values() if not t.is_floating_point()]
        scaler = self.accelerator.scaler
        self._initial_scale = scaler.state_dict() if scaler is not None else None
        self.history: list[dict[str, Any]] = []
        self.best_accuracy, self.best_round, self.failed_streak, self.start_round = -1.0, 0, 0, 0
        self._pushes: list[Future] = []
        # Gates of the pretrained (starting) model on a fixed eval subset: the reference of gate drift.
        self._drift_pixels, self._drift_reference = None, None
        if args.gate_drift_samples:
            self._drift_pixels = model_inputs(self.eval_set, range(min(args.gate_drift_samples, len(self.eval_set))), device)[0]
            self._drift_reference = GateRecorder(model).gates(self._drift_pixels)

    # -- flat global state ---------------------------------------------------------------
    def _read_state(self, tensors: list[torch.Tensor] | None = None) -> torch.Tensor:
        tensors = self._tensors if tensors is None else tensors
        return torch.cat([t.detach().float().flatten() for t in tensors]) if tensors else torch.zeros(0)

    def _write_state(self, flat: torch.Tensor, tensors: list[torch.Tensor] | None = None) -> None:
        offset = 0
        with torch.no_grad():
            for t in self._tensors if tensors is None else tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def _accumulate(self, acc: torch.Tensor, weight: float) -> bool:
        """acc += weight * local state, in place; False (nothing added) if the state is not finite."""
        if not all(bool(torch.isfinite(t).all()) for t in self._tensors):
            return False
        offset = 0
        for t in self._tensors:
            acc[offset : offset + t.numel()].add_(t.detach().flatten(), alpha=weight)
            offset += t.numel()
        return True

    # -- one client ----------------------------------------------------------------------
    def sample_clients(self, round_: int) -> list[int]:
        rng = np.random.default_rng(client_seed(self.args.seed, round_))
        chosen = rng.choice(len(self.partitions), self.args.clients_per_round, replace=False)
        return sorted(int(c) for c in chosen)

    def dropped_clients(self, round_: int, clients: list[int]) -> list[int]:
        """Sampled clients that drop out of this round (simulated, with probability `dropout_rate`)."""
        rate = self.args.dropout_rate
        return [c for c in clients if rate and np.random.default_rng([client_seed(self.args.seed, round_, c), 1]).random() < rate]

    def train_client(self, client: int, round_: int) -> list[float]:
        """Local training from the current model weights; returns the loss of every step."""
        args, model, device = self.args, self.model, self.accelerator.device
        seed = client_seed(args.seed, round_, client)
        torch.manual_seed(seed)
        indices = self.partitions[client]
        steps = args.local_steps or args.local_epochs * self.client_batches.steps_per_epoch(len(indices))
        self.client_batches.start(indices, seed, steps)
        pipeline = getattr(self.train_set, "pipeline", None)
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params] if type(self.strategy).client_loss is not Strategy.client_loss else None
        scaler = self.accelerator.scaler  # fp16 on a GPU: loss scaling, through accelerator.backward
        if scaler is not None:  # every client starts from the initial scale: results do not depend on client order
            scaler.load_state_dict(self._initial_scale)
        opt = AcceleratedOptimizer(torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                                   weight_decay=args.weight_decay), device_placement=False, scaler=scaler)
        use_keys = getattr(model.dual_copy, "gate_cache", None) is not None
        model.train()
        losses = []
        for step, (x, y, keys) in enumerate(self.train_loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if pipeline is not None:
                x = pipeline.finish(x, seed=client_seed(seed, step))
            with self.accelerator.autocast():
                loss = model(x, labels=y, gate_keys=keys if use_keys else None).loss
                extra = self.strategy.client_loss(params, anchor) if anchor is not None else None
                total = loss if extra is None else loss + extra
            opt.zero_grad(set_to_none=True)
            self.accelerator.backward(total)
            opt.step()
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):
                break
        return losses

    # -- evaluation ----------------------------------------------------------------------
    def server_local_state(self) -> torch.Tensor:
        """FedBN: the BatchNorm the global model is evaluated and saved with, the sample-weighted
        mean of the clients' own BatchNorms (the pretrained one before any client trained)."""
        if not bool(self.client_seen.any()):
            return self.pretrained_local
        sizes = torch.tensor([float(len(p)) for p in self.partitions]) * self.client_seen
        return (sizes[:, None] * self.client_local).sum(0) / sizes.sum()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(loss, accuracy) of the current model on the eval data, split over processes."""
        acc = self.accelerator
        self.model.eval()
        pipeline = getattr(self.eval_set, "pipeline", None)
        sums = torch.zeros(3, dtype=torch.float64, device=acc.device)
        for x, y, _ in self.eval_loader:
            x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
            if pipeline is not None:
                x = pipeline.finish(x)
            with acc.autocast():
                logits = self.model(x).logits.float()
            sums[0] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == y).sum()
            sums[2] += len(y)
        sums = reduce(sums, reduction="sum")
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    # -- the run -------------------------------------------------------------------------
    def run_round(self, round_: int) -> dict[str, Any]:
        acc_ = self.accelerator
        start = time.perf_counter()
        clients = self.sample_clients(round_)
        dropped = self.dropped_clients(round_, clients)
        active = [c for c in clients if c not in dropped]
        mine = active[acc_.process_index :: acc_.num_processes]
        acc = torch.zeros_like(self.global_state)
        stats = torch.zeros(3 + len(self.partitions), dtype=torch.float64)  # weight, loss*weight, ok, failed ids
        local = torch.zeros(len(self.partitions), self.pretrained_local.numel(), dtype=torch.float64)
        for client in mine:
            self._write_state(self.global_state)
            self._write_state(self.client_local[client] if self.client_seen[client] else self.pretrained_local,
                              self._local_tensors)
            for counter, initial in self._counters:
                counter.copy_(initial)
            losses = self.train_client(client, round_)
            weight = float(len(self.partitions[client]))
            ok = not diverged(losses, self.args.divergence_factor, self.model.config.num_labels)
            if ok and self._accumulate(acc, weight):
                stats[0] += weight
                stats[1] += float(np.mean(losses)) * weight
                stats[2] += 1
                local[client] = self._read_state(self._local_tensors).double()
            else:
                stats[3 + client] = 1
        trained = time.perf_counter()
        acc.sub_(self.global_state, alpha=float(stats[0]))  # sum of weighted updates (local - global)
        n = len(self.partitions)
        packed = reduce(torch.cat([acc.double(), stats, local.flatten()]).to(acc_.device), reduction="sum").cpu()
        acc, stats, local = packed[: len(acc)].float(), packed[len(acc) : len(acc) + 3 + n], packed[len(acc) + 3 + n :]
        failed = [int(i) for i in torch.nonzero(stats[3:]).flatten()]
        if self._local_tensors:
            updated = torch.tensor([c in active and c not in failed for c in range(n)])
            self.client_local[updated] = local.view(n, -1)[updated].float()
            self.client_seen |= updated
        if failed and acc_.is_main_process:
            logger.warning("round %d: excluded clients %s (diverging or non-finite loss, or non-finite update)",
                           round_, failed)
        if stats[0] > 0:
            self.strategy.server_update(self.global_state, self.strategy.aggregate(acc, float(stats[0])))
            self.failed_streak = 0
        elif active:  # clients trained, none usable (a round where every client dropped out is no failure)
            self.failed_streak += 1
        self._write_state(self.global_state)
        self._write_state(self.server_local_state(), self._local_tensors)
        aggregated = time.perf_counter()
        record = {
            "round": round_,
            "clients": clients,
            "dropped_clients": dropped,
            "failed_clients": failed,
            "train_loss": float(stats[1] / stats[0]) if stats[0] > 0 else None,
            "eval_loss": None,
            "eval_accuracy": None,
            "bytes_aggregated": int(stats[2]) * self.global_state.numel() * 4,
        }
        if self.failed_streak >= self.args.max_failed_rounds:
            raise FedSQError(
                f"{self.failed_streak} consecutive rounds had no usable client update (all clients failed); "
                "the global model was kept unchanged. Lower --lr or check the data."
            )
        if round_ % self.args.eval_every == 0 or round_ == self.args.rounds:
            record["eval_loss"], record["eval_accuracy"] = self.evaluate()
            if self._local_tensors:  # FedBN: say which BatchNorm the global model was evaluated with
                seen = int(self.client_seen.sum())
                record["eval_bn"] = f"sample-weighted mean of {seen} clients' BatchNorms" if seen else "pretrained"
        if self._drift_reference is not None:
            drift = gate_drift(self._drift_reference, self.model, self._drift_pixels)
            record["gate_drift"], record["gate_drift_units"] = drift.pop("all"), drift
        end = time.perf_counter()
        record.update(wall_time=end - start, train_time=trained - start, aggregate_time=aggregated - trained,
                      eval_time=end - aggregated)
        return record

    def train(self) -> dict[str, Any]:
        """Run all rounds (from the last checkpoint with `args.resume`); returns the summary."""
        args, acc = self.args, self.accelerator
        out = args.output_dir
        if args.resume:
            self.load_checkpoint(os.path.join(out, "checkpoints"))
        if acc.is_main_process:
            if args.push_to_hub:
                self._check_hub_repo()
            os.makedirs(out, exist_ok=True)
            if self.partition_summary is not None:
                atomic_write_json(os.path.join(out, "partition.json"), self.partition_summary)
                plot_partition(self.partition_summary, os.path.join(out, "partition.png"),
                               f"{args.partition} partition, {args.num_clients} clients")
        if acc.log_with:
            acc.init_trackers("fedsq-hf", config={k: v for k, v in self.run_config.items() if isinstance(v, (int, float, str, bool))})
        bar = tqdm(range(self.start_round + 1, args.rounds + 1), disable=args.disable_tqdm or not acc.is_local_main_process,
                   desc="rounds", initial=self.start_round, total=args.rounds)
        for round_ in bar:
            record = self.run_round(round_)
            self.history.append(record)
            improved = record["eval_accuracy"] is not None and record["eval_accuracy"] > self.best_accuracy
            if improved:
                self.best_accuracy, self.best_round = record["eval_accuracy"], round_
            if acc.log_with:
                acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=round_)
            bar.set_postfix(acc=record["eval_accuracy"], loss=record["train_loss"])
            if acc.is_main_process:
                if improved:
                    self.model.save_pretrained(os.path.join(out, "best"))
                self._write_history()
            if round_ % args.save_every == 0 or round_ == args.rounds:
                self.save_checkpoint(os.path.join(out, "checkpoints"), round_)
                if args.push_to_hub and args.hub_strategy == "every_save" and round_ < args.rounds and acc.is_main_process:
                    self._plot(os.path.join(out, "accuracy.png"))
                    self._push(round_, background=True)
            acc.wait_for_everyone()
        summary = self._summary()
        if acc.is_main_process:
            self.model.save_pretrained(os.path.join(out, "final"))
            atomic_write_json(os.path.join(out, "summary.json"), summary)
            self._plot(os.path.join(out, "accuracy.png"))
            if self._drift_reference is not None:
                plot_drift(self.history, os.path.join(out, "gate_drift.png"),
                           f"{self.run_config.get('model', 'model')}: own gates vs pretrained")
            if args.push_to_hub:
                self._push(args.rounds, background=False)
        acc.wait_for_everyone()
        if acc.log_with:
            acc.end_training()
        return summary

    # -- outputs -------------------------------------------------------------------------
    def _summary(self) -> dict[str, Any]:
        evals = [h for h in self.history if h["eval_accuracy"] is not None]
        return {
            "best_accuracy": self.best_accuracy if evals else None,
            "best_round": self.best_round if evals else None,
            "final_accuracy": evals[-1]["eval_accuracy"] if evals else None,
            "rounds": len(self.history),
            "num_processes": self.accelerator.num_processes,
            "wall_time": sum(h["wall_time"] for h in self.history),
            "config": self.run_config,
        }

    def _write_history(self) -> None:
        lines = "".join(json.dumps(h) + "\n" for h in self.history)
        atomic_write_bytes(os.path.join(self.args.output_dir, "history.jsonl"), lines.encode())

    def _plot(self, path: str) -> None:
        plt = pyplot()

        points = [(h["round"], h["eval_accuracy"]) for h in self.history if h["eval_accuracy"] is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{self.run_config.get('model', 'model')} + {self.strategy.name}")
            ax.axvline(self.best_round, color="gray", linestyle=":", label=f"best: round {self.best_round}")
        ax.set_xlabel("round")
        ax.set_ylabel("eval accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, path)

    # -- Hub -----------------------------------------------------------------------------
    def _check_hub_repo(self) -> None:
        """Create (or reach) the Hub repo before training, so that bad credentials fail in seconds, not hours."""
        args = self.args
        try:
            ensure_repo(HfApi(), args.hub_model_id, private=args.hub_private_repo, revision=args.hub_revision)
        except (HfHubHTTPError, OSError) as err:
            raise FedSQError(
                f"--push-to-hub: cannot create or reach the Hub repo {args.hub_model_id!r} ({type(err).__name__}: {err}). "
                "Check --hub-model-id and your write access (hf auth login or HF_TOKEN)."
            ) from err

    def _push(self, round_: int, background: bool) -> None:
        """Upload the current global model with its card and accuracy plot (main process only).

        In the background (every_save), the next rounds train while it uploads; the final push waits.
        """
        args = self.args
        if not background:
            for pending in self._pushes:
                pending.exception()  # wait; failures were already logged by the callback
        plot = os.path.join(args.output_dir, "accuracy.png")  # written by the caller, up to this round
        summary = self._summary()
        card = model_card(self.model.config, args.hub_model_id, summary=summary, history=self.history,
                          plot="accuracy.png", license=args.hub_license)
        message = f"Round {round_}/{args.rounds}: accuracy {percent(summary['final_accuracy'])}"
        result = push_to_hub(self.model, args.hub_model_id, commit_message=message, private=args.hub_private_repo,
                             revision=args.hub_revision, card=card, extra_files={"accuracy.png": plot},
                             run_as_future=background)
        if background:
            result.add_done_callback(lambda f: f.exception() and logger.warning(
                "round %d: push to the Hub failed (%s); training goes on", round_, f.exception()))
            self._pushes.append(result)

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, folder: str, round_: int) -> None:
        """Write `round-N/` beside a temporary name and rename it; then point `latest` at it."""
        if not self.accelerator.is_main_process:
            return
        final = os.path.join(folder, f"round-{round_:05d}")
        tmp = os.path.join(folder, f".tmp-round-{round_:05d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        tensors = {"global_state": self.global_state, "client_local": self.client_local,
                   "client_seen": self.client_seen, **{f"strategy.{k}": v for k, v in self.strategy.state_dict().items()}}
        save_weights(os.path.join(tmp, "state.safetensors"), tensors)
        atomic_write_json(os.path.join(tmp, "trainer_state.json"), {
            "round": round_, "history": self.history, "best_accuracy": self.best_accuracy,
            "best_round": self.best_round, "failed_streak": self.failed_streak,
            "run": {k: self.run_config.get(k) for k in _RESUME_KEYS},
        })
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_bytes(os.path.join(folder, "latest"), os.path.basename(final).encode())
        for old in os.listdir(folder):
            if old.startswith("round-") and old != os.path.basename(final):
                shutil.rmtree(os.path.join(folder, old), ignore_errors=True)

    def load_checkpoint(self, folder: str) -> None:
        pointer = os.path.join(folder, "latest")
        if not os.path.isfile(pointer):
            raise CheckpointError(f"--resume: {folder!r} holds no checkpoint (no 'latest' file); run without --resume.")
        with open(pointer) as f:
            path = os.path.join(folder, f.read().strip())
        with open(os.path.join(path, "trainer_state.json")) as f:
            state = json.load(f)
        saved = state["run"]
        differs = {k: (saved.get(k), self.run_config.get(k)) for k in _RESUME_KEYS if saved.get(k) != self.run_config.get(k)}
        if differs:
            raise CheckpointError(
                f"--resume: the checkpoint in {path!r} is of another run: "
                + ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in differs.items())
                + ". Use the same settings or another --output-dir."
            )
        tensors = load_weights(os.path.join(path, "state.safetensors"))
        if tensors["global_state"].shape != self.global_state.shape:
            raise CheckpointError(f"--resume: the checkpoint in {path!r} does not match this model's size.")
        self.global_state = tensors["global_state"].to(self.global_state.device)
        self.client_local, self.client_seen = tensors["client_local"], tensors["client_seen"]
        self.strategy.load_state_dict({k[len("strategy."):]: v for k, v in tensors.items() if k.startswith("strategy.")})
        self._write_state(self.global_state)
        self._write_state(self.server_local_state(), self._local_tensors)
        self.history = state["history"]
        self.best_accuracy, self.best_round = state["best_accuracy"], state["best_round"]
        self.failed_streak, self.start_round = state["failed_streak"], state["round"]
