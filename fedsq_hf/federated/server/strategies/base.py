"""The strategy interface, in the spirit of Flower's `Strategy`, and the registry the CLI reads.

A strategy is server-side: it says what clients need for a round (`configure_fit`, e.g. FedProx's
`proximal_mu`) and turns their updates into the global model's next state. The server works on one
flat fp32 vector of the global state; a client's update is `local - global`. A *linear* strategy
(`needs_client_updates = False`) sees only the sample-weighted sum of the round's updates (summed in
place, one all-reduce per round in the simulator); one that needs each client's update says so and
gets them all, in client order, in `aggregate_clients`. A strategy is a dataclass of its parameters,
checked in `__post_init__`; a new algorithm is a registered subclass, not a branch in a training loop.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ....errors import FedSQError
from ...protocol import Scalar

__all__ = ["Strategy", "FlatUpdate", "STRATEGIES", "register_strategy", "make_strategy", "strategy_parameters",
           "sorted_updates"]


@dataclass
class FlatUpdate:
    """One client's update as a per-client strategy sees it: `update` is `local - global`, flat fp32."""

    client: int
    update: torch.Tensor
    num_samples: int
    metrics: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class: subclasses implement `aggregate` (linear) or `aggregate_clients` (per client)."""

    name: ClassVar[str]
    needs_client_updates: ClassVar[bool] = False  # the server gathers every client's update

    def begin_round(self, round_: int) -> None:
        """Called at the start of every round, before any client trains (e.g. to seed the round's noise)."""

    def round_metrics(self) -> dict[str, Scalar]:
        """What the strategy records of the round just aggregated (added to its `history.jsonl` record)."""
        return {}

    def configure_fit(self, round_: int) -> dict[str, Scalar]:
        """What every client of `round_` gets in its round config besides its seed and learning rate: fields
        of `FitConfig` that a client applies (`proximal_mu`)."""
        return {}

    def aggregate(self, weighted_update_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        """The round's update from the sample-weighted sum of client updates (linear strategies)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither aggregate (a linear strategy, or "
                                  "subclass FedAvg) nor aggregate_clients (with needs_client_updates = True)")

    def aggregate_clients(self, updates: list[FlatUpdate]) -> torch.Tensor:
        """The round's update from every client's own update, in client order."""
        return self.aggregate(sum(u.update * u.num_samples for u in updates), float(sum(u.num_samples for u in updates)))

    def server_update(self, global_state: torch.Tensor, update: torch.Tensor) -> None:
        """Apply the round's update to the global state, in place."""
        global_state.add_(update)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server optimizer state, for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """The name and parameters (what `summary.json`, the card and a resume compare)."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init} \
            if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **params}


def sorted_updates(updates: list[FlatUpdate]) -> torch.Tensor:
    """The clients' updates stacked and sorted per coordinate (clients x parameters), for robust aggregators."""
    return torch.stack([u.update for u in updates]).sort(dim=0).values


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make `cls` reachable by its `name` (`--strategy NAME`, `make_strategy`); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy) and isinstance(cls.__dict__.get("name"), str)):
        raise FedSQError(f"register_strategy takes a Strategy subclass with a `name` of its own, got {cls!r}.")
    per_client = cls.needs_client_updates and cls.aggregate_clients is not Strategy.aggregate_clients
    if not per_client and cls.aggregate is Strategy.aggregate:
        raise FedSQError(f"Strategy {cls.name!r} aggregates nothing: implement aggregate (a linear strategy, or "
                         "subclass FedAvg) or aggregate_clients with needs_client_updates = True.")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_parameters(name: str) -> list[str]:
    """The keyword parameters strategy `name` takes."""
    if name not in STRATEGIES:
        raise FedSQError(f"--strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    return [p for p in inspect.signature(STRATEGIES[name]).parameters if p != "self"]


def make_strategy(name: str, spelled: dict[str, str] | None = None, **kwargs: Any) -> Strategy:
    """A strategy by name; a parameter it does not take is refused, naming the ones it does (each as `spelled`
    maps it, e.g. to its command-line flag)."""
    accepted, spell = strategy_parameters(name), (spelled or {}).get
    unknown = [spell(k, k) for k in kwargs if k not in accepted]
    if unknown:
        takes = ", ".join(spell(p, p) for p in accepted) or "no parameters"
        them = "them" if len(unknown) > 1 else "it"
        raise FedSQError(f"--strategy {name} does not use {', '.join(unknown)} (it takes {takes}); leave {them} "
                         f"out, or pick a strategy that uses {them}.")
    return STRATEGIES[name](**kwargs)
