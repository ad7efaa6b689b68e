"""FedAvgM (Hsu et al. 2019): server momentum on the averaged update."""

from .base import ServerOptimizer, register_strategy


@register_strategy
class FedAvgM(ServerOptimizer):
    """FedAvg whose server applies the averaged update with momentum."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        self.server_momentum = server_momentum

    def server_update(self, global_state, update):
        momentum = self._buffer("momentum", update)
        momentum.mul_(self.server_momentum).add_(update)
        global_state.add_(momentum, alpha=self.server_lr)

    def describe(self):
        return {"name": self.name, "server_lr": self.server_lr, "server_momentum": self.server_momentum}
