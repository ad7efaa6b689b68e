"""Image pipelines: timm's transforms, split so that uint8 images travel and the device normalises.

A pipeline has three parts:

* `prefix`, deterministic: a decoded image to a uint8 CHW tensor. A preload caches its output.
* `suffix`, random (None when there is nothing random): uint8 tensor to uint8 tensor, run per sample
  with the sample's own seed, so the result does not depend on which process or worker runs it.
* `finish`, on the device, per batch: normalisation (as timm's prefetcher does) and random erasing.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import RandomHorizontalFlip
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from ...errors import FedSQError
from ...image_processing_fedsq import to_rgb

__all__ = ["AUGMENTATIONS", "ImagePipeline", "build_pipelines", "seeded", "to_rgb", "with_image_size"]

AUGMENTATIONS = ("none", "flip", "timm")


@contextlib.contextmanager
def seeded(device: torch.device | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `seed(s)`, which seeds Python's, NumPy's and torch's global RNGs (timm and torchvision
    transforms draw from all three; on CUDA also `device`'s); the caller's streams are restored after."""
    cuda = device is not None and device.type == "cuda"
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if cuda else None

    def seed(s: int) -> None:
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.default_generator.manual_seed(s)
        if cuda:
            torch.cuda.default_generators[device.index or 0].manual_seed(s)

    try:
        yield seed
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda:
            torch.cuda.set_rng_state(cuda_state, device)


class _RGBThen:
    """`transform(to_rgb(image))`; a class, not a lambda, so that spawned loader workers can pickle it."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(to_rgb(image))


class _ToPIL:
    """uint8 CHW tensor to a PIL image (timm's training transforms and auto-augment work on PIL)."""

    def __call__(self, x: torch.Tensor) -> Image.Image:
        return to_pil_image(x)

    def __repr__(self) -> str:
        return "ToPIL()"


@dataclass
class ImagePipeline:
    """What happens to one image on its way to the model (see the module docstring)."""

    prefix: Callable[[Image.Image], torch.Tensor]
    suffix: Callable[[torch.Tensor], torch.Tensor] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    prefix_size: tuple[int, int] | None  # (H, W) of every prefix output; None: the source image's size
    re_prob: float = 0.0
    augment: str = "none"
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def random(self) -> bool:
        return self.suffix is not None or self.re_prob > 0

    def apply_suffix(self, images: list[torch.Tensor], seeds: list[int | None]) -> list[torch.Tensor]:
        if self.suffix is None or seeds[0] is None:
            return images
        out = []
        with seeded() as seed:
            for image, s in zip(images, seeds):
                seed(s)
                out.append(self.suffix(image))
        return out

    def finish(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """uint8 batch on the device to the model's input: normalised, then randomly erased (training,
        with a batch `seed`). A floating batch is taken as already model-ready."""
        if x.is_floating_point():
            return x
        mean, std = self._constants(x.device)
        x = x.float().sub_(mean).div_(std)
        if self.re_prob > 0 and seed is not None:
            with seeded(x.device) as seed_all:
                seed_all(seed)
                x = RandomErasing(self.re_prob, mode="pixel", device=x.device)(x)
        return x

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std scaled to 0..255, on `device`, made once per device (not a copy per batch)."""
        if device not in self._on_device:
            scale = lambda v: torch.tensor(v, device=device).view(1, -1, 1, 1) * 255  # noqa: E731
            self._on_device[device] = scale(self.mean), scale(self.std)
        return self._on_device[device]

    def bytes_per_sample(self, source_size: tuple[int, int]) -> int:
        """uint8 bytes a preload keeps per sample, given the (W, H) of a source image."""
        h, w = self.prefix_size or source_size[::-1]
        return 3 * h * w


def build_pipelines(
    data_config: dict[str, Any],
    augment: str = "none",
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    crop_scale: tuple[float, float] | None = None,
) -> tuple[ImagePipeline, ImagePipeline]:
    """(train, eval) pipelines of a timm data config. Eval is the config's eval transform; train adds
    nothing (`none`), seeded horizontal flips (`flip`), or timm's own training transform (`timm`:
    random resized crop, flip, colour jitter or `auto_augment`, random erasing with `re_prob`)."""
    if augment not in AUGMENTATIONS:
        raise FedSQError(f"augment must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    cfg = timm.data.resolve_data_config(data_config)
    size = tuple(cfg["input_size"][1:])
    eval_prefix = timm.data.create_transform(**cfg, is_training=False, use_prefetcher=True)
    common = dict(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), augment=augment)
    evaluation = ImagePipeline(_RGBThen(eval_prefix), None, prefix_size=size,
                               **{**common, "augment": "none"})
    if augment == "none":
        return evaluation, evaluation
    if augment == "flip":
        return ImagePipeline(evaluation.prefix, RandomHorizontalFlip(), prefix_size=size, **common), evaluation
    train = timm.data.create_transform(
        input_size=cfg["input_size"], is_training=True, use_prefetcher=True, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], auto_augment=auto_augment, scale=crop_scale,
    )
    train.transforms.insert(0, _ToPIL())
    return ImagePipeline(_RGBThen(pil_to_tensor), train, prefix_size=None, re_prob=re_prob, **common), evaluation


def with_image_size(data_config: dict[str, Any], image_size: int) -> dict[str, Any]:
    """`data_config` resizing whole images to `image_size` (no crop: small datasets are already framed)."""
    return {**data_config, "input_size": [3, image_size, image_size], "crop_pct": 1.0}
