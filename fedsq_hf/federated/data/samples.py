"""Where a run's images come from: streamed from a `datasets.Dataset`, or preloaded as uint8.

Both are map-style datasets indexed by a whole batch, a list of (dataset index, augmentation seed)
pairs, and return (uint8 pixels, labels, dataset indices); the device normalises (`ImagePipeline.finish`).
A client is a list of indices into the shared dataset: no split's pixels are ever copied whole,
except by a preload the user's budget allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ...errors import FedSQError
from .batches import OrderedBatches
from .splits import label_ids_in_range
from .transforms import ImagePipeline

__all__ = ["StreamedSamples", "PreloadedSamples", "preload", "estimate_preload_bytes", "model_inputs",
           "first_model_inputs", "as_samples"]

Batch = Sequence[tuple[int, "int | None"]]
SIZE_SAMPLE = 32  # images a preload of sources of varying size is estimated from: cheap at any split length


class StreamedSamples(torch.utils.data.Dataset):
    """Images of a `datasets.Dataset` (Arrow, memory-mapped), decoded and transformed per batch."""

    def __init__(self, ds: Dataset, image_column: str, label_column: str, pipeline: ImagePipeline,
                 num_labels: int, split: str = "train") -> None:
        self.ds = ds.select_columns([image_column, label_column])
        self.image_column, self.pipeline, self.split = image_column, pipeline, split
        label_ids_in_range(self.ds, label_column, num_labels, split)
        self.labels = torch.as_tensor(np.asarray(self.ds[label_column]), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def image_sizes(self, indices: list[int]) -> list[tuple[int, int]]:
        """(W, H) of these samples' decoded images: what a preload of decoded images estimates from."""
        return [image.size for image in self._images(indices)]

    def prefixed(self, indices: list[int]) -> list[torch.Tensor]:
        """The deterministic part of the pipeline, for these samples (one Arrow read)."""
        return [self.pipeline.prefix(image) for image in self._images(indices)]

    def _images(self, indices: list[int]) -> list:
        try:
            return self.ds[indices][self.image_column]
        except Exception as err:  # PIL and datasets raise many types for a broken image: find the row
            row = next((i for i in indices if not self._decodes(i)), indices[0])
            raise FedSQError(
                f"Row {row} of the {self.split} split (as loaded, after any --max-*-samples sampling) holds an image "
                f"in column {self.image_column!r} that cannot be decoded ({type(err).__name__}: {err}). Remove or "
                "re-encode that row."
            ) from err

    def _decodes(self, index: int) -> bool:
        try:
            self.ds[index][self.image_column]
            return True
        except Exception:
            return False

    def __getitem__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = [i for i, _ in batch]
        images = self.pipeline.apply_suffix(self.prefixed(indices), [s for _, s in batch])
        idx = torch.as_tensor(indices, dtype=torch.long)
        return torch.stack(images), self.labels[idx], idx


class _Prefixed(torch.utils.data.Dataset):
    def __init__(self, samples: StreamedSamples) -> None:
        self.samples = samples

    def __getitem__(self, batch: Batch) -> tuple[list[torch.Tensor], list[int]]:
        indices = [i for i, _ in batch]
        return self.samples.prefixed(indices), indices


class PreloadedSamples(torch.utils.data.Dataset):
    """Pixels in memory: uint8 (normalised on the device by `pipeline`), or model-ready floats
    (`pipeline=None`). A list holds images of different sizes (decoded sources of `--augment timm`)."""

    def __init__(self, pixels: torch.Tensor | list[torch.Tensor], labels: torch.Tensor,
                 pipeline: ImagePipeline | None = None) -> None:
        self.pixels, self.labels, self.pipeline = pixels, labels, pipeline

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor([i for i, _ in batch], dtype=torch.long)
        if self.pipeline is None or not self.pipeline.random:
            pixels = self.pixels[idx] if isinstance(self.pixels, torch.Tensor) else torch.stack([self.pixels[i] for i in idx])
            return pixels, self.labels[idx], idx
        images = [self.pixels[i] for i in idx]
        return torch.stack(self.pipeline.apply_suffix(images, [s for _, s in batch])), self.labels[idx], idx


def estimate_preload_bytes(samples: StreamedSamples, sample: int = SIZE_SAMPLE) -> int:
    """uint8 bytes a preload of `samples` keeps: exact when the pipeline resizes to a fixed size, else the
    mean over up to `sample` decoded images spread over the split (seeded), times its length."""
    pipeline, n = samples.pipeline, len(samples)
    if pipeline.prefix_size is not None or n == 0:
        return n * pipeline.bytes_per_sample((0, 0))
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, sample), replace=False)).tolist()
    return round(n * float(np.mean([pipeline.bytes_per_sample(size) for size in samples.image_sizes(rows)])))


def preload(samples: StreamedSamples, num_workers: int = 0, batch_size: int = 256) -> PreloadedSamples:
    """Every image through the deterministic part of its pipeline, kept as uint8 (decoded in parallel
    by `num_workers` loader workers)."""
    loader = torch.utils.data.DataLoader(_Prefixed(samples), sampler=OrderedBatches(range(len(samples)), batch_size),
                                         batch_size=None, num_workers=num_workers)
    size = samples.pipeline.prefix_size
    pixels: torch.Tensor | list = [] if size is None else torch.empty(len(samples), 3, *size, dtype=torch.uint8)
    for images, indices in loader:
        if size is None:
            pixels.extend(images)
        else:  # filled in place: no second copy of the split while it grows
            pixels[indices] = torch.stack(images)
    if size is None and pixels and all(p.shape == pixels[0].shape for p in pixels):
        pixels = torch.stack(pixels)
    return PreloadedSamples(pixels, samples.labels, samples.pipeline)


def as_samples(data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor]) -> torch.utils.data.Dataset:
    """Samples as the loaders take them; a (pixels, labels) tuple is taken as model-ready tensors."""
    return PreloadedSamples(*data) if isinstance(data, tuple) else data


def model_inputs(samples: torch.utils.data.Dataset, indices: Sequence[int],
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(model-ready pixels, labels) of a few samples, without augmentation."""
    x, y, _ = samples[[(int(i), None) for i in indices]]
    pipeline = getattr(samples, "pipeline", None)
    x = x.to(device)
    return (pipeline.finish(x) if pipeline is not None else x), y.to(device)


def first_model_inputs(samples: torch.utils.data.Dataset, count: int,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`model_inputs` of the first `count` samples (all of them if there are fewer): a fixed probe set."""
    return model_inputs(samples, range(min(count, len(samples))), device)
