"""FedProx (Li et al. 2020): FedAvg with a proximal term in each client's loss."""

from dataclasses import dataclass

from ....errors import FedSQError
from .base import register_strategy
from .fedavg import FedAvg


@register_strategy
@dataclass
class FedProx(FedAvg):
    """FedAvg whose clients add (mu / 2) * ||w - w_global||^2 to their loss (`proximal_mu` in the round config)."""

    name = "fedprox"
    mu: float = 0.01

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise FedSQError(f"--mu must be >= 0, got {self.mu}")

    def configure_fit(self, round_):
        return {"proximal_mu": self.mu}
