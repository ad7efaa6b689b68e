"""Batches of sample indices: a client's shuffled, seeded training batches, ordered evaluation batches,
and the loader whose workers serve them for the whole run."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["ClientBatches", "OrderedBatches", "make_loader"]


class ClientBatches(torch.utils.data.Sampler):
    """One client's local training batches: (index, augmentation seed) pairs, shuffled each epoch, for
    `steps` batches. Everything derives from the client's seed; `start` re-targets it, so that one
    loader (and its workers) serves every client of every round. With `drop_single`, an epoch's last
    batch is dropped when it would hold one sample: BatchNorm cannot train on batch statistics of one."""

    def __init__(self, batch_size: int, drop_single: bool = False) -> None:
        self.batch_size, self.drop_single = batch_size, drop_single
        self.indices, self.seed, self.steps = np.zeros(0, dtype=np.int64), 0, 0

    def start(self, indices: np.ndarray, seed: int, steps: int) -> None:
        self.indices, self.seed, self.steps = np.asarray(indices, dtype=np.int64), seed, steps

    def steps_per_epoch(self, num_samples: int) -> int:
        single = self.drop_single and num_samples % self.batch_size == 1
        return math.ceil(num_samples / self.batch_size) - single

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self.seed)
        n, done = len(self.indices), 0
        if self.steps_per_epoch(n) == 0:  # nothing to train on: no batch, rather than an endless loop
            return
        while done < self.steps:
            order = self.indices[torch.randperm(n, generator=gen).numpy()].tolist()
            seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
            for start in range(0, n - (self.drop_single and n % self.batch_size == 1), self.batch_size):
                yield list(zip(order[start : start + self.batch_size], seeds[start : start + self.batch_size]))
                done += 1
                if done == self.steps:
                    return


class OrderedBatches(torch.utils.data.Sampler):
    """`indices` in order, in batches, without augmentation (evaluation, preloading)."""

    def __init__(self, indices: Sequence[int], batch_size: int) -> None:
        self.indices, self.batch_size = [int(i) for i in indices], batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, None]]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield [(i, None) for i in self.indices[start : start + self.batch_size]]


def make_loader(samples: torch.utils.data.Dataset, batches: torch.utils.data.Sampler, num_workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A loader whose workers live as long as it does (`persistent_workers`): iterating it again after
    re-targeting `batches` starts no process. Its own generator keeps the global RNG untouched."""
    return torch.utils.data.DataLoader(
        samples, sampler=batches, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda", generator=torch.Generator(),
    )
