"""Server strategies: small objects with hooks, in the spirit of Flower's `Strategy`.

The trainer works on one flat fp32 vector of the global state. Per round, each client's update is
`local - global`; the trainer sums the updates weighted by client sample counts (`aggregate` turns
the sum into the round's update) and every process applies `server_update` to the same numbers.
A new algorithm is a new subclass, not a branch in the training loop.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..errors import FedSQError

__all__ = ["Strategy", "FedAvg", "FedProx", "FedAvgM", "FedAdam", "STRATEGIES", "make_strategy"]


class Strategy:
    """FedAvg behaviour; subclasses override the hooks they change."""

    name = "fedavg"

    def client_loss(self, params: list[torch.Tensor], global_params: list[torch.Tensor]) -> torch.Tensor | None:
        """An extra term for each client's local loss (None: nothing)."""
        return None

    def aggregate(self, weighted_update_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        """The round's update from the sample-weighted sum of client updates."""
        return weighted_update_sum.div_(total_weight)

    def server_update(self, global_state: torch.Tensor, update: torch.Tensor) -> None:
        """Apply the round's update to the global state, in place."""
        global_state.add_(update)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server optimizer state, for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class FedAvg(Strategy):
    """McMahan et al. 2017: the sample-weighted mean of client models."""


class FedProx(Strategy):
    """Li et al. 2020: FedAvg with a proximal term (mu / 2) * ||w - w_global||^2 in each client's loss."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise FedSQError(f"FedProx mu must be >= 0, got {mu}.")
        self.mu = mu

    def client_loss(self, params, global_params):
        if self.mu == 0:
            return None
        return 0.5 * self.mu * sum((p - g).pow(2).sum() for p, g in zip(params, global_params))

    def describe(self):
        return {"name": self.name, "mu": self.mu}


class _ServerOptimizer(Strategy):
    def __init__(self, server_lr: float) -> None:
        if not server_lr > 0:
            raise FedSQError(f"server_lr must be > 0, got {server_lr}.")
        self.server_lr = server_lr
        self.state: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if name not in self.state:
            self.state[name] = torch.zeros_like(like)
        return self.state[name]

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = {k: v.clone() for k, v in state.items()}


class FedAvgM(_ServerOptimizer):
    """Hsu et al. 2019: server momentum on the averaged update."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        self.server_momentum = server_momentum

    def server_update(self, global_state, update):
        momentum = self._buffer("momentum", update)
        momentum.mul_(self.server_momentum).add_(update)
        global_state.add_(momentum, alpha=self.server_lr)

    def describe(self):
        return {"name": self.name, "server_lr": self.server_lr, "server_momentum": self.server_momentum}


class FedAdam(_ServerOptimizer):
    """Reddi et al. 2021: Adam on the averaged update (the negative pseudo-gradient)."""

    name = "fedadam"

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def server_update(self, global_state, update):
        m, v = self._buffer("m", update), self._buffer("v", update)
        m.mul_(self.beta1).add_(update, alpha=1 - self.beta1)
        v.mul_(self.beta2).addcmul_(update, update, value=1 - self.beta2)
        global_state.addcdiv_(m, v.sqrt().add_(self.tau), value=self.server_lr)

    def describe(self):
        return {"name": self.name, "server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FedAvg, FedProx, FedAvgM, FedAdam)}


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """A strategy by name; keyword arguments it does not take are ignored."""
    if name not in STRATEGIES:
        raise FedSQError(f"Unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    cls = STRATEGIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
