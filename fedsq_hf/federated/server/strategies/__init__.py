"""Server strategies, one file each; `register_strategy` adds a user's own."""

from .base import STRATEGIES, FlatUpdate, Strategy, make_strategy, register_strategy, strategy_parameters
from .dp import DP_CLIPPING, DP_NOISE_SOURCES, DP_STRATEGIES, ClientLevelDP
from .dp_clipping import AdaptiveClipping
from .fedadam import FedAdam
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedmedian import FedMedian
from .fedprox import FedProx
from .fedtrimmedavg import FedTrimmedAvg
from .server_optimizer import ServerOptimizer

__all__ = ["Strategy", "ServerOptimizer", "FlatUpdate", "FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedMedian",
           "FedTrimmedAvg", "STRATEGIES", "register_strategy", "make_strategy", "strategy_parameters", "ClientLevelDP",
           "DP_STRATEGIES", "DP_CLIPPING", "DP_NOISE_SOURCES", "AdaptiveClipping"]
