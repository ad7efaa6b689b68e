"""Build a federated run from its arguments: data, partition, model, strategy, trainer."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from accelerate import Accelerator
from transformers import set_seed

from ...configuration_fedsq import FedSQConfig
from ...convert import convert_efficientnet_lite0
from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..callbacks import FederatedCallback
from ..cli.arguments import DataArguments, FederatedArguments, ModelArguments, run_config, with_example_defaults
from ..cli.checks import check_run
from ..client import calibrate
from ..data import (StreamedSamples, build_pipelines, estimate_preload_bytes, load_image_dataset, model_inputs,
                    partition_labels, partition_summary, preload, with_image_size)
from ..io import claim_output_dir
from ..server import MetricsFn, Strategy
from ..runtime import run_accelerator
from .trainer import FederatedTrainer

__all__ = ["build_trainer", "run_federated", "choose_preload"]

logger = logging.getLogger(__name__)


def run_federated(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                  callbacks: list[FederatedCallback] | None = None,
                  compute_metrics: MetricsFn | None = None) -> dict[str, Any]:
    """Run a whole simulation; returns the summary (also written to `output_dir/summary.json`)."""
    return build_trainer(model_args, data_args, fed_args, callbacks, compute_metrics).train()


def build_trainer(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                  callbacks: list[FederatedCallback] | None = None,
                  compute_metrics: MetricsFn | None = None) -> FederatedTrainer:
    """Everything a run needs, checked and loaded: data, partition, model, strategy, in a trainer.
    `callbacks` come after the default ones; `compute_metrics` replaces the built-in metrics."""
    check_run(model_args, data_args, fed_args)
    example, data_args = data_args.dataset is None, with_example_defaults(data_args)
    fed_args = replace(fed_args, clients_per_round=fed_args.clients_per_round or fed_args.num_clients)
    strategy = fed_args.make_strategy()
    accelerator = run_accelerator(fed_args)
    lock = claim_output_dir(fed_args.output_dir, accelerator, fed_args.resume, fed_args.overwrite_output_dir)  # before anything loads
    try:
        trainer = _build(model_args, data_args, fed_args, strategy, accelerator, example, callbacks, compute_metrics)
    except BaseException:
        lock.release()
        raise
    trainer.output_lock = lock
    return trainer


def _build(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments, strategy: Strategy,
           accelerator: Accelerator, example: bool, callbacks: list[FederatedCallback] | None,
           compute_metrics: MetricsFn | None) -> FederatedTrainer:
    if example and accelerator.is_main_process:
        logger.info("No --dataset: the offline example, %s with max_train_samples %s, max_eval_samples %s, image_size %s "
                    "(name a dataset to use it whole).", data_args.dataset, data_args.max_train_samples,
                    data_args.max_eval_samples, data_args.image_size)
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
        bn_mode=model_args.bn_mode, backbone_weights=model_args.backbone_weights, allow_ungated=model_args.allow_ungated,
    )
    model = FedSQModel(config)
    if model_args.gate_cache_mb:
        model.enable_gate_cache(model_args.gate_cache_mb << 20)
    if data_args.image_size:  # saved with the model, so `pipeline` preprocesses as in training
        config.pretrained_cfg = with_image_size(config.pretrained_cfg, data_args.image_size)
    train_pipe, eval_pipe = build_pipelines(config.pretrained_cfg, data_args.augment, data_args.auto_augment,
                                            data_args.re_prob, data_args.crop_scale)
    columns = (data_args.image_column, data_args.label_column)
    splits = {"train": StreamedSamples(train, *columns, train_pipe, len(names), "train"),
              "eval": StreamedSamples(evaluation, *columns, eval_pipe, len(names), "evaluation")}
    if calibration is not None:
        splits["calibration"] = StreamedSamples(calibration, *columns, train_pipe, len(names), "calibration")
    preloaded, estimate = choose_preload(data_args, splits)
    if accelerator.is_main_process:
        logger.info("Data: %s (%.0f MB as uint8 per process; --preload %s, budget %d MB).",
                    "preloaded in memory" if preloaded else "streamed from the dataset by loader workers",
                    estimate / 2**20, data_args.preload, data_args.preload_budget_mb)
    if preloaded:
        splits = {k: preload(v, fed_args.num_workers) for k, v in splits.items()}
    if "calibration" in splits:
        calibrate(model, splits["calibration"], fed_args, model_args.calibration_epochs, accelerator)
    with torch.no_grad():  # an input the backbone cannot take fails here, not in round 1
        try:
            model.eval()(model_inputs(splits["eval"], [0])[0])
        except RuntimeError as err:
            raise FedSQError(f"The backbone {backbone!r} cannot take this dataset's images ({err}); check the backbone's "
                             "input channels (in_chans) and --image-size.") from err
    size = eval_pipe.prefix_size[-1]
    return FederatedTrainer(
        model, strategy, splits["train"], splits["eval"], parts, fed_args,
        run_config={**run_config(model_args, data_args, fed_args), "backbone": backbone, "image_size": size,
                    "num_train_samples": len(splits["train"]), "num_eval_samples": len(splits["eval"]),
                    "data_path": "preloaded" if preloaded else "streamed"},
        partition_summary=partition_summary(parts, labels, len(names)),
        accelerator=accelerator, callbacks=callbacks, compute_metrics=compute_metrics,
    )


def choose_preload(data_args: DataArguments, splits: dict[str, StreamedSamples]) -> tuple[bool, int]:
    """(preload?, estimated uint8 bytes per process): `always`, `never`, or `auto` within the budget."""
    estimate = sum(estimate_preload_bytes(s) for s in splits.values())
    if data_args.preload == "auto":
        return estimate <= data_args.preload_budget_mb << 20, estimate
    return data_args.preload == "always", estimate
