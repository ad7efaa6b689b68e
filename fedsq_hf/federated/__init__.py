"""Federated learning with FedSQ, in layers: `protocol` (what client and server exchange), `data`, `client`
(a silo's local training), `server` (strategies, selection, aggregation, the gate warm-up, evaluation),
`io` (state, checkpoints, the output folder), `callbacks`, `simulation` (the Accelerate runtime) and `cli`,
with `fields` (argument fields and their checks) beneath them all. protocol, data, client and server import
none of simulation, cli, callbacks and io (README, Architecture)."""

from .callbacks import (BestModelCallback, CallbackHandler, DefaultFlowCallback, EarlyStoppingCallback,
                        FederatedCallback, FederatedControl, GateDriftCallback, HistoryCallback, HubPushCallback,
                        PlotCallback, ProgressCallback, TrackerCallback, default_callbacks)
from .cli import (OPTION_FLAGS, DataArguments, FederatedArguments, ModelArguments, OptionFlag, PrivacyArguments,
                  check_run, parse_arguments, unread_flags, with_example_defaults)
from .client import (CLIENT_OPTIMIZERS, ClientArguments, ClientState, ClientTrainer, TrainResult, calibrate,
                     create_optimizer, diverged, make_accelerator, register_optimizer)
from .data import (AUGMENTATIONS, PACKAGED_DATASETS, PARTITIONS, ClientBatches, ImagePipeline, OrderedBatches,
                   PreloadedSamples, StreamedSamples, as_samples, build_pipelines, load_image_dataset, make_loader,
                   model_inputs, partition_labels, partition_summary, preload, split_fingerprint)
from .io import FederatedState
from .protocol import (CODECS, ClientUpdate, FitConfig, Float16Codec, IdentityCodec, UpdateCodec, client_seed,
                       register_codec)
from .server import (LR_SCHEDULERS, STRATEGIES, AdaptiveClipping, ClientLevelDP, Evaluator, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx,
                     FedTrimmedAvg, FlatUpdate, AlignmentRule, DriftRule, FixedRound, GateDecision, GateRule, GateWarmup, GlobalModel, LocalStates, PrivacyAccount, RoundAggregate, SampleLevelAccount, ServerOptimizer,
                     Strategy, compute_classification_metrics, dp_epsilon, dp_noise_multiplier, dropped_clients,
                     make_strategy, register_strategy, round_learning_rates, sample_clients)
from .runtime import RoundLoop, run_accelerator
from .simulation import FederatedTrainer, assign_clients, build_trainer, choose_preload, run_federated

__all__ = [
    # arguments and the command line
    "ModelArguments", "DataArguments", "FederatedArguments", "ClientArguments", "parse_arguments", "check_run",
    "with_example_defaults", "OPTION_FLAGS", "OptionFlag", "unread_flags", "PrivacyArguments",
    # the simulation runtime
    "run_federated", "build_trainer", "FederatedTrainer", "FederatedState", "choose_preload", "assign_clients",
    "run_accelerator", "RoundLoop",
    # client
    "ClientTrainer", "ClientState", "TrainResult", "make_accelerator", "calibrate", "diverged", "create_optimizer",
    "register_optimizer", "CLIENT_OPTIMIZERS",
    # protocol
    "ClientUpdate", "FitConfig", "client_seed", "UpdateCodec", "IdentityCodec", "Float16Codec", "CODECS",
    "register_codec",
    # server
    "Strategy", "ServerOptimizer", "FlatUpdate", "FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedMedian",
    "FedTrimmedAvg", "STRATEGIES", "register_strategy", "make_strategy", "GateWarmup", "GateRule", "GateDecision",
    "FixedRound", "DriftRule", "AlignmentRule", "GlobalModel", "LocalStates",
    "RoundAggregate",
    "Evaluator", "compute_classification_metrics", "sample_clients", "dropped_clients", "round_learning_rates",
    "LR_SCHEDULERS",
    # privacy
    "ClientLevelDP", "AdaptiveClipping", "PrivacyAccount", "SampleLevelAccount", "dp_epsilon", "dp_noise_multiplier",
    # callbacks
    "FederatedCallback", "FederatedControl", "CallbackHandler", "DefaultFlowCallback", "EarlyStoppingCallback",
    "GateDriftCallback", "HubPushCallback", "BestModelCallback", "HistoryCallback", "PlotCallback", "ProgressCallback",
    "TrackerCallback", "default_callbacks",
    # data
    "load_image_dataset", "partition_labels", "partition_summary", "PARTITIONS", "AUGMENTATIONS", "ImagePipeline",
    "build_pipelines", "StreamedSamples", "PreloadedSamples", "ClientBatches", "OrderedBatches", "make_loader",
    "model_inputs", "as_samples", "preload", "split_fingerprint", "PACKAGED_DATASETS",
]
