"""Client partitions of a labelled dataset: IID, Dirichlet label skew, label shards.

Semantics follow flwr-datasets' IidPartitioner, DirichletPartitioner and ShardPartitioner;
flwr-datasets 0.6.1 pins datasets<5 and rich<15, which the current `datasets` (5.x) does not fit,
so the same behaviour is implemented here.
Deterministic for a seed; every sample lands in exactly one client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import FedSQError
from ..fields import require

__all__ = ["PARTITIONS", "check_partition", "partition_labels", "partition_summary"]

PARTITIONS = ("iid", "dirichlet", "shards")


def check_partition(method: str, num_clients: int, alpha: float = 0.5, shards_per_client: int = 2,
                    min_partition_size: int = 10) -> None:
    """`FedSQError` for partition parameters no partition can use (before any data loads)."""
    require([
        (method in PARTITIONS, f"--partition must be one of {list(PARTITIONS)}, got {method!r}"),
        (num_clients >= 1, f"--num-clients must be >= 1, got {num_clients}"),
        (alpha > 0, f"--alpha must be > 0, got {alpha}"),
        (shards_per_client >= 1, f"--shards-per-client must be >= 1, got {shards_per_client}"),
        (min_partition_size >= 1, f"--min-partition-size must be >= 1 (every client needs data), got {min_partition_size}"),
    ])


def partition_labels(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    method: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_partition_size: int = 10,
    max_tries: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices among `num_clients` clients; returns one sorted index array per client."""
    check_partition(method, num_clients, alpha, shards_per_client, min_partition_size)
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients > n:
        raise FedSQError(f"num_clients={num_clients} is larger than the {n} training samples; use fewer clients.")
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif method == "dirichlet":
        parts = _dirichlet(labels, num_clients, alpha, min_partition_size, max_tries, rng)
    else:
        parts = _shards(labels, num_clients, shards_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels, num_clients, alpha, min_size, max_tries, rng) -> list[np.ndarray]:
    if min_size * num_clients > len(labels):
        raise FedSQError(
            f"min_partition_size={min_size} x num_clients={num_clients} exceeds the {len(labels)} samples; "
            "lower min_partition_size or num_clients."
        )
    order = np.argsort(labels, kind="stable")  # each class's indices once, ascending: not a scan per class
    by_class = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for members in by_class:
            idx = rng.permutation(members)
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(p) for p in parts]
    raise FedSQError(
        f"Could not draw a Dirichlet(alpha={alpha}) partition with every one of {num_clients} clients holding "
        f">= {min_size} samples in {max_tries} tries: {_advice(by_class, num_clients, alpha, min_size)}."
    )


def _advice(by_class: list[np.ndarray], num_clients: int, alpha: float, min_size: int) -> str:
    """What would let a Dirichlet draw succeed; never "lower --min-partition-size" when it is already 1."""
    mean, median = sum(map(len, by_class)) / num_clients, float(np.median([len(c) for c in by_class]))
    lower = ["lower --min-partition-size"] if min_size > 1 else []
    fewer, more = "use fewer clients", "use more training samples (raise --max-train-samples, if set)"
    if median < num_clients:  # each class is cut into num_clients pieces, rounding down: most pieces are empty
        why = (f"most classes hold fewer samples (median {median:g}) than there are clients ({num_clients}), so "
               "each reaches only a few clients, whatever alpha is (raising alpha will not help)")
        options = ["use --partition iid or shards", fewer, more, *lower]
    elif alpha >= 10 or mean < 2 * min_size:  # clients are near their average size: skew is not the problem
        why = (f"each client gets about {mean:.0f} samples on average, too close to the minimum for random draws "
               "to clear it (raising alpha will not help)")
        options = [*lower, fewer, more]
    else:
        why, options = "", ["raise --alpha (less label skew)", *lower, fewer, more]
    return (f"{why}; " if why else "") + ", ".join(options[:-1]) + f" or {options[-1]}"


def _shards(labels, num_clients, shards_per_client, rng) -> list[np.ndarray]:
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise FedSQError(f"{num_clients} clients x {shards_per_client} shards exceed the {len(labels)} samples; lower "
                         "--shards-per-client or --num-clients.")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in assignment]


def partition_summary(parts: list[np.ndarray], labels: Sequence[int] | np.ndarray, num_labels: int) -> dict[str, Any]:
    """Samples per client and each client's label histogram (JSON-ready)."""
    labels = np.asarray(labels)
    hist = [np.bincount(labels[p], minlength=num_labels).tolist() for p in parts]
    return {"samples_per_client": [len(p) for p in parts], "label_histogram": hist}
