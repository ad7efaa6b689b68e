"""Data as it comes: relative image paths, id columns as labels, many classes, glob characters in paths,
images of mixed sizes, many small classes, README configurations, plain image columns, near-miss names."""

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, Image
from PIL import Image as PILImage

import fedsq_hf.plotting as plotting
from fedsq_hf import FedSQError
from fedsq_hf.federated import partition_labels, partition_summary
from fedsq_hf.federated.data import (StreamedSamples, build_pipelines, estimate_preload_bytes, load_image_dataset,
                                     preload)

CFG = {"input_size": (3, 32, 32), "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_pct": 1.0}


def _pixels(i, size=8, mode="L"):
    return PILImage.fromarray(np.full((size, size), 10 * (i % 20), np.uint8)).convert(mode)


def _split(labels, names=None, images=None):
    ds = Dataset.from_dict({"img": images or [_pixels(i) for i in range(len(labels))], "label": labels})
    ds = ds.cast_column("img", Image())
    return ds.cast_column("label", ClassLabel(names=names)) if names else ds


def _parquet(folder, files):
    for name, labels in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        _split(labels).to_parquet(str(folder / f"{name}.parquet"))
    return folder


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- 1. image paths relative to the dataset folder, not the working directory -------------------------------

def _path_only(folder, parquet, n=10, missing=()):
    """`n` PNGs under folder/images and a parquet at `parquet` whose Image column stores their relative paths."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i not in missing:
            _pixels(i).save(folder / "images" / f"{i}.png")
    ds = Dataset.from_list([{"img": {"bytes": None, "path": f"images/{i}.png"}, "label": i % 2} for i in range(n)])
    ds = ds.cast_column("img", Image(decode=False)).cast_column("img", Image())
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ds.data.table, str(parquet))  # as exported without embedding (Dataset.to_parquet embeds)


@pytest.mark.parametrize("layout", ["file", "hub data/ folder", "pandas strings"])
def test_relative_image_paths_resolve_against_the_dataset_folder_from_another_cwd(layout, tmp_path, monkeypatch):
    root = tmp_path / "ds"
    if layout == "pandas strings":  # a plain string column, as pandas writes it
        _path_only(root, root / "unused.parquet")
        (root / "unused.parquet").unlink()
        pq.write_table(pa.table({"img": [f"images/{i}.png" for i in range(10)], "label": [i % 2 for i in range(10)]}),
                       str(root / "train.parquet"))
    else:
        _path_only(root, root / ("train.parquet" if layout == "file" else "data/train-00000-of-00001.parquet"))
    monkeypatch.chdir(tmp_path)  # elsewhere: no images/ here
    train, evaluation, _ = load_image_dataset(str(root), "img", eval_split=None, seed=0)
    assert isinstance(train.features["img"], Image)
    for ds in (train, evaluation):
        for row in ds.cast_column("img", Image(decode=False)):
            assert os.path.isabs(row["img"]["path"]) and os.path.isfile(row["img"]["path"])
        for row in ds:
            assert row["img"].size == (8, 8)


def test_a_missing_image_file_is_named_before_training(tmp_path):
    _path_only(tmp_path, tmp_path / "train.parquet", missing={3})
    with pytest.raises(FedSQError, match=r"holds images stored as file paths, and 1 of them name no file: e.g. "
                                         r"'images/3.png' \(row 3\), looked for as '.*images/3.png'"):
        load_image_dataset(str(tmp_path), "img")


def test_a_string_column_naming_no_files_is_not_images(tmp_path):
    pq.write_table(pa.table({"img": ["a.png", "b.png"] * 5, "label": [0, 1] * 5}), str(tmp_path / "train.parquet"))
    with pytest.raises(FedSQError, match=r"holds Value\('string'\), not images: image file paths, and 10 of them"):
        load_image_dataset(str(tmp_path), "img")
    pq.write_table(pa.table({"img": ["a cat", "a dog"] * 5, "label": [0, 1] * 5}), str(tmp_path / "train.parquet"))
    with pytest.raises(FedSQError, match=r"holds Value\('string'\), not images; set --image-column"):
        load_image_dataset(str(tmp_path), "img")


# -- 2. an id column picked as the label column ----------------------------------------------------------

def test_an_id_column_as_label_column_is_refused(tmp_path):
    ds = _split([0, 1] * 100).add_column("id", [f"img_{i:04d}" for i in range(200)])
    ds.to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(FedSQError, match=r"Column 'id' of the train split of .* holds 200 distinct labels for 200 "
                                         r"samples: more classes than half the samples .* Pick the real label column "
                                         r"with --label-column \(columns: \['img', 'label', 'id'\]\)"):
        load_image_dataset(str(tmp_path), "img", "id")
    assert load_image_dataset(str(tmp_path), "img", "label", max_train_samples=3)[2] == ["0", "1"]  # the real one


def test_two_samples_per_class_are_enough(tmp_path):
    _parquet(tmp_path, {"train": list(range(50)) * 2, "test": [0, 1]})
    assert len(load_image_dataset(str(tmp_path), "img")[2]) == 50


# -- 3. the partition plot at any class count -------------------------------------------------------------

@pytest.mark.parametrize("classes, clients", [(20_000, 10), (300, 500)])
def test_the_partition_plot_stays_small_at_any_class_count(classes, clients, tmp_path, monkeypatch):
    labels = np.random.default_rng(0).integers(0, classes, 4 * classes)
    summary = partition_summary(partition_labels(labels, clients, "iid"), labels, classes)
    figures, save = [], plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig))
    plotting.plot_partition(summary, str(tmp_path / "p.png"), label_names=[f"c{i}" for i in range(classes)])
    ax = figures[0].axes[0]
    xticks, yticks = [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]
    assert len(xticks) <= plotting.MAX_CELLS and len(yticks) <= plotting.MAX_CELLS
    assert xticks[0] == f"0\u2013{classes // plotting.MAX_CELLS - 1}" and "neighbours summed" in ax.get_xlabel()
    assert sum(int(t.split("(")[1][:-1]) for t in yticks) == len(labels)  # the rows' totals cover every sample
    assert ax.images[0].get_array().sum() == len(labels)  # summed, not sampled
    w, h = figures[0].get_size_inches()
    assert w <= 1.5 + 0.55 * plotting.MAX_CELLS and h <= 1 + 0.4 * plotting.MAX_CELLS
    save(figures[0], str(tmp_path / "p.png"))  # and it is drawn
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_partition_plot_of_few_classes_names_each(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig))
    plotting.plot_partition({"samples_per_client": [3, 5], "label_histogram": [[3, 0], [1, 4]]}, "p.png",
                            label_names=["cat", "dog"])
    assert [t.get_text() for t in figures[0].axes[0].get_xticklabels()] == ["cat", "dog"]


# -- 4. glob characters in a dataset path ----------------------------------------------------------------

@pytest.mark.parametrize("name, lookalike", [("data[1]", "data1"), ("a*b", "axb"), ("q?x", "qyx"), ("[ab]", "a")])
def test_glob_characters_in_a_dataset_path_are_taken_literally(name, lookalike, tmp_path):
    _parquet(tmp_path / lookalike, {"train": [0, 1] * 3, "test": [0, 1] * 3})  # what the pattern would also match
    folder = _parquet(tmp_path / name, {"train": [0, 1] * 5, "test": [1, 0, 1]})
    train, evaluation, _ = load_image_dataset(str(folder), "img")
    assert (len(train), evaluation["label"]) == (10, [1, 0, 1])
    assert len(load_image_dataset(str(folder / "train.parquet"), "img")[0]) == 9
    for label in ("cat", "dog"):
        (folder / "pics" / "train" / label).mkdir(parents=True)
        for i in range(3):
            _pixels(i).save(folder / "pics" / "train" / label / f"{i}.png")
    train, _, names = load_image_dataset(str(folder / "pics"))
    assert names == ["cat", "dog"] and len(train) == 5


def test_an_imagefolder_with_metadata_in_a_bracketed_folder_loads(tmp_path, monkeypatch):
    folder = tmp_path / "shots[2024]" / "train"
    folder.mkdir(parents=True)
    for i in range(6):
        _pixels(i).save(folder / f"{i}.png")
    (folder / "metadata.csv").write_text("file_name,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(7)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FedSQError, match=r"1 of them name no file: e.g. '.*shots\[2024\]/train/6.png' \(row 6\)\. "):
        load_image_dataset("shots[2024]")
    (folder / "metadata.csv").write_text("".join((folder / "metadata.csv").read_text().splitlines(True)[:-1]))
    train, evaluation, names = load_image_dataset("shots[2024]")
    assert names == ["0", "1"] and len(train) + len(evaluation) == 6 and train[0]["image"].size == (8, 8)


# -- 5. the preload estimate of images of many sizes ------------------------------------------------------

def _mixed_sizes(n=40):
    images = [_pixels(0, 16)] + [_pixels(i, 320) for i in range(1, n)]  # a small first image, then large ones
    return _split([i % 2 for i in range(n)], ["a", "b"], images)


def test_the_preload_estimate_does_not_trust_the_first_image():
    ds = _mixed_sizes()
    sources = StreamedSamples(ds, "img", "label", build_pipelines(CFG, "timm")[0], 2)  # decoded sources
    real = sum(p.numel() for p in preload(sources).pixels)
    assert abs(estimate_preload_bytes(sources) - real) / real < 0.05
    resized = StreamedSamples(ds, "img", "label", build_pipelines(CFG)[1], 2)  # a fixed size: exact
    assert estimate_preload_bytes(resized) == preload(resized).pixels.numel() == 40 * 3 * 32 * 32


# -- 6. advice when a Dirichlet draw fails -----------------------------------------------------------------

def test_dirichlet_advice_never_lowers_a_minimum_of_one():
    labels = np.repeat(np.arange(200), 2)  # many classes of 2 samples, for 100 clients
    with pytest.raises(FedSQError, match=r"most classes hold fewer samples \(median 2\) than there are clients "
                                         r"\(100\).*use --partition iid or shards, use fewer clients or use more "
                                         r"training samples") as caught:
        partition_labels(labels, 100, "dirichlet", alpha=0.5, min_partition_size=1, max_tries=5)
    assert "min-partition-size" not in str(caught.value)
    with pytest.raises(FedSQError) as caught:  # near the average size, with a minimum of 1
        partition_labels(np.arange(15) % 3, 10, "dirichlet", alpha=100.0, min_partition_size=1, max_tries=5)
    assert "min-partition-size" not in str(caught.value) and "fewer clients" in str(caught.value)
    with pytest.raises(FedSQError, match=r"raise --alpha \(less label skew\), lower --min-partition-size, use fewer "
                                         "clients or use more training samples"):
        partition_labels(np.repeat(np.arange(10), 10), 10, "dirichlet", alpha=0.01, min_partition_size=2, max_tries=5)


def test_a_dirichlet_partition_of_20000_classes_covers_every_sample():
    labels = np.random.default_rng(0).integers(0, 20_000, 50_000)
    parts = partition_labels(labels, 10, "dirichlet", alpha=0.5, min_partition_size=1)
    assert sum(map(len, parts)) == 50_000


# -- 7. more data as it comes ------------------------------------------------------------------------------

def test_a_readme_configuration_names_the_files(tmp_path):
    _parquet(tmp_path, {"data/part-0": [0, 1] * 5, "data/part-1": [1, 1, 0], "other/part-0": [0] * 4})
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: main\n  default: true\n  data_files:\n"
                                        "  - split: train\n    path: data/part-0.parquet\n"
                                        "  - split: test\n    path: data/part-1*\n"
                                        "- config_name: other\n  data_files: other/*.parquet\n---\n")
    train, evaluation, names = load_image_dataset(str(tmp_path), "img")
    assert (len(train), evaluation["label"], names) == (10, [1, 1, 0], ["0", "1"])
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text().replace("  default: true\n", ""))
    with pytest.raises(FedSQError, match=r"declares configurations \['main', 'other'\] and none is the default"):
        load_image_dataset(str(tmp_path), "img")


def test_bytes_and_dicts_of_bytes_written_without_features_are_images(tmp_path):
    images = [_png(_pixels(i)) for i in range(10)]
    for name, column in (("binary", images), ("dicts", [{"bytes": b, "path": None} for b in images])):
        pq.write_table(pa.table({"img": column, "label": [i % 2 for i in range(10)]}),
                       str(tmp_path / f"{name}.parquet"))
        train, _, _ = load_image_dataset(str(tmp_path / f"{name}.parquet"), "img")
        assert isinstance(train.features["img"], Image) and train[0]["img"].size == (8, 8)


def test_mixed_image_modes_in_one_column_reach_the_model_as_rgb(tmp_path):
    modes = ["RGBA", "P", "L", "I;16", "1", "LA", "RGB", "CMYK"]
    images = [_pixels(i, mode="L").convert(m) if m != "I;16" else PILImage.fromarray(np.full((8, 8), 999, np.uint16))
              for i, m in enumerate(modes * 2)]
    samples = StreamedSamples(_split([0, 1] * 8, images=images), "img", "label", build_pipelines(CFG)[1], 2)
    assert preload(samples).pixels.shape == (16, 3, 32, 32)


def test_a_sample_limit_of_zero_is_refused_not_read_as_no_limit(tmp_path):
    folder = _parquet(tmp_path, {"train": [0, 1] * 5})
    with pytest.raises(FedSQError, match=r"--max-train-samples must be >= 1 \(or unset for the whole split\), got 0"):
        load_image_dataset(str(folder), "img", max_train_samples=0)


def test_a_missing_column_names_the_near_match(tmp_path):
    folder = _parquet(tmp_path, {"train": [0, 1] * 5})
    with pytest.raises(FedSQError, match=r"has no column 'image' .* Did you mean --image-column img\?"):
        load_image_dataset(str(folder), "image")
    with pytest.raises(FedSQError, match=r"has no column 'labels' .* Did you mean --label-column label\?"):
        load_image_dataset(str(folder), "img", "labels")
