"""What every runtime builds the same way from a run's arguments, so that a simulated client and a real
site train on the same samples with the same model: the dataset's splits, the clients' partition, the
model, the samples pipelines, and the whole of it checked and loaded (`prepare_run`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import set_seed

from ...configuration_fedsq import FedSQConfig
from ...convert import convert_efficientnet_lite0
from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..client import calibrate
from ..data import (StreamedSamples, build_pipelines, estimate_preload_bytes, load_image_dataset, model_inputs,
                    partition_labels, partition_summary, preload, split_fingerprint, with_image_size)
from ..fields import real_path
from ..io import claim_output_dir

if TYPE_CHECKING:
    from ..cli.arguments import DataArguments, FederatedArguments, ModelArguments

__all__ = ["RunData", "PreparedRun", "load_run_data", "build_model", "run_samples", "prepare_run", "choose_preload",
           "build_claimed"]

logger = logging.getLogger(__name__)
Loop = TypeVar("Loop")


@dataclass
class RunData:
    """A run's dataset: the clients' training split (less the calibration samples), the evaluation split,
    the class names, and the server's calibration samples (the first `--calibration-samples` of the train
    split), if any."""

    train: Dataset
    evaluation: Dataset
    names: list[str]
    calibration: Dataset | None = None

    def fingerprints(self, data_args: DataArguments) -> dict[str, str | None]:
        """`<split>_data_fingerprint` of each split (`split_fingerprint`): what a resume compares of the data."""
        splits = {"train": self.train, "eval": self.evaluation, "calibration": self.calibration}
        return {f"{name}_data_fingerprint": None if split is None else
                split_fingerprint(split, data_args.image_column, data_args.label_column) for name, split in splits.items()}

    def partitions(self, label_column: str, fed_args: FederatedArguments) -> list[np.ndarray]:
        """Each client's sample indices into `train`, by `--partition` and its parameters (seeded)."""
        return partition_labels(self.train[label_column], fed_args.num_clients, fed_args.partition,
                                alpha=fed_args.alpha, shards_per_client=fed_args.shards_per_client,
                                min_partition_size=fed_args.min_partition_size, seed=fed_args.seed)


def load_run_data(data_args: DataArguments, fed_args: FederatedArguments, dataset: str | None = None,
                  calibration_samples: int | None = None) -> RunData:
    """The splits of `dataset` (default: `--dataset`), sampled and ordered by `--seed`."""
    train, evaluation, names = load_image_dataset(
        dataset or data_args.dataset, data_args.image_column, data_args.label_column, data_args.eval_split,
        data_args.max_train_samples, data_args.max_eval_samples, seed=fed_args.seed,
    )
    cut = data_args.calibration_samples if calibration_samples is None else calibration_samples
    if not cut:
        return RunData(train, evaluation, names)
    if cut >= len(train):
        raise FedSQError(f"--calibration-samples {cut} leaves no training data (there are {len(train)} samples).")
    return RunData(train.select(range(cut, len(train))), evaluation, names, train.select(range(cut)))


def build_model(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                names: list[str], backbone: str) -> FedSQModel:
    """The run's global model before training (its new head seeded by `--seed`)."""
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
    return model


def run_samples(data: RunData, config: FedSQConfig, data_args: DataArguments,
                splits: tuple[str, ...] = ("train", "eval", "calibration")) -> dict[str, StreamedSamples]:
    """Streamed samples of `splits` (where the run has them), through the model's timm pipelines."""
    train_pipe, eval_pipe = build_pipelines(config.pretrained_cfg, data_args.augment, data_args.auto_augment,
                                            data_args.re_prob, data_args.crop_scale)
    columns, num_labels = (data_args.image_column, data_args.label_column), len(data.names)
    sources = {"train": (data.train, train_pipe, "train"), "eval": (data.evaluation, eval_pipe, "evaluation"),
               "calibration": (data.calibration, train_pipe, "calibration")}
    return {k: StreamedSamples(sources[k][0], *columns, sources[k][1], num_labels, sources[k][2])
            for k in splits if sources[k][0] is not None}


@dataclass
class PreparedRun:
    """A run checked and loaded, ready for a runtime: the model (calibrated where asked), the samples of
    each split, the clients' partitions, and what the summary records of the run."""

    model: FedSQModel
    splits: dict[str, torch.utils.data.Dataset]
    partitions: list[np.ndarray]
    run_config: dict[str, Any]
    partition_summary: dict[str, Any]


def prepare_run(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                run_config: dict[str, Any], accelerator: Accelerator,
                splits: tuple[str, ...] = ("train", "eval", "calibration")) -> PreparedRun:
    """Data, partition and model of a run (`splits`: the samples this runtime needs on this machine)."""
    data = load_run_data(data_args, fed_args)
    parts = data.partitions(data_args.label_column, fed_args)
    backbone = real_path(model_args.backbone)
    if backbone is None:
        with accelerator.main_process_first():
            backbone = convert_efficientnet_lite0()
    model = build_model(model_args, data_args, fed_args, data.names, backbone)
    samples = run_samples(data, model.config, data_args, splits)
    preloaded, estimate = choose_preload(data_args, samples)
    if accelerator.is_main_process:
        logger.info("Data: %s (%.0f MB as uint8 per process; --preload %s, budget %d MB).",
                    "preloaded in memory" if preloaded else "streamed from the dataset by loader workers",
                    estimate / 2**20, data_args.preload, data_args.preload_budget_mb)
    if preloaded:
        samples = {k: preload(v, fed_args.num_workers) for k, v in samples.items()}
    if "calibration" in samples:
        calibrate(model, samples["calibration"], fed_args, model_args.calibration_epochs, accelerator)
    with torch.no_grad():  # an input the backbone cannot take fails here, not in round 1
        try:
            model.eval()(model_inputs(samples["eval"], [0])[0])
        except RuntimeError as err:
            raise FedSQError(f"The backbone {backbone!r} cannot take this dataset's images ({err}); check the backbone's "
                             "input channels (in_chans) and --image-size.") from err
    run_config = {**run_config, "backbone": backbone, "input_size": samples["eval"].pipeline.prefix_size[-1],
                  "num_train_samples": len(data.train), "num_eval_samples": len(samples["eval"]),
                  "data_path": "preloaded" if preloaded else "streamed", **data.fingerprints(data_args)}
    return PreparedRun(model, samples, parts, run_config,
                       partition_summary(parts, data.train[data_args.label_column], len(data.names)))


def choose_preload(data_args: DataArguments, splits: dict[str, StreamedSamples]) -> tuple[bool, int]:
    """(preload?, estimated uint8 bytes per process): `always`, `never`, or `auto` within the budget."""
    estimate = sum(estimate_preload_bytes(s) for s in splits.values())
    if data_args.preload == "auto":
        return estimate <= data_args.preload_budget_mb << 20, estimate
    return data_args.preload == "always", estimate


def build_claimed(fed_args: FederatedArguments, accelerator: Accelerator, build: Callable[[], Loop]) -> Loop:
    """`build()` with the output folder claimed first (before anything loads), its lock handed to the loop; a
    folder the claim created is removed again if `build()` fails (while still empty)."""
    created = not os.path.lexists(fed_args.output_dir)
    lock = claim_output_dir(fed_args.output_dir, accelerator, fed_args.resume, fed_args.overwrite_output_dir)
    try:
        loop = build()
    except BaseException:
        lock.release()
        if created and accelerator.is_main_process:
            with contextlib.suppress(OSError):
                os.rmdir(fed_args.output_dir)
        raise
    loop.output_lock = lock
    return loop
