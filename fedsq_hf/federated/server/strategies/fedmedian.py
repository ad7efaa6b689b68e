"""FedMedian (Yin et al. 2018): the coordinate-wise median of the client updates."""

from dataclasses import dataclass

from .base import Strategy, register_strategy, sorted_updates


@register_strategy
@dataclass
class FedMedian(Strategy):
    """Coordinate-wise median of the clients' updates (unweighted: robust to a minority of bad clients).
    With an even count, the mean of the two middle values (as `np.median`, and Flower's FedMedian)."""

    name = "fedmedian"
    needs_client_updates = True

    def aggregate_clients(self, updates):
        ordered, n = sorted_updates(updates), len(updates)
        return ordered[n // 2].clone() if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
