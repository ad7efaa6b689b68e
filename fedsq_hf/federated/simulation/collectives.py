"""The simulator's collectives: one all-reduce per round (its statistics, FedBN's local states and, for a
linear strategy, the summed update) and the gather of per-client updates. On one process they are no-ops."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import gather, reduce

from ..server import FlatUpdate

__all__ = ["RoundShare", "reduce_share", "gather_updates"]


@dataclass
class RoundShare:
    """What one process's clients produced in a round (summed over processes by `reduce_share`).

    Args:
        num_samples / loss_sum / num_bytes: over the usable updates (loss weighted by samples;
            the bytes the codec sent).
        failed: one flag per client of the federation (diverged or non-finite).
        summed: the sample-weighted sum of the usable updates (linear strategies; None for per-client ones).
        updates: each usable update (per-client strategies).
        local: one row per active client (FedBN's local states, in `active` order; zero width otherwise).
    """

    num_clients: int
    local: torch.Tensor
    summed: torch.Tensor | None = None
    num_samples: float = 0.0
    loss_sum: float = 0.0
    num_bytes: int = 0
    failed: list[int] = field(default_factory=list)
    updates: list[FlatUpdate] = field(default_factory=list)

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.num_samples if self.num_samples else None


def reduce_share(accelerator: Accelerator, share: RoundShare) -> RoundShare:
    """Every process's share summed, in one all-reduce (float64, so the sum does not depend on the order)."""
    stats = torch.zeros(3 + share.num_clients, dtype=torch.float64)
    stats[:3] = torch.tensor([share.num_samples, share.loss_sum, share.num_bytes], dtype=torch.float64)
    stats[3 + torch.tensor(share.failed, dtype=torch.long)] = 1
    parts = [stats, share.local.double().flatten()] + ([] if share.summed is None else [share.summed.double()])
    packed = reduce(torch.cat(parts).to(accelerator.device), reduction="sum").cpu()
    stats, rest = packed[: len(stats)], packed[len(stats):]
    local = rest[: share.local.numel()].view_as(share.local)
    summed = None if share.summed is None else rest[share.local.numel():]
    return RoundShare(share.num_clients, local, summed, float(stats[0]), float(stats[1]), int(stats[2]),
                      [int(i) for i in torch.nonzero(stats[3:]).flatten()], share.updates)


def gather_updates(accelerator: Accelerator, mine: list[FlatUpdate], rows: int, size: int) -> list[FlatUpdate]:
    """Every process's client updates on every process, in client order. `rows` is the most clients any
    process trained this round (the same number on every process); shorter lists are padded."""
    updates = torch.zeros(rows, size, device=accelerator.device)
    meta = torch.full((rows, 3), -1.0, dtype=torch.float64, device=accelerator.device)  # client, samples, loss
    for i, u in enumerate(mine):
        updates[i] = u.update
        meta[i] = torch.tensor([u.client, u.num_samples, u.metrics.get("train_loss", float("nan"))], dtype=torch.float64)
    updates, meta = gather(updates).cpu(), gather(meta).cpu()
    found = [(int(m[0]), i) for i, m in enumerate(meta) if m[0] >= 0]
    return [FlatUpdate(client, updates[i], int(meta[i, 1]), {"train_loss": float(meta[i, 2])}) for client, i in sorted(found)]
