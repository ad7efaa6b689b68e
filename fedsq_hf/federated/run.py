"""Build a federated run from its arguments: data, partition, model, strategy, trainer."""

from __future__ import annotations

from typing import Any

import torch
from transformers import set_seed

from ..configuration_fedsq import FedSQConfig
from ..convert import convert_efficientnet_lite0
from ..errors import FedSQError
from ..modeling_fedsq import FedSQModel
from .arguments import DataArguments, FederatedArguments, ModelArguments, run_config, validate_arguments
from .calibration import calibrate
from .data import load_image_dataset, make_transform, preprocess, with_image_size
from .partition import partition_labels, partition_summary
from .strategies import make_strategy
from .trainer import FederatedTrainer, make_accelerator

__all__ = ["build_trainer", "run_federated"]


def run_federated(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments) -> dict[str, Any]:
    """Run a whole simulation; returns the summary (also written to `output_dir/summary.json`)."""
    return build_trainer(model_args, data_args, fed_args).train()


def build_trainer(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments) -> FederatedTrainer:
    """Everything a run needs, checked and loaded: data, partition, model, strategy, in a trainer."""
    validate_arguments(model_args, data_args, fed_args)
    strategy = make_strategy(fed_args.strategy, mu=fed_args.mu, server_lr=fed_args.server_lr,
                             server_momentum=fed_args.server_momentum)
    accelerator = make_accelerator(fed_args)
    train, evaluation, names = load_image_dataset(
        data_args.dataset, data_args.image_column, data_args.label_column, data_args.eval_split,
        data_args.max_train_samples, data_args.max_eval_samples, seed=fed_args.seed,
    )
    calibration = None
    if data_args.calibration_samples:
        if data_args.calibration_samples >= len(train):
            raise FedSQError(f"--calibration-samples {data_args.calibration_samples} leaves no training data "
                             f"(there are {len(train)} samples).")
        calibration = train.select(range(data_args.calibration_samples))
        train = train.select(range(data_args.calibration_samples, len(train)))
    labels = train[data_args.label_column]
    parts = partition_labels(labels, fed_args.num_clients, fed_args.partition, alpha=fed_args.alpha,
                             shards_per_client=fed_args.shards_per_client,
                             min_partition_size=fed_args.min_partition_size, seed=fed_args.seed)
    backbone = model_args.backbone
    if backbone is None:
        with accelerator.main_process_first():
            backbone = convert_efficientnet_lite0()
    set_seed(fed_args.seed)
    config = FedSQConfig(
        backbone=backbone, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, fixed_gating=model_args.model == "fedsq",
        bn_mode=model_args.bn_mode, backbone_weights=model_args.backbone_weights,
    )
    model = FedSQModel(config)
    if model_args.gate_cache_mb:
        model.enable_gate_cache(model_args.gate_cache_mb << 20)
    if data_args.image_size:  # saved with the model, so `pipeline` preprocesses as in training
        config.pretrained_cfg = with_image_size(config.pretrained_cfg, data_args.image_size)
    transform = make_transform(config.pretrained_cfg)
    train_data = preprocess(train, data_args.image_column, data_args.label_column, transform, len(names))
    eval_data = preprocess(evaluation, data_args.image_column, data_args.label_column, transform, len(names))
    if calibration is not None:
        calibrate(model, preprocess(calibration, data_args.image_column, data_args.label_column, transform, len(names)),
                  fed_args, model_args.calibration_epochs, accelerator)
    with torch.no_grad():  # an input the backbone cannot take fails here, not in round 1
        model.eval()(eval_data[0][:1])
    return FederatedTrainer(
        model, strategy, train_data, eval_data, parts, fed_args,
        run_config={**run_config(model_args, data_args, fed_args), "backbone": backbone},
        partition_summary=partition_summary(parts, labels, len(names)),
        augment=data_args.augment, accelerator=accelerator,
    )
