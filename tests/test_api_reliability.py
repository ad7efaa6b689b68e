"""The Python API behaves as a transformers user expects: half precision, pickling, save_pretrained's options,
threads, gate caches of other models, the image processor on 16-bit grey, device_map and friends."""

import copy
import io
import json
import os
import pickle
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, pipeline

from fedsq_hf import CheckpointError, FedSQConfig, FedSQError, FedSQModel, GateCache, GatingError
from fedsq_hf.errors import UnsupportedArgumentError
from fedsq_hf.federated.data import build_pipelines
from fedsq_hf import FedSQImageClassificationPipeline


def _trained(config):
    """A model whose head and weights moved off the backbone's, so both copies and the gates matter."""
    torch.manual_seed(0)
    model = FedSQModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.quantitative.get_classifier().weight.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def model(backbone_dir):
    model = _trained(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    model.config.pretrained_cfg = {**model.config.pretrained_cfg, "input_size": [3, 32, 32], "crop_pct": 1.0}
    return model


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def logits(model, x, **kwargs):
    with torch.no_grad():
        return model(x, **kwargs).logits


def files(folder):
    return sorted(os.listdir(folder))


# -- 1. half precision -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.1), (torch.float16, 0.01)])
def test_a_half_precision_model_takes_float32_pixel_values(dtype, atol, model, saved, x):
    reference = logits(model, x)
    assert reference.abs().max() > 1  # not a zero head: the tolerance below means something
    loaded = FedSQModel.from_pretrained(saved, torch_dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {p.dtype for p in loaded.structural.parameters()} == {dtype}
    out = logits(loaded, x)  # float32 images, as an image processor gives them
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=atol, rtol=0.02)


def test_casting_a_loaded_model_casts_its_structural_copy(model, x):
    cast = copy.deepcopy(model)
    for to, dtype in ((lambda m: m.half(), torch.float16), (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                      (lambda m: m.float(), torch.float32)):
        to(cast)
        assert {p.dtype for p in cast.structural.parameters()} == {cast.dtype} == {dtype}
        assert logits(cast, x).dtype == dtype


def test_integer_pixel_values_are_refused_naming_the_fix(model):
    with pytest.raises(FedSQError, match=r"floating-point tensor of normalised images, got torch\.uint8.*AutoImageProcessor"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_a_half_precision_model_saves_and_loads_in_its_dtype(model, tmp_path, x):
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.save_pretrained(tmp_path)
    assert {t.dtype for t in load_file(tmp_path / "model.safetensors").values() if t.is_floating_point()} == {torch.bfloat16}
    loaded = FedSQModel.from_pretrained(tmp_path)  # dtype "auto", transformers 5's default: the saved dtype
    assert loaded.dtype == loaded.structural.parameters().__next__().dtype == torch.bfloat16
    assert torch.equal(logits(loaded, x), logits(half, x))
    assert FedSQModel.from_pretrained(tmp_path, dtype="float32").dtype == torch.float32


# -- 2. pickling -----------------------------------------------------------------------------------

def test_pickle_torch_save_and_deepcopy_give_bitwise_equal_logits(model, x):
    reference = logits(model, x)
    model.enable_gate_cache(1 << 20)  # a cache holds a lock: it pickles too
    try:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                  torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)]
    finally:
        model.disable_gate_cache()
    for other in copies:
        assert type(other.quantitative.act1).__name__ == "GatedReLU" and other.structural is not None
        assert torch.equal(logits(other, x), reference)
        assert other.dual_copy.tape is other.quantitative.act1._fedsq_tape is not model.dual_copy.tape
        with torch.no_grad():
            other.quantitative.fc.bias.add_(1.0)  # its own weights, not the original's
        assert torch.equal(logits(model, x), reference)


# -- 3. save_pretrained's options ------------------------------------------------------------------

def test_a_variant_is_written_beside_the_default_and_loaded_by_name(model, tmp_path, x):
    model.save_pretrained(tmp_path)
    default = (tmp_path / "model.safetensors").read_bytes()
    copy.deepcopy(model).half().save_pretrained(tmp_path, variant="fp16")
    assert files(tmp_path) == ["config.json", "model.fp16.safetensors", "model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == default  # the fp32 file is untouched
    fp16 = FedSQModel.from_pretrained(tmp_path, variant="fp16")
    assert fp16.dtype == torch.float16 and torch.isfinite(logits(fp16, x)).all()
    assert torch.equal(logits(FedSQModel.from_pretrained(tmp_path), x), logits(model, x))
    with pytest.raises(CheckpointError, match=r"has no model\.bf16\.safetensors.*variants there: \['fp16'\]"):
        FedSQModel.from_pretrained(tmp_path, variant="bf16")
    with pytest.raises(FedSQError, match="variant must be a name"):
        model.save_pretrained(tmp_path, variant="../x")


def test_max_shard_size_shards_with_an_index_that_loads(model, tmp_path, x):
    model.save_pretrained(tmp_path)  # a first save in one file: the sharded save must replace it
    model.save_pretrained(tmp_path, max_shard_size="5MB")
    shards = [f for f in files(tmp_path) if f.startswith("model-")]
    assert len(shards) >= 2 and "model.safetensors" not in files(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards and set(index["weight_map"]) == set(model.state_dict())
    loaded = FedSQModel.from_pretrained(tmp_path)
    assert torch.equal(logits(loaded, x), logits(model, x))
    model.save_pretrained(tmp_path, variant="fp16", max_shard_size=3_000_000)  # other variant: its own shards
    assert set(shards) | {"model.safetensors.index.fp16.json"} <= set(files(tmp_path))
    assert torch.equal(logits(FedSQModel.from_pretrained(tmp_path, variant="fp16"), x), logits(model, x))
    model.save_pretrained(tmp_path)  # back to one file: the stale shards and index of this variant go
    assert not any(f.startswith("model-") or f == "model.safetensors.index.json" for f in files(tmp_path))
    assert any(f.startswith("model.fp16-") for f in files(tmp_path))
    with pytest.raises(FedSQError, match=r"max_shard_size must be .*'5GB'.*got '5XB'"):
        model.save_pretrained(tmp_path, max_shard_size="5XB")


def test_a_damaged_shard_index_is_refused_naming_it(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="5MB")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json' is not a shard index"):
        FedSQModel.from_pretrained(tmp_path)


def test_a_calibrated_model_shards_and_variants_its_structural_copy_too(model, tmp_path, x):
    model = copy.deepcopy(model)
    model.dual_copy.sync_structural()
    model.config.calibrated = True
    model.save_pretrained(tmp_path, variant="v2", max_shard_size="5MB")
    assert "structural.safetensors.index.v2.json" in files(tmp_path)
    loaded = FedSQModel.from_pretrained(tmp_path, variant="v2")
    assert torch.equal(logits(loaded, x), logits(model, x))


@pytest.mark.parametrize("kwargs, match", [
    ({"safe_serialization": False}, r"would write a pickle.*safetensors only.*never unpickles"),
    ({"save_function": torch.save}, r"unknown arguments: \['save_function'\]"),
    ({"push_to_hub": True}, r"Use model\.push_to_hub\(repo_id\)"),
])
def test_save_options_that_cannot_be_honoured_are_refused(kwargs, match, model, tmp_path):
    with pytest.raises(UnsupportedArgumentError, match=match):
        model.save_pretrained(tmp_path, **kwargs)
    assert not tmp_path.exists() or files(tmp_path) == []  # refused before writing anything
    model.save_pretrained(tmp_path, safe_serialization=True, token=None)  # transformers' no-ops are fine


def test_use_safetensors_false_is_refused(saved):
    with pytest.raises(UnsupportedArgumentError, match="safetensors only"):
        FedSQModel.from_pretrained(saved, use_safetensors=False)


# -- 4. threads ------------------------------------------------------------------------------------

def _in_threads(call, inputs, threads=4):
    results, errors = {}, []

    def work(t):
        try:
            for i in range(t, len(inputs), threads):
                results[i] = call(i, inputs[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return [results[i] for i in range(len(inputs))]


def test_concurrent_forward_calls_from_threads_equal_serial_calls(model):
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    serial = [logits(model, x) for x in inputs]
    concurrent = _in_threads(lambda i, x: logits(model, x), inputs)
    assert all(torch.equal(a, b) for a, b in zip(concurrent, serial))
    model.enable_gate_cache(1 << 22)  # and with a gate cache being filled and read by all threads
    try:
        for _ in range(2):
            cached = _in_threads(lambda i, x: logits(model, x, gate_keys=torch.arange(2 * i, 2 * i + 2)), inputs)
            assert all(torch.equal(a, b) for a, b in zip(cached, serial))
        assert len(model.dual_copy.gate_cache) == 16 and model.dual_copy.gate_cache.hits == 8
    finally:
        model.disable_gate_cache()


# -- 5. gate caches of other models ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_file(model, x, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "gates.safetensors"
    cache = model.enable_gate_cache(1 << 22)
    logits(model, x, gate_keys=torch.arange(4))
    cache.save(path)
    model.disable_gate_cache()
    return path


def test_a_gate_cache_is_checked_against_the_model_when_attached(model, cache_file, backbone_dir, x):
    model.dual_copy.gate_cache = GateCache.load(cache_file, 1 << 22)  # its own model: fine, and used
    assert torch.equal(logits(model, x, gate_keys=torch.arange(4)), logits(model, x))
    assert model.dual_copy.gate_cache.hits == 1
    model.disable_gate_cache()
    relu_only = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, gated_ops=["relu"]))
    match = (rf"gate cache {cache_file} does not fit this model: it holds 12 gates per sample, the model makes 11; "
             r"gate 3 is 'maxpool' of shape \[\[64, 8, 8\]\] in the cache, 'layer1.0.act1' .* delete the file")
    with pytest.raises(GatingError, match=match):
        relu_only.dual_copy.gate_cache = GateCache.load(cache_file, 1 << 22)
    assert relu_only.dual_copy.gate_cache is None


def test_a_gate_cache_for_another_image_size_is_refused(model, cache_file):
    cache = GateCache.load(cache_file, 1 << 22)
    cache.input_shape = (3, 64, 64)  # as if built at 64 px
    with pytest.raises(GatingError, match=r"gate 0 is 'conv1.2' of shape \[\[24, 16, 16\]\] in the cache, .*\[\[24, 32, 32\]\]"):
        model.dual_copy.gate_cache = cache
    cache = model.enable_gate_cache(1 << 22)
    logits(model, torch.randn(2, 3, 32, 32), gate_keys=torch.arange(2))
    with pytest.raises(GatingError, match=r"inputs of shape \[3, 32, 32\], not \[3, 48, 48\]. Keep the image size"):
        logits(model, torch.randn(2, 3, 48, 48), gate_keys=torch.arange(2))
    model.disable_gate_cache()


def test_a_damaged_gate_cache_file_is_refused_naming_it(cache_file, tmp_path):
    tensors = load_file(cache_file)
    from safetensors import safe_open

    with safe_open(str(cache_file), "pt") as f:
        metadata = f.metadata()
    for name, damaged in (("rows", {**tensors, "rows": tensors["rows"][:, :-1]}),
                          ("row_of_key", {k: v for k, v in tensors.items() if k != "row_of_key"})):
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in damaged.items()}, path, metadata=metadata)
        with pytest.raises(CheckpointError, match=rf"{name}\.safetensors' is not a gate cache .*Delete it"):
            GateCache.load(path, 1 << 22)
    save_file(tensors, tmp_path / "old.safetensors", metadata={"layout": metadata["layout"]})  # no input shape
    assert len(GateCache.load(tmp_path / "old.safetensors", 1 << 22)) == 0  # an old cache: fills again


# -- 6. the image processor on 16-bit grey ---------------------------------------------------------

def _grey_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)),  # I;16
            Image.fromarray(rng.integers(0, 65535, (40, 30)).astype(np.int32)),  # I, 16-bit range
            Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).convert("RGB")]


def test_the_image_processor_and_pipeline_see_16_bit_grey_as_training_does(model, saved):
    processor = AutoImageProcessor.from_pretrained(saved)
    train = build_pipelines(model.config.pretrained_cfg)[1]  # the training pipeline's eval transform
    classify = pipeline("image-classification", model=str(saved))  # the task's own pipeline, as users call it
    assert type(classify) is FedSQImageClassificationPipeline
    for image in _grey_images():
        expected = train.finish(train.prefix(image)[None])
        pixels = processor(image)["pixel_values"]
        assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 32, 32)
        torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)
        probs = logits(model, expected).softmax(-1)[0]
        scores = {r["label"]: r["score"] for r in classify(image, top_k=3)}
        assert scores == pytest.approx({model.config.id2label[i]: float(p) for i, p in enumerate(probs)}, abs=1e-5)


def test_other_models_keep_the_stock_image_classification_preprocessing():
    """The task's pipeline class is ours for every model, but only FedSQ models' images are converted."""
    from transformers import ImageClassificationPipeline, ViTConfig, ViTForImageClassification, ViTImageProcessor

    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32, num_labels=3))
    ours = pipeline("image-classification", model=vit, image_processor=ViTImageProcessor(size={"height": 32, "width": 32}))
    stock = ImageClassificationPipeline(model=vit, image_processor=ours.image_processor)
    for image in _grey_images():
        torch.testing.assert_close(ours.preprocess(image)["pixel_values"], stock.preprocess(image)["pixel_values"])


# -- more of the same: device_map, train(), compile, gradient checkpointing, push_to_hub ---------

@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_device_map_naming_one_device_places_the_whole_model(device_map, saved):
    loaded = FedSQModel.from_pretrained(saved, device_map=device_map)
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    assert loaded.device.type == (accelerator.type if device_map == "auto" and accelerator else "cpu")
    assert {p.device for p in loaded.structural.parameters()} == {loaded.device}


@pytest.mark.parametrize("device_map", [{"a": "cpu", "b": "meta"}, "meta", "balanced", {"": "disk"}])
def test_device_map_splitting_the_model_is_refused(device_map, saved):
    with pytest.raises(UnsupportedArgumentError, match=r"runs on one device.*device_map='auto'"):
        FedSQModel.from_pretrained(saved, device_map=device_map)


def test_train_mode_leaves_the_structural_copy_frozen(model, x):
    reference = logits(model, x)
    model.train()
    try:
        assert model.training and not model.structural.training
        assert not any(p.requires_grad for p in model.structural.parameters())
    finally:
        model.eval()
    assert torch.equal(logits(model, x), reference)


def test_torch_compile_gives_the_eager_logits(model, x):
    compiled = torch.compile(model, backend="eager")  # dynamo's capture, without a C++ toolchain
    assert torch.equal(logits(compiled, x), logits(model, x))


def test_gradient_checkpointing_is_refused_clearly(model):
    # Recomputing a forward in backward would pop gates from an emptied tape: transformers refuses it.
    with pytest.raises(ValueError, match="does not support"):
        model.gradient_checkpointing_enable()


def test_push_to_hub_shards_and_tags_as_transformers_does(model, tmp_path, monkeypatch):
    staged = {}

    def upload(save, repo_id, *, make_card, **kwargs):
        save(str(tmp_path))
        staged.update(files=files(tmp_path), tags=make_card(repo_id).data.tags)

    monkeypatch.setattr("fedsq_hf.modeling_fedsq.upload_model", upload)
    model.push_to_hub("alice/m", max_shard_size="5MB", tags=["digits"])
    assert "model.safetensors.index.json" in staged["files"] and "model.safetensors" not in staged["files"]
    assert "digits" in staged["tags"] and "fedsq" in staged["tags"]
    with pytest.raises(FedSQError, match="max_shard_size"):
        model.push_to_hub("alice/m", max_shard_size="big")
