"""What local dataset layouts look like: split names, parquet file names, and the checks shared by the
parquet and imagefolder readers."""

from __future__ import annotations

import glob
import os
import re
from typing import TypeVar

from datasets.data_files import SPLIT_KEYWORDS

from ...errors import FedSQError

__all__ = ["SPLITS", "EVAL_SPLITS", "SPLIT_ALIASES", "PARQUET_NAME", "LAYOUTS", "by_split", "check_readable",
           "literal"]

T = TypeVar("T")
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


def literal(path: str) -> str:
    """`path` as a `datasets` data_files pattern matching itself only: `[`, `*` and `?` of a folder named
    `data[1]` are glob syntax there."""
    return glob.escape(path)


def by_split(files: dict[str, T], folder: str) -> dict[str, T]:
    """`files` (split name -> files or folder) keyed by split, aliases read as the split they stand for; two names
    of one split (train/ and training/) are refused rather than merged."""
    split_of = {name: SPLIT_ALIASES.get(name, name) for name in files}
    for split in set(split_of.values()):
        same = sorted(name for name in files if split_of[name] == split)
        if len(same) > 1:
            raise FedSQError(f"{' and '.join(same)} of {folder!r} all name the {split!r} split; merge them, or move "
                             "all but one out of the folder.")
    return {split_of[name]: paths for name, paths in files.items()}


def check_readable(paths: list[str], dataset: str) -> None:
    unreadable = [p for p in paths if not os.access(p, os.R_OK, effective_ids=os.access in os.supports_effective_ids)]
    if unreadable:
        raise FedSQError(f"{unreadable[:5]} of the dataset {dataset!r} cannot be read by this user (permission "
                         f"denied); make the dataset readable (e.g. `chmod -R a+rX {dataset}`).")
