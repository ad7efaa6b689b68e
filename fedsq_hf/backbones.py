"""Loading pretrained timm backbones from a Hub id or a local folder in Hub layout."""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from torch import nn

from .errors import BackboneLoadError
from .gating import register_gate

__all__ = ["load_backbone", "timm_model_name", "looks_like_path"]

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
        raise BackboneLoadError(
            f"Backbone folder {backbone!r} does not exist. Point `backbone` at a folder holding a timm "
            "checkpoint in Hub layout (config.json + model.safetensors), or use a Hub id like 'timm/resnet18.a1_in1k'."
        )
    return "hf-hub:" + backbone


def load_backbone(backbone: str, num_labels: int, **kwargs: Any) -> nn.Module:
    """A pretrained timm model with a fresh head of `num_labels` outputs."""
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
            return timm.create_model(name, pretrained=True, num_classes=num_labels, **kwargs)
    except Exception as err:  # timm surfaces Hub, file and parsing failures as many types
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise BackboneLoadError(
            f"Could not load backbone {backbone!r} ({type(err).__name__}: {err}). Check the Hub id"
            + (" (HF_HUB_OFFLINE is set, so only the local HF cache is searched)" if offline else "")
            + ", or point `backbone` at a local folder in timm Hub layout (config.json + model.safetensors), "
            "e.g. FedSQModel.from_pretrained(path, backbone='/path/to/backbone')."
        ) from err
