"""Which process of a simulation trains which of a round's clients."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["assign_clients"]


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
