"""Which clients take part in a round (seeded by (seed, round): the same in every runtime)."""

from __future__ import annotations

import numpy as np

from ..protocol import client_seed

__all__ = ["sample_clients", "dropped_clients"]


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int) -> list[int]:
    """`per_round` of `num_clients` clients, seeded by (seed, round), in increasing order."""
    rng = np.random.default_rng(client_seed(seed, round_))
    return sorted(int(c) for c in rng.choice(num_clients, per_round, replace=False))


def dropped_clients(seed: int, round_: int, clients: list[int], rate: float) -> list[int]:
    """Sampled clients that drop out of this round (simulated, each with probability `rate`)."""
    return [c for c in clients if rate and np.random.default_rng([client_seed(seed, round_, c), 1]).random() < rate]
