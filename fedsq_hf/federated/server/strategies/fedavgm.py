"""FedAvgM (Hsu et al. 2019): server momentum on the averaged update."""

from dataclasses import dataclass

from ....errors import FedSQError
from .base import register_strategy
from .server_optimizer import ServerOptimizer


@register_strategy
@dataclass
class FedAvgM(ServerOptimizer):
    """FedAvg whose server applies the averaged update with momentum."""

    name = "fedavgm"
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.server_momentum < 1:
            raise FedSQError(f"--server-momentum must be in [0, 1), got {self.server_momentum}")

    def server_update(self, global_state, update):
        momentum = self._buffer("momentum", update)
        momentum.mul_(self.server_momentum).add_(update)
        global_state.add_(momentum, alpha=self.server_lr)
