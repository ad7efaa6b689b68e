"""Bad model inputs a user controls (config.json fields, weights files, backbone_kwargs) raise a FedSQError
naming the file or field and the fix: never a raw traceback, never a model with garbage weights."""

import json
import shutil

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from fedsq_hf import BackboneLoadError, CheckpointError, FedSQConfig, FedSQError, FedSQModel


@pytest.fixture(scope="module")
def saved(backbone_dir, tmp_path_factory):
    """A tiny saved FedSQ model (3 labels), copied fresh by `checkpoint`."""
    folder = tmp_path_factory.mktemp("saved")
    FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3)).save_pretrained(folder)
    return folder


@pytest.fixture
def checkpoint(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "ckpt")


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def with_nan(state, name):
    state = {k: v.clone().contiguous() for k, v in state.items()}
    state[name].view(-1)[0] = float("nan")
    return state


# -- non-finite weights ----------------------------------------------------------------------------

def test_nan_in_model_safetensors_is_refused(checkpoint):
    path = checkpoint / "model.safetensors"
    save_file(with_nan(load_file(path), "dual_copy.quantitative.fc.bias"), path)
    match = r"model\.safetensors' hold NaN or Inf values in dual_copy\.quantitative\.fc\.bias"
    with pytest.raises(CheckpointError, match=match):
        FedSQModel.from_pretrained(checkpoint)


def test_nan_in_structural_safetensors_is_refused(backbone_dir, tmp_path):
    FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, calibrated=True)).save_pretrained(tmp_path)
    path = tmp_path / "structural.safetensors"
    name = next(k for k, v in load_file(path).items() if v.is_floating_point())
    save_file(with_nan(load_file(path), name), path)
    with pytest.raises(CheckpointError, match=rf"structural\.safetensors' hold NaN or Inf values in {name}"):
        FedSQModel.from_pretrained(tmp_path)


def test_integer_weights_for_float_tensors_are_refused(checkpoint):
    path = checkpoint / "model.safetensors"
    save_file({k: v.to(torch.int64) if k.endswith("fc.weight") else v for k, v in load_file(path).items()}, path)
    match = r"dtype mismatch.*fc\.weight: checkpoint torch\.int64 vs model torch\.float32"
    with pytest.raises(CheckpointError, match=match):
        FedSQModel.from_pretrained(checkpoint)


def test_nan_in_timm_backbone_is_refused(backbone_dir, tmp_path):
    folder = str(shutil.copytree(backbone_dir("resnet10t"), tmp_path / "bb"))
    path = tmp_path / "bb" / "model.safetensors"
    save_file(with_nan(load_file(path), "conv1.0.weight"), path)
    with pytest.raises(BackboneLoadError, match=r"hold NaN or Inf values in conv1\.0\.weight"):
        FedSQModel(FedSQConfig(backbone=folder, num_labels=3))


def test_nan_in_torchvision_backbone_weights_is_refused(resnet18_state, tmp_path):
    path = tmp_path / "nan.safetensors"
    save_file(with_nan(resnet18_state, "layer1.0.conv1.weight"), path)
    match = r"backbone_weights '.*nan\.safetensors' hold NaN or Inf values in layer1\.0\.conv1\.weight"
    with pytest.raises(BackboneLoadError, match=match):
        FedSQModel(FedSQConfig(backbone="torchvision:resnet18", backbone_weights=str(path), num_labels=3))


# -- .pth files that are not a state dict ----------------------------------------------------------

@pytest.mark.parametrize("content, match", [
    ([1, 2, 3], r"list\.pth' holds list, not a state dict"),
    ("wrapped", r"wrapped\.pth' holds a dict with non-tensor values.*save the inner dict"),
])
def test_pth_that_is_not_a_state_dict(content, match, resnet18_state, tmp_path):
    name = "list.pth" if isinstance(content, list) else "wrapped.pth"
    torch.save(content if isinstance(content, list) else {"model": resnet18_state, "epoch": 3}, tmp_path / name)
    with pytest.raises(BackboneLoadError, match=match):
        FedSQModel(FedSQConfig(backbone="torchvision:resnet18", backbone_weights=str(tmp_path / name), num_labels=3))


def test_missing_backbone_weights_file(tmp_path):
    with pytest.raises(BackboneLoadError, match=r"backbone_weights file '.*missing\.pth' does not exist"):
        FedSQModel(FedSQConfig(backbone="torchvision:resnet18", backbone_weights=str(tmp_path / "missing.pth"),
                               num_labels=3))


# -- config.json fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("fields, match", [
    ({"id2label": ["a", "b", "c"]}, r"id2label must be a dict or None, got list"),
    ({"id2label": {"0": "a", "1": "b", "5": "c"}}, r"id2label keys must be the label ids 0\.\.2, got \['0', '1', '5'\]"),
    ({"label2id": ["a"]}, r"label2id must be a dict or None, got list"),
    ({"dtype": "float99"}, r"FedSQConfig\.dtype must be a floating-point torch dtype.*got 'float99'"),
    ({"torch_dtype": "float99"}, r"FedSQConfig\.torch_dtype must be a floating-point torch dtype.*got 'float99'"),
    ({"num_labels": -1}, r"num_labels must be between 1 and 1,000,000, got -1\."),
    ({"num_labels": 10**9, "id2label": None, "label2id": None},
     r"num_labels must be between 1 and 1,000,000, got 1,000,000,000\."),
    ({"num_labels": "3"}, r"num_labels must be an int, got str '3'"),
])
def test_bad_config_fields_name_the_file_and_field(fields, match, checkpoint):
    edit_config(checkpoint, **fields)
    with pytest.raises(CheckpointError, match=r"config\.json' is not a valid FedSQ config: .*" + match):
        FedSQModel.from_pretrained(checkpoint)


@pytest.mark.parametrize("key, value, match", [
    ("input_size", [3, 32], r"\['input_size'\] must be \[3, height, width\].*got \[3, 32\]"),
    ("input_size", [1, 32, 32], r"\['input_size'\] must be \[3, height, width\]"),
    ("mean", [0.5, 0.5], r"\['mean'\] must be 3 finite numbers"),
    ("std", [0.2, 0.0, 0.2], r"\['std'\] must be 3 positive finite numbers"),
    ("std", "0.2", r"\['std'\] must be 3 positive"),
    ("crop_pct", 0, r"\['crop_pct'\] must be a number in \(0, 1\], got 0"),
    ("crop_mode", "middle", r"\['crop_mode'\] must be center, squash or border, got 'middle'"),
    ("interpolation", "cubic", r"\['interpolation'\] must be one of timm's modes .*, got 'cubic'"),
])
def test_a_malformed_pretrained_cfg_is_refused_when_loading(key, value, match, checkpoint):
    """The preprocessing config is checked where config.json is read, not at the first image."""
    cfg = json.loads((checkpoint / "config.json").read_text())["pretrained_cfg"]
    edit_config(checkpoint, pretrained_cfg={**cfg, key: value})
    with pytest.raises(CheckpointError, match=r"config\.json' is not a valid FedSQ config: FedSQConfig\.pretrained_cfg"
                                              + match + ".*: fix it in config.json"):
        FedSQModel.from_pretrained(checkpoint)


def test_config_json_that_is_not_utf8(checkpoint):
    (checkpoint / "config.json").write_bytes(b'\xff\xfe{"model_type": "fedsq"}')
    with pytest.raises(CheckpointError, match=r"config\.json' is not a readable JSON config \(UnicodeDecodeError"):
        FedSQModel.from_pretrained(checkpoint)


def test_num_labels_errors_report_the_value_given():
    with pytest.raises(FedSQError, match=r"got -1\."):
        FedSQConfig(num_labels=-1)
    with pytest.raises(FedSQError, match=r"got 1,000,000,000\."):
        FedSQConfig(num_labels=10**9)
    config = FedSQConfig(num_labels=3)
    with pytest.raises(FedSQError, match=r"got 2,000,000\."):
        config.num_labels = 2_000_000
    assert config.num_labels == 3


def test_bad_dtype_argument(checkpoint):
    match = r"from_pretrained\(dtype=\.\.\.\) must be a floating-point torch dtype.*'float99'"
    with pytest.raises(FedSQError, match=match):
        FedSQModel.from_pretrained(checkpoint, dtype="float99")
    assert FedSQModel.from_pretrained(checkpoint, torch_dtype="bfloat16").dtype == torch.bfloat16


# -- backbone_kwargs -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"drop_rate": "x"}, r"backbone_kwargs\['drop_rate'\] must be a number in \[0, 1\], got 'x'"),
    ({"drop_path_rate": 1.5}, r"backbone_kwargs\['drop_path_rate'\] must be a number in \[0, 1\], got 1\.5"),
    ({"no_such_kwarg": 1}, r"rejected backbone_kwargs \{'no_such_kwarg': 1\}.*unexpected keyword.*Fix or remove"),
    ({"global_pool": "bogus"}, r"rejected backbone_kwargs \{'global_pool': 'bogus'\}"),
    ({"num_classes": 7}, r"backbone_kwargs may not set \['num_classes'\]"),
])
def test_bad_backbone_kwargs_in_config_json(kwargs, match, checkpoint):
    edit_config(checkpoint, backbone_kwargs=kwargs)
    with pytest.raises(BackboneLoadError, match=match):
        FedSQModel.from_pretrained(checkpoint)


def test_bad_torchvision_backbone_kwargs(resnet18_state, tmp_path):
    save_file(resnet18_state, tmp_path / "r18.safetensors")
    for kwargs, match in (({"no_such_kwarg": 1}, "rejected backbone_kwargs"), ({"weights": None}, "may not set")):
        with pytest.raises(BackboneLoadError, match=match):
            FedSQModel(FedSQConfig(backbone="torchvision:resnet18", backbone_weights=str(tmp_path / "r18.safetensors"),
                                   num_labels=3, backbone_kwargs=kwargs))
