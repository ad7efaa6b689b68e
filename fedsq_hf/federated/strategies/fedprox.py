"""FedProx (Li et al. 2020): FedAvg with a proximal term in each client's loss."""

from ...errors import FedSQError
from .base import Strategy, register_strategy


@register_strategy
class FedProx(Strategy):
    """FedAvg with (mu / 2) * ||w - w_global||^2 added to each client's loss."""

    name = "fedprox"
    needs_global_params = True

    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise FedSQError(f"FedProx mu must be >= 0, got {mu}.")
        self.mu = mu

    def client_loss(self, params, global_params):
        if self.mu == 0:
            return None
        return 0.5 * self.mu * sum((p - g).pow(2).sum() for p, g in zip(params, global_params))

    def describe(self):
        return {"name": self.name, "mu": self.mu}
