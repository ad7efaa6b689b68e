"""Gate drift: fraction of regimes that differ between two models, checked against hook-recorded regimes."""

import copy
import json

import timm
import torch

from fedsq_hf import FedSQConfig, FedSQModel, gate_drift
from fedsq_hf.federated import run_federated
from fedsq_hf.federated.cli.gate_drift import main as drift_cli
from reference import record_regimes
from helpers import tiny_args


def _perturbed(model, scale=0.05):
    other = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other


def test_drift_matches_hook_recorded_regimes():
    torch.manual_seed(0)
    plain = timm.create_model("resnet10t", pretrained=False).eval()
    moved = _perturbed(plain)
    x = torch.randn(6, 3, 32, 32)
    assert gate_drift(plain, copy.deepcopy(plain), x)["all"] == 0.0
    result = gate_drift(plain, moved, x, batch_size=4)  # two batches
    a, b = record_regimes(plain, x), record_regimes(moved, x)
    expected = sum(int((ra != rb).sum()) for ra, rb in zip(a, b)) / sum(ra.numel() for ra in a)
    assert abs(result["all"] - expected) < 1e-9 and 0 < result["all"] < 0.5
    assert "maxpool" in result and "layer1.0.act1" in result


def test_fedsq_model_drift_is_its_quantitative_copys_own_gates(backbone_dir):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3)).eval()
    moved = _perturbed(model)
    x = torch.randn(4, 3, 32, 32)
    plain = timm.create_model("local-dir:" + backbone_dir("resnet10t"), pretrained=True, num_classes=3).eval()
    plain.load_state_dict(moved.quantitative.state_dict())
    assert gate_drift(model, moved, x) == gate_drift(model.quantitative, plain, x)
    assert gate_drift(model, moved, x)["all"] > 0
    assert moved.structural is not None  # the FedSQ model itself is untouched: still gated
    assert type(moved.quantitative.act1).__name__.startswith("Gated")


def test_trainer_records_drift_and_cli_reads_it(backbone_dir, digits_dir, tmp_path, capsys):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, gate_drift_samples=16)
    model.model = "plain"
    run_federated(model, data, fed)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert all(0 <= h["gate_drift"] <= 1 for h in history) and history[-1]["gate_drift"] > 0
    assert "act1" in history[-1]["gate_drift_units"] and (tmp_path / "gate_drift.png").stat().st_size > 0
    assert drift_cli(["--run", str(tmp_path)]) == 0
    assert "round    2:" in capsys.readouterr().out
    assert drift_cli([str(tmp_path / "best"), str(tmp_path / "final"), "--dataset", digits_dir, "--image-column", "img",
                      "--samples", "8", "--output", str(tmp_path / "drift.json")]) == 0
    assert "all" in json.loads((tmp_path / "drift.json").read_text())


def test_the_gate_drift_command_line_refuses_bad_input_in_one_line(backbone_dir, digits_dir, tmp_path, capsys):
    """Each bad input is one `error:` line and exit status 2, before anything loads where it can be."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"round": 1, "gate_drift": None}, {"round": 2, "gate_drift": 0.25}]  # drift recorded from round 2
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert drift_cli(["--run", str(run), "--plot", str(tmp_path / "drift.png")]) == 0
    out = capsys.readouterr().out
    assert "round    1: not recorded" in out and "round    2: 25.00%" in out and (tmp_path / "drift.png").exists()
    a = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=10))
    b = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet18"), num_labels=10))
    a.save_pretrained(tmp_path / "a"), b.save_pretrained(tmp_path / "b")
    common = ["--dataset", digits_dir, "--image-column", "img", "--samples", "4"]
    cases = [(["--run", str(tmp_path / "nowhere")], "holds no history.jsonl"),
             ([str(tmp_path / "a"), str(tmp_path / "missing"), *common], "missing"),
             ([str(tmp_path / "a"), str(tmp_path / "a"), *common[:-1], "0"], "--samples must be at least 1, got 0"),
             ([str(tmp_path / "a"), str(tmp_path / "a"), *common[:-1], "-3"], "--samples must be at least 1, got -3"),
             ([str(tmp_path / "a"), str(tmp_path / "a"), *common, "--output", str(tmp_path / "no" / "x.json")],
              "its folder does not exist"),
             ([str(tmp_path / "a"), str(tmp_path / "b"), *common], "differ in structure")]
    for argv, match in cases:
        assert drift_cli(argv) == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # after the datasets progress bars
        assert last.startswith("error: ") and match in last and "Traceback" not in err, err
