"""Crash-safe file writes and checked safetensors loading. Loading never unpickles."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import CheckpointError

__all__ = ["atomic_write_bytes", "atomic_write_json", "save_weights", "load_weights", "check_state_dict",
           "check_finite", "is_of_type", "umask", "with_variant", "save_tensors", "shard_files"]


def umask() -> int:
    """The process umask. Read from /proc where it can be: `os.umask` can only read it by setting it,
    which races with other threads (a background Hub upload, say)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash leaves either the old file or the new one, never a partial one. The file gets the mode a
    plain `open(path, "w")` would (0644 under the usual umask 022), not the temporary file's 0600.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno and err.filename in (None, tmp):  # name the file meant, not ours
            raise OSError(err.errno, os.strerror(err.errno), path) from err
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """Save tensors as safetensors, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt"}))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupted file raises `CheckpointError`."""
    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a readable safetensors file ({err}). It may be truncated or "
            "corrupted by an interrupted copy: download or save it again."
        ) from err


def check_state_dict(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Raise `CheckpointError` listing missing, unexpected, mis-shaped and mistyped (integer for float) tensors."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(loaded) & set(expected))
        if loaded[k].shape != expected[k].shape
    ]
    mistyped = [  # float16 for float32 is a fine export; integers for floats would be cast into garbage
        f"{k}: checkpoint {loaded[k].dtype} vs model {expected[k].dtype}"
        for k in sorted(set(loaded) & set(expected))
        if loaded[k].is_floating_point() != expected[k].is_floating_point()
    ]
    if not (missing or unexpected or mismatched or mistyped):
        return
    lines = []
    for title, items in (("shape mismatch", mismatched), ("dtype mismatch", mistyped), ("missing", missing),
                         ("unexpected", unexpected)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:10]) + (" ..." if len(items) > 10 else ""))
    raise CheckpointError(
        f"The weights in {source} do not match the model built from its config:\n" + "\n".join(lines)
        + "\nWere they saved for another backbone or num_labels? Load them with the config they were saved with."
    )


def check_finite(state: dict[str, torch.Tensor], source: str, error: type[Exception] = CheckpointError) -> None:
    """Raise `error` naming `source` and its first tensors holding NaN or Inf (floating tensors only)."""
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise error(
            f"The weights in {source} hold NaN or Inf values in {', '.join(bad[:3])}{more}: they are corrupted, e.g. "
            "saved after training diverged. Use an earlier checkpoint, or export the weights again."
        )


def is_of_type(value: object, kinds: tuple[type, ...]) -> bool:
    """`isinstance` for a value read from JSON, where `true` is no int unless `bool` is among `kinds`."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and values): whether two models hold the same weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())  # the bytes in place, no copy
    return digest.hexdigest()


def with_variant(name: str, variant: str | None) -> str:
    """`model.safetensors` -> `model.<variant>.safetensors`, as transformers names variants."""
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}" if variant else name


def save_tensors(folder: str | os.PathLike, name: str, state: dict[str, torch.Tensor], variant: str | None,
                 max_shard_size: int | str) -> None:
    """Save `state` as `name` in `variant`: one file, or shards and their index past `max_shard_size`."""
    index_name = with_variant(f"{name}.index.json", variant)
    name = with_variant(name, variant)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern=name.replace(".safetensors", "{suffix}.safetensors"), max_shard_size=max_shard_size)
    for file, keys in split.filename_to_tensors.items():
        save_weights(os.path.join(folder, file), {k: state[k] for k in keys})
    if split.is_sharded:
        atomic_write_json(os.path.join(folder, index_name),
                          {"metadata": split.metadata, "weight_map": split.tensor_to_filename})
    # This variant's files from an earlier save in the other layout would shadow or outlive the new ones.
    shard = re.compile(re.escape(name.removesuffix(".safetensors")) + r"-\d{5}-of-\d{5}\.safetensors")
    for file in os.listdir(folder):
        if file not in split.filename_to_tensors and (
                file == name or shard.fullmatch(file) or file == index_name and not split.is_sharded):
            os.remove(os.path.join(folder, file))


def shard_files(index: str) -> list[str]:
    """The shard files a `*.safetensors.index.json` names: plain file names beside it."""
    try:
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError, AttributeError):
        files = []
    if not files or not all(isinstance(f, str) and re.fullmatch(r"[\w.-]+\.safetensors", f) for f in files):
        raise CheckpointError(f"{index!r} is not a shard index as save_pretrained writes it (a weight_map of tensor "
                              "names to .safetensors files beside it). Download or save the model again.")
    return files
