"""FedAdam (Reddi et al. 2021): Adam on the averaged update (the negative pseudo-gradient)."""

from dataclasses import dataclass

from ....errors import FedSQError
from .base import register_strategy
from .server_optimizer import ServerOptimizer


@register_strategy
@dataclass
class FedAdam(ServerOptimizer):
    """FedAvg whose server applies the averaged update with Adam (no bias correction, as in the paper)."""

    name = "fedadam"
    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.tau > 0):
            raise FedSQError(f"FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0, got beta1 {self.beta1}, beta2 "
                             f"{self.beta2}, tau {self.tau}")

    def server_update(self, global_state, update):
        m, v = self._buffer("m", update), self._buffer("v", update)
        m.mul_(self.beta1).add_(update, alpha=1 - self.beta1)
        v.mul_(self.beta2).addcmul_(update, update, value=1 - self.beta2)
        global_state.addcdiv_(m, v.sqrt().add_(self.tau), value=self.server_lr)
