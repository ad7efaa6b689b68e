"""Calibration warm-up: centralized fine-tuning, then the structural copy is re-frozen from it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from fedsq_hf import FedSQConfig, FedSQError, FedSQModel
from fedsq_hf.federated import (ClientTrainer, FederatedArguments, PreloadedSamples, calibrate, client_seed,
                                make_accelerator, run_federated)
from helpers import tiny_args


def test_calibration_refreezes_the_structural_copy_and_is_saved(backbone_dir, tmp_path):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode="train"))
    before = {k: v.clone() for k, v in model.structural.state_dict().items()}
    torch.manual_seed(0)
    data = (torch.randn(24, 3, 32, 32), torch.randint(0, 3, (24,)))
    args = FederatedArguments(batch_size=8, lr=0.05, output_dir=str(tmp_path / "cal"))
    losses = calibrate(model, data, args, epochs=2)
    assert len(losses) == 6 and model.config.calibrated
    after = model.structural.state_dict()
    quantitative = model.quantitative.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the gates now come from the calibrated model
    assert all(torch.equal(after[k], quantitative[k]) for k in after)  # ... which the quantitative copy starts from
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "structural.safetensors").exists()
    loaded = FedSQModel.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(loaded.structural.state_dict()[k], after[k]) for k in after)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)


def test_calibration_trains_like_plain_fine_tuning(backbone_dir, tmp_path):
    config = FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode="train")
    model = FedSQModel(config)
    plain = FedSQModel(FedSQConfig.from_dict({**config.to_dict(), "fixed_gating": False}))
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    data = (torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    args = FederatedArguments(batch_size=8, lr=0.05, seed=5, output_dir=str(tmp_path / "cal"))
    losses = calibrate(model, data, args, epochs=1)  # seeded by the run's seed
    single = dataclasses.replace(args, local_epochs=1)
    client = ClientTrainer(plain, PreloadedSamples(*data), single, make_accelerator(single))
    expected = client.train(np.arange(16), client_seed(args.seed, 0, 0)).losses
    assert losses == expected
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    with pytest.raises(FedSQError, match="fixed gating"):
        calibrate(plain, data, args, epochs=1)


def test_run_with_calibration_holds_the_samples_out(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1)
    data.calibration_samples = 40
    run_federated(model, data, fed)
    partition = json.loads((tmp_path / "partition.json").read_text())
    assert sum(partition["samples_per_client"]) == 240 - 40
    assert json.loads((tmp_path / "final" / "config.json").read_text())["calibrated"] is True
    assert (tmp_path / "final" / "structural.safetensors").exists()


def test_card_of_a_calibrated_model_lists_its_structural_copy(backbone_dir):
    from fedsq_hf import model_card

    config = FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2)
    assert "structural.safetensors" not in str(model_card(config))
    config.calibrated = True
    assert "`structural.safetensors`: the structural copy, re-frozen" in str(model_card(config))
