"""Client-level differential privacy around a strategy: DP-FedAvg (McMahan et al. 2018), clipped on the
server (trusted to see raw updates, as Flower's server-side clipping) or on the clients (each clips its own
update before it leaves, as Flower's client-side clipping mods), at a fixed bound or an adaptive one."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ....errors import FedSQError
from ...protocol import Scalar, client_seed
from .base import FlatUpdate, Strategy
from .dp_clipping import AdaptiveClipping

__all__ = ["ClientLevelDP", "DP_STRATEGIES", "DP_CLIPPING", "DP_NOISE_SOURCES"]

DP_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam")  # those whose step is a function of the mean update
DP_CLIPPING = ("server", "client")
DP_NOISE_SOURCES = ("seeded", "os")
CLIP_TOLERANCE = 1e-3  # a client-clipped update decoded from fp16 may exceed the bound by rounding


@dataclass
class ClientLevelDP(Strategy):
    """`inner` on a private mean update: each client's update clipped to L2 norm `clip_norm`, the clipped
    updates summed with equal weight (a sample weight would let one client's contribution exceed the
    bound), Gaussian noise N(0, (noise_multiplier x clip_norm)^2) added per coordinate, and the sum divided
    by the clients a round samples (`clients_per_round`: a fixed denominator keeps the sensitivity
    clip_norm / clients_per_round whoever fails).

    Args:
        adaptive: move the bound towards a quantile of the update norms each round (`AdaptiveClipping`);
            `noise_multiplier` stays what the accountant charges, the updates get the larger share.
        clipping: "server" clips what arrives; "client" sends the bound in the round config and each client
            clips before sending (the server clips again, so the bound holds whatever a client does).
        noise_source: "seeded": a generator seeded by (seed, round), so a run is reproducible and resumes
            exactly; "os": a fresh seed from the OS each round (a deployment's choice).
    """

    inner: Strategy
    clip_norm: float
    noise_multiplier: float
    clients_per_round: int
    seed: int = 0
    adaptive: AdaptiveClipping | None = None
    clipping: Literal[DP_CLIPPING] = "server"
    noise_source: Literal[DP_NOISE_SOURCES] = "seeded"
    round: int = field(default=0, init=False)
    clipped: int = field(default=0, init=False)
    noise_seed: int = field(default=0, init=False)  # this round's; the round loop broadcasts an OS-drawn one
    round_clip_norm: float = field(default=0.0, init=False)  # the bound this round clips to (adaptive: moves after)
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
        if self.clipping not in DP_CLIPPING or self.noise_source not in DP_NOISE_SOURCES:
            raise FedSQError(f"--dp-clipping must be one of {DP_CLIPPING} and --dp-noise-source one of "
                             f"{DP_NOISE_SOURCES}, got {self.clipping!r} and {self.noise_source!r}")
        self.initial_clip_norm = self.clip_norm  # an adaptive bound moves from it
        self.update_noise_multiplier = self.noise_multiplier if self.adaptive is None or not self.noise_multiplier \
            else self.adaptive.update_noise_multiplier(self.noise_multiplier, self.clients_per_round)

    def begin_round(self, round_: int) -> None:
        self.round, self.clipped, self.round_clip_norm = round_, 0, self.clip_norm
        self.noise_seed = secrets.randbits(63) if self.noise_source == "os" else client_seed(self.seed, round_)
        self.inner.begin_round(round_)

    def configure_fit(self, round_: int) -> dict[str, Scalar]:
        clip = {"dp_clip_norm": self.clip_norm} if self.clipping == "client" else {}
        return {**self.inner.configure_fit(round_), **clip}

    def clip(self, update: FlatUpdate) -> tuple[torch.Tensor, bool]:
        """The update clipped to the bound, and whether it was within it (as the client says, when it clips)."""
        vector = update.update.float()
        norm = float(torch.linalg.vector_norm(vector))
        if self.clipping == "client":  # a client that did not say is counted clipped; rounding (fp16) tolerated
            within, limit = bool(update.metrics.get("dp_unclipped", False)), self.clip_norm * (1 + CLIP_TOLERANCE)
        else:
            within, limit = norm <= self.clip_norm, self.clip_norm
        return (vector if norm <= limit else vector * (self.clip_norm / norm)), within

    def noised_only(self, trained: torch.Tensor) -> None:
        """Add noise only where `trained` (a bool mask of the flat state): a coordinate no client can move
        (BatchNorm's running statistics under `--bn-mode frozen`) has a sum of zero whatever the data, so it
        needs none, and noise there would corrupt it (a negative variance)."""
        self.trained = trained

    def aggregate_clients(self, updates: list[FlatUpdate]) -> torch.Tensor:
        if not self.round:
            raise FedSQError("ClientLevelDP.aggregate_clients before begin_round: the round's noise is seeded by it.")
        clipped = [self.clip(u) for u in updates]
        total = torch.stack([update for update, _ in clipped]).sum(0)
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float32)
        noise.mul_(self.update_noise_multiplier * self.clip_norm)
        if self.trained is not None:
            noise.mul_(self.trained.to(noise.device))
        unclipped = sum(within for _, within in clipped)
        self.clipped = len(updates) - unclipped
        if self.adaptive is not None:  # the next round's bound, from the same generator
            self.clip_norm = self.adaptive.next_bound(self.clip_norm, unclipped, self.clients_per_round, generator)
        return (total + noise.to(total.device)) / self.clients_per_round

    def server_update(self, global_state: torch.Tensor, update: torch.Tensor) -> None:
        self.inner.server_update(global_state, update)

    def round_metrics(self) -> dict[str, Scalar]:
        return {"dp_clipped_clients": self.clipped, **({"dp_clip_norm": self.round_clip_norm} if self.adaptive else {})}

    def state_dict(self) -> dict[str, torch.Tensor]:
        bound = {"dp.clip_norm": torch.tensor(self.clip_norm, dtype=torch.float64)} if self.adaptive else {}
        return {**self.inner.state_dict(), **bound}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if self.adaptive is not None and "dp.clip_norm" in state:
            self.clip_norm = float(state.pop("dp.clip_norm"))
        self.inner.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        mechanism = f"DP-FedAvg (client level, {self.clipping}-side {'adaptive' if self.adaptive else 'fixed'} clipping)"
        adaptive = {} if self.adaptive is None else {
            "clip_quantile": self.adaptive.quantile, "clip_lr": self.adaptive.lr,
            "clipped_count_stddev": self.adaptive.stddev(self.clients_per_round),
            "update_noise_multiplier": self.update_noise_multiplier}
        return {**self.inner.describe(), "dp": {"mechanism": mechanism, "clip_norm": self.initial_clip_norm,
                                                 "noise_multiplier": self.noise_multiplier,
                                                 "clients_per_round": self.clients_per_round,
                                                 "noise_source": self.noise_source, **adaptive}}
