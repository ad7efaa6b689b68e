"""Preprocessing of a saved FedSQ model, as training preprocesses: timm's eval transform (the model's
`pretrained_cfg`, as timm checkpoints keep it) after the same image-mode conversion (`to_rgb`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, ImageClassificationPipeline
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import make_flat_list_of_images
from transformers.models.timm_wrapper import TimmWrapperImageProcessor
from transformers.pipelines import SUPPORTED_TASKS

from .configuration_fedsq import FedSQConfig

__all__ = ["to_rgb", "FedSQImageProcessor", "FedSQImageClassificationPipeline"]

STOCK_PIPELINE = "transformers.pipelines.image_classification.ImageClassificationPipeline"


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB as a person would see it, where PIL's own conversion clips high grey levels to white.
    16-bit grey (`I;16`) is scaled to 8 bits; 32-bit integer grey (`I`, which is also how `datasets`
    stores 8-bit arrays) is scaled from the 16-bit range only when a value exceeds 255; float grey is
    taken from [0, 1] when all values are in it, else as 0..255. Transparency is composited on white and
    the other modes (palette, CMYK, 1-bit, grey) converted, as transformers' `convert_to_rgb` does."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        high = grey.size and grey.max() > 255
        if image.mode == "F":
            scale = 255.0 if grey.size and 0 <= grey.min() and grey.max() <= 1 else 1.0
        else:
            scale = 255 / 65535 if image.mode.startswith("I;16") or high else 1.0
        image = Image.fromarray(np.clip(np.rint(grey * scale), 0, 255).astype(np.uint8), mode="L")
    return Image.fromarray(convert_to_rgb(image, return_numpy=True))


class FedSQImageProcessor(TimmWrapperImageProcessor):
    """timm's eval preprocessing (`pretrained_cfg` in config.json), after training's mode conversion
    (`to_rgb`: 16-bit grey scaled to 8 bits, not clipped to white)."""

    def preprocess(self, images: Any, return_tensors: str | None = "pt") -> Any:
        if not isinstance(images, torch.Tensor):
            images = [to_rgb(i) if isinstance(i, Image.Image) else i for i in make_flat_list_of_images(images)]
        return super().preprocess(images, return_tensors=return_tensors)


class FedSQImageClassificationPipeline(ImageClassificationPipeline):
    """The image-classification pipeline with training's mode conversion for FedSQ models: the stock one
    converts images with PIL before the image processor sees them, which clips 16-bit grey to white. Other
    models' images go through the stock preprocessing unchanged, so `pipeline("image-classification")`
    uses this class for every model (set below, where the task still has the stock class)."""

    def preprocess(self, image: Any, timeout: float | None = None) -> Any:
        if getattr(self.model.config, "model_type", None) == FedSQConfig.model_type:
            if isinstance(image, str) and os.path.isfile(image):
                image = Image.open(image)
            if isinstance(image, Image.Image):
                image = to_rgb(ImageOps.exif_transpose(image))
        return super().preprocess(image, timeout=timeout)


AutoImageProcessor.register(
    FedSQConfig, image_processor_classes={"pil": FedSQImageProcessor, "torchvision": FedSQImageProcessor},
    exist_ok=True,
)
_TASK = SUPPORTED_TASKS["image-classification"]
if _TASK["impl"] in (STOCK_PIPELINE, ImageClassificationPipeline):  # never over another library's override
    _TASK["impl"] = FedSQImageClassificationPipeline
