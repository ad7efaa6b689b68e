"""A model's federated tensors by role, and their packing into one flat fp32 vector.

The *shared* tensors are what the server averages (the floating state of the quantitative copy and
head); under FedBN (`bn_mode` local) the BatchNorm tensors are *local*, kept by each client; integer
buffers (BatchNorm's `num_batches_tracked`) are not federated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ...modeling_fedsq import FedSQModel

__all__ = ["ModelTensors", "ParamLayout", "batchnorm_keys", "tensor_bytes", "squared_norm"]


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """The bytes of these tensors' values."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def squared_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The squared L2 norm of all of `tensors` together, in fp32, read back once (one device sync)."""
    if not tensors:
        return 0.0
    return float(torch.stack([t.detach().float().pow(2).sum() for t in tensors.values()]).sum())


def batchnorm_keys(model: FedSQModel) -> set[str]:
    """State-dict keys of the quantitative copy's BatchNorm layers (parameters and statistics)."""
    prefix = "dual_copy.quantitative."
    return {f"{prefix}{name}.{key}" for name, m in model.quantitative.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for key in m.state_dict()}


@dataclass
class ModelTensors:
    """The model's own state tensors (writing into them writes the model), by role."""

    shared: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]
    counters: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: FedSQModel) -> ModelTensors:
        state = model.state_dict()
        local = batchnorm_keys(model) if model.config.bn_mode == "local" else set()
        return cls(shared={k: t for k, t in state.items() if t.is_floating_point() and k not in local},
                   local={k: t for k, t in state.items() if t.is_floating_point() and k in local},
                   counters={k: t for k, t in state.items() if not t.is_floating_point()})

    def load(self, values: Mapping[str, torch.Tensor]) -> None:
        """Copy `values` into the model's tensors of the same keys; the others keep theirs."""
        with torch.no_grad():
            for k, t in {**self.shared, **self.local, **self.counters}.items():
                if k in values:
                    t.copy_(values[k])


class ParamLayout:
    """Names and shapes of some tensors, in order, and their packing into one flat fp32 vector."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.shapes = {k: t.shape for k, t in tensors.items()}
        self.numel = sum(t.numel() for t in tensors.values())

    def __len__(self) -> int:
        return len(self.shapes)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.shapes:
            return torch.zeros(0)
        return torch.cat([tensors[k].detach().float().flatten() for k in self.shapes])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into `flat`, by name (no copy)."""
        out, offset = {}, 0
        for k, shape in self.shapes.items():
            n = shape.numel()
            out[k] = flat[offset : offset + n].view(shape)
            offset += n
        return out

    def add_to(self, acc: torch.Tensor, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        """acc += weight * flatten(tensors), in place, without building the flat vector."""
        for view, k in zip(self.unflatten(acc).values(), self.shapes):
            view.add_(tensors[k].detach().to(view.dtype), alpha=weight)
