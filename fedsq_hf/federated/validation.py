"""Every run argument checked before any work starts: `FedSQError` names the first bad one and the fix."""

from __future__ import annotations

import dataclasses
import math
import os
import re

import timm
import torch

from ..configuration_fedsq import BN_MODES
from ..errors import FedSQError
from ..hub import require_credentials
from .arguments import DataArguments, FederatedArguments, ModelArguments
from .images import AUGMENTATIONS
from .optim import LR_SCHEDULERS, create_optimizer, optimizer_names
from .partition import PARTITIONS
from .samples import PRELOAD_MODES
from .strategies import STRATEGIES

__all__ = ["validate_arguments"]


MAX_IMAGE_SIZE = 1024  # a sanity bound: beyond it one batch of activations outgrows the memory of most machines


def validate_arguments(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> None:
    """Raise `FedSQError` naming the first bad argument."""
    _check_finite(model, data, fed)
    checks = [
        (model.model in ("fedsq", "plain"), f"--model must be fedsq or plain, got {model.model!r}"),
        (model.bn_mode in BN_MODES, f"--bn-mode must be one of {list(BN_MODES)}, got {model.bn_mode!r}"),
        (model.gate_cache_mb >= 0, f"--gate-cache-mb must be >= 0, got {model.gate_cache_mb}"),
        (not (model.gate_cache_mb and data.augment != "none"),
         "--gate-cache-mb needs --augment none (gates of augmented inputs change)"),
        (data.calibration_samples >= 0 and model.calibration_epochs >= 1,
         "--calibration-samples must be >= 0 and --calibration-epochs >= 1"),
        (not data.calibration_samples or model.model == "fedsq", "--calibration-samples needs --model fedsq"),
        (not model.gate_cache_mb or model.model == "fedsq", "--gate-cache-mb needs --model fedsq (a plain model has no gates)"),
        (fed.num_clients >= 1, f"--num-clients must be >= 1, got {fed.num_clients}"),
        (data.dataset is None or data.dataset.strip(), "--dataset is empty: pass a Hub dataset id or a local folder"),
        (data.eval_split != "train", "--eval-split train would evaluate on the clients' own training images; leave "
         "--eval-split out to hold out 10% of train when the dataset has no validation or test split"),
        (not (fed.resume and fed.overwrite_output_dir),
         "--resume continues the run in --output-dir and --overwrite-output-dir starts over there: give one of them"),
        (0 <= fed.seed < 2**32, f"--seed must be in [0, 2**32), got {fed.seed}"),
        (fed.partition in PARTITIONS, f"--partition must be one of {list(PARTITIONS)}, got {fed.partition!r}"),
        (fed.alpha > 0, f"--alpha must be > 0, got {fed.alpha}"),
        (fed.min_partition_size >= 1, f"--min-partition-size must be >= 1 (every client needs data), got {fed.min_partition_size}"),
        (fed.rounds >= 1, f"--rounds must be >= 1, got {fed.rounds}"),
        (fed.clients_per_round is None or 1 <= fed.clients_per_round <= fed.num_clients,
         f"--clients-per-round must be between 1 and --num-clients ({fed.num_clients}), got {fed.clients_per_round}"),
        (fed.local_epochs >= 0 and fed.local_steps >= 0, "--local-epochs and --local-steps must be >= 0"),
        (fed.local_epochs > 0 or fed.local_steps > 0, "--local-epochs and --local-steps are both 0: clients would not train"),
        (fed.batch_size >= 1, f"--batch-size must be >= 1, got {fed.batch_size}"),
        (fed.lr > 0, f"--lr must be > 0, got {fed.lr}"),
        (0 <= fed.momentum < 1, f"--momentum must be in [0, 1), got {fed.momentum}"),
        (fed.weight_decay >= 0, f"--weight-decay must be >= 0, got {fed.weight_decay}"),
        (model.bn_mode == "frozen" or fed.min_partition_size >= 2,
         f"--bn-mode {model.bn_mode} trains BatchNorm on batch statistics, which a one-sample client cannot give: "
         "--min-partition-size must be >= 2"),
        (fed.optim in optimizer_names(), f"--optim must be sgd or a timm optimizer ({', '.join(optimizer_names()[1:8])}, ...), got {fed.optim!r}"),
        (fed.lr_scheduler in LR_SCHEDULERS, f"--lr-scheduler must be one of {list(LR_SCHEDULERS)}, got {fed.lr_scheduler!r}"),
        (0 <= fed.warmup_rounds < fed.rounds, f"--warmup-rounds must be in [0, --rounds), got {fed.warmup_rounds}"),
        (fed.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (0 turns clipping off), got {fed.max_grad_norm}"),
        (0 <= fed.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {fed.label_smoothing}"),
        (0 <= fed.trim_beta < 0.5, f"--trim-beta must be in [0, 0.5), got {fed.trim_beta}"),
        (fed.strategy in STRATEGIES, f"--strategy must be one of {sorted(STRATEGIES)}, got {fed.strategy!r}"),
        (fed.mu >= 0, f"--mu must be >= 0, got {fed.mu}"),
        (fed.server_lr > 0, f"--server-lr must be > 0, got {fed.server_lr}"),
        (0 <= fed.server_momentum < 1, f"--server-momentum must be in [0, 1), got {fed.server_momentum}"),
        (fed.save_every >= 1 and fed.eval_every >= 1, "--save-every and --eval-every must be >= 1"),
        (0 <= fed.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {fed.dropout_rate}"),
        (fed.divergence_factor >= 0, f"--divergence-factor must be >= 0 (0 turns the check off), got {fed.divergence_factor}"),
        (fed.gate_drift_samples >= 0, f"--gate-drift-samples must be >= 0, got {fed.gate_drift_samples}"),
        (fed.freeze_gates_at_round >= 1, f"--freeze-gates-at-round must be >= 1, got {fed.freeze_gates_at_round}"),
        (model.model == "fedsq" or (fed.freeze_gates_at_round == 1 and fed.freeze_gates_when_drift_below is None),
         "--freeze-gates-at-round and --freeze-gates-when-drift-below need --model fedsq (a plain model has no gates)"),
        (fed.freeze_gates_at_round == 1 or fed.freeze_gates_when_drift_below is None,
         "give --freeze-gates-at-round or --freeze-gates-when-drift-below, not both"),
        (fed.freeze_gates_at_round <= fed.rounds,
         f"--freeze-gates-at-round {fed.freeze_gates_at_round} is after the last round ({fed.rounds}): the gates would "
         "never be fixed; that is --model plain"),
        (fed.freeze_gates_when_drift_below is None or 0 < fed.freeze_gates_when_drift_below < 1,
         f"--freeze-gates-when-drift-below must be a fraction in (0, 1), got {fed.freeze_gates_when_drift_below}"),
        (fed.freeze_gates_when_drift_below is None or 1 <= fed.max_warmup_rounds < fed.rounds,
         f"--max-warmup-rounds must be in [1, --rounds), got {fed.max_warmup_rounds}"),
        (fed.gate_probe_samples >= 1, f"--gate-probe-samples must be >= 1, got {fed.gate_probe_samples}"),
        (fed.max_failed_rounds >= 1, f"--max-failed-rounds must be >= 1, got {fed.max_failed_rounds}"),
        (fed.hub_strategy in ("end", "every_save"), f"--hub-strategy must be end or every_save, got {fed.hub_strategy!r}"),
        (not fed.push_to_hub or fed.hub_model_id, "--push-to-hub needs --hub-model-id"),
        (data.max_train_samples is None or data.max_train_samples >= 1, "--max-train-samples must be >= 1"),
        (data.max_eval_samples is None or data.max_eval_samples >= 1, "--max-eval-samples must be >= 1"),
        (data.image_size is None or 8 <= data.image_size <= MAX_IMAGE_SIZE,
         f"--image-size must be between 8 and {MAX_IMAGE_SIZE} px, got {data.image_size}"),
        (data.augment in AUGMENTATIONS, f"--augment must be one of {list(AUGMENTATIONS)}, got {data.augment!r}"),
        (data.augment == "timm" or (data.auto_augment is None and not data.re_prob and data.crop_scale is None),
         "--auto-augment, --re-prob and --crop-scale need --augment timm"),
        (0 <= data.re_prob <= 1, f"--re-prob must be in [0, 1], got {data.re_prob}"),
        (data.crop_scale is None or (len(data.crop_scale) == 2 and 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1),
         f"--crop-scale needs two values 0 < MIN <= MAX <= 1, got {data.crop_scale}"),
        (data.preload in PRELOAD_MODES, f"--preload must be one of {list(PRELOAD_MODES)}, got {data.preload!r}"),
        (data.preload_budget_mb >= 0, f"--preload-budget-mb must be >= 0, got {data.preload_budget_mb}"),
        (fed.num_workers >= 0, f"--num-workers must be >= 0, got {fed.num_workers}"),
        (fed.mixed_precision in ("no", "fp16", "bf16"), f"--mixed-precision must be no, fp16 or bf16, got {fed.mixed_precision!r}"),
        (fed.mixed_precision != "fp16" or torch.cuda.is_available(),
         "--mixed-precision fp16 needs a CUDA GPU: without one Accelerate trains in fp32, which the run would record "
         "as fp16; use bf16 or no"),
    ]
    for ok, message in checks:
        if not ok:
            raise FedSQError(message)
    _check_output_dir(data, fed)
    _check_report_to(fed.report_to)
    _check_optimizer(fed)
    if data.auto_augment:
        _check_auto_augment(data.auto_augment)
    if fed.push_to_hub:
        require_credentials("--push-to-hub")


def _check_finite(*arguments: ModelArguments | DataArguments | FederatedArguments) -> None:
    for group in arguments:
        for f in dataclasses.fields(group):
            values = getattr(group, f.name)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, float) and not math.isfinite(value):
                    raise FedSQError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


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


def _check_auto_augment(policy: str) -> None:
    advice = "try rand-m9-mstd0.5, augmix-m5-w4-d2 or original-mstd0.5"
    # timm silently skips a section without a number ("rand-xyz" runs as plain "rand"): refuse it here
    ignored = [c for c in policy.split("-")[1:] if not re.fullmatch(r"[a-z]+\d[\d.]*", c)
               and not (policy.startswith("rand") and c.startswith("t"))]
    if ignored:
        raise FedSQError(f"--auto-augment {policy!r} is not a timm policy: timm would ignore {ignored}; {advice}.")
    try:
        timm.data.create_transform(32, is_training=True, auto_augment=policy)
    except Exception as err:  # timm raises AssertionError, KeyError or ValueError for a bad policy string
        raise FedSQError(f"--auto-augment {policy!r} is not a timm policy ({type(err).__name__}: {err}); "
                         f"{advice}.") from err
