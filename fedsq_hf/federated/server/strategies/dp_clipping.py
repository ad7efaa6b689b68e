"""Adaptive clipping of client updates (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping"): the clipping bound follows a target quantile of the update norms, learnt from a noised count of
the clients that were not clipped, as Flower's adaptive-clipping wrappers do."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ....errors import FedSQError

__all__ = ["AdaptiveClipping"]


@dataclass
class AdaptiveClipping:
    """The bound C moves geometrically, C <- C exp(-lr (b - quantile)), where b is the fraction of a round's
    clients whose update norm was <= C, counted with Gaussian noise N(0, count_stddev^2) and divided by the
    clients a round samples.

    The count is a second query on the same clients: for a run's noise multiplier z (the one the accountant
    charges), the updates get the larger z_update = (z^-2 - (2 count_stddev)^-2)^-1/2, and the two together
    cost what one Gaussian mechanism of multiplier z does (the paper's Theorem 1)."""

    quantile: float
    lr: float = 0.2
    count_stddev: float | None = None  # default: clients per round / 20 (the paper's and Flower's)

    def __post_init__(self) -> None:
        if not 0 <= self.quantile <= 1:
            raise FedSQError(f"--dp-clip-quantile must be in [0, 1], got {self.quantile}")
        if not self.lr > 0:
            raise FedSQError(f"--dp-clip-lr must be > 0, got {self.lr}")
        if self.count_stddev is not None and not self.count_stddev > 0:
            raise FedSQError(f"--dp-clipped-count-stddev must be > 0, got {self.count_stddev}")

    def stddev(self, clients_per_round: int) -> float:
        return clients_per_round / 20 if self.count_stddev is None else self.count_stddev

    def update_noise_multiplier(self, noise_multiplier: float, clients_per_round: int) -> float:
        """The noise multiplier of the updates for a run charged `noise_multiplier`; `FedSQError` when the
        count's noise alone would need all of it."""
        stddev = self.stddev(clients_per_round)
        if noise_multiplier >= 2 * stddev:
            raise FedSQError(f"Adaptive clipping: the noise multiplier {noise_multiplier:.3g} needs a count noise "
                             f"--dp-clipped-count-stddev above {noise_multiplier / 2:.3g} (now {stddev:.3g}, default "
                             "clients per round / 20); raise it, sample more clients per round, or clip at a fixed "
                             "bound (leave --dp-clip-quantile out).")
        return (noise_multiplier ** -2 - (2 * stddev) ** -2) ** -0.5

    def next_bound(self, clip_norm: float, unclipped: int, clients_per_round: int, generator: torch.Generator) -> float:
        """The bound of the next round after `unclipped` of the round's clients had norms <= `clip_norm`."""
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.stddev(clients_per_round)
        fraction = (unclipped + noise) / clients_per_round
        return clip_norm * math.exp(-self.lr * (fraction - self.quantile))
