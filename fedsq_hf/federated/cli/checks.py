"""The checks of a run that no argument group can make alone: rules across groups, and what this
machine can do (GPU, installed trackers, the optimizer, Hub credentials). Called once, before any data or
model loads; each group's own checks run again here, for fields changed after the group was built."""

from __future__ import annotations

import os

import torch

from ...errors import FedSQError
from ...hub import require_credentials
from ..client import create_optimizer
from ..fields import require
from .arguments import DataArguments, FederatedArguments, ModelArguments
from .option_flags import check_option_flags

__all__ = ["check_run"]


def check_run(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> None:
    """Raise `FedSQError` naming the first bad argument."""
    for group in (model, data, fed):
        group.check()
    check_option_flags(model, data, fed)
    require([
        (not (model.gate_cache_mb and data.augment != "none"),
         "--gate-cache-mb needs --augment none (gates of augmented inputs change)"),
        (not data.calibration_samples or model.model == "fedsq", "--calibration-samples needs --model fedsq"),
        (model.bn_mode == "frozen" or fed.min_partition_size >= 2,
         f"--bn-mode {model.bn_mode} trains BatchNorm on batch statistics, which a one-sample client cannot give: "
         "--min-partition-size must be >= 2"),
        (model.model == "fedsq" or fed.gate_rule() is None,
         "--freeze-gates-at-round, --freeze-gates-when-drift-below and --freeze-gates auto need --model fedsq (a plain "
         "model has no gates)"),
        (not (data.calibration_samples and fed.freeze_gates == "auto"),
         "--freeze-gates auto and --calibration-samples both decide the gates (auto from the clients' updates, a "
         "calibration from data shared with the server): give one of them"),
        (fed.dp_clip_norm is None or model.bn_mode != "train",
         "--dp-clip-norm with --bn-mode train: BatchNorm's running statistics would be averaged without noise; use "
         "--bn-mode frozen or local (FedBN: they stay at the client)"),
        (fed.dp_sgd_noise_multiplier is None or model.bn_mode == "frozen",
         f"DP-SGD with --bn-mode {model.bn_mode}: BatchNorm on batch statistics mixes the samples of a batch, so no "
         "gradient is one sample's; use --bn-mode frozen (the pretrained statistics)"),
        (fed.mixed_precision != "fp16" or torch.cuda.is_available(),
         "--mixed-precision fp16 needs a CUDA GPU: without one Accelerate trains in fp32, which the run would record "
         "as fp16; use bf16 or no"),
    ])
    _check_output_dir(data, fed)
    _check_report_to(fed.report_to)
    _check_optimizer(fed)
    if fed.push_to_hub:
        require_credentials("--push-to-hub")


def _check_output_dir(data: DataArguments, fed: FederatedArguments) -> None:
    if data.dataset and os.path.isdir(data.dataset):
        dataset, out = os.path.realpath(data.dataset), os.path.realpath(fed.output_dir)
        if os.path.commonpath([dataset, out]) == dataset:
            raise FedSQError(f"--output-dir {fed.output_dir!r} is inside the dataset folder {data.dataset!r}: the run's "
                             "files would become part of the dataset; pick an --output-dir outside it.")


def _check_report_to(report_to: str) -> None:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if report_to in ("none", "all"):
        return
    if report_to not in LOGGER_TYPE_TO_CLASS:
        raise FedSQError(f"--report-to must be none, all or one of {sorted(LOGGER_TYPE_TO_CLASS)}, got {report_to!r}")
    if report_to not in {str(t.value) for t in get_available_trackers()}:
        raise FedSQError(f"--report-to {report_to}: the {report_to} package is not installed; `pip install "
                         f"{report_to.replace('_', '-')}`, or pick another tracker.")


def _check_optimizer(fed: FederatedArguments) -> None:
    """One step of `--optim` on a toy parameter: an optimizer that cannot run here (CUDA-only, or one that
    needs a second-order backward) fails now, not after the data and model have loaded."""
    if fed.optim.startswith("kron") and not torch.cuda.is_available():
        # what a toy parameter cannot show: inductor's CPU kernels for a real conv layer's preconditioner
        raise FedSQError(f"--optim {fed.optim} needs a CUDA GPU: timm's Kron compiles its preconditioner update with "
                         "torch.compile, whose CPU kernels materialise intermediates of several GB per layer (5.9 GB "
                         "for one EfficientNet-Lite0 layer, enough to get the process killed); on CPU pick another "
                         "optimizer (sgd, adamw, lamb, ...).")
    weight = torch.nn.Parameter(torch.ones(4, 4, device="cuda" if torch.cuda.is_available() else "cpu"))
    try:
        optimizer = create_optimizer([weight], fed, fed.lr)
        (weight**2).sum().backward()
        optimizer.step()
    except Exception as err:  # timm's optimizers raise what they like (AssertionError, RuntimeError, ...)
        raise FedSQError(f"--optim {fed.optim} cannot train here ({type(err).__name__}: {err}); pick another "
                         "(sgd, adamw, ...).") from err
