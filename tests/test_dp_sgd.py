"""Sample-level DP-SGD at the clients (Opacus's DPOptimizer): per-sample gradients through the gated units
equal per-sample backward passes, a step is the mean of clipped per-sample gradients plus N(0, (z C / B)^2)
noise, each client's epsilon is the accountant's, a run resumes exactly, and bad settings are refused before
anything loads. (1 vs 2 processes: tests/test_gate_warmup.py; the Flower runtime: tests/test_flower.py.)"""

import json

import pytest
import torch

from fedsq_hf import FedSQConfig, FedSQError, FedSQModel, model_card
from fedsq_hf.federated import (ClientArguments, DataArguments, FederatedArguments, ModelArguments, SampleLevelAccount,
                                check_run, run_federated)
from fedsq_hf.federated.client.privacy import dp_optimizer, per_sample_gradients
from helpers import StopAfter, assert_same_run, tiny_args


@pytest.mark.parametrize("arch", ["resnet10t", "efficientnet_lite0"])  # ReLU + max-pool gates; ReLU6 in BatchNormAct2d
def test_per_sample_gradients_through_the_gates_are_per_sample_backward_passes(backbone_dir, arch):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir(arch), num_labels=3)).train()
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert named and not any(k.startswith("dual_copy._structural") for k in named)  # the structural copy is frozen
    grads, losses = per_sample_gradients(model, named, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 1]).logits, y[i:i + 1])
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach())
        for k, p in named.items():
            torch.testing.assert_close(grads[k][i], p.grad if p.grad is not None else torch.zeros_like(p),
                                       rtol=1e-4, atol=1e-6, msg=k)


def test_a_private_step_is_the_mean_of_clipped_per_sample_gradients_plus_noise(backbone_dir):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3)).train()
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    grads, _ = per_sample_gradients(model, named, x, y)
    norms = torch.stack([torch.cat([g[i].flatten() for g in grads.values()]).norm() for i in range(8)])
    bound = float(norms.min()) / 2  # every sample clipped
    expected = {k: sum(g[i] * (bound / norms[i]) for i in range(8)) / 8 for k, g in grads.items()}

    def step(z):
        args = ClientArguments(batch_size=8, lr=1.0, momentum=0.0, dp_sgd_noise_multiplier=z, dp_sgd_max_grad_norm=bound)
        before = {k: p.detach().clone() for k, p in named.items()}
        opt = dp_optimizer(torch.optim.SGD(named.values(), lr=1.0), args, torch.Generator().manual_seed(0))
        for k, p in named.items():
            p.grad_sample = grads[k].clone()  # Opacus marks the tensor it used
        opt.step()
        opt.zero_grad()
        change = {k: before[k] - p.detach() for k, p in named.items()}
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(before[k])
        return change

    for k, moved in step(1e-12).items():  # no noise to speak of: exactly the clipped mean
        torch.testing.assert_close(moved, expected[k], rtol=1e-4, atol=1e-7, msg=k)
    noise = torch.cat([(step(50.0)[k] - expected[k]).flatten() for k in named])
    assert float(noise.std()) == pytest.approx(50.0 * bound / 8, rel=0.02)  # N(0, (z C)^2) on the sum, / B


def test_each_clients_epsilon_is_the_accountants():
    from opacus.accountants import RDPAccountant

    account = SampleLevelAccount(1.1, 16, sizes=(64, 30), steps_per_round=(4, 2))
    history = [{"clients": [0, 1], "dropped_clients": [1]}, {"clients": [0, 1], "dropped_clients": []}]
    for client, (rate, steps) in enumerate(((16 / 64, 8), (16 / 30, 2))):  # client 1 dropped out of round 1
        accountant = RDPAccountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=1.1, sample_rate=rate)
        expected = accountant.get_epsilon(account.client_delta(client))
        assert account.epsilons(history)[client] == pytest.approx(expected, abs=1e-6)
    assert account.client_delta(1) == pytest.approx(30 ** -1.1) and account.epsilons([]) == [0.0, 0.0]


def test_a_dp_sgd_run_records_each_clients_epsilon_and_resumes_exactly(backbone_dir, digits_dir, tmp_path):
    backbone, dp = backbone_dir("resnet10t"), dict(dp_sgd_noise_multiplier=1.0, dp_sgd_max_grad_norm=0.5)
    straight = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", **dp))
    history = [json.loads(line) for line in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    sizes = json.loads((tmp_path / "straight" / "partition.json").read_text())["samples_per_client"]
    account = SampleLevelAccount(1.0, 16, tuple(sizes), tuple(-(-n // 16) for n in sizes))  # one epoch of batch 16
    assert [h["dp_sgd_epsilon"] for h in history] == [max(account.epsilons(history[:1])), max(account.epsilons(history))]
    assert straight["dp_sgd"]["epsilon_by_client"] == account.epsilons(history)
    assert straight["dp_sgd"]["epsilon"] == history[-1]["dp_sgd_epsilon"] > 0
    card = str(model_card(FedSQModel.from_pretrained(tmp_path / "straight" / "final").config, summary=straight,
                          history=history))
    assert (f"| privacy | DP-SGD (sample level, Opacus): per-sample gradients clipped, Gaussian noise multiplier 1, "
            f"batch 16; the most exposed client's (epsilon {straight['dp_sgd']['epsilon']:.3g}, delta 1 / client "
            "samples^1.1)") in card
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", **dp), callbacks=[StopAfter(1)])
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", resume=True, **dp))
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("model, fed, match", [
    (dict(bn_mode="train"), {}, r"DP-SGD with --bn-mode train: .*use --bn-mode frozen"),
    (dict(bn_mode="local"), {}, r"DP-SGD with --bn-mode local"),
    ({}, dict(strategy="fedprox"), r"DP-SGD with --strategy fedprox: the proximal term"),
    ({}, dict(dp_sgd_noise_multiplier=0.0), r"--dp-sgd-noise-multiplier must be > 0 \(no noise is no privacy\)"),
    ({}, dict(dp_sgd_max_grad_norm=-1.0), r"--dp-sgd-max-grad-norm must be > 0"),
    ({}, dict(max_grad_norm=1.0), r"--max-grad-norm with DP-SGD: .*drop --max-grad-norm"),
    ({}, dict(mixed_precision="bf16"), r"DP-SGD computes per-sample gradients in fp32: drop --mixed-precision bf16"),
    ({}, dict(dp_sgd_delta=2.0), r"--dp-sgd-delta must be in \(0, 1\)"),
])
def test_a_bad_dp_sgd_setting_is_refused_before_anything_loads(tmp_path, model, fed, match):
    with pytest.raises(FedSQError, match=match):
        check_run(ModelArguments(**model), DataArguments(),
                  FederatedArguments(output_dir=str(tmp_path), **{"dp_sgd_noise_multiplier": 1.0, **fed}))


def test_dp_sgd_flags_without_dp_sgd_are_refused(tmp_path):
    with pytest.raises(FedSQError, match=r"--dp-sgd-max-grad-norm has no effect without --dp-sgd-noise-multiplier"):
        check_run(ModelArguments(), DataArguments(), FederatedArguments(output_dir=str(tmp_path), dp_sgd_max_grad_norm=2.0))
