"""README's Extending snippets run as written."""

import os
import re

import pytest

from fedsq_hf.federated import CLIENT_OPTIMIZERS, STRATEGIES
from helpers import ROOT, tiny_args


def _snippets():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Extending", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(4), ids=["callback", "metric", "strategy", "optimizer"])
def test_extending_snippet_runs(index, backbone_dir, digits_dir, tmp_path):
    snippets = _snippets()
    assert len(snippets) == 4
    model_args, data_args, fed_args = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2,
                                                local_steps=2, local_epochs=0)
    scope = {"model_args": model_args, "data_args": data_args, "fed_args": fed_args}
    try:
        exec(compile(snippets[index], f"README.md Extending snippet {index + 1}", "exec"), scope)
    finally:
        STRATEGIES.pop("fednormclip", None)
        CLIENT_OPTIMIZERS.pop("nesterov", None)
    summary = scope["summary"]
    assert summary["rounds"] >= 1 and summary["best_metric"] is not None
    expected = {1: ("metric_for_best_model", "balanced_accuracy")}.get(index)
    if expected:
        assert summary[expected[0]] == expected[1]
    if index == 2:
        assert summary["config"]["strategy_config"] == {"name": "fednormclip"}
    if index == 3:
        assert summary["config"]["optim"] == "nesterov"
