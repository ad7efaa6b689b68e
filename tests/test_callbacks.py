"""Callbacks: every event in order with what a callback needs in its kwargs, control steering the run,
and early stopping."""

import json

from fedsq_hf.federated import (EarlyStoppingCallback, FederatedArguments, FederatedCallback, FederatedControl,
                                FederatedState, run_federated)
from helpers import tiny_args


class Recorder(FederatedCallback):
    """Records events; forces an evaluation in round 1 (eval_every is 2) and stops after round 2."""

    def __init__(self):
        self.events, self.kwargs = [], {}

    def _record(name):
        def event(self, args, state, control, **kwargs):
            self.events.append(name)
            self.kwargs[name] = kwargs
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
    # what a callback needs comes in its kwargs (no trainer to reach into)
    common = {"model", "accelerator", "eval_dataset", "run_config"}
    own = {"init_end": set(), "train_begin": {"partition_summary"}, "round_begin": set(), "client": {"client", "update"},
           "evaluate": {"metrics"}, "round_end": {"record", "is_best"}, "save": {"checkpoint"}, "train_end": {"summary"}}
    assert {name: set(kw) for name, kw in recorder.kwargs.items()} == {name: common | keys for name, keys in own.items()}
    kw = recorder.kwargs
    assert kw["client"]["update"].num_samples > 0 and kw["client"]["client"] in summary_clients(tmp_path)
    assert kw["round_end"]["record"]["round"] == 2 and kw["train_end"]["summary"] is summary
    assert kw["save"]["checkpoint"].endswith("round-00002") and kw["init_end"]["run_config"]["rounds"] == 4
    assert sum(kw["train_begin"]["partition_summary"]["samples_per_client"]) == 240
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [("eval_accuracy" in h) for h in history] == [True, True]


def summary_clients(folder):
    return {c for line in (folder / "history.jsonl").read_text().splitlines() for c in json.loads(line)["clients"]}


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


def test_a_trainer_built_by_hand_reports_like_a_run(backbone_dir, tmp_path):
    """The default callbacks need nothing the builder adds: a `FederatedTrainer` from tensors trains to the end."""
    import numpy as np
    import torch

    from fedsq_hf import FedSQConfig, FedSQModel
    from fedsq_hf.federated import FedAvg, FederatedTrainer

    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 3, (32,))
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3))
    args = FederatedArguments(num_clients=2, rounds=1, batch_size=8, local_steps=1, local_epochs=0, disable_tqdm=True,
                              output_dir=str(tmp_path))
    summary = FederatedTrainer(model, FedAvg(), (x, y), (x[:8], y[:8]), [np.arange(16), np.arange(16, 32)], args).train()
    assert summary["rounds"] == 1 and summary["config"]["strategy_config"] == {"name": "fedavg"}
    for name in ("metrics.png", "history.jsonl", "summary.json", "final/model.safetensors"):
        assert (tmp_path / name).stat().st_size > 0, name
