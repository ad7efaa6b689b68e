"""FedTrimmedAvg (Yin et al. 2018): the coordinate-wise mean after cutting the extremes."""

import math
from dataclasses import dataclass

from ....errors import FedSQError
from .base import Strategy, register_strategy, sorted_updates


@register_strategy
@dataclass
class FedTrimmedAvg(Strategy):
    """Per coordinate, drop the `beta` fraction of largest and of smallest client values, average the rest."""

    name = "fedtrimmedavg"
    needs_client_updates = True
    beta: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise FedSQError(f"--trim-beta must be in [0, 0.5), got {self.beta}")

    def aggregate_clients(self, updates):
        cut = math.floor(self.beta * len(updates))
        return sorted_updates(updates)[cut : len(updates) - cut].mean(dim=0)
