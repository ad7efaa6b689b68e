"""FedAvg (McMahan et al. 2017): the sample-weighted mean of client models."""

from .base import Strategy, register_strategy


@register_strategy
class FedAvg(Strategy):
    """The sample-weighted mean of the clients' models (the base behaviour)."""
