"""Federated simulation: partitions, strategies, the Accelerate trainer."""

from .calibration import calibrate
from .arguments import DataArguments, FederatedArguments, ModelArguments, validate_arguments, with_example_defaults
from .data import load_image_dataset
from .images import AUGMENTATIONS, ImagePipeline, build_pipelines
from .partition import PARTITIONS, partition_labels, partition_summary, plot_partition
from .run import build_trainer, choose_preload, run_federated
from .samples import (PRELOAD_MODES, ClientBatches, OrderedBatches, PreloadedSamples, StreamedSamples, make_loader,
                      model_inputs, preload)
from .strategies import STRATEGIES, FedAdam, FedAvg, FedAvgM, FedProx, Strategy, make_strategy
from .trainer import FederatedTrainer, as_samples, client_seed
