"""FedBN on the server: the latest local state (BatchNorm) each client reported, never averaged into the
shared model, and the sample-weighted mean the global model is evaluated and saved with."""

from __future__ import annotations

import torch

from ..protocol import ParamLayout

__all__ = ["LocalStates"]


class LocalStates:
    """One row per client (the flat fp32 local state of `layout`), whether it has reported one, and the
    samples it reported with it. `initial` is the local state of the model as built (pretrained BatchNorm)."""

    def __init__(self, layout: ParamLayout, initial: torch.Tensor, num_clients: int) -> None:
        self.layout, self.initial = layout, initial
        self.rows = torch.zeros(num_clients, layout.numel)
        self.seen = torch.zeros(num_clients, dtype=torch.bool)
        self.sizes = torch.zeros(num_clients)

    def of(self, client: int) -> dict[str, torch.Tensor]:
        """`client`'s local state by state-dict key (views into its row); empty before its first report."""
        return self.layout.unflatten(self.rows[client]) if self.seen[client] else {}

    def update(self, client: int, row: torch.Tensor, num_samples: int) -> None:
        self.rows[client], self.seen[client], self.sizes[client] = row.float(), True, num_samples

    def mean(self) -> torch.Tensor:
        """The sample-weighted mean of the reported states (the initial one before any client reported)."""
        if not bool(self.seen.any()):
            return self.initial
        weights = self.sizes * self.seen
        return (weights[:, None] * self.rows).sum(0) / weights.sum()

    def describe(self) -> str:
        seen = int(self.seen.sum())
        return f"sample-weighted mean of {seen} clients' BatchNorms" if seen else "pretrained"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"client_local": self.rows, "client_seen": self.seen, "client_samples": self.sizes}

    def load(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Take a checkpoint's tensors; False if they do not fit."""
        mine = self.tensors()
        if any(k not in tensors or tensors[k].shape != v.shape for k, v in mine.items()):
            return False
        self.rows, self.seen, self.sizes = (tensors[k].to(v.dtype) for k, v in mine.items())
        return True
