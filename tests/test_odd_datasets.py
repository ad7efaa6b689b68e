"""Odd datasets: each one loads correctly or is refused with a FedSQError naming the problem, never a raw error."""

import contextlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Image
from PIL import Image as PILImage

from fedsq_hf import FedSQError
from fedsq_hf.federated.data import load_image_dataset


def _split(labels, names=None):
    """8x8 grey images with `labels`; `names` makes the label a ClassLabel."""
    pixels = [PILImage.fromarray(np.full((8, 8), 16 * (i % 16), np.uint8)) for i in range(len(labels))]
    ds = Dataset.from_dict({"img": pixels, "label": labels}).cast_column("img", Image())
    return ds.cast_column("label", ClassLabel(names=names)) if names else ds


def _parquet(folder, files, names=None):
    """One parquet file per entry: {"data/train-00000-of-00001": [0, 1]} writes data/train-00000-of-00001.parquet."""
    for name, labels in files.items():
        path = folder / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        _split(labels, names).to_parquet(str(path))
    return str(folder)


def _imagefolder(folder, counts):
    """{"train/cat": 3} writes 3 PNGs into train/cat/."""
    for where, n in counts.items():
        (folder / where).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            PILImage.fromarray(np.full((8, 8), 20 * (i % 12), np.uint8)).save(folder / where / f"{i}.png")
    return str(folder)


def _load(dataset, **kwargs):
    return load_image_dataset(str(dataset), "img", **kwargs)


# -- 1. the label column must hold class labels ------------------------------------------------------------

def test_a_label_column_of_lists_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"Column 'label' of the train split of .* holds List\(Value\('int64'\)\), "
                                         "not class labels; set --label-column"):
        _load(_parquet(tmp_path, {"train": [[0], [1]] * 5, "test": [[0], [1]]}))


def test_an_image_column_as_label_column_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"Column 'img' of the train split of .* holds Image\(.*\), not class labels"):
        _load(_parquet(tmp_path, {"train": [0, 1] * 5, "test": [0, 1]}), label_column="img")


# -- 2. plain labels: no negative ids, no NaN or fractions -------------------------------------------------

def test_negative_plain_labels_are_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"Labels \[-1\] in column 'label' are negative in the train split .*"
                                         "unlabelled rows"):
        _load(_parquet(tmp_path, {"train": [-1, 0, 1] * 5, "test": [0, 1]}))


def test_a_classlabel_minus_one_in_train_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"Labels \[-1\] in column 'label' are outside \[0, 2\) in the train split"):
        _load(_parquet(tmp_path, {"train": [-1, 0, 1] * 5, "test": [0, 1]}, ["a", "b"]))


@pytest.mark.parametrize("labels, shown", [([0.0, 1.0, float("nan")], r"\[nan\]"), ([0.5, 1.5], r"\[0.5, 1.5\]")],
                         ids=["NaN", "fractions"])
def test_float_labels_that_are_not_whole_numbers_are_refused(labels, shown, tmp_path):
    with pytest.raises(FedSQError, match=rf"Labels {shown} in column 'label' of the train split .* not whole numbers"):
        _load(_parquet(tmp_path, {"train": labels * 5, "test": [0.0, 1.0]}))


def test_whole_float_labels_are_integer_classes(tmp_path):
    train, evaluation, names = _load(_parquet(tmp_path, {"train": [0.0, 1.0] * 5, "test": [1, 0]}))  # int eval matches
    assert names == ["0", "1"] and evaluation["label"] == [1, 0] and len(train) == 10


def test_integer_labels_are_named_in_numeric_order(tmp_path):
    train, _, names = _load(_parquet(tmp_path, {"train": list(range(12)) * 2, "test": [10, 2]}))
    assert names == [str(i) for i in range(12)]  # not "0", "1", "10", "11", "2"...
    assert train["label"] == list(range(12)) * 2  # ids are the original labels


# -- 3. at least two classes -----------------------------------------------------------------------------

def test_a_single_class_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"train split of .* holds fewer than 2 classes \['0'\] in column 'label'"):
        _load(_parquet(tmp_path, {"train": [0] * 10, "test": [0]}))


def test_a_classlabel_train_split_with_one_class_present_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"holds fewer than 2 classes \['b'\].*needs at least 2"):
        _load(_parquet(tmp_path, {"train": [1] * 10, "test": [1]}, ["a", "b"]))


def test_an_imagefolder_with_one_class_folder_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"imagefolder .* has a single class folder \['cat'\]"):
        load_image_dataset(_imagefolder(tmp_path, {"train/cat": 3}))


# -- 4. eval labels must occur in train, ClassLabel or not -------------------------------------------------

def test_a_classlabel_eval_class_missing_from_train_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"The test split of .* has labels \['c'\] that never occur in train"):
        _load(_parquet(tmp_path, {"train": [0, 1] * 5, "test": [0, 2]}, ["a", "b", "c"]))


def test_an_imagefolder_eval_class_missing_from_train_is_refused(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "test/cat": 2, "test/bird": 2})
    with pytest.raises(FedSQError, match=r"The test split of .* has labels \['bird'\] that never occur in train"):
        load_image_dataset(folder)


def test_an_eval_split_missing_a_class_is_fine(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "test/dog": 2})
    train, evaluation, names = load_image_dataset(folder)
    assert names == ["cat", "dog"] and (len(train), evaluation["label"]) == (6, [1, 1])


def test_a_held_out_eval_split_may_hold_a_class_train_lacks(tmp_path):
    for seed in range(3):  # the one "c" sample lands in train or held out: both load
        train, evaluation, names = _load(_parquet(tmp_path, {"train": [0, 1] * 10 + [2]}, ["a", "b", "c"]), seed=seed)
        assert names == ["a", "b", "c"] and len(train) + len(evaluation) == 21


# -- 5. Hub snapshots, save_to_disk folders, folders without data ------------------------------------------

def test_a_hub_snapshot_layout_loads(tmp_path):
    _parquet(tmp_path, {"data/train-00000-of-00002": [0, 1] * 5, "data/train-00001-of-00002": [1, 0] * 5,
                        "data/test-00000-of-00001": [0, 1, 1]})
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    train, evaluation, names = _load(tmp_path)
    assert (len(train), len(evaluation), names) == (20, 3, ["0", "1"])


def test_parquet_files_in_several_folders_are_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"lie in several folders \(\['mnist', 'svhn'\]\).*Point --dataset at one"):
        _load(_parquet(tmp_path, {"mnist/train": [0, 1] * 5, "svhn/train": [0, 1] * 5}))


def test_a_save_to_disk_dataset_dict_loads(tmp_path):
    DatasetDict({"train": _split([0, 1] * 5, ["a", "b"]), "test": _split([1, 0, 1], ["a", "b"])}).save_to_disk(
        str(tmp_path / "saved"))
    train, evaluation, names = _load(tmp_path / "saved")
    assert (len(train), evaluation["label"], names) == (10, [1, 0, 1], ["a", "b"])


def test_a_saved_dataset_is_the_train_split(tmp_path):
    _split([0, 1] * 10).save_to_disk(str(tmp_path / "saved"))
    train, evaluation, names = _load(tmp_path / "saved")
    assert (len(train), len(evaluation), names) == (18, 2, ["0", "1"])  # 10% held out


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"Dataset folder .* holds no data; expected a .parquet file.*imagefolder"):
        _load(tmp_path)


# -- 6. parquet file names: exact split names only --------------------------------------------------------

@pytest.mark.parametrize("split", ["validation", "valid", "val", "test"])
def test_each_eval_split_name_is_the_eval_split(split, tmp_path):
    train, evaluation, _ = _load(_parquet(tmp_path, {"train": [0, 1] * 5, split: [1, 1, 0]}))
    assert len(train) == 10 and evaluation["label"] == [1, 1, 0]  # not 10% of train


def test_validation_is_preferred_to_test_and_the_other_is_still_reachable(tmp_path):
    _parquet(tmp_path, {"train": [0, 1] * 5, "validation": [1], "test": [0, 0]})
    assert _load(tmp_path)[1]["label"] == [1]
    assert _load(tmp_path, eval_split="test")[1]["label"] == [0, 0]


@pytest.mark.parametrize("name", ["train_extra_old", "train-extra", "trainings", "mnist"])
def test_a_parquet_file_matching_no_split_is_refused(name, tmp_path):
    with pytest.raises(FedSQError, match=rf"Parquet files \['{name}.parquet'\] of .* match no split: name them "
                                         r"\{split\}.parquet or \{split\}-00000-of-00001.parquet"):
        _load(_parquet(tmp_path, {"train": [0, 1] * 5, "test": [0, 1], name: [0] * 3}))


@pytest.mark.parametrize("train, evaluation, split", [("training", "dev", "validation"), ("train", "testing", "test"),
                                                      ("training", "evaluation", "test")])
def test_the_other_split_names_of_datasets_are_read_as_their_split(train, evaluation, split, tmp_path):
    """`datasets` reads training/, dev/, testing/, eval/ as train, validation and test: so do parquet files and
    imagefolders here."""
    loaded = _load(_parquet(tmp_path / "pq", {train: [0, 1] * 5, evaluation: [1, 1, 0]}))
    assert len(loaded[0]) == 10 and loaded[1]["label"] == [1, 1, 0]
    folder = _imagefolder(tmp_path / "img", {f"{train}/cat": 4, f"{train}/dog": 4, f"{evaluation}/cat": 2})
    assert load_image_dataset(folder, eval_split=split)[1]["label"] == [0, 0]
    assert [len(x) for x in load_image_dataset(folder)[:2]] == [8, 2]


@pytest.mark.parametrize("layout", ["parquet", "imagefolder"])
def test_two_names_of_one_split_are_refused(layout, tmp_path):
    if layout == "parquet":
        folder = _parquet(tmp_path, {"train": [0, 1] * 5, "training": [0, 1], "test": [0, 1]})
    else:
        folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "training/cat": 2, "training/dog": 2})
    with pytest.raises(FedSQError, match=r"train and training of .* all name the 'train' split; merge them"):
        _load(folder)


# -- 7. imagefolders: split/class/image files -------------------------------------------------------------

def test_a_folder_nested_in_a_class_folder_is_refused(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "train/cat/sub": 2})
    with pytest.raises(FedSQError, match=r"Folder '.*train/cat/sub' of the imagefolder .* is nested inside the class "
                                         "folder '.*train/cat'; expected split/class/image files"):
        load_image_dataset(folder)


def test_a_class_folder_without_images_is_refused_naming_what_it_holds(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 0})
    (tmp_path / "train" / "dog" / "readme.txt").write_text("photos to come")
    with pytest.raises(FedSQError, match=r"Class folder '.*train/dog' .* holds no images \(only \['readme.txt'\]\)"):
        load_image_dataset(folder)


def test_an_image_outside_a_class_folder_is_refused(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "train": 1})
    with pytest.raises(FedSQError, match=r"Image '.*train/0.png' of the imagefolder .* lies outside a class folder; "
                                         r"expected split/class/image files \(e.g. train/cat/0.png\)"):
        load_image_dataset(folder)


def test_a_folder_beside_the_split_folders_is_refused(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "extra/cat": 2})
    with pytest.raises(FedSQError, match=r"Entries \['extra'\] of the imagefolder .* lie outside its split folders "
                                         r"\['train'\] and would be ignored"):
        load_image_dataset(folder)


def test_a_broken_image_link_is_refused(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3})
    os.symlink(tmp_path / "gone.png", tmp_path / "train" / "cat" / "link.png")
    with pytest.raises(FedSQError, match=r"Image '.*train/cat/link.png' .* cannot be read \(a broken link\?\)"):
        load_image_dataset(folder)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    folder = _imagefolder(tmp_path, {"train/cat": 3, "train/dog": 3, "train/.ipynb_checkpoints": 2, "test/cat": 1})
    (tmp_path / "train" / "cat" / "Thumbs.db").write_bytes(b"\0" * 8)
    (tmp_path / "README.md").write_text("cats and dogs")
    train, evaluation, names = load_image_dataset(folder)
    assert (len(train), len(evaluation), names) == (6, 1, ["cat", "dog"])


def test_an_imagefolder_without_split_folders_is_train(tmp_path):
    train, evaluation, names = load_image_dataset(_imagefolder(tmp_path, {"cat": 10, "dog": 10}))
    assert (len(train), len(evaluation), names) == (18, 2, ["cat", "dog"])


# -- 8. ~ in local paths ----------------------------------------------------------------------------------

def test_a_dataset_path_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _parquet(tmp_path / "digits", {"train": [0, 1] * 5, "test": [0, 1]})
    train, evaluation, _ = load_image_dataset("~/digits", "img")
    assert (len(train), len(evaluation)) == (10, 2)
    with pytest.raises(FedSQError, match="Dataset path '~/nothing' does not exist"):
        load_image_dataset("~/nothing", "img")


# -- 9. files this user cannot read ------------------------------------------------------------------------

@contextlib.contextmanager
def _as_another_user():
    """Permission bits bind this process: as root, by taking the effective ids of `nobody` for the block."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir():
    """A folder another user may enter (pytest's tmp_path is private to its owner)."""
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o755)
    yield pathlib.Path(folder)
    shutil.rmtree(folder)


def test_an_unreadable_image_is_refused_naming_it(shared_dir):
    folder = _imagefolder(shared_dir, {"train/cat": 3, "train/dog": 3})
    os.chmod(shared_dir / "train" / "dog" / "1.png", 0)
    with _as_another_user(), pytest.raises(FedSQError, match=r"\['.*train/dog/1.png'\] of the dataset .* cannot "
                                                             r"be read by this user \(permission denied\); make the "
                                                             r"dataset readable \(e.g. `chmod -R a\+rX "):
        load_image_dataset(folder)


def test_an_unreadable_parquet_file_is_refused_naming_it(shared_dir):
    folder = _parquet(shared_dir, {"train": [0, 1] * 5, "test": [0, 1]})
    os.chmod(shared_dir / "test.parquet", 0)
    with _as_another_user(), pytest.raises(FedSQError, match=r"\['.*test.parquet'\] of the dataset .* cannot be read "
                                                             r"by this user \(permission denied\)"):
        _load(folder)
