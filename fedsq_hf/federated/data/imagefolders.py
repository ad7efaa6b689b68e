"""Imagefolders (split/class/image files, or metadata files naming the labels): the layout checked
strictly, then loaded by `datasets` from the very files checked."""

from __future__ import annotations

import os

from datasets import DatasetDict, load_dataset
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from ...errors import FedSQError
from .layouts import LAYOUTS, SPLIT_ALIASES, SPLITS, by_split, check_readable, literal

__all__ = ["load_imagefolder", "is_image"]


def load_imagefolder(folder: str) -> DatasetDict:
    """Loaded by `datasets` from the very files `_imagefolder_files` checked."""
    try:
        files = _imagefolder_files(folder)
    except OSError as err:
        raise FedSQError(f"Could not read the imagefolder {folder!r} ({type(err).__name__}: {err}).") from err
    try:
        if files is None:  # metadata files hold the labels: `datasets` pairs them with the images
            return load_dataset("imagefolder", data_dir=literal(folder))
        return load_dataset("imagefolder", data_files={split: [literal(p) for p in paths]
                                                       for split, paths in files.items()})
    except Exception as err:
        raise FedSQError(f"Could not load the imagefolder {folder!r} ({type(err).__name__}: {err}); "
                         f"expected {LAYOUTS}.") from err
def _imagefolder_files(folder: str) -> dict[str, list[str]] | None:
    """Image files by split, the layout checked: split/class/image (or class/image: train only). `datasets`
    would take stray images or nested folders to mean "no labels", and drop a class without images.
    None when metadata files name the labels."""
    names = _visible(folder)
    splits = [s for s in [*SPLITS, *SPLIT_ALIASES] if s in names and os.path.isdir(os.path.join(folder, s))]
    tops = by_split({s: os.path.join(folder, s) for s in splits}, folder) or {"train": folder}
    if any(m in _visible(top) for top in {folder, *tops.values()} for m in ImageFolder.METADATA_FILENAMES):
        return None
    stray = [n for n in names if n not in splits and (os.path.isdir(os.path.join(folder, n)) or is_image(n))]
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
            elif is_image(name):
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
        if is_image(name) and not os.path.isfile(inner):
            raise FedSQError(f"Image {inner!r} of the imagefolder {folder!r} cannot be read (a broken link?); "
                             "fix or remove it.")
        (images if is_image(name) else others).append(inner)
    check_readable(images, folder)
    if not images:
        found = f" (only {[os.path.basename(p) for p in others[:5]]})" if others else ""
        raise FedSQError(f"Class folder {path!r} of the imagefolder {folder!r} holds no images{found}: the class "
                         "would silently disappear from the labels. Add its images or remove the folder.")
    return images


def _visible(folder: str) -> list[str]:
    """Entries of `folder` less hidden ones (.ipynb_checkpoints, .DS_Store), which `datasets` ignores too."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in ImageFolder.EXTENSIONS
