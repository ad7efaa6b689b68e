import os

import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from fedsq_hf import DualCopy, convert_efficientnet_lite0


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
