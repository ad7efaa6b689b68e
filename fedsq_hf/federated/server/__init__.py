"""The server side of a federation: strategies, client selection, the learning-rate schedule, the gate
warm-up, FedBN's local states, and evaluation of the global model."""

from .aggregation import RoundAggregate
from .evaluation import Evaluator
from .gate_rules import (GATE_ALIGNMENT_BELOW, GATE_SOURCES, LABEL_SHARE_BELOW, SKEWED_GATES, AlignmentRule, DriftRule,
                         FixedRound, GateDecision, GateRule)
from .gate_warmup import GateWarmup
from .global_model import GlobalModel
from .local_states import LocalStates
from .metrics import MetricsFn, classification_metric_names, compute_classification_metrics, greater_is_better
from .privacy import PrivacyAccount, SampleLevelAccount, dp_epsilon, dp_noise_multiplier
from .schedule import LR_SCHEDULERS, round_learning_rates
from .selection import dropped_clients, sample_clients
from .strategies import (DP_CLIPPING, DP_NOISE_SOURCES, DP_STRATEGIES, STRATEGIES, AdaptiveClipping, ClientLevelDP,
                         FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FlatUpdate, ServerOptimizer, Strategy, make_strategy, register_strategy,
                         strategy_parameters)

__all__ = ["RoundAggregate", "Evaluator", "GateWarmup", "GATE_ALIGNMENT_BELOW", "GATE_SOURCES", "LABEL_SHARE_BELOW",
           "SKEWED_GATES", "AlignmentRule", "DriftRule",
           "FixedRound", "GateDecision", "GateRule", "GlobalModel", "LocalStates", "MetricsFn", "classification_metric_names",
           "compute_classification_metrics", "greater_is_better", "LR_SCHEDULERS", "round_learning_rates",
           "dropped_clients", "sample_clients", "STRATEGIES", "FedAdam", "FedAvg", "FedAvgM", "FedMedian", "FedProx",
           "FedTrimmedAvg", "FlatUpdate", "ServerOptimizer", "Strategy", "make_strategy", "register_strategy",
           "strategy_parameters", "ClientLevelDP", "DP_STRATEGIES", "DP_CLIPPING", "DP_NOISE_SOURCES", "AdaptiveClipping",
           "PrivacyAccount", "SampleLevelAccount", "dp_epsilon", "dp_noise_multiplier"]
