"""Federated simulation: data, partitions, the client trainer, strategies, callbacks, the Accelerate trainer."""

from .arguments import (DataArguments, FederatedArguments, ModelArguments, make_accelerator, parse_arguments,
                        with_example_defaults)
from .callbacks import (CallbackHandler, DefaultFlowCallback, EarlyStoppingCallback, FederatedCallback,
                        FederatedControl)
from .calibration import calibrate
from .client import ClientResult, ClientTrainer, client_seed, diverged
from .data import load_image_dataset
from .evaluation import Evaluator
from .gate_drift_callback import GateDriftCallback
from .gate_warmup import GateWarmupCallback
from .hub_push import HubPushCallback
from .images import AUGMENTATIONS, ImagePipeline, build_pipelines
from .metrics import compute_classification_metrics
from .optim import CLIENT_OPTIMIZERS, LR_SCHEDULERS, create_optimizer, register_optimizer, round_learning_rates
from .partition import PARTITIONS, partition_labels, partition_summary, plot_partition
from .reporting import (BestModelCallback, HistoryCallback, PlotCallback, ProgressCallback, TrackerCallback,
                        default_callbacks)
from .run import build_trainer, choose_preload, run_federated
from .samples import (PRELOAD_MODES, ClientBatches, OrderedBatches, PreloadedSamples, StreamedSamples, as_samples,
                      make_loader, model_inputs, preload)
from .sampling import assign_clients, dropped_clients, sample_clients
from .state import FederatedState
from .strategies import (STRATEGIES, ClientUpdate, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg,
                         ServerOptimizer, Strategy, make_strategy, register_strategy)
from .trainer import FederatedTrainer
from .validation import validate_arguments
