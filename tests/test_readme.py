"""README's Extending snippets run as written."""

import os
import re

import pytest

from fedsq_hf.federated import CLIENT_OPTIMIZERS, STRATEGIES, ClientState
from helpers import ROOT, tiny_args


def _snippets():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Extending", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(5), ids=["callback", "metric", "strategy", "optimizer", "client"])
def test_extending_snippet_runs(index, backbone_dir, digits_dir, tmp_path, monkeypatch, capsys):
    snippets = _snippets()
    assert len(snippets) == 5
    monkeypatch.chdir(tmp_path)
    model_args, data_args, fed_args = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=2,
                                                local_steps=2, local_epochs=0)
    scope = {"model_args": model_args, "data_args": data_args, "fed_args": fed_args}
    try:
        exec(compile(snippets[index], f"README.md Extending snippet {index + 1}", "exec"), scope)
    finally:
        STRATEGIES.pop("fednormclip", None)
        CLIENT_OPTIMIZERS.pop("nesterov", None)
    if index == 4:  # the client: an update of every shared tensor, its state on disk
        update = scope["update"]
        assert update.num_samples == 64 and not update.diverged and set(update.tensors) == set(scope["global_params"])
        assert update.num_bytes == 4 * sum(t.numel() for t in update.tensors.values())
        assert isinstance(ClientState.load(tmp_path / "client_state.safetensors"), ClientState)
        assert capsys.readouterr().out.startswith("64 ")
        return
    summary = scope["summary"]
    assert summary["rounds"] >= 1 and summary["best_metric"] is not None
    if index == 0:  # the callback printed every round's loss, and early stopping saw every evaluation
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
        assert printed == [f"round {r}: loss {h['train_loss']:.3f}" for r, h in
                           enumerate(_history(tmp_path / "run"), 1)]
    if index == 1:
        assert summary["metric_for_best_model"] == "balanced_accuracy"
        assert 0 <= summary["best_metric"] <= 1 and "eval_balanced_accuracy" in summary["final_metrics"]
    if index == 2:
        assert summary["config"]["strategy_config"] == {"name": "fednormclip"}
    if index == 3:
        assert summary["config"]["optim"] == "nesterov"


def _history(folder):
    import json

    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
