"""Image datasets for federated simulation: load and check; they stay `datasets.Dataset`s (Arrow)."""

from __future__ import annotations

import difflib

from datasets import ClassLabel, Dataset, Image, Value

from ...errors import FedSQError
from .image_files import as_images
from .sources import EVAL_SPLITS, dataset_roots, load_splits

__all__ = ["load_image_dataset", "label_ids_in_range"]

LABEL_DTYPES = ("bool", "string", "large_string", "float16", "float32", "float64") + tuple(
    f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64))


def load_image_dataset(
    dataset: str,
    image_column: str = "image",
    label_column: str = "label",
    eval_split: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, eval, label names), columns and labels checked. Without an eval split, 10% of train is held out."""
    for flag, value in (("--max-train-samples", max_train_samples), ("--max-eval-samples", max_eval_samples)):
        if value is not None and value < 1:  # 0 would read as "no limit"
            raise FedSQError(f"{flag} must be >= 1 (or unset for the whole split), got {value}.")
    splits = load_splits(dataset)
    if "train" not in splits:
        raise FedSQError(f"Dataset {dataset!r} has no 'train' split (found {list(splits)}).")
    eval_split = eval_split or next((s for s in EVAL_SPLITS if s in splits), None)
    if eval_split is not None and eval_split not in splits:
        raise FedSQError(f"Dataset {dataset!r} has no split {eval_split!r} (found {list(splits)}).")
    roots = dataset_roots(dataset)
    train, evaluation = (_checked_columns(splits[s], s, image_column, label_column, dataset, roots) if s else None
                         for s in ("train", eval_split))
    train, evaluation = _checked_labels(train, evaluation, label_column, dataset, eval_split)
    if evaluation is None:  # after the label checks: a class may land in the held-out part only
        held = train.train_test_split(test_size=0.1, seed=seed)
        train, evaluation = held["train"], held["test"]
    if max_train_samples:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(max_eval_samples, len(evaluation))))
    if len(evaluation) == 0:
        raise FedSQError(f"The evaluation split of {dataset!r} is empty; pick another --eval-split.")
    return train, evaluation, list(train.features[label_column].names)


def _checked_columns(ds: Dataset, split: str, image_column: str, label_column: str, dataset: str,
                     roots: list[str]) -> Dataset:
    """`ds` with its image column as images (`as_images`), both columns checked."""
    for col, flag in ((image_column, "--image-column"), (label_column, "--label-column")):
        if col not in ds.column_names:
            raise FedSQError(f"The {split} split of {dataset!r} has no column {col!r} (columns: {ds.column_names})."
                             f"{_near(col, ds, flag, image=col == image_column)} Set --image-column / "
                             "--label-column, or fix that split.")
    ds = as_images(ds, image_column, roots, split, dataset)
    missing = ds.data.column(image_column).null_count  # Arrow keeps the count: no scan
    if missing:
        raise FedSQError(f"Column {image_column!r} of the {split} split of {dataset!r} has {missing} missing "
                         "(null) images; drop those rows.")
    label = ds.features[label_column]
    if not (isinstance(label, ClassLabel) or isinstance(label, Value) and label.dtype in LABEL_DTYPES):
        raise FedSQError(f"Column {label_column!r} of the {split} split of {dataset!r} holds {label}, not class "
                         "labels; set --label-column to a column of ClassLabel, integer, string or boolean labels.")
    return ds


def _near(column: str, ds: Dataset, flag: str, image: bool) -> str:
    """A hint naming the column meant: a near spelling, else the one image / class-label column there is."""
    near = difflib.get_close_matches(column, ds.column_names, n=1, cutoff=0.6)
    kind = Image if image else ClassLabel
    typed = [c for c, f in ds.features.items() if isinstance(f, kind)]
    meant = near or (typed if len(typed) == 1 else [])
    return f" Did you mean {flag} {meant[0]}?" if meant else ""


def _checked_labels(train: Dataset, evaluation: Dataset | None, column: str, dataset: str,
                    eval_split: str | None) -> tuple[Dataset, Dataset | None]:
    """Train's labels as a ClassLabel of 2+ classes, all in range; eval's labels in range and seen in train."""
    named = isinstance(train.features[column], ClassLabel)
    if not named:  # ints, strings or bools: indexed as train names them, numbers in numeric order
        train, values = _plain_labels(train, column, "train", dataset)
        names = [str(v) for v in sorted(values)]
        train = _encode_like(train, column, ClassLabel(names=names), dataset, "train")
    feature = train.features[column]
    seen = label_ids_in_range(train, column, feature.num_classes, "train", dataset)
    if len(seen) < 2:
        raise FedSQError(f"The train split of {dataset!r} holds fewer than 2 classes {feature.int2str(sorted(seen))} "
                         f"in column {column!r}: a classifier needs at least 2. Check --label-column, or add samples "
                         "of the other classes.")
    if len(seen) > len(train) / 2:
        raise FedSQError(f"Column {column!r} of the train split of {dataset!r} holds {len(seen)} distinct labels for "
                         f"{len(train)} samples: more classes than half the samples (under 2 samples per class on "
                         "average) is what an id or file-name column looks like, not class labels, and a classifier "
                         "cannot learn classes it sees once. Pick the real label column with --label-column (columns: "
                         f"{train.column_names}).")
    if evaluation is None:
        return train, None
    eval_feature = evaluation.features[column]
    if isinstance(eval_feature, ClassLabel):
        if eval_feature.names != feature.names:
            raise FedSQError(
                f"The train and {eval_split} splits of {dataset!r} name their classes differently "
                f"({feature.names[:4]}... vs {eval_feature.names[:4]}...): label ids would not match. "
                "Use splits of one dataset.")
    else:
        evaluation, _ = _plain_labels(evaluation, column, eval_split, dataset)
        if not named or eval_feature.dtype in ("string", "large_string"):  # integer ids of a named train stay ids
            evaluation = _encode_like(evaluation, column, feature, dataset, eval_split)
    unseen = label_ids_in_range(evaluation, column, feature.num_classes, eval_split, dataset) - seen
    if unseen:
        raise _unseen(feature.int2str(sorted(unseen)), dataset, eval_split)
    return train, evaluation


def _where(split: str, dataset: str | None) -> str:
    return f"the {split} split" + (f" of {dataset!r}" if dataset else "")


def _label_values(ds: Dataset, column: str, split: str, dataset: str | None) -> list:
    values = ds.unique(column)
    if None in values:
        raise FedSQError(f"Column {column!r} of {_where(split, dataset)} has missing (null) labels; drop those rows "
                         "or fill them in.")
    return values


def _plain_labels(ds: Dataset, column: str, split: str, dataset: str) -> tuple[Dataset, list]:
    """(`ds`, its distinct labels): float labels that are whole numbers become ints; NaN, fractions and
    negative numbers are refused."""
    dtype = ds.features[column].dtype
    values = _label_values(ds, column, split, dataset)
    if dtype.startswith("float"):
        fractions = [v for v in values if not float(v).is_integer()]
        if fractions:
            raise FedSQError(f"Labels {fractions[:5]} in column {column!r} of the {split} split of {dataset!r} are "
                             "not whole numbers (NaN or fractions); class labels are integers or strings: drop or "
                             "fix those rows, or check --label-column.")
        ds, values = ds.cast_column(column, Value("int64")), [int(v) for v in values]
    if dtype not in ("bool", "string", "large_string"):
        negative = sorted(v for v in values if v < 0)
        if negative:  # as `label_ids_in_range` says of a ClassLabel's -1
            raise FedSQError(f"Labels {negative[:5]} in column {column!r} are negative in the {split} split of "
                             f"{dataset!r} (-1 usually marks unlabelled rows); drop those rows, or check "
                             "--label-column.")
    return ds, values


def label_ids_in_range(ds: Dataset, column: str, num_classes: int, split: str, dataset: str | None = None) -> set[int]:
    """The label ids present in `ds`, refused if missing or outside [0, num_classes), such as a ClassLabel's -1
    (no label)."""
    ids = set(_label_values(ds, column, split, dataset))
    outside = sorted(i for i in ids if not 0 <= i < num_classes)
    if outside:
        raise FedSQError(f"Labels {outside[:5]} in column {column!r} are outside [0, {num_classes}) in "
                         f"{_where(split, dataset)} (-1 usually marks unlabelled rows); drop those rows, or check "
                         "--label-column.")
    return ids


def _unseen(names: list[str], dataset: str, split: str) -> FedSQError:
    return FedSQError(f"The {split} split of {dataset!r} has labels {names[:5]} that never occur in train; a "
                      f"classifier cannot learn them. Add train samples of them, drop them from the {split} split, "
                      "or check --label-column / --eval-split.")


def _encode_like(ds: Dataset, column: str, feature: ClassLabel, dataset: str, split: str) -> Dataset:
    unknown = sorted({str(v) for v in ds.unique(column)} - set(feature.names))
    if unknown:
        raise _unseen(unknown, dataset, split)
    encode = lambda values: {column: [feature.str2int(str(v)) for v in values]}  # noqa: E731
    return ds.map(encode, input_columns=[column], batched=True).cast_column(column, feature)
