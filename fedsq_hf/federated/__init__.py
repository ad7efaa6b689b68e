"""Federated simulation: partitions, strategies, the Accelerate trainer."""

from .calibration import calibrate
from .arguments import DataArguments, FederatedArguments, ModelArguments, validate_arguments
from .partition import PARTITIONS, partition_labels, partition_summary, plot_partition
from .run import build_trainer, run_federated
from .strategies import STRATEGIES, FedAdam, FedAvg, FedAvgM, FedProx, Strategy, make_strategy
from .trainer import FederatedTrainer, client_seed
