"""FedSQConfig: what a FedSQ model is, serialised as `config.json`."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from huggingface_hub.dataclasses import strict
from timm.data.transforms import str_to_interp_mode
from transformers import PreTrainedConfig

from .errors import FedSQError
from .gating import GATE_KINDS
from .serialization import is_of_type

__all__ = ["FedSQConfig", "BN_MODES", "MAX_LABELS", "as_torch_dtype"]

BN_MODES = ("frozen", "train", "local")
MAX_LABELS = 1_000_000  # a head this wide is already 2 GB at 512 features; more is a typo or a corrupted file
# Checked on every config, including one read from an untrusted config.json.
_FIELD_TYPES = {
    "backbone": (str,),
    "gated_ops": (list, type(None)),
    "allow_ungated": (bool,),
    "fixed_gating": (bool,),
    "bn_mode": (str,),
    "backbone_kwargs": (dict, type(None)),
    "backbone_weights": (str, type(None)),
    "pretrained_cfg": (dict, type(None)),
    "calibrated": (bool,),
    "gates_frozen_at_round": (int, type(None)),
    "fedsq_version": (str, type(None)),
    "backbone_sha256": (str, type(None)),
    "num_labels": (int,),
}


@strict(accept_kwargs=True)
class FedSQConfig(PreTrainedConfig):
    r"""Configuration of a `FedSQModel`.

    Args:
        backbone: Hub id of a timm checkpoint (`timm/resnet18.a1_in1k`), a local folder in the same
            layout (`config.json` + `model.safetensors`), a `hf-hub:` / `local-dir:` timm name, or a
            torchvision classifier `torchvision:<name>[:<weights>]` (e.g. `torchvision:alexnet`, whose
            ImageNet weights come from torchvision's weight enum, DEFAULT unless named).
        backbone_weights: a local weights file for a torchvision backbone (torchvision's `.pth`, loaded
            with `weights_only=True`, or safetensors), for machines that cannot download.
        num_labels / id2label / label2id: the task head, as in every transformers classifier.
        gated_ops: gate kinds to fix (see `fedsq_hf.GATE_KINDS`); None fixes every supported kind.
        allow_ungated: leave nonlinearities that cannot be gated (GELU, SiLU, ...) free instead of
            refusing the backbone.
        fixed_gating: False builds the plain baseline (the same backbone fine-tuned the usual way,
            same weight layout, no structural copy).
        bn_mode: BatchNorm of the quantitative copy while training. `frozen` (default): running
            statistics stay at the pretrained values and only the affine parameters train, so each
            sample's map is affine within its fixed regimes and no batch statistic is averaged
            across non-IID clients. `train`: batch statistics, running statistics updated and averaged
            by sample count. `local` (FedBN): as `train` on each client, but the BatchNorm parameters
            and statistics stay with the client and are never averaged; the global model is evaluated
            and saved with the sample-weighted mean of the clients' BatchNorms.
            The structural copy always uses its pretrained statistics.
        backbone_kwargs: extra keyword arguments for `timm.create_model` (e.g. `drop_rate`).
        pretrained_cfg: the preprocessing the model expects (timm data config: input_size, mean, std,
            crop_pct, interpolation), filled in from the backbone when the model is built; the same key
            timm checkpoints use, so `TimmWrapperImageProcessor` (and `pipeline`) read it.
        calibrated: the structural copy was re-frozen from a trained model, after a calibration warm-up
            (`fedsq_hf.federated.calibrate`) or a federated gate warm-up; it then differs from the
            backbone and is saved too (`structural.safetensors`).
        gates_frozen_at_round: with a federated gate warm-up, the round at whose start the structural copy
            was re-frozen from the global model (rounds before it trained without fixed gates).
        fedsq_version: the fedsq-hf version that wrote the config.
        backbone_sha256: SHA-256 of the pretrained backbone's weights (its head aside), set when the model is
            first built. The structural copy is rebuilt from the backbone on load, so a load whose backbone
            weights differ (an updated Hub repo, another file at the same path) is refused: its gates would
            differ.
    """

    model_type = "fedsq"

    backbone: str = "timm/resnet18.a1_in1k"
    gated_ops: list[str] | None = None
    allow_ungated: bool = False
    fixed_gating: bool = True
    bn_mode: Literal["frozen", "train", "local"] = "frozen"
    backbone_kwargs: dict[str, Any] | None = None
    backbone_weights: str | None = None
    pretrained_cfg: dict[str, Any] | None = None
    calibrated: bool = False
    gates_frozen_at_round: int | None = None
    fedsq_version: str | None = None
    backbone_sha256: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        _check_labels(self.id2label, self.label2id)
        if "num_labels" in kwargs:
            _check_num_labels(kwargs["num_labels"])
        for key, value in (("dtype", self.dtype), ("torch_dtype", kwargs.get("torch_dtype"))):
            if value is not None:
                as_torch_dtype(value, f"FedSQConfig.{key}")
        super().__post_init__(**kwargs)
        from . import __version__

        if self.fedsq_version is None:
            self.fedsq_version = __version__
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not is_of_type(value, kinds):
                expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise FedSQError(f"FedSQConfig.{name} must be {expected}, got {type(value).__name__} {value!r}.")
        if self.gated_ops is not None and not all(isinstance(op, str) for op in self.gated_ops):
            raise FedSQError(f"FedSQConfig.gated_ops must be a list of names, got {self.gated_ops!r}.")
        if not self.backbone:
            raise FedSQError("FedSQConfig.backbone must be a Hub id (e.g. 'timm/resnet18.a1_in1k') or a local folder.")
        if self.gated_ops is not None:
            unknown = sorted(set(self.gated_ops) - set(GATE_KINDS))
            if unknown:
                raise FedSQError(f"Unknown gated_ops {unknown}; choose from {sorted(GATE_KINDS)}.")
        if self.bn_mode not in BN_MODES:
            raise FedSQError(f"Unknown bn_mode {self.bn_mode!r}; choose from {list(BN_MODES)}.")
        if self.num_labels < 1:
            raise FedSQError("FedSQConfig.id2label is empty: a classifier needs at least one label.")
        if self.pretrained_cfg is not None:
            _check_pretrained_cfg(self.pretrained_cfg)

    @property
    def num_labels(self) -> int | None:
        """The number of labels: the length of `id2label`."""
        return PreTrainedConfig.num_labels.fget(self)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        _check_num_labels(value)
        PreTrainedConfig.num_labels.fset(self, value)


def as_torch_dtype(value: Any, where: str) -> torch.dtype:
    """`value` (a floating torch.dtype or its name, e.g. "bfloat16") as a torch.dtype; FedSQError naming `where`
    otherwise."""
    found = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise FedSQError(
            f"{where} must be a floating-point torch dtype such as 'float32', 'float16' or 'bfloat16', got {value!r}."
        )
    return found


def _check_pretrained_cfg(cfg: dict[str, Any]) -> None:
    """The keys of timm's data config that the preprocessing reads, checked when config.json is read rather
    than at the first image."""
    numbers = lambda v, n: isinstance(v, list | tuple) and len(v) == n and all(  # noqa: E731
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    checks = {
        "input_size": ("[3, height, width] with sizes of at least 8 px",
                       lambda v: numbers(v, 3) and all(isinstance(x, int) for x in v) and v[0] == 3 and min(v[1:]) >= 8),
        "mean": ("3 finite numbers (one per RGB channel)", lambda v: numbers(v, 3)),
        "std": ("3 positive finite numbers (one per RGB channel)", lambda v: numbers(v, 3) and min(v) > 0),
        "crop_pct": ("a number in (0, 1]", lambda v: numbers([v], 1) and 0 < v <= 1),
        "crop_mode": ("center, squash or border", lambda v: v in ("center", "squash", "border")),
        "interpolation": ("one of timm's modes (bilinear, bicubic, nearest, ...)", _is_interpolation),
    }
    for key, (expected, ok) in checks.items():
        if key in cfg and not ok(cfg[key]):
            raise FedSQError(f"FedSQConfig.pretrained_cfg[{key!r}] must be {expected}, got {cfg[key]!r}: fix it in "
                             "config.json, or remove the key to use timm's default.")


def _is_interpolation(value: Any) -> bool:
    try:
        str_to_interp_mode(value)
    except (KeyError, TypeError):
        return False
    return True


def _check_num_labels(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedSQError(f"num_labels must be an int, got {type(value).__name__} {value!r}.")
    if not 1 <= value <= MAX_LABELS:
        raise FedSQError(
            f"num_labels must be between 1 and {MAX_LABELS:,}, got {value:,}. Set it to the number of classes."
        )


def _check_labels(id2label: Any, label2id: Any) -> None:
    """id2label maps 0..n-1 (ints, or their strings as JSON writes them) to names; label2id is a dict."""
    for name, value in (("id2label", id2label), ("label2id", label2id)):
        if value is not None and not isinstance(value, dict):
            raise FedSQError(
                f"FedSQConfig.{name} must be a dict or None, got {type(value).__name__} {str(value)[:80]}. "
                'Write it as {"0": "cat", "1": "dog"} (id2label) or {"cat": 0, "dog": 1} (label2id).'
            )
    if id2label is None:
        return
    if len(id2label) > MAX_LABELS:
        raise FedSQError(f"FedSQConfig.id2label has {len(id2label):,} labels, more than the {MAX_LABELS:,} allowed.")
    try:
        ids = sorted(int(k) for k in id2label if not isinstance(k, bool))
    except (TypeError, ValueError):
        ids = None
    if ids != list(range(len(id2label))):
        raise FedSQError(
            f"FedSQConfig.id2label keys must be the label ids 0..{len(id2label) - 1}, got {list(id2label)[:10]}. "
            'Write it as {"0": "cat", "1": "dog", ...}.'
        )
