"""The client learning rate across rounds, which the server sends in each round's config."""

from __future__ import annotations

import torch
from transformers import get_scheduler

__all__ = ["LR_SCHEDULERS", "round_learning_rates"]

LR_SCHEDULERS = ("constant", "linear", "cosine")


def round_learning_rates(lr: float, rounds: int, scheduler: str = "constant", warmup_rounds: int = 0) -> list[float]:
    """The client learning rate of rounds 1..`rounds`: transformers' schedule `scheduler` with
    `warmup_rounds`, one scheduler step per round. transformers' warm-up starts at lr 0; a round at
    lr 0 would be wasted, so with a warm-up the schedule is read one step on (round k of W: k/W x lr)."""
    offset = 1 if warmup_rounds else 0
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    name = "constant_with_warmup" if scheduler == "constant" else scheduler
    schedule = get_scheduler(name, dummy, num_warmup_steps=warmup_rounds, num_training_steps=rounds + offset)
    rates = []
    for step in range(rounds + offset):
        if step >= offset:
            rates.append(schedule.get_last_lr()[0])
        dummy.step()
        schedule.step()
    return rates
