"""The base of strategies with a server optimizer: FedAvg's aggregate, applied with buffers of their own."""

from dataclasses import dataclass

import torch

from ....errors import FedSQError
from .fedavg import FedAvg

__all__ = ["ServerOptimizer"]


@dataclass
class ServerOptimizer(FedAvg):
    """FedAvg whose `server_update` a subclass overrides, with optimizer buffers (checkpointed with the run)."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise FedSQError(f"--server-lr must be > 0, got {self.server_lr}")
        self.state: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if name not in self.state:
            self.state[name] = torch.zeros_like(like)
        return self.state[name]

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = {k: v.clone() for k, v in state.items()}
