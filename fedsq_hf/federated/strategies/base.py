"""The strategy interface, in the spirit of Flower's `Strategy`, and the registry the CLI reads.

The trainer works on one flat fp32 vector of the global state; a client's update is `local - global`.
A *linear* strategy (`needs_client_updates = False`) sees only the sample-weighted sum of the round's
updates (summed in place, one all-reduce per round); one that needs each client's update says so,
and the trainer gathers them (across processes too) and calls `aggregate_clients`. A new algorithm
is a new subclass registered with `register_strategy`, not a branch in the training loop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import FedSQError

__all__ = ["Strategy", "ServerOptimizer", "ClientUpdate", "STRATEGIES", "register_strategy", "make_strategy", "sorted_updates"]


@dataclass
class ClientUpdate:
    """One client's result as a per-client strategy sees it."""

    client: int
    update: torch.Tensor  # local - global, flat fp32
    num_samples: int
    metrics: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """FedAvg behaviour; subclasses override the hooks they change and declare what they need."""

    name = "fedavg"
    needs_global_params = False  # clients keep a copy of the global parameters (for `client_loss`)
    needs_client_updates = False  # the trainer gathers every client's update for `aggregate_clients`

    def client_loss(self, params: list[torch.Tensor], global_params: list[torch.Tensor]) -> torch.Tensor | None:
        """An extra term for each client's local loss (None: nothing); needs `needs_global_params`."""
        return None

    def aggregate(self, weighted_update_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        """The round's update from the sample-weighted sum of client updates."""
        return weighted_update_sum.div_(total_weight)

    def aggregate_clients(self, updates: list[ClientUpdate]) -> torch.Tensor:
        """The round's update from every client's own update (in client order); needs `needs_client_updates`."""
        total = float(sum(u.num_samples for u in updates))
        return self.aggregate(sum(u.update * u.num_samples for u in updates), total)

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


class ServerOptimizer(Strategy):
    """A strategy with server-side optimizer buffers (checkpointed with the run)."""

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


def sorted_updates(updates: list[ClientUpdate]) -> torch.Tensor:
    """The clients' updates stacked and sorted per coordinate (clients x parameters), for robust aggregators."""
    return torch.stack([u.update for u in updates]).sort(dim=0).values


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make `cls` reachable by its `name` (`--strategy NAME`, `make_strategy`); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise FedSQError(f"register_strategy takes a Strategy subclass, got {cls!r}.")
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """A strategy by name; keyword arguments it does not take are ignored."""
    if name not in STRATEGIES:
        raise FedSQError(f"Unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    cls = STRATEGIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
