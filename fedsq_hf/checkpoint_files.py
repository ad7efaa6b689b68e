"""The files of a saved FedSQ model, as transformers lays them out: `config.json`, the weights in one
safetensors file, a variant (`model.fp16.safetensors`) or shards named by an index, in a local folder or
a Hub repo; and the arguments of `from_pretrained` / `save_pretrained` that choose them."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from .backbones import looks_like_path
from .configuration_fedsq import FedSQConfig
from .errors import CheckpointError, FedSQError, UnsupportedArgumentError
from .serialization import load_weights, shard_files, with_variant

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "STRUCTURAL_NAME", "check_variant", "check_shard_size", "load_tensors",
           "one_device", "resolve_file", "load_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STRUCTURAL_NAME = "structural.safetensors"  # only for calibrated models (re-frozen gates), whose structural copy is not the backbone


def check_variant(variant: str | None) -> None:
    if variant is not None and not (isinstance(variant, str) and re.fullmatch(r"\w[\w.-]*", variant)):
        raise FedSQError(f"variant must be a name such as 'fp16' (letters, digits, '_', '-', '.'), got {variant!r}.")


def check_shard_size(size: int | str) -> None:
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0
            or isinstance(size, str) and re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]B", size, re.IGNORECASE)):
        raise FedSQError(f"max_shard_size must be a number of bytes or a size such as '5GB' or '500MB', got {size!r}.")


def load_tensors(source: str, name: str, hub: dict[str, Any], variant: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors saved as `name` in `variant` (one file, or the shards its index names) and their path."""
    index_name = with_variant(f"{name}.index.json", variant)
    name = with_variant(name, variant)
    path = resolve_file(source, name, hub, missing_ok=True)
    if path is not None:
        return load_weights(path), path
    index = resolve_file(source, index_name, hub, missing_ok=True)
    if index is None:
        if variant and os.path.isdir(source):
            variant_file = re.compile(r"model\.([\w.-]+?)(-\d{5}-of-\d{5})?\.safetensors")
            found = sorted({m[1] for f in os.listdir(source) if (m := variant_file.fullmatch(f))})
            raise CheckpointError(f"{source!r} has no {name}: it holds no variant {variant!r} (variants there: "
                                  f"{found or 'none'}). Save one with save_pretrained(..., variant={variant!r}).")
        resolve_file(source, name, hub)  # raises, naming the missing file
    state: dict[str, torch.Tensor] = {}
    for shard in shard_files(index):
        state.update(load_weights(resolve_file(source, shard, hub)))
    return state, index


def one_device(device_map: str | int | torch.device | dict[str, Any] | None) -> torch.device | None:
    """The one device `device_map` names: a FedSQ model is never split across devices (its structural copy,
    no submodule, could not follow the parts)."""
    if device_map is None:
        return None
    if device_map == "auto":
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        (device,) = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        device = torch.device(device)
    except (ValueError, RuntimeError, TypeError):
        device = None
    if device is None or device.type == "meta":
        raise UnsupportedArgumentError(
            f"device_map={device_map!r}: a FedSQ model runs on one device. Pass device_map='auto', a device such as "
            "'cuda:0', or {'': 'cuda:0'}."
        )
    return device


def resolve_file(source: str, filename: str, hub: dict[str, Any], missing_ok: bool = False) -> str | None:
    """The local path of `filename` in the checkpoint `source` (a folder or a Hub repo id); None if it is
    missing and `missing_ok`."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            if missing_ok:
                return None
            raise CheckpointError(f"{source!r} has no {filename}: it is not a saved FedSQ model (save_pretrained writes one).")
        return path
    if looks_like_path(source):
        found = "is a file, not a folder: pass the folder holding it" if os.path.exists(source) else "does not exist"
        raise CheckpointError(f"Checkpoint folder {source!r} {found}.")
    try:
        return hf_hub_download(source, filename, **hub)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        if missing_ok and isinstance(err, EntryNotFoundError):
            return None
        raise CheckpointError(
            f"Could not get {filename} of {source!r} from the Hub ({type(err).__name__}: {err}). Check the repo id "
            "and revision, your access (hf auth login or HF_TOKEN), or pass a local folder."
        ) from err


def load_config(path: str, overrides: dict[str, Any]) -> FedSQConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(
            f"{path!r} is not a readable JSON config ({type(err).__name__}: {err}). It may be corrupted: "
            "download it again, or write it again with save_pretrained."
        ) from err
    if not isinstance(raw, dict) or raw.get("model_type") != FedSQConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path!r} is not a FedSQ config (model_type={found!r}, expected 'fedsq'). "
            "Load other models with their own class."
        )
    try:  # overrides go through the same checks as the file's fields
        return FedSQConfig.from_dict({**raw, **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path!r} is not a valid FedSQ config: {err}") from err
