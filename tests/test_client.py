"""The client side: `ClientTrainer.fit` as a silo calls it (the update, its state between rounds, the
round config, the codec), and the local loop (loss scaling, clipping, label smoothing, optimizers, the
divergence rule, FedProx's term)."""

import numpy as np
import pytest
import torch

from fedsq_hf import FedSQConfig, FedSQError, FedSQModel
from fedsq_hf.federated import (
    ClientArguments, ClientBatches, ClientState, ClientTrainer, Float16Codec,
    PreloadedSamples, TrainResult, build_trainer, client_seed, create_optimizer, diverged, make_accelerator,
)
from fedsq_hf.federated.client import proximal_term
from helpers import tiny_args


def _silo(backbone_dir, bn_mode="frozen", codec=None, **args):
    """A client on its own 16 samples, as a site would run it."""
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode=bn_mode))
    torch.manual_seed(0)
    data = PreloadedSamples(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    client = ClientTrainer(model, data, ClientArguments(**{"batch_size": 8, "lr": 0.05, **args}), codec=codec)
    return model, client, {k: v.clone() for k, v in client.tensors.shared.items()}


def test_fit_returns_local_minus_global_and_what_it_cost(backbone_dir):
    model, client, global_params = _silo(backbone_dir)
    update = client.fit(global_params, {"seed": 1, "lr": 0.05})
    assert not update.diverged and update.num_samples == 16 and update.metrics["steps"] == 2
    assert np.isfinite(update.metrics["train_loss"]) and update.local_state == {}
    assert set(update.tensors) == set(global_params)
    for k, local in client.tensors.shared.items():  # the model holds the local weights; global + update = local
        torch.testing.assert_close(global_params[k] + update.tensors[k], local.float(), rtol=0, atol=1e-6)
    assert any(update.tensors[k].abs().max() > 0 for k in update.tensors)
    numel = sum(t.numel() for t in global_params.values())
    assert update.num_bytes == 4 * numel  # identity codec: fp32 as it is
    again = client.fit(global_params, {"seed": 1, "lr": 0.05})  # from the same global: the same update
    assert all(torch.equal(update.tensors[k], again.tensors[k]) for k in update.tensors)

    # federated evaluation: the received model scored on 12 of the 16 samples (drawn by the seed) before training,
    # per class, which trains exactly as without it
    scored = client.fit(global_params, {"seed": 1, "lr": 0.05, "eval_samples": 12})
    assert all(torch.equal(update.tensors[k], scored.tensors[k]) for k in update.tensors)
    assert "eval_class_samples" not in update.metrics
    client.tensors.load(global_params)
    model.eval()
    chosen = np.sort(np.random.default_rng(1).choice(16, 12, replace=False))
    x, y, _ = client.samples[[(int(i), None) for i in chosen]]
    with torch.no_grad():
        hit = model(x).logits.argmax(-1) == y
    assert scored.metrics["eval_class_samples"] == torch.bincount(y, minlength=3).float().tolist()
    assert scored.metrics["eval_class_correct"] == torch.bincount(y[hit], minlength=3).float().tolist()

    # the label share: the effective number of classes of the labels it trained on over the classes, one number,
    # only when asked, and training is exactly as without it
    shared = client.fit(global_params, {"seed": 1, "lr": 0.05, "label_share": True})
    assert all(torch.equal(update.tensors[k], shared.tensors[k]) for k in update.tensors)
    assert "label_share" not in update.metrics
    p = torch.bincount(client.samples.labels).double() / 16  # 2 steps of 8: every sample once
    p = p[p > 0]
    assert shared.metrics["label_share"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())) / 3)


def test_the_label_share_counts_the_classes_a_client_trained_on():
    def share(*counts):
        return TrainResult(1, [0.0], torch.tensor(counts)).label_share

    assert share(5, 5, 5, 5) == pytest.approx(1.0) and share(7, 0, 0, 0) == pytest.approx(0.25)
    assert share(3, 3, 0, 0) == pytest.approx(0.5)  # two classes equally: 2 of 4
    assert 0.25 < share(9, 1, 0, 0) < 0.5  # mostly one class
    assert np.isnan(share(0, 0, 0, 0)) and np.isnan(TrainResult(0, []).label_share)  # no step


def test_a_silo_fitting_on_its_own_reproduces_the_simulators_round(backbone_dir, digits_dir, tmp_path):
    """The simulator runs exactly this API: clients fitted one by one outside it, averaged by hand, give
    the global model of its round 1."""
    model_args, data_args, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1)
    trainer = build_trainer(model_args, data_args, fed)
    start = trainer.global_model.vector.clone()
    record = trainer.run_round(1)
    silo = ClientTrainer(FedSQModel(trainer.model.config), trainer.train_set, ClientArguments.from_arguments(fed))
    global_params = trainer.global_model.layout.unflatten(start)
    total, summed = 0, torch.zeros_like(start)
    for c in record["clients"]:
        update = silo.fit(global_params, {"seed": client_seed(fed.seed, 1, c), "lr": fed.lr},
                          indices=trainer.partitions[c])
        trainer.global_model.layout.add_to(summed, update.tensors, update.num_samples)
        total += update.num_samples
    torch.testing.assert_close(start + summed / total, trainer.global_model.vector, rtol=0, atol=1e-6)
    trainer.close()


def test_a_client_keeps_its_own_batchnorm_between_rounds_and_on_disk(backbone_dir, tmp_path, monkeypatch):
    model, client, global_params = _silo(backbone_dir, bn_mode="local")
    assert client.tensors.local and not set(client.tensors.local) & set(global_params)  # FedBN: BN is not shared
    first = client.fit(global_params, {"seed": 1})
    kept = {k: v.clone() for k, v in client.state.local_batchnorm.items()}
    assert kept and all(torch.equal(first.local_state[k], kept[k]) for k in kept)
    client.state.save(tmp_path / "client_state.safetensors")
    restored = ClientState.load(tmp_path / "client_state.safetensors")
    assert all(torch.equal(restored.local_batchnorm[k], kept[k]) for k in kept)
    for t in client.tensors.local.values():  # whatever the model holds now ...
        t.fill_(7.0)
    fresh = ClientTrainer(model, client.samples, client.args, state=restored)
    seen = {}
    monkeypatch.setattr(fresh, "train", lambda *a, **kw: seen.update(
        {k: t.clone() for k, t in fresh.tensors.local.items()}) or TrainResult(16, [1.0]))
    fresh.fit(global_params, {"seed": 2})  # ... a new process of the same site trains from the BatchNorm it kept
    assert all(torch.equal(seen[k], kept[k]) for k in kept)


@pytest.mark.parametrize("config, match", [
    ({"seed": 1, "learning_rate": 0.1}, r"holds \['learning_rate'\], which a ClientTrainer does not read"),
    ({"lr": 0.1}, "has no 'seed'"),
    ({"seed": 1, "proximal_mu": -1.0}, "proximal_mu must be >= 0"),
    ({"seed": 1, "eval_samples": -1}, "eval_samples must be >= 0"),
])
def test_a_round_config_the_client_cannot_follow_is_refused(config, match, backbone_dir):
    _, client, global_params = _silo(backbone_dir)
    with pytest.raises(FedSQError, match=match):
        client.fit(global_params, config)


def test_global_parameters_of_another_model_are_refused(backbone_dir):
    _, client, global_params = _silo(backbone_dir)
    name = next(iter(global_params))
    with pytest.raises(FedSQError, match=f"global parameters do not fit .*missing \\['{name}'\\].*of another model"):
        client.fit({k: v for k, v in global_params.items() if k != name}, {"seed": 1})
    _, fedbn, fedbn_params = _silo(backbone_dir, bn_mode="local")
    state = ClientState({"bn1.weight": torch.ones(3)})  # another model's BatchNorm
    with pytest.raises(FedSQError, match="client state's BatchNorm does not fit .*unexpected \\['bn1.weight'\\]"):
        fedbn.fit(fedbn_params, {"seed": 1}, state=state)


def test_fedprox_term_pulls_the_update_towards_the_global_model(backbone_dir):
    p, g = [torch.ones(3, requires_grad=True)], [torch.zeros(3)]
    torch.testing.assert_close(proximal_term(p, g, 0.2), torch.tensor(0.3))
    _, client, global_params = _silo(backbone_dir, lr=0.5, momentum=0.0, local_steps=8)

    def norm(mu):
        update = client.fit(global_params, {"seed": 1, "proximal_mu": mu})
        return float(torch.cat([t.flatten() for t in update.tensors.values()]).norm())

    assert norm(1.5) < 0.8 * norm(0.0)


def test_a_diverging_client_says_so_and_sends_nothing(backbone_dir):
    _, client, global_params = _silo(backbone_dir, lr=1e12, local_steps=6)
    update = client.fit(global_params, {"seed": 1})
    assert update.diverged and update.tensors == {} and update.num_bytes == 0


def test_the_codec_decides_what_travels_and_its_bytes(backbone_dir):
    _, identity, global_params = _silo(backbone_dir)
    _, half, _ = _silo(backbone_dir, codec=Float16Codec())
    exact, sent = identity.fit(global_params, {"seed": 1}), half.fit(global_params, {"seed": 1})
    assert all(t.dtype == torch.float16 for t in sent.tensors.values()) and sent.num_bytes * 2 == exact.num_bytes
    for k, t in Float16Codec().decode(sent.tensors).items():
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, exact.tensors[k], rtol=1e-3, atol=1e-6)
    huge = Float16Codec().encode({"w": torch.tensor([1e6, -1e6])})["w"]
    assert torch.isfinite(huge).all()  # clamped to fp16's range, not infinite


def test_loss_scaling_is_exact_and_restarts_for_every_client(backbone_dir, tmp_path):
    """fp16 on a GPU scales the loss through accelerator.backward; here a CPU GradScaler stands in for it."""
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    data = (torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    args = ClientArguments(batch_size=8, lr=0.05)

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


def test_a_one_sample_last_batch_is_dropped_when_batchnorm_trains_on_batches(backbone_dir, tmp_path):
    batches = ClientBatches(batch_size=4, drop_single=True)
    batches.start(np.arange(9), seed=0, steps=batches.steps_per_epoch(9))
    assert [len(b) for b in batches] == [4, 4]  # the ninth sample would make a batch of one
    assert ClientBatches(4).steps_per_epoch(9) == 3 and ClientBatches(4, drop_single=True).steps_per_epoch(10) == 3
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, bn_mode="train"))
    args = ClientArguments(batch_size=4)
    data = (torch.randn(9, 3, 32, 32), torch.randint(0, 3, (9,)))
    result = ClientTrainer(model, PreloadedSamples(*data), args, make_accelerator(args)).train(np.arange(9), seed=1)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))  # no "Expected more than 1 value" error


def test_optimizers_come_from_timm():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = create_optimizer(params, ClientArguments(momentum=0.8, weight_decay=0.1), lr=0.5)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] is False and sgd.defaults["momentum"] == 0.8
    adamw = create_optimizer(params, ClientArguments(optim="adamw", weight_decay=0.1), lr=0.5)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 0.5


def _client(backbone_dir, tmp_path, **args):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.quantitative.get_classifier().weight)  # a fresh head is zero: uniform logits
    data = (torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    fed = ClientArguments(batch_size=8, local_epochs=1, **args)
    return model, ClientTrainer(model, PreloadedSamples(*data), fed, make_accelerator(fed)), data


def test_gradient_clipping_bounds_each_step(backbone_dir, tmp_path):
    model, client, _ = _client(backbone_dir, tmp_path, lr=1.0, momentum=0.0, max_grad_norm=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
    client.train(np.arange(8), seed=1)
    after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    assert 0 < float((after - before).norm()) <= 1e-3 * 1.0001  # one SGD step of lr 1 on a clipped gradient


def test_label_smoothing_is_in_the_client_loss(backbone_dir, tmp_path):
    model, client, (x, y) = _client(backbone_dir, tmp_path, label_smoothing=0.2)
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = torch.nn.functional.cross_entropy(model(x).logits.float(), y, label_smoothing=0.2).item()
    _, plain, _ = _client(backbone_dir, tmp_path)
    loss = client.train(np.arange(8), seed=1).losses[0]
    assert loss == pytest.approx(expected, rel=1e-5) and loss != pytest.approx(plain.train(np.arange(8), seed=1).losses[0])


def test_divergence_rule():
    assert diverged([], 10, 4) and diverged([1.4, float("nan")], 10, 4) and diverged([1.4, float("inf")], 0, 4)
    assert diverged([1.39, 80.0, 1750.0, 1e22], 10, 4)
    assert not diverged([1.39, 80.0, 1750.0, 1e22], 0, 4)  # factor 0: only non-finite losses count
    assert not diverged([0.01, 0.3, 0.5, 0.6], 10, 4)  # near-zero start: judged against chance level, log(4)
