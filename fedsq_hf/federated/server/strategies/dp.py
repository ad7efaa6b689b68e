"""Client-level differential privacy around a strategy: DP-FedAvg (McMahan et al. 2018), with the
clipping on the server (the server is trusted to see raw updates, as Flower's server-side clipping)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ....errors import FedSQError
from ...protocol import Scalar, client_seed
from .base import FlatUpdate, Strategy

__all__ = ["ClientLevelDP", "DP_STRATEGIES"]

DP_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam")  # those whose step is a function of the mean update


@dataclass
class ClientLevelDP(Strategy):
    """`inner` on a private mean update: each client's update clipped to L2 norm `clip_norm`, the clipped
    updates summed with equal weight (a sample weight would let one client's contribution exceed the
    bound), Gaussian noise N(0, (noise_multiplier x clip_norm)^2) added per coordinate, and the sum divided
    by the clients a round samples (`clients_per_round`: a fixed denominator keeps the sensitivity
    clip_norm / clients_per_round whoever fails). The noise comes from a generator seeded by (seed, round):
    a run is reproducible and resumes exactly."""

    inner: Strategy
    clip_norm: float
    noise_multiplier: float
    clients_per_round: int
    seed: int = 0
    round: int = field(default=0, init=False)
    clipped: int = field(default=0, init=False)
    trained: torch.Tensor | None = field(default=None, init=False)  # where clients can move the state (`noised_only`)

    name = "dp"
    needs_client_updates = True

    def __post_init__(self) -> None:
        if getattr(self.inner, "name", None) not in DP_STRATEGIES:
            raise FedSQError(f"--dp-clip-norm needs one of the strategies {list(DP_STRATEGIES)}, got "
                             f"{getattr(self.inner, 'name', self.inner)!r}: a median or trimmed mean has no sensitivity "
                             "bound from clipping.")
        if not self.clip_norm > 0:
            raise FedSQError(f"--dp-clip-norm must be > 0, got {self.clip_norm}")
        if not self.noise_multiplier >= 0:
            raise FedSQError(f"--dp-noise-multiplier must be >= 0, got {self.noise_multiplier}")

    def begin_round(self, round_: int) -> None:
        self.round, self.clipped = round_, 0
        self.inner.begin_round(round_)

    def configure_fit(self, round_: int) -> dict[str, Scalar]:
        return self.inner.configure_fit(round_)

    def clip(self, update: torch.Tensor) -> torch.Tensor:
        norm = float(torch.linalg.vector_norm(update))
        if norm <= self.clip_norm:
            return update
        self.clipped += 1
        return update * (self.clip_norm / norm)

    def noised_only(self, trained: torch.Tensor) -> None:
        """Add noise only where `trained` (a bool mask of the flat state): a coordinate no client can move
        (BatchNorm's running statistics under `--bn-mode frozen`) has a sum of zero whatever the data, so it
        needs none, and noise there would corrupt it (a negative variance)."""
        self.trained = trained

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """This round's noise, N(0, (z C)^2) per coordinate, the same on every process and every resume."""
        generator = torch.Generator().manual_seed(client_seed(self.seed, self.round))
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32).mul_(self.noise_multiplier * self.clip_norm)
        return noise if self.trained is None else noise.mul_(self.trained.to(noise.device))

    def aggregate_clients(self, updates: list[FlatUpdate]) -> torch.Tensor:
        if not self.round:
            raise FedSQError("ClientLevelDP.aggregate_clients before begin_round: the round's noise is seeded by it.")
        total = torch.stack([self.clip(u.update.float()) for u in updates]).sum(0)
        return (total + self.noise(total).to(total.device)) / self.clients_per_round

    def server_update(self, global_state: torch.Tensor, update: torch.Tensor) -> None:
        self.inner.server_update(global_state, update)

    def round_metrics(self) -> dict[str, Scalar]:
        return {"dp_clipped_clients": self.clipped}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "dp": {"mechanism": "DP-FedAvg (client level, server-side clipping)",
                                                 "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
                                                 "clients_per_round": self.clients_per_round}}
