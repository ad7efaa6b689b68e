"""FedAdam (Reddi et al. 2021): Adam on the averaged update (the negative pseudo-gradient)."""

from .base import ServerOptimizer, register_strategy


@register_strategy
class FedAdam(ServerOptimizer):
    """FedAvg whose server applies the averaged update with Adam."""

    name = "fedadam"

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def server_update(self, global_state, update):
        m, v = self._buffer("m", update), self._buffer("v", update)
        m.mul_(self.beta1).add_(update, alpha=1 - self.beta1)
        v.mul_(self.beta2).addcmul_(update, update, value=1 - self.beta2)
        global_state.addcdiv_(m, v.sqrt().add_(self.tau), value=self.server_lr)

    def describe(self):
        return {"name": self.name, "server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}
