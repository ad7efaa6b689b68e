"""Loading pretrained backbones: timm (a Hub id or a local folder in Hub layout) or torchvision
(`torchvision:<name>[:<weights enum member>]`, weights from torchvision's own enums or a local file)."""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from torch import nn

from .errors import BackboneLoadError
from .gating import register_gate
from .serialization import check_finite, load_weights

__all__ = ["load_backbone", "timm_model_name", "looks_like_path", "classifier_of", "TORCHVISION_PREFIX"]

TORCHVISION_PREFIX = "torchvision:"
# Arguments fedsq-hf passes itself; in backbone_kwargs they would clash with them.
_RESERVED_KWARGS = {"timm": ("pretrained", "num_classes"), "torchvision": ("weights", "num_classes")}

# timm's PReLU overrides forward with the same computation as torch's.
register_gate(timm.layers.activations.PReLU, "prelu")


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths: Hub ids have one "/" and no leading ".", "/", "~"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def timm_model_name(backbone: str) -> str:
    """The `timm.create_model` name for a backbone id: `hf-hub:<id>` or `local-dir:<folder>`."""
    if backbone.startswith(("hf-hub:", "local-dir:")):
        return backbone
    if os.path.isdir(os.path.expanduser(backbone)):
        return "local-dir:" + os.path.abspath(os.path.expanduser(backbone))
    if looks_like_path(backbone):
        found = "is a file, not a folder" if os.path.exists(os.path.expanduser(backbone)) else "does not exist"
        raise BackboneLoadError(
            f"Backbone folder {backbone!r} {found}. Point `backbone` at a folder holding a timm "
            "checkpoint in Hub layout (config.json + model.safetensors), or use a Hub id like 'timm/resnet18.a1_in1k'."
        )
    return "hf-hub:" + backbone


def load_backbone(backbone: str, num_labels: int, weights_file: str | None = None, **kwargs: Any) -> nn.Module:
    """A pretrained model with a fresh head of `num_labels` outputs and its preprocessing in
    `.pretrained_cfg` (timm's convention, also set on torchvision models)."""
    source = "torchvision" if backbone.startswith(TORCHVISION_PREFIX) else "timm"
    _check_backbone_kwargs(kwargs, source)
    if source == "torchvision":
        model = _load_torchvision(backbone, num_labels, weights_file, **kwargs)
        where = f"backbone_weights {weights_file!r}" if weights_file else f"backbone {backbone!r}"
        check_finite(model.state_dict(), where, BackboneLoadError)
        return model
    if weights_file is not None:
        raise BackboneLoadError("backbone_weights is for torchvision backbones; a timm backbone's folder holds its weights.")
    name = timm_model_name(backbone)
    if name.startswith("local-dir:"):
        folder = name[len("local-dir:") :]
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise BackboneLoadError(
                f"Backbone folder {folder!r} has no config.json: it is not a timm checkpoint in Hub layout. "
                "Save one with timm.models.save_for_hf(model, folder, safe_serialization=True)."
            )
    try:
        with torch.device("cpu"):
            model = timm.create_model(name, pretrained=True, num_classes=num_labels, **kwargs)
    except Exception as err:  # timm surfaces Hub, file, parsing and constructor failures as many types
        if kwargs and _loads_without_kwargs(name, num_labels):
            raise _kwargs_error(backbone, kwargs, err) from err
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise BackboneLoadError(
            f"Could not load backbone {backbone!r} ({type(err).__name__}: {err}). Check the Hub id"
            + (" (HF_HUB_OFFLINE is set, so only the local HF cache is searched)" if offline else "")
            + ", or point `backbone` at a local folder in timm Hub layout (config.json + model.safetensors), "
            "e.g. FedSQModel.from_pretrained(path, backbone='/path/to/backbone')."
        ) from err
    check_finite(model.state_dict(), f"backbone {backbone!r}", BackboneLoadError)
    return model


def _check_backbone_kwargs(kwargs: dict[str, Any], source: str) -> None:
    """Refuse backbone_kwargs that clash with fedsq-hf's own arguments or set a dropout rate that is not
    a number in [0, 1] (timm only fails on those at the first forward)."""
    clash = sorted(set(kwargs) & set(_RESERVED_KWARGS[source]))
    if clash:
        raise BackboneLoadError(
            f"backbone_kwargs may not set {clash}: fedsq-hf sets them itself (num_classes from num_labels, the "
            "pretrained weights from backbone / backbone_weights). Remove them from backbone_kwargs."
        )
    for key, value in kwargs.items():
        if not (key.endswith("dropout") or ("drop" in key and key.endswith("_rate"))):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise BackboneLoadError(
                f"backbone_kwargs[{key!r}] must be a number in [0, 1], got {value!r}. Fix or remove it."
            )


def _loads_without_kwargs(name: str, num_labels: int) -> bool:
    """Whether timm can build `name` without backbone_kwargs: then they caused the failure."""
    try:
        with torch.device("cpu"):
            timm.create_model(name, pretrained=True, num_classes=num_labels)
    except Exception:
        return False
    return True


def _kwargs_error(backbone: str, kwargs: dict[str, Any], err: Exception) -> BackboneLoadError:
    return BackboneLoadError(
        f"The model class of backbone {backbone!r} rejected backbone_kwargs {kwargs} ({type(err).__name__}: {err}). "
        "Fix or remove backbone_kwargs: they are passed to the model's constructor."
    )


def _load_torchvision(backbone: str, num_labels: int, weights_file: str | None, **kwargs: Any) -> nn.Module:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    name, _, member = backbone[len(TORCHVISION_PREFIX):].partition(":")
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise BackboneLoadError(f"Unknown torchvision model {name!r} in backbone {backbone!r}; choose from {known}.")
    enum = get_model_weights(name)
    try:
        weights = enum[member] if member else enum.DEFAULT
    except KeyError:
        raise BackboneLoadError(
            f"{name} has no weights {member!r}; choose from {[w.name for w in enum]} (or leave it out for DEFAULT)."
        ) from None
    try:
        with torch.device("cpu"):
            model = get_model(name, weights=None if weights_file else weights, **kwargs)
    except (TypeError, ValueError) as err:
        if not kwargs:
            raise _torchvision_error(backbone, weights, err) from err
        raise _kwargs_error(backbone, kwargs, err) from err
    except (OSError, RuntimeError) as err:
        raise _torchvision_error(backbone, weights, err) from err
    if weights_file is not None:
        try:
            model.load_state_dict(_read_state_dict(weights_file))
        except RuntimeError as err:  # names that do not match the model, shape mismatches
            raise _torchvision_error(backbone, weights, err) from err
    parent, attr, head = _last_linear(model)
    setattr(parent, attr, nn.Linear(head.in_features, num_labels))  # also right for nn.Sequential's "6"
    transform = weights.transforms()
    model.pretrained_cfg = {
        "input_size": [3, transform.crop_size[0], transform.crop_size[0]],
        "crop_pct": transform.crop_size[0] / transform.resize_size[0],
        "interpolation": transform.interpolation.value,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "crop_mode": "center",
    }
    return model


def _torchvision_error(backbone: str, weights: Any, err: Exception) -> BackboneLoadError:
    return BackboneLoadError(
        f"Could not load backbone {backbone!r} ({type(err).__name__}: {err}). Online, torchvision downloads "
        f"{weights.url}; offline, pass that file (or a safetensors export) as backbone_weights='/path/to/file'."
    )


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file or a `.pth` state dict (read with weights_only=True)."""
    if path.endswith(".safetensors"):
        try:
            return load_weights(path)
        except OSError as err:  # CheckpointError: missing, truncated or corrupted
            raise BackboneLoadError(f"backbone_weights: {err}") from err
    if not os.path.isfile(path):
        raise BackboneLoadError(
            f"backbone_weights file {path!r} does not exist or is not a file. Pass the path of the weights file "
            "(torchvision's .pth, or a .safetensors export)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # torchvision's .pth: tensors only, no code
    except Exception as err:  # not torch's advice (weights_only=False would run whatever the file holds)
        raise BackboneLoadError(
            f"Weights file {path!r} is not a PyTorch state dict fedsq-hf can read safely ({type(err).__name__}): "
            "pass the .pth torchvision downloads, or a .safetensors export of the weights."
        ) from None
    tensors = isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    if not tensors:
        found = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
        raise BackboneLoadError(
            f"Weights file {path!r} holds {found}, not a state dict (a dict of parameter name -> tensor). "
            "If it wraps one (e.g. {'model': state_dict}), save the inner dict: torch.save(ckpt['model'], path)."
        )
    return state


def classifier_of(model: nn.Module) -> nn.Module:
    """The task head: timm's `get_classifier()`, else the last nn.Linear."""
    return model.get_classifier() if hasattr(model, "get_classifier") else _last_linear(model)[2]


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute name, layer) of the last nn.Linear: a torchvision classifier's head."""
    found = None
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, attr, child)
    if found is None:
        raise BackboneLoadError(f"{type(model).__name__} has no nn.Linear head to replace.")
    return found
