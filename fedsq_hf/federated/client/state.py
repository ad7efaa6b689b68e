"""What a client keeps between its rounds, saved and loaded as safetensors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ...serialization import load_weights, save_weights

__all__ = ["ClientState"]


@dataclass
class ClientState:
    """A client's own memory across rounds.

    Args:
        local_batchnorm: FedBN (`bn_mode` local): its own BatchNorm tensors after its last round, by
            state-dict key (empty before its first round: it starts from the model's own).
    """

    local_batchnorm: dict[str, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"local_batchnorm.{k}": v for k, v in self.local_batchnorm.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        prefix = "local_batchnorm."
        self.local_batchnorm = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to `path` (safetensors, atomically)."""
        save_weights(path, {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClientState:
        state = cls()
        state.load_state_dict(load_weights(path))
        return state
