"""The server's side of a round: each client's update taken in (decoded, summed or kept), then turned into
the next global model by the strategy. A runtime only delivers the updates; the simulator also sums the
takes of its processes (`simulation.collectives`) before `step`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..protocol import ClientUpdate, UpdateCodec, squared_norm
from .global_model import GlobalModel
from .strategies import FlatUpdate, Strategy

__all__ = ["RoundAggregate"]


@dataclass
class RoundAggregate:
    """What a round's clients sent, as the server takes it in.

    Args:
        active: the clients expected to report (in order; `local` has a row for each).
        summed: the sample-weighted sum of the usable updates (linear strategies; None for per-client ones).
        updates: each usable update, flat (per-client strategies).
        local: FedBN's local state of each active client that reported one (zero width otherwise).
        samples: the samples each active client reported (0 where it did not).
        num_samples / loss_sum / num_bytes / sq_norm_sum: over the usable updates (the loss and the updates'
            squared L2 norms weighted by samples; the bytes their codec sent).
        eval_correct / eval_samples: per class, the samples the clients that scored the model they received
            (`FitConfig.eval_samples`) got right, and those they scored (every client that replied with them).
        label_share_sum / label_clients: the sum of the clients' `label_share` (`FitConfig.label_share`), in
            units of 2^-32 (whole numbers: the sum does not depend on the order, on 1 or N processes), and how
            many sent one.
        failed: the clients whose training went wrong (diverged or non-finite) or that did not reply.
        update_agreement: set by `step`: |mean update|^2 / the mean squared update norm (sample-weighted),
            1 when every client sent the same update, near 0 when they cancel out (Jensen: never above 1).
        update_alignment: set by `step`: the same ratio with the share of orthogonal updates taken out,
            (m a - 1) / (m - 1) for agreement a over m effective clients (m = (sum n)^2 / sum n^2, n their
            samples): 1 for identical updates, 0 for orthogonal ones whatever the number of clients, below 0
            when they pull apart; None with a single update. The input of `--freeze-gates auto`.
    """

    active: list[int]
    local: torch.Tensor
    samples: torch.Tensor
    summed: torch.Tensor | None = None
    num_samples: float = 0.0
    loss_sum: float = 0.0
    num_bytes: int = 0
    failed: list[int] = field(default_factory=list)
    updates: list[FlatUpdate] = field(default_factory=list)
    sq_norm_sum: float = 0.0
    eval_correct: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    eval_samples: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    label_share_sum: float = 0.0
    label_clients: int = 0
    update_agreement: float | None = None
    update_alignment: float | None = None

    @classmethod
    def start(cls, global_model: GlobalModel, strategy: Strategy, active: list[int]) -> RoundAggregate:
        local = torch.zeros(len(active), global_model.local_layout.numel, dtype=torch.float64)
        classes = torch.zeros(global_model.model.config.num_labels, dtype=torch.float64)
        return cls(active, local, torch.zeros(len(active), dtype=torch.float64),
                   None if strategy.needs_client_updates else torch.zeros_like(global_model.vector),
                   eval_correct=classes, eval_samples=classes.clone())

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.num_samples if self.num_samples else None

    @property
    def client_balanced_accuracy(self) -> float | None:
        """Federated evaluation of the model the clients received: the mean over the classes they scored of
        each class's accuracy, pooled over the clients. Under label skew a round's clients hold another mix
        of labels each round; per class, the mix does not weigh in (the same counts on 1 or N processes)."""
        seen = self.eval_samples > 0
        return float((self.eval_correct[seen] / self.eval_samples[seen]).mean()) if seen.any() else None

    @property
    def client_label_share(self) -> float | None:
        """The mean `label_share` of the clients that sent one (how many classes each one's labels span, over
        the number of classes; the input of `--skewed-gates auto`)."""
        return self.label_share_sum / self.label_clients / 2**32 if self.label_clients else None

    def fail(self, client: int) -> None:
        """Record `client` as failed: its training went wrong, or it did not reply."""
        self.failed.append(client)

    def add(self, client: int, update: ClientUpdate, codec: UpdateCodec, global_model: GlobalModel) -> None:
        """Take in `client`'s update: a diverged one is only recorded as failed (its score, from before it
        trained, and its label share are kept)."""
        metrics = update.metrics
        if "eval_class_samples" in metrics:
            self.eval_correct += torch.tensor(metrics["eval_class_correct"], dtype=torch.float64)
            self.eval_samples += torch.tensor(metrics["eval_class_samples"], dtype=torch.float64)
        if math.isfinite(metrics.get("label_share", math.nan)):
            self.label_share_sum += round(metrics["label_share"] * 2**32)
            self.label_clients += 1
        if update.diverged:
            self.fail(client)
            return
        tensors = codec.decode(update.tensors)
        if self.summed is None:
            self.updates.append(FlatUpdate(client, global_model.layout.flatten(tensors), update.num_samples,
                                           update.metrics))
        else:
            global_model.layout.add_to(self.summed, tensors, update.num_samples)
        row = self.active.index(client)
        self.num_samples += update.num_samples
        self.loss_sum += update.metrics["train_loss"] * update.num_samples
        self.num_bytes += update.num_bytes
        self.sq_norm_sum += update.num_samples * squared_norm(tensors)
        self.samples[row] = update.num_samples
        if global_model.local_states:
            self.local[row] = global_model.local_layout.flatten(update.local_state).cpu().double()

    def step(self, strategy: Strategy, global_model: GlobalModel, round_: int,
             updates: list[FlatUpdate] | None = None) -> bool:
        """The next global model from the usable updates (`updates`: every client's, where a runtime gathered
        them; default: this aggregate's own), FedBN's local states kept, the model written; False if there was
        no usable update (the global model is kept)."""
        if global_model.local_states:
            for row, samples, client in zip(self.local, self.samples, self.active):
                if samples > 0:
                    global_model.local_states.update(client, row, int(samples))
        usable = self.num_samples > 0
        if usable:
            updates = self.updates if updates is None else updates
            self.update_agreement = self._agreement(updates)
            self.update_alignment = self._alignment()
            if self.summed is None:
                update = strategy.aggregate_clients(updates)
            else:
                update = strategy.aggregate(self.summed.float(), self.num_samples)
            global_model.step(strategy, update, round_)
        global_model.write()
        return usable

    def _agreement(self, updates: list[FlatUpdate]) -> float | None:
        total = self.summed.double() if self.summed is not None else \
            torch.stack([u.update.double() * u.num_samples for u in updates]).sum(0)
        mean_sq_norm = self.sq_norm_sum / self.num_samples
        return float(total.div(self.num_samples).pow(2).sum()) / mean_sq_norm if mean_sq_norm > 0 else None

    def _alignment(self) -> float | None:
        n = self.samples[self.samples > 0]
        clients = float(n.sum() ** 2 / n.pow(2).sum())
        if self.update_agreement is None or clients < 1 + 1e-9:
            return None
        return (clients * self.update_agreement - 1) / (clients - 1)
