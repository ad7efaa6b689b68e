"""The global state as one flat fp32 vector, FedBN's per-client BatchNorm, and gathering client updates."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import gather

from ..modeling_fedsq import FedSQModel
from .strategies import ClientUpdate

__all__ = ["FlatState", "LocalBatchNorm", "GlobalState", "batchnorm_keys", "gather_client_updates"]


def batchnorm_keys(model: FedSQModel) -> set[str]:
    """State-dict keys of the quantitative copy's BatchNorm layers (parameters and statistics)."""
    prefix = "dual_copy.quantitative."
    return {f"{prefix}{name}.{key}" for name, m in model.quantitative.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for key in m.state_dict()}


class FlatState:
    """Some of a model's tensors, read and written as one flat fp32 vector (the tensors are the model's own)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors
        self.numel = sum(t.numel() for t in tensors)

    def read(self) -> torch.Tensor:
        return torch.cat([t.detach().float().flatten() for t in self.tensors]) if self.tensors else torch.zeros(0)

    def write(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for t in self.tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors)

    def add_to(self, acc: torch.Tensor, weight: float) -> None:
        """acc += weight * these tensors, in place, without building the flat vector."""
        offset = 0
        for t in self.tensors:
            acc[offset : offset + t.numel()].add_(t.detach().flatten(), alpha=weight)
            offset += t.numel()


class LocalBatchNorm:
    """FedBN (`bn_mode` local): each client's own BatchNorm tensors, kept between its rounds, never averaged."""

    def __init__(self, flat: FlatState, num_clients: int) -> None:
        self.flat = flat
        self.pretrained = flat.read()
        self.clients = torch.zeros(num_clients, flat.numel)
        self.seen = torch.zeros(num_clients, dtype=torch.bool)

    def load(self, client: int) -> None:
        """Put `client`'s BatchNorm (the pretrained one on its first round) into the model."""
        self.flat.write(self.clients[client] if self.seen[client] else self.pretrained)

    def server_state(self, sizes: torch.Tensor) -> torch.Tensor:
        """The BatchNorm the global model is evaluated and saved with: the sample-weighted mean of the
        clients' own (the pretrained one before any client trained)."""
        if not bool(self.seen.any()):
            return self.pretrained
        weights = sizes * self.seen
        return (weights[:, None] * self.clients).sum(0) / weights.sum()

    def update(self, clients: list[int], rows: torch.Tensor) -> None:
        for client, row in zip(clients, rows):
            self.clients[client] = row.float()
            self.seen[client] = True


class GlobalState:
    """A model's federated state: its shared floating tensors as one flat fp32 vector (`vector`, what
    strategies update), FedBN's per-client BatchNorm (`fedbn`, with `bn_mode` local) and the integer
    buffers (BatchNorm's `num_batches_tracked`), which are not federated: every client starts from the
    pretrained value, so a result does not depend on which process trained what."""

    def __init__(self, model: FedSQModel, sizes: torch.Tensor) -> None:
        state, self.sizes = model.state_dict(), sizes
        local = batchnorm_keys(model) if model.config.bn_mode == "local" else set()
        self.flat = FlatState([t for k, t in state.items() if t.is_floating_point() and k not in local])
        self.vector = self.flat.read()
        local_flat = FlatState([t for k, t in state.items() if t.is_floating_point() and k in local])
        self.fedbn = LocalBatchNorm(local_flat, len(sizes)) if local else None
        self.counters = [(t, t.clone()) for t in state.values() if not t.is_floating_point()]

    def start_client(self, client: int) -> None:
        """The global weights (with the client's own BatchNorm under FedBN) into the model."""
        self.flat.write(self.vector)
        if self.fedbn:
            self.fedbn.load(client)
        for counter, initial in self.counters:
            counter.copy_(initial)

    def write(self) -> None:
        """The global model into the model (under FedBN, with the clients' mean BatchNorm)."""
        self.flat.write(self.vector)
        if self.fedbn:
            self.fedbn.flat.write(self.fedbn.server_state(self.sizes))

    def tensors(self) -> dict[str, torch.Tensor]:
        fedbn = {"client_local": self.fedbn.clients, "client_seen": self.fedbn.seen} if self.fedbn else {}
        return {"global_state": self.vector, **fedbn}

    def load(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Take a checkpoint's tensors (False if they do not fit this model) and write the global model."""
        needed = ("global_state", "client_local", "client_seen") if self.fedbn else ("global_state",)
        if any(k not in tensors for k in needed) or tensors["global_state"].shape != self.vector.shape:
            return False
        self.vector = tensors["global_state"].to(self.vector.device)
        if self.fedbn:
            self.fedbn.clients, self.fedbn.seen = tensors["client_local"], tensors["client_seen"]
        self.write()
        return True


def gather_client_updates(accelerator: Accelerator, mine: list[ClientUpdate], rows: int, size: int) -> list[ClientUpdate]:
    """Every process's client updates on every process, in client order. `rows` is the most clients any
    process trained this round (the same number on every process); shorter lists are padded."""
    updates = torch.zeros(rows, size, device=accelerator.device)
    meta = torch.full((rows, 3), -1.0, dtype=torch.float64, device=accelerator.device)  # client, samples, loss
    for i, u in enumerate(mine):
        updates[i] = u.update
        meta[i] = torch.tensor([u.client, u.num_samples, u.metrics.get("train_loss", float("nan"))], dtype=torch.float64)
    updates, meta = gather(updates).cpu(), gather(meta).cpu()
    found = [(int(m[0]), i) for i, m in enumerate(meta) if m[0] >= 0]
    return [ClientUpdate(client, updates[i], int(meta[i, 1]), {"train_loss": float(meta[i, 2])}) for client, i in sorted(found)]
