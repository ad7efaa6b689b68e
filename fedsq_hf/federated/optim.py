"""Client optimizers (through timm's factory) and the client learning rate across rounds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import timm.optim
import torch
from transformers import get_scheduler

if TYPE_CHECKING:
    from .arguments import FederatedArguments

__all__ = ["create_optimizer", "round_learning_rates", "register_optimizer", "optimizer_names", "LR_SCHEDULERS",
           "CLIENT_OPTIMIZERS"]

LR_SCHEDULERS = ("constant", "linear", "cosine")

OptimizerFactory = Callable[[list[torch.nn.Parameter], "FederatedArguments", float], torch.optim.Optimizer]
CLIENT_OPTIMIZERS: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator: `factory(params, args, lr) -> Optimizer` becomes the client optimizer `--optim NAME`."""
    def add(factory: OptimizerFactory) -> OptimizerFactory:
        CLIENT_OPTIMIZERS[name] = factory
        return factory
    return add


def optimizer_names() -> list[str]:
    return ["sgd", *CLIENT_OPTIMIZERS, *timm.optim.list_optimizers()]


def create_optimizer(params: list[torch.nn.Parameter], args: FederatedArguments, lr: float) -> torch.optim.Optimizer:
    """`--optim`: a registered factory, else timm's optimizer factory (`sgd`: SGD with `--momentum`, no Nesterov)."""
    if args.optim in CLIENT_OPTIMIZERS:
        return CLIENT_OPTIMIZERS[args.optim](params, args, lr)
    name = "momentum" if args.optim == "sgd" else args.optim
    return timm.optim.create_optimizer_v2(params, opt=name, lr=lr, momentum=args.momentum,
                                          weight_decay=args.weight_decay)


def round_learning_rates(args: FederatedArguments) -> list[float]:
    """The client learning rate of rounds 1..R: transformers' schedule `--lr-scheduler` with
    `--warmup-rounds`, one scheduler step per round. transformers' warm-up starts at lr 0; a round at
    lr 0 would be wasted, so with a warm-up the schedule is read one step on (round k of W: k/W x lr)."""
    offset = 1 if args.warmup_rounds else 0
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    name = "constant_with_warmup" if args.lr_scheduler == "constant" else args.lr_scheduler
    scheduler = get_scheduler(name, dummy, num_warmup_steps=args.warmup_rounds,
                              num_training_steps=args.rounds + offset)
    rates = []
    for step in range(args.rounds + offset):
        if step >= offset:
            rates.append(scheduler.get_last_lr()[0])
        dummy.step()
        scheduler.step()
    return rates
