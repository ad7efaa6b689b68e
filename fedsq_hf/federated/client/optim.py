"""Client optimizers: timm's factory, and the ones added with `register_optimizer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import timm.optim
import torch

if TYPE_CHECKING:
    from .arguments import ClientArguments

__all__ = ["create_optimizer", "register_optimizer", "optimizer_names", "optimizer_takes_momentum", "CLIENT_OPTIMIZERS"]

OptimizerFactory = Callable[[list[torch.nn.Parameter], "ClientArguments", float], torch.optim.Optimizer]
CLIENT_OPTIMIZERS: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator: `factory(params, args, lr) -> Optimizer` becomes the client optimizer `--optim NAME`."""
    def add(factory: OptimizerFactory) -> OptimizerFactory:
        CLIENT_OPTIMIZERS[name] = factory
        return factory
    return add


def optimizer_names() -> list[str]:
    return ["sgd", *CLIENT_OPTIMIZERS, *timm.optim.list_optimizers()]


def optimizer_takes_momentum(name: str) -> bool:
    """Whether `--optim name` reads `--momentum` (timm's optimizer info says; a registered one may)."""
    if name == "sgd" or name in CLIENT_OPTIMIZERS or name not in timm.optim.list_optimizers():
        return True
    return timm.optim.get_optimizer_info(name).has_momentum


def create_optimizer(params: list[torch.nn.Parameter], args: ClientArguments, lr: float) -> torch.optim.Optimizer:
    """`--optim`: a registered factory, else timm's optimizer factory (`sgd`: SGD with `--momentum`, no Nesterov)."""
    if args.optim in CLIENT_OPTIMIZERS:
        return CLIENT_OPTIMIZERS[args.optim](params, args, lr)
    name = "momentum" if args.optim == "sgd" else args.optim
    return timm.optim.create_optimizer_v2(params, opt=name, lr=lr, momentum=args.momentum,
                                          weight_decay=args.weight_decay)
