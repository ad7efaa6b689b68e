"""The simulator's collectives: one all-reduce per round (the round's totals, FedBN's local states and, for a
linear strategy, the summed update) and the gather of per-client updates. On one process they are no-ops."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.utils import gather, reduce

from ..server import FlatUpdate, RoundAggregate

__all__ = ["reduce_aggregate", "gather_updates"]


def reduce_aggregate(accelerator: Accelerator, mine: RoundAggregate) -> RoundAggregate:
    """Every process's take of the round summed, in one all-reduce (float64, so that the sum does not depend
    on which process took what); the per-client updates stay this process's own (see `gather_updates`)."""
    active, device = mine.active, accelerator.device
    totals = [mine.num_samples, mine.loss_sum, mine.num_bytes, mine.sq_norm_sum, mine.label_share_sum, mine.label_clients]
    stats = torch.zeros(len(totals) + len(active), dtype=torch.float64)
    stats[: len(totals)] = torch.tensor(totals, dtype=torch.float64)
    stats[[len(totals) + active.index(c) for c in mine.failed]] = 1
    parts = [stats, mine.samples, mine.eval_correct, mine.eval_samples, mine.local.flatten()] + \
        ([] if mine.summed is None else [mine.summed.double()])
    packed = reduce(torch.cat([p.to(device) for p in parts]), reduction="sum").cpu()
    sizes = [p.numel() for p in parts[:4]]
    stats, samples, correct, scored, rest = packed.split([*sizes, packed.numel() - sum(sizes)])
    local = rest[: mine.local.numel()].view_as(mine.local)
    summed = None if mine.summed is None else rest[mine.local.numel():]
    failed = [active[int(i)] for i in torch.nonzero(stats[len(totals):]).flatten()]
    return RoundAggregate(active, local, samples, summed, float(stats[0]), float(stats[1]), int(stats[2]), failed,
                          mine.updates, sq_norm_sum=float(stats[3]), eval_correct=correct, eval_samples=scored,
                          label_share_sum=float(stats[4]), label_clients=int(stats[5]))


GATHERED_METRICS = ("train_loss", "dp_unclipped")  # what a per-client strategy reads of a client's metrics


def gather_updates(accelerator: Accelerator, mine: list[FlatUpdate], rows: int, size: int) -> list[FlatUpdate]:
    """Every process's client updates on every process, in client order. `rows` is the most clients any
    process trained this round (the same number on every process); shorter lists are padded."""
    updates = torch.zeros(rows, size, device=accelerator.device)
    meta = torch.full((rows, 2 + len(GATHERED_METRICS)), -1.0, dtype=torch.float64, device=accelerator.device)
    for i, u in enumerate(mine):  # client, samples, metrics (NaN: not reported)
        updates[i] = u.update
        meta[i] = torch.tensor([u.client, u.num_samples, *(u.metrics.get(k, float("nan")) for k in GATHERED_METRICS)],
                               dtype=torch.float64)
    updates, meta = gather(updates).cpu(), gather(meta).cpu()
    found = [(int(m[0]), i) for i, m in enumerate(meta) if m[0] >= 0]
    return [FlatUpdate(client, updates[i], int(meta[i, 1]),
                       {k: v for k, v in zip(GATHERED_METRICS, meta[i, 2:].tolist()) if not math.isnan(v)})
            for client, i in sorted(found)]
