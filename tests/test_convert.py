import os
import shutil

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from fedsq_hf import DualCopy, FedSQError, convert_efficientnet_lite0


def test_converted_efficientnet_lite0_is_the_imagenet_model(tmp_path):
    folder = convert_efficientnet_lite0(str(tmp_path / "lite0"))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert convert_efficientnet_lite0(folder) == folder  # reused, not redone
    model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    info = timm.data.ImageNetInfo()
    with torch.no_grad():
        logits = model(transform(Image.fromarray(load_sample_image("flower.jpg"))).unsqueeze(0))
    assert info.index_to_description(int(logits.argmax())) == "daisy"
    dual = DualCopy(model)  # ReLU6 only: every unit gateable, nothing refused
    relu6 = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU6)]
    assert relu6 and set(dual.sites) == set(relu6) and set(dual.sites.values()) == {"relu6"}


def test_the_converter_writes_only_its_own_files(tmp_path):
    """It never deletes or replaces what it did not write, nor takes another model for its conversion."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "other-model").mkdir()
    assert convert_efficientnet_lite0(str(folder)) == str(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "notes.txt", "other-model"]
    assert (folder / "notes.txt").read_text() == "keep me"
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    assert convert_efficientnet_lite0(str(folder)) == str(folder)  # reused, not redone
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another model")
    (other / "config.json").write_text('{"architecture": "resnet18"}')
    with pytest.raises(FedSQError, match="already holds .* of another model; .* --overwrite"):
        convert_efficientnet_lite0(str(other))
    assert (other / "model.safetensors").read_bytes() == b"another model"
    convert_efficientnet_lite0(str(other), overwrite=True)
    assert sorted(os.listdir(other)) == ["config.json", "model.safetensors"]

    half = tmp_path / "half"  # a conversion cut short: weights written, config (written last) not
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"cut short")
    with pytest.raises(FedSQError, match="holds a model.safetensors without config.json: a conversion interrupted"):
        convert_efficientnet_lite0(str(half))
    shutil.rmtree(half)

    (tmp_path / "a-file").write_text("x")
    for bad, match in [(tmp_path / "a-file", "is a file, not a folder"),
                       (tmp_path / "a-file" / "below", "cannot be created")]:
        with pytest.raises(FedSQError, match=match):
            convert_efficientnet_lite0(str(bad))
    assert sorted(os.listdir(tmp_path)) == ["a-file", "mine", "other"]  # no temporary folder left


def test_the_converter_command_line_says_error_in_one_line(tmp_path, capsys):
    from fedsq_hf.convert import main

    (tmp_path / "a-file").write_text("x")
    assert main(["--output-dir", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output-dir") and "Traceback" not in err and err.count("\n") == 1
