"""FedTrimmedAvg (Yin et al. 2018): the coordinate-wise mean after cutting the extremes."""

import math

from ...errors import FedSQError
from .base import Strategy, register_strategy, sorted_updates


@register_strategy
class FedTrimmedAvg(Strategy):
    """Per coordinate, drop the `beta` fraction of largest and of smallest client values, average the rest."""

    name = "fedtrimmedavg"
    needs_client_updates = True

    def __init__(self, beta: float = 0.2) -> None:
        if not 0 <= beta < 0.5:
            raise FedSQError(f"FedTrimmedAvg beta must be in [0, 0.5), got {beta}.")
        self.beta = beta

    def aggregate_clients(self, updates):
        cut = math.floor(self.beta * len(updates))
        return sorted_updates(updates)[cut : len(updates) - cut].mean(dim=0)

    def describe(self):
        return {"name": self.name, "beta": self.beta}
