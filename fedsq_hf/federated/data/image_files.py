"""The image column as it comes: an `Image` feature, or plain bytes / {bytes, path} / image-path strings
(a parquet written by pandas) cast to one; images stored as a path resolved against the dataset's folder,
not the working directory, and a missing file named before any training."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, Image, Value
from datasets.utils.file_utils import is_local_path

from ...errors import FedSQError
from .imagefolders import is_image

__all__ = ["as_images"]

BINARY = ("binary", "large_binary")
STRINGS = ("string", "large_string")


def as_images(ds: Dataset, column: str, roots: list[str], split: str, dataset: str) -> Dataset:
    """`ds` with `column` an `Image` feature whose path-only images are files that exist: relative paths are
    resolved against the first of `roots` (the dataset's folders) holding the first of them. No `roots` (a
    Hub dataset): paths are left to `datasets`."""
    feature = ds.features[column]
    if not isinstance(feature, Image):
        if not _castable(ds, column, feature):
            raise FedSQError(f"Column {column!r} of the {split} split of {dataset!r} holds {feature}, not images; "
                             "set --image-column, or cast it with datasets.Image().")
        ds = ds.cast_column(column, Image())
    if not roots:
        return ds
    cells = ds.with_format("arrow")[column]
    path_only = pc.is_null(pc.struct_field(cells, "bytes"))
    rows = np.flatnonzero(path_only.to_numpy(zero_copy_only=False))
    if not len(rows):  # images embedded as bytes: nothing to resolve
        return ds
    stored = pc.struct_field(cells, "path").filter(path_only).to_pylist()
    local = [(row, p) for row, p in zip(rows.tolist(), stored) if p is not None and is_local_path(p)]
    relative = [p for _, p in local if not os.path.isabs(p)]
    root = next((r for r in roots if relative and os.path.isfile(os.path.join(r, relative[0]))), roots[0])
    resolve = lambda p: os.path.normpath(os.path.join(root, os.path.expanduser(p)))  # noqa: E731
    missing = [(row, p) for row, p in local if not os.path.isfile(resolve(p))]
    if missing:
        row, path = missing[0]
        what = ("images stored as file paths" if isinstance(feature, Image)
                else f"{feature}, not images: image file paths")
        raise FedSQError(f"Column {column!r} of the {split} split of {dataset!r} holds {what}, and "
                         f"{len(missing)} of them name no file: e.g. {path!r} (row {row})"
                         f"{'' if os.path.isabs(path) else f', looked for as {resolve(path)!r}'}. Relative paths are "
                         f"read from the dataset's folder ({', '.join(roots)}): "
                         "put the missing images there, drop their rows, or set --image-column.")
    if not relative:
        return ds
    kept = lambda c: c is None or c["bytes"] is not None or not c["path"] or not is_local_path(c["path"])  # noqa: E731
    fix = lambda cells: {column: [c if kept(c) else {"bytes": None, "path": resolve(c["path"])}  # noqa: E731
                                  for c in cells]}
    features = Features({**ds.features, column: Image(decode=False)})
    return (ds.cast_column(column, Image(decode=False))
            .map(fix, input_columns=[column], batched=True, features=features, desc="Resolving image paths")
            .cast_column(column, Image()))


def _castable(ds: Dataset, column: str, feature: object) -> bool:
    """Image data `datasets.Image` takes as it is: bytes, {bytes, path} dicts, or strings naming image files."""
    if isinstance(feature, Value):
        if feature.dtype in BINARY:
            return True
        if feature.dtype in STRINGS:
            values = [v for v in ds.select(range(min(len(ds), 20)))[column] if v is not None]
            return bool(values) and all(is_image(v) for v in values)
        return False
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}
