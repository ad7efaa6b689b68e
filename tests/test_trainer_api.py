"""The trainer's extension points: callbacks and control, early stopping, optimizers and schedules,
metrics, strategies that see every client, and scheduling."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import EvalPrediction

from fedsq_hf import FedSQConfig, FedSQError, FedSQModel, model_card
from fedsq_hf.federated import (
    STRATEGIES, ClientTrainer, ClientUpdate, EarlyStoppingCallback, FederatedArguments, FederatedCallback,
    FederatedControl, FederatedState, FedMedian, PreloadedSamples, FedTrimmedAvg, Strategy, assign_clients, build_trainer,
    compute_classification_metrics, create_optimizer, make_accelerator, register_strategy, round_learning_rates,
    run_federated,
)
from helpers import assert_same_run, cli_args, run_example
from test_federated import tiny_args


class Recorder(FederatedCallback):
    """Records events; forces an evaluation in round 1 (eval_every is 2) and stops after round 2."""

    def __init__(self):
        self.events = []

    def _record(name):
        def event(self, args, state, control, **kwargs):
            self.events.append(name)
            if name == "round_begin" and state.round == 0:
                control.should_evaluate = True
            if name == "round_end" and state.round == 2:
                control.should_training_stop = True
        return event

    on_init_end, on_train_begin = _record("init_end"), _record("train_begin")
    on_round_begin, on_client_end = _record("round_begin"), _record("client")
    on_evaluate, on_round_end, on_save, on_train_end = (_record("evaluate"), _record("round_end"), _record("save"),
                                                       _record("train_end"))


def test_callbacks_see_every_event_in_order_and_steer_the_run(backbone_dir, digits_dir, tmp_path):
    recorder = Recorder()
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=4, eval_every=2, save_every=3)
    summary = run_federated(model, data, fed, callbacks=[recorder])
    round_ = ["round_begin", "client", "client"]
    assert recorder.events == ["init_end", "train_begin",
                               *round_, "evaluate", "round_end",  # evaluation forced in round 1
                               *round_, "evaluate", "round_end", "save",  # round 2: eval_every; stop, so saved
                               "train_end"]
    assert summary["rounds"] == 2 and summary["stopped_early"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "round-00002"
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [("eval_accuracy" in h) for h in history] == [True, True]


def test_early_stopping_counts_evaluations_without_enough_improvement():
    stop = EarlyStoppingCallback(patience=2, threshold=0.01)
    state = FederatedState(max_rounds=10)
    for accuracy, stops in ((0.5, False), (0.6, False), (0.605, False), (0.609, True)):
        control = FederatedControl()
        state.history.append({"round": len(state.history) + 1, "eval_accuracy": accuracy})
        state.round += 1
        stop.on_round_end(FederatedArguments(), state, control)
        assert control.should_training_stop is stops, accuracy
    loss_state = FederatedState(metric_for_best_model="loss", greater_is_better=False,
                                history=[{"round": 1, "eval_loss": 1.0}, {"round": 2, "eval_loss": 0.5}])
    control = FederatedControl()
    EarlyStoppingCallback(patience=1).on_round_end(FederatedArguments(), loss_state, control)
    assert not control.should_training_stop  # a smaller loss is an improvement


def test_early_stopping_ends_a_run(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=5)
    summary = run_federated(model, data, fed, callbacks=[EarlyStoppingCallback(patience=1, threshold=1.0)])
    assert summary["rounds"] == 2 and summary["stopped_early"]  # accuracy cannot improve by more than 1.0


def test_round_learning_rates_follow_the_schedule():
    def rates(**kw):
        return round_learning_rates(FederatedArguments(lr=1.0, rounds=4, **kw))

    assert rates() == [1.0, 1.0, 1.0, 1.0]
    assert rates(lr_scheduler="linear") == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert rates(lr_scheduler="cosine") == pytest.approx([0.5 * (1 + math.cos(math.pi * r / 4)) for r in range(4)])
    assert rates(warmup_rounds=2) == pytest.approx([0.5, 1.0, 1.0, 1.0])  # no round at lr 0
    assert rates(lr_scheduler="linear", warmup_rounds=2) == pytest.approx([0.5, 1.0, 2 / 3, 1 / 3])


def test_optimizers_come_from_timm():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = create_optimizer(params, FederatedArguments(momentum=0.8, weight_decay=0.1), lr=0.5)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] is False and sgd.defaults["momentum"] == 0.8
    adamw = create_optimizer(params, FederatedArguments(optim="adamw", weight_decay=0.1), lr=0.5)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 0.5


def _client(backbone_dir, tmp_path, **args):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.quantitative.get_classifier().weight)  # a fresh head is zero: uniform logits
    data = (torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    fed = FederatedArguments(batch_size=8, local_epochs=1, output_dir=str(tmp_path), **args)
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


def test_a_user_metric_picks_the_best_model_and_reaches_every_output(backbone_dir, digits_dir, tmp_path):
    def compute_metrics(p):
        return {"error_rate": float((p.predictions.argmax(-1) != p.label_ids).mean())}

    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2,
                                 metric_for_best_model="error_rate", greater_is_better=False)
    summary = run_federated(model, data, fed, compute_metrics=compute_metrics)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    errors = [h["eval_error_rate"] for h in history]
    assert summary["best_metric"] == min(errors) and summary["metric_for_best_model"] == "error_rate"
    assert set(summary["final_metrics"]) == {"eval_loss", "eval_error_rate"}
    card = str(model_card(FedSQModel.from_pretrained(tmp_path / "final").config, "me/m", summary=summary,
                          history=history))
    assert "type: error_rate" in card and "| error rate |" in card.lower()
    assert (tmp_path / "metrics.png").stat().st_size > 0
    with pytest.raises(FedSQError, match="--metric-for-best-model 'accuracy' is not among"):  # after round 1
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "bad", rounds=1),
                      compute_metrics=compute_metrics)


def test_robust_aggregators():
    def updates(values):
        return [ClientUpdate(i, torch.tensor(v, dtype=torch.float32), 10 * (i + 1)) for i, v in enumerate(values)]

    odd = updates([[1.0, -5.0], [2.0, 0.0], [100.0, 1.0]])
    assert FedMedian().aggregate_clients(odd).tolist() == [2.0, 0.0]
    even = updates([[1.0], [2.0], [4.0], [100.0]])
    assert FedMedian().aggregate_clients(even).tolist() == [3.0]  # the mean of the middle two, as np.median
    five = updates([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    assert FedTrimmedAvg(beta=0.2).aggregate_clients(five).tolist() == [3.0]  # 1 and 1000 cut
    assert FedTrimmedAvg(beta=0.0).aggregate_clients(five).tolist() == [202.0]
    with pytest.raises(FedSQError, match=r"beta must be in \[0, 0.5\)"):
        FedTrimmedAvg(beta=0.5)


def test_a_registered_strategy_gets_every_clients_update_by_name(backbone_dir, digits_dir, tmp_path):
    seen = []

    @register_strategy
    class LargestClient(Strategy):
        name = "largest-client"
        needs_client_updates = True

        def aggregate_clients(self, updates):
            seen.append([(u.client, u.num_samples) for u in updates])
            return max(updates, key=lambda u: u.num_samples).update

    try:
        model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, strategy="largest-client")
        trainer = build_trainer(model, data, fed)
        trainer.train()
        clients = trainer.state.history[0]["clients"]
        assert seen == [[(c, len(trainer.partitions[c])) for c in clients]]
    finally:
        STRATEGIES.pop("largest-client")


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg"])
def test_robust_strategies_give_the_same_weights_on_1_and_2_processes(strategy, backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547")
    extra = dict(rounds=1, strategy=strategy, clients_per_round=3, trim_beta=0.34)
    for name, launcher in (("one", (sys.executable,)), ("two", torchrun)):
        result = run_example(cli_args(backbone, digits_dir, tmp_path / name, **extra), launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_clients_are_spread_largest_first():
    sizes = [100, 10, 10, 10, 10, 90, 5]
    # largest first, each to the least loaded: 0 | 5, 1 | 2, 3 | 4, 6  (loads 120 and 115)
    assert assign_clients([0, 1, 2, 3, 4, 5, 6], sizes, 2) == [[0, 2, 4], [1, 3, 5, 6]]
    assert assign_clients([1, 3], sizes, 3) == [[1], [3], []]
    assert assign_clients([0, 5], sizes, 1) == [[0, 5]]


class StopAfter(FederatedCallback):
    def __init__(self, round_):
        self.round = round_

    def on_round_end(self, args, state, control, **kwargs):
        if state.round == self.round:
            control.should_training_stop = True


def test_resume_with_a_schedule_adamw_and_a_server_optimizer_is_exact(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    settings = dict(rounds=3, strategy="fedadam", server_lr=0.01, optim="adamw", lr=0.001, lr_scheduler="cosine",
                    warmup_rounds=1, max_grad_norm=1.0, label_smoothing=0.1)
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", **settings))
    stopped = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", **settings), callbacks=[StopAfter(2)])
    assert stopped["rounds"] == 2 and stopped["stopped_early"]
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", resume=True, **settings))
    history = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert [h["lr"] for h in history] == pytest.approx([0.001, 0.001 * 0.75, 0.001 * 0.25])


def test_fedbn_traffic_scales_with_the_rounds_clients(backbone_dir, digits_dir, tmp_path, monkeypatch):
    import fedsq_hf.federated.trainer as trainer_module

    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, clients_per_round=2,
                                 local_steps=1, local_epochs=0)
    model.bn_mode = "local"
    trainer = build_trainer(model, data, fed)
    sizes = []
    reduce = trainer_module.reduce
    monkeypatch.setattr(trainer_module, "reduce", lambda t, **kw: sizes.append(t.numel()) or reduce(t, **kw))
    trainer.run_round(1)
    # round statistics (3 + one flag per client), each *trained* client's BatchNorm, the summed update
    assert sizes == [3 + 4 + 2 * trainer.fedbn.flat.numel + trainer.global_state.numel()]


def test_plots_read_as_a_person_expects(tmp_path, monkeypatch):
    import fedsq_hf.federated.partition as partition_module
    import fedsq_hf.federated.plots as plots_module
    from fedsq_hf.federated import plot_partition
    from fedsq_hf.federated.plots import plot_metrics

    figures = []
    for module in (plots_module, partition_module):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"round": r, "eval_loss": 1.0 / r, "eval_accuracy": 0.1 * r} for r in (1, 2, 3)]
    plot_metrics(history, str(tmp_path / "m.png"), best_round=3)
    axes = figures[-1].axes
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy"]
    assert all(float(t).is_integer() for ax in axes for t in ax.get_xticks())
    plot_partition({"samples_per_client": [3, 5], "label_histogram": [[3, 0], [1, 4]]}, str(tmp_path / "p.png"),
                   label_names=["cat", "dog"])
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 (3)", "1 (5)"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]


def test_bf16_autocast_trains(backbone_dir, digits_dir, tmp_path):
    """bf16 runs under autocast (no loss scaler needed; fp16's scaling is tested in test_federated); in
    fresh processes, since Accelerate's mixed-precision setting is per process."""
    for precision in ("bf16", "no"):
        args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / precision, rounds=1, mixed_precision=precision)
        result = run_example(args)
        assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "bf16" / "history.jsonl").read_text().splitlines()]
    assert math.isfinite(record["train_loss"]) and record["failed_clients"] == []
    bf16 = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    fp32 = load_file(tmp_path / "no" / "final" / "model.safetensors")
    assert any(not torch.equal(bf16[k], fp32[k]) for k in bf16)  # autocast was applied
