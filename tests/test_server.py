"""The server's own pieces: the learning-rate schedule it sends, the built-in metrics, FedBN's local states
and the global model."""

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from fedsq_hf.federated import LocalStates, compute_classification_metrics, round_learning_rates
from fedsq_hf.federated.protocol import ParamLayout


def test_round_learning_rates_follow_the_schedule():
    def rates(scheduler="constant", warmup=0):
        return round_learning_rates(1.0, 4, scheduler, warmup)

    assert rates() == [1.0, 1.0, 1.0, 1.0]
    assert rates("linear") == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert rates("cosine") == pytest.approx([0.5 * (1 + math.cos(math.pi * r / 4)) for r in range(4)])
    assert rates(warmup=2) == pytest.approx([0.5, 1.0, 1.0, 1.0])  # no round at lr 0
    assert rates("linear", 2) == pytest.approx([0.5, 1.0, 2 / 3, 1 / 3])


def test_built_in_metrics():
    ranks = [[0, 1, 2, 3, 4, 5, 6], [2, 0, 1, 3, 4, 5, 6], [1, 2, 6, 0, 3, 4, 5], [3, 4, 5, 0, 1, 2, 6]]
    logits = 10.0 - np.array(ranks, float)  # no ties; ranks[i][c]: where class c stands in row i
    labels = np.array([0, 0, 2, 3])  # ranks 0, 2 (top-5, not top-1), 6 (neither), 0
    metrics = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == 0.5 and metrics["top5_accuracy"] == 0.75
    from sklearn.metrics import f1_score

    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, logits.argmax(-1), average="macro", zero_division=0))
    few = compute_classification_metrics(EvalPrediction(predictions=logits[:, :3], label_ids=np.array([0, 1, 0, 2])))
    assert "top5_accuracy" not in few


def test_fedbn_local_states_are_each_clients_own_and_their_mean_is_sample_weighted():
    layout = ParamLayout({"bn.weight": torch.zeros(2), "bn.running_mean": torch.zeros(2)})
    initial = torch.tensor([1.0, 1.0, 0.0, 0.0])
    states = LocalStates(layout, initial, num_clients=3)
    assert states.of(0) == {} and torch.equal(states.mean(), initial) and states.describe() == "pretrained"
    states.update(0, torch.tensor([2.0, 2.0, 2.0, 2.0]), 10)
    states.update(2, torch.tensor([6.0, 6.0, 6.0, 6.0]), 30)  # weighted by the samples each reported
    torch.testing.assert_close(states.mean(), torch.full((4,), (2 * 10 + 6 * 30) / 40))
    assert torch.equal(states.of(2)["bn.running_mean"], torch.tensor([6.0, 6.0]))
    assert states.describe() == "sample-weighted mean of 2 clients' BatchNorms"
    restored = LocalStates(layout, initial, num_clients=3)
    assert restored.load(states.tensors()) and torch.equal(restored.mean(), states.mean())
    assert not restored.load({"client_local": torch.zeros(2, 4)})  # another federation's table


def test_a_round_aggregate_takes_updates_in_and_steps_the_global_model(backbone_dir):
    from fedsq_hf import FedSQConfig, FedSQModel
    from fedsq_hf.federated import ClientUpdate, FedAvg, FedMedian, GlobalModel, IdentityCodec, RoundAggregate

    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    for strategy in (FedAvg(), FedMedian()):
        server = GlobalModel(model, num_clients=3)
        start = server.vector.clone()
        ones = {k: torch.ones_like(v) for k, v in server.params().items()}
        aggregate = RoundAggregate.start(server, strategy, active=[0, 2])
        aggregate.add(0, ClientUpdate(ones, 10, {"train_loss": 1.0}, num_bytes=4), IdentityCodec(), server)
        aggregate.add(2, ClientUpdate({}, 30, {"train_loss": float("nan")}, diverged=True), IdentityCodec(), server)
        assert aggregate.failed == [2] and aggregate.num_samples == 10 and aggregate.train_loss == 1.0
        assert aggregate.step(strategy, server, 1) and aggregate.samples.tolist() == [10, 0]
        torch.testing.assert_close(server.vector, start + 1)  # the one usable update, applied
        empty = RoundAggregate.start(server, strategy, active=[1])
        assert not empty.step(strategy, server, 2)  # nothing usable: the model is kept
        torch.testing.assert_close(server.vector, start + 1)


def test_the_round_records_how_much_its_client_updates_agree(backbone_dir):
    """|mean update|^2 / mean squared norm: 1 for equal updates, 0 for cancelling ones, 1/2 for two orthogonal
    ones of one norm; the alignment takes the orthogonal share out: 1, -1, 0, and 0 for orthogonal updates of
    unequal weight; the same whether the strategy sums (FedAvg) or takes each update (FedMedian)."""
    from fedsq_hf import FedSQConfig, FedSQModel
    from fedsq_hf.federated import ClientUpdate, FedAvg, FedMedian, GlobalModel, IdentityCodec, RoundAggregate

    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    server = GlobalModel(model, num_clients=2)
    params = server.params()
    first = next(iter(params))
    one_hot = [{k: torch.zeros_like(v) for k, v in params.items()} for _ in range(2)]
    one_hot[0][first].view(-1)[0], one_hot[1][first].view(-1)[1] = 1.0, 1.0
    ones = {k: torch.ones_like(v) for k, v in params.items()}
    cases = (([ones, ones], (10, 10), 1.0, 1.0), ([ones, {k: -v for k, v in ones.items()}], (10, 10), 0.0, -1.0),
             (one_hot, (10, 10), 0.5, 0.0), (one_hot, (10, 30), 0.625, 0.0))  # (1 + 9) / 16; m = 1.6 clients
    for updates, samples, agreement, alignment in cases:
        for strategy in (FedAvg(), FedMedian()):
            aggregate = RoundAggregate.start(GlobalModel(model, num_clients=2), strategy, active=[0, 1])
            for client, (update, n) in enumerate(zip(updates, samples)):
                aggregate.add(client, ClientUpdate(update, n, {"train_loss": 1.0}), IdentityCodec(), server)
            aggregate.step(strategy, GlobalModel(model, num_clients=2), 1)
            assert aggregate.update_agreement == pytest.approx(agreement, abs=1e-9), (strategy.name, agreement)
            assert aggregate.update_alignment == pytest.approx(alignment, abs=1e-9), (strategy.name, alignment)
    aggregate = RoundAggregate.start(GlobalModel(model, num_clients=2), FedAvg(), active=[0, 1])
    aggregate.add(0, ClientUpdate(ones, 10, {"train_loss": 1.0}), IdentityCodec(), server)
    aggregate.step(FedAvg(), GlobalModel(model, num_clients=2), 1)
    assert aggregate.update_agreement == pytest.approx(1.0) and aggregate.update_alignment is None  # one update
