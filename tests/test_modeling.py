import json
import os
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageClassification

from fedsq_hf import BackboneLoadError, CheckpointError, FedSQConfig, FedSQModel


@pytest.fixture(scope="module")
def model(backbone_dir):
    torch.manual_seed(0)
    return FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=4, id2label={i: f"c{i}" for i in range(4)}))


def test_fresh_model_equals_plain_timm_backbone_with_same_head(model, backbone_dir):
    plain = timm.create_model("local-dir:" + backbone_dir("resnet10t"), pretrained=True, num_classes=4).eval()
    plain.get_classifier().load_state_dict(model.quantitative.get_classifier().state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, plain(x))


def test_forward_returns_loss_and_logits(model):
    out = model(torch.randn(3, 3, 32, 32), labels=torch.tensor([0, 1, 3]))
    assert out.logits.shape == (3, 4) and out.loss.ndim == 0
    loss, logits = model(torch.randn(3, 3, 32, 32), labels=torch.tensor([0, 1, 3]), return_dict=False)
    assert logits.shape == (3, 4)


def test_save_writes_quantitative_only_and_round_trip_is_exact(model, tmp_path):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict()) and all(k.startswith("dual_copy.quantitative.") for k in saved)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "fedsq" and len(config["id2label"]) == 4
    assert config["backbone"] and config["fedsq_version"] and config["bn_mode"] == "frozen"

    loaded = FedSQModel.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    assert loaded.config.id2label == {i: f"c{i}" for i in range(4)}
    auto = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(auto, FedSQModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FedSQConfig)


def test_structural_copy_never_in_parameters_or_state_dict(model):
    assert model.structural is not None and not model.structural.training
    ids = {id(p) for p in model.parameters()}
    assert not ids & {id(p) for p in model.structural.parameters()}
    assert not any("structural" in k for k in model.state_dict())


def test_bn_mode_frozen_keeps_running_stats_train_updates_them(backbone_dir):
    for mode, should_change in (("frozen", False), ("train", True)):
        torch.manual_seed(0)
        m = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode=mode)).train()
        bn = next(b for b in m.quantitative.modules() if isinstance(b, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        m(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        assert bn.training == should_change
        assert (not torch.equal(before, bn.running_mean)) == should_change
        assert bn.weight.grad is not None


def test_plain_baseline_has_same_layout_and_no_structural_copy(model, backbone_dir):
    plain = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=4, fixed_gating=False))
    assert plain.structural is None
    assert set(plain.state_dict()) == set(model.state_dict())


def test_backbone_from_populated_hf_cache_offline(backbone_dir):
    """A Hub id resolves through the real huggingface_hub cache with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    repo = os.path.join(constants.HF_HUB_CACHE, "models--fedsq-test--tiny-resnet")
    commit = "0" * 39 + "1"
    shutil.copytree(backbone_dir("resnet10t"), os.path.join(repo, "snapshots", commit), dirs_exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    torch.manual_seed(0)
    hub = FedSQModel(FedSQConfig(backbone="fedsq-test/tiny-resnet", num_labels=2))
    local = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2))
    for (k, a), b in zip(hub.state_dict().items(), local.state_dict().values()):
        if "fc" not in k:
            assert torch.equal(a, b), k


def test_unknown_backbone_and_bad_folder_give_clear_errors(tmp_path):
    with pytest.raises(BackboneLoadError, match=r"'nobody/no-such-model'.*local folder"):
        FedSQModel(FedSQConfig(backbone="nobody/no-such-model", num_labels=2))
    with pytest.raises(BackboneLoadError, match="does not exist"):
        FedSQModel(FedSQConfig(backbone=str(tmp_path / "missing"), num_labels=2))
    with pytest.raises(BackboneLoadError, match="no config.json"):
        FedSQModel(FedSQConfig(backbone=str(tmp_path), num_labels=2))


def test_load_with_local_backbone_override(model, tmp_path, backbone_dir):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone"] = "nobody/unreachable-backbone"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneLoadError, match=r"unreachable-backbone.*from_pretrained\(path, backbone="):
        FedSQModel.from_pretrained(tmp_path)
    loaded = FedSQModel.from_pretrained(tmp_path, backbone=backbone_dir("resnet10t"))
    assert torch.equal(loaded.state_dict()["dual_copy.quantitative.conv1.0.weight"],
                       model.state_dict()["dual_copy.quantitative.conv1.0.weight"])


def test_a_backbone_with_other_weights_is_refused_where_it_gives_the_gates(model, tmp_path, backbone_dir):
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["backbone_sha256"] == model.config.backbone_sha256
    torch.manual_seed(1)  # the same architecture with other weights: an updated Hub repo, say
    other = str(tmp_path / "updated")
    timm.models.save_for_hf(timm.create_model("resnet10t", pretrained=False), other, safe_serialization=True)
    with pytest.raises(BackboneLoadError, match="holds other weights than the one this model was built from .* other gates"):
        FedSQModel.from_pretrained(tmp_path / "model", backbone=other)
    plain = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=4, fixed_gating=False))
    plain.save_pretrained(tmp_path / "plain")  # all its weights are in model.safetensors: the backbone gives the layout
    loaded = FedSQModel.from_pretrained(tmp_path / "plain", backbone=other)
    assert loaded.config.backbone_sha256 == plain.config.backbone_sha256  # what it was built from, kept


def test_mismatched_or_corrupted_weights_are_reported(model, tmp_path, backbone_dir):
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*fc\.weight: checkpoint \(4, 512\) vs model \(6, 512\)"):
        FedSQModel.from_pretrained(tmp_path, num_labels=6, id2label={i: str(i) for i in range(6)})
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        FedSQModel.from_pretrained(tmp_path)


def test_not_a_fedsq_checkpoint(tmp_path, backbone_dir):
    with pytest.raises(CheckpointError, match="not a FedSQ config"):
        FedSQModel.from_pretrained(backbone_dir("resnet10t"))
    with pytest.raises(CheckpointError, match="has no config.json"):
        FedSQModel.from_pretrained(tmp_path)


def test_config_validation():
    from fedsq_hf import FedSQError

    with pytest.raises(FedSQError, match="Unknown gated_ops"):
        FedSQConfig(gated_ops=["gelu"])
    with pytest.raises(Exception, match="bn_mode"):
        FedSQConfig(bn_mode="sometimes")
