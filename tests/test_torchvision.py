"""torchvision backbones (`torchvision:<name>`), offline from a local weights file of a random-init model."""

import copy

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from fedsq_hf import BackboneLoadError, FedSQConfig, FedSQError, FedSQModel
from reference import forward_with_regimes, record_regimes


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """name -> a local weights file (safetensors for alexnet, torchvision's .pth format for resnet18)."""
    folder = tmp_path_factory.mktemp("torchvision")
    torch.manual_seed(0)
    alexnet, resnet = torchvision.models.alexnet(), torchvision.models.resnet18()
    save_file(alexnet.state_dict(), folder / "alexnet.safetensors")
    torch.save(resnet.state_dict(), folder / "resnet18.pth")
    return {"alexnet": str(folder / "alexnet.safetensors"), "resnet18": str(folder / "resnet18.pth")}


def build(name, weights, **config):
    torch.manual_seed(0)
    return FedSQModel(FedSQConfig(backbone=f"torchvision:{name}", backbone_weights=weights[name], num_labels=5, **config))


def _read(path):
    return load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_fresh_model_is_the_torchvision_model_and_gates_come_from_the_structural_copy(name, weights):
    model = build(name, weights).eval()
    state, saved = model.quantitative.state_dict(), _read(weights[name])
    head = {k for k in state if state[k].shape != saved[k].shape}
    assert len(head) == 2 and all(torch.equal(state[k], saved[k]) for k in state if k not in head)  # the file's weights
    plain = torchvision.models.get_model(name, num_classes=5).eval()
    plain.load_state_dict(state)
    pretrained = copy.deepcopy(plain)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, plain(x), rtol=1e-5, atol=1e-6)
        for p in model.quantitative.parameters():
            p.add_(0.05 * torch.randn_like(p))
        plain.load_state_dict(model.quantitative.state_dict())
        expected = forward_with_regimes(plain, x, record_regimes(pretrained, x))
        torch.testing.assert_close(model(x).logits, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x).logits, plain(x), atol=1e-4)  # its own gates would give other logits
    assert model.config.pretrained_cfg["input_size"] == [3, 224, 224]
    assert model.config.pretrained_cfg["interpolation"] == "bilinear"


def test_alexnet_dropout_only_in_the_trained_copy(weights):
    model = build("alexnet", weights, backbone_kwargs={"dropout": 0.5}).train()
    assert model.structural.training is False
    with torch.no_grad():
        model.quantitative.classifier[6].weight.normal_()  # a non-zero head, so dropout shows in the logits
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(model(x).logits, model(x).logits)  # dropout active while training
        model.eval()
        assert torch.equal(model(x).logits, model(x).logits)
    in_place = [m for m in model.quantitative.modules() if isinstance(m, torch.nn.ReLU) and m.inplace]
    assert len(in_place) == 7  # AlexNet's in-place ReLUs are gated in place
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.quantitative.modules()) == 3


def test_save_and_load_round_trip(weights, tmp_path):
    model = build("alexnet", weights)
    with torch.no_grad():
        model.quantitative.classifier[6].weight.normal_()
    model.save_pretrained(tmp_path)
    loaded = FedSQModel.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)


def test_too_small_input_names_the_fix(weights):
    model = build("alexnet", weights).eval()
    with pytest.raises(FedSQError, match=r"32x32 px are too small for backbone 'torchvision:alexnet'.*--image-size 64"):
        model(torch.randn(1, 3, 32, 32))


def test_bad_torchvision_names(weights):
    with pytest.raises(BackboneLoadError, match="Unknown torchvision model 'alexnett'"):
        FedSQModel(FedSQConfig(backbone="torchvision:alexnett", num_labels=2))
    with pytest.raises(BackboneLoadError, match=r"alexnet has no weights 'IMAGENET22K'; choose from \['IMAGENET1K_V1'\]"):
        FedSQModel(FedSQConfig(backbone="torchvision:alexnet:IMAGENET22K", num_labels=2))
    with pytest.raises(BackboneLoadError, match="not a readable safetensors file"):
        FedSQModel(FedSQConfig(backbone="torchvision:alexnet", backbone_weights=weights["resnet18"][:-4] + ".safetensors",
                               num_labels=2))
