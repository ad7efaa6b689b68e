"""Which clients take part in a round, and which process trains each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .client import client_seed

__all__ = ["sample_clients", "dropped_clients", "assign_clients"]


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int) -> list[int]:
    """`per_round` of `num_clients` clients, seeded by (seed, round), in increasing order."""
    rng = np.random.default_rng(client_seed(seed, round_))
    return sorted(int(c) for c in rng.choice(num_clients, per_round, replace=False))


def dropped_clients(seed: int, round_: int, clients: list[int], rate: float) -> list[int]:
    """Sampled clients that drop out of this round (simulated, each with probability `rate`)."""
    return [c for c in clients if rate and np.random.default_rng([client_seed(seed, round_, c), 1]).random() < rate]


def assign_clients(clients: list[int], sizes: Sequence[int], num_processes: int) -> list[list[int]]:
    """Spread `clients` over processes largest first, each to the least loaded process (by samples), so
    that one big client does not leave the other processes idle. Deterministic: every process computes
    the same assignment. Each process's list is in client order."""
    loads, assigned = [0] * num_processes, [[] for _ in range(num_processes)]
    for client in sorted(clients, key=lambda c: (-sizes[c], c)):
        process = min(range(num_processes), key=lambda p: (loads[p], p))
        assigned[process].append(client)
        loads[process] += sizes[client]
    return [sorted(a) for a in assigned]
