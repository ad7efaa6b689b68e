"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client models."""

from dataclasses import dataclass

from .base import Strategy, register_strategy


@register_strategy
@dataclass
class FedAvg(Strategy):
    """The sample-weighted mean of the clients' updates, added to the global model."""

    name = "fedavg"

    def aggregate(self, weighted_update_sum, total_weight):
        return weighted_update_sum.div_(total_weight)
