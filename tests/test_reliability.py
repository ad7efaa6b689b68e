"""Reliability: the bad-input catalogue, failing and dropping clients, crash safety, untrusted files."""

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import BackboneLoadError, CheckpointError, FedSQConfig, FedSQError, FedSQModel, GatingError
from fedsq_hf.federated import FedAvg, FederatedArguments, FederatedTrainer, run_federated
from fedsq_hf.federated import diverged, dropped_clients, sample_clients
from helpers import ROOT, cli_args, run_example
from test_federated import tiny_args


def _parquet_dataset(folder, train_labels, test_labels, names=None):
    """train/test parquet files of 8x8 images; `names` makes the label a ClassLabel."""
    from datasets import ClassLabel, Dataset, Image

    os.makedirs(folder, exist_ok=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        images = [np.full((8, 8), 16 * (i % 16), np.uint8) for i in range(len(labels))]
        ds = Dataset.from_dict({"img": images, "label": labels}).cast_column("img", Image())
        if names:
            ds = ds.cast_column("label", ClassLabel(names=names))
        ds.to_parquet(os.path.join(folder, f"{split}.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def finished_run(backbone_dir, digits_dir, tmp_path_factory):
    """A finished 1-round run (checkpoint included), to resume from with other settings."""
    out = tmp_path_factory.mktemp("finished")
    run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=1))
    return out


def _snapshot(folder):
    """Every file under `folder` with a hash of its bytes: equal snapshots mean nothing was written."""
    result = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            result[os.path.relpath(path, folder)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return result


# -- 1. bad input: each raises a named error before any training --------------------------------

def _case(tmp, backbone_dir, digits_dir, finished, name):
    """(model/data/fed overrides, output dir) of one bad-input case."""
    resume = dict(resume=True, rounds=2)
    cases = {
        "unknown backbone id": ({"backbone": "nobody/no-such-backbone"}, {}, {}),
        "unreadable backbone folder": ({"backbone": str(tmp)}, {}, {}),
        "backbone without gateable ops": ({"backbone": backbone_dir("mobilenetv3_small_050")}, {}, {}),
        "missing dataset folder": ({}, {"dataset": str(tmp / "no" / "such" / "data")}, {}),
        "no image column": ({}, {"image_column": "pixels"}, {}),
        "no label column": ({}, {"label_column": "target"}, {}),
        "unlabelled eval split (-1)": ({}, {"dataset": _parquet_dataset(tmp / "unlabelled", [0, 1] * 20, [0, -1], ["a", "b"])}, {}),
        "eval labels never seen in train": ({}, {"dataset": _parquet_dataset(tmp / "unseen", [0, 1] * 20, [1, 7])}, {}),
        "num_clients < 1": ({}, {}, {"num_clients": 0}),
        "num_clients > samples": ({}, {}, {"num_clients": 500, "clients_per_round": 2, "min_partition_size": 1}),
        "alpha <= 0": ({}, {}, {"alpha": -1.0}),
        "clients_per_round > num_clients": ({}, {}, {"clients_per_round": 5}),
        "local_epochs and local_steps both 0": ({}, {}, {"local_epochs": 0, "local_steps": 0}),
        "batch size < 1": ({}, {}, {"batch_size": 0}),
        "empty eval split": ({}, {"dataset": _parquet_dataset(tmp / "empty", [0, 1] * 20, [], ["a", "b"])}, {}),
        "unknown strategy": ({}, {}, {"strategy": "fedsgd"}),
        "unknown partition": ({}, {}, {"partition": "by-color"}),
        "dropout rate 1": ({}, {}, {"dropout_rate": 1.0}),
        "gate cache with augmentation": ({"gate_cache_mb": 8}, {"augment": "flip"}, {}),
        "unknown augmentation": ({}, {"augment": "mixup"}, {}),
        "timm options without --augment timm": ({}, {"augment": "flip", "re_prob": 0.25}, {}),
        "unknown auto-augment policy": ({}, {"augment": "timm", "auto_augment": "rand-xyz"}, {}),
        "crop scale out of range": ({}, {"augment": "timm", "crop_scale": [0.5, 1.5]}, {}),
        "unknown preload mode": ({}, {"preload": "sometimes"}, {}),
        "unknown client optimizer": ({}, {}, {"optim": "adamw2"}),
        "unknown lr scheduler": ({}, {}, {"lr_scheduler": "step"}),
        "warm-up as long as the run": ({}, {}, {"warmup_rounds": 2}),
        "trim beta of one half": ({}, {}, {"trim_beta": 0.5}),
        "unknown best-model metric": ({}, {}, {"metric_for_best_model": "f1"}),
        "resume without checkpoint": ({}, {}, resume),
        "resume: other backbone": ({"backbone": shutil.copytree(backbone_dir("resnet10t"), tmp / "bb2")}, {}, resume),
        "resume: other num_labels": ({}, {"dataset": _parquet_dataset(tmp / "three", [0, 1, 2] * 20, [0, 1, 2])}, resume),
        "resume: other num_clients": ({}, {}, {**resume, "num_clients": 5}),
        "push_to_hub without credentials": ({}, {}, {"push_to_hub": True, "hub_model_id": "me/model"}),
        "push_to_hub without repo id": ({}, {}, {"push_to_hub": True}),
    }
    out = tmp / "run"
    if name.startswith("resume:"):
        shutil.copytree(finished, out)
    return cases[name], out


BAD_INPUT = [
    ("unknown backbone id", BackboneLoadError, r"'nobody/no-such-backbone'.*point `backbone` at a local folder"),
    ("unreadable backbone folder", BackboneLoadError, "has no config.json: it is not a timm checkpoint"),
    ("backbone without gateable ops", GatingError, r"cannot be gated.*Hardswish.*allow_ungated=True"),
    ("missing dataset folder", FedSQError, r"Dataset path '.*/no/such/data' does not exist"),
    ("no image column", FedSQError, "has no column 'pixels'.*--image-column"),
    ("no label column", FedSQError, "has no column 'target'.*--label-column"),
    ("unlabelled eval split (-1)", FedSQError, r"Labels \[-1\] in column 'label' are outside \[0, 2\)"),
    ("eval labels never seen in train", FedSQError, r"labels \['7'\] that never occur in train"),
    ("num_clients < 1", FedSQError, "--num-clients must be >= 1"),
    ("num_clients > samples", FedSQError, "num_clients=500 is larger than the 240 training samples"),
    ("alpha <= 0", FedSQError, "--alpha must be > 0"),
    ("clients_per_round > num_clients", FedSQError, r"--clients-per-round must be between 1 and --num-clients \(4\)"),
    ("local_epochs and local_steps both 0", FedSQError, "both 0: clients would not train"),
    ("batch size < 1", FedSQError, "--batch-size must be >= 1"),
    ("empty eval split", FedSQError, "'test' split of .* is empty"),
    ("unknown strategy", FedSQError, "--strategy must be one of .*fedavg"),
    ("unknown partition", FedSQError, "--partition must be one of"),
    ("dropout rate 1", FedSQError, r"--dropout-rate must be in \[0, 1\)"),
    ("gate cache with augmentation", FedSQError, "--gate-cache-mb needs --augment none"),
    ("unknown augmentation", FedSQError, r"--augment must be one of \['none', 'flip', 'timm'\], got 'mixup'"),
    ("timm options without --augment timm", FedSQError, "--auto-augment, --re-prob and --crop-scale need --augment timm"),
    ("unknown auto-augment policy", FedSQError, "--auto-augment 'rand-xyz' is not a timm policy.*rand-m9-mstd0.5"),
    ("crop scale out of range", FedSQError, r"--crop-scale needs two values 0 < MIN <= MAX <= 1, got \[0.5, 1.5\]"),
    ("unknown preload mode", FedSQError, r"--preload must be one of \['auto', 'always', 'never'\]"),
    ("unknown client optimizer", FedSQError, "--optim must be sgd or a timm optimizer .*got 'adamw2'"),
    ("unknown lr scheduler", FedSQError, r"--lr-scheduler must be one of \['constant', 'linear', 'cosine'\]"),
    ("warm-up as long as the run", FedSQError, r"--warmup-rounds must be in \[0, --rounds\), got 2"),
    ("trim beta of one half", FedSQError, r"--trim-beta must be in \[0, 0.5\), got 0.5"),
    ("unknown best-model metric", FedSQError, "--metric-for-best-model 'f1' is not among the evaluation's metrics"),
    ("resume without checkpoint", CheckpointError, "holds no checkpoint.*run without --resume"),
    ("resume: other backbone", CheckpointError, "another run: backbone"),
    ("resume: other num_labels", CheckpointError, "another run: .*num_labels 10 \\(checkpoint\\) vs 3"),
    ("resume: other num_clients", CheckpointError, "another run: num_clients 4 \\(checkpoint\\) vs 5"),
    ("push_to_hub without credentials", FedSQError, "needs Hub credentials: run `hf auth login` or set HF_TOKEN"),
    ("push_to_hub without repo id", FedSQError, "--push-to-hub needs --hub-model-id"),
]


@pytest.mark.parametrize("name, error, match", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_before_training(name, error, match, backbone_dir, digits_dir, finished_run, tmp_path,
                                              monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (model_kw, data_kw, fed_kw), out = _case(tmp_path, backbone_dir, digits_dir, finished_run, name)
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, out, **fed_kw)
    for obj, overrides in ((model, model_kw), (data, data_kw)):
        for key, value in overrides.items():
            setattr(obj, key, str(value) if isinstance(value, os.PathLike) else value)
    before = _snapshot(out)
    with pytest.raises(error, match=match):
        run_federated(model, data, fed)
    assert _snapshot(out) == before  # nothing trained, nothing written


# -- 2. failing and dropping clients --------------------------------------------------------------

def test_divergence_rule():
    assert diverged([], 10, 4) and diverged([1.4, float("nan")], 10, 4) and diverged([1.4, float("inf")], 0, 4)
    assert diverged([1.39, 80.0, 1750.0, 1e22], 10, 4)
    assert not diverged([1.39, 80.0, 1750.0, 1e22], 0, 4)  # factor 0: only non-finite losses count
    assert not diverged([0.01, 0.3, 0.5, 0.6], 10, 4)  # near-zero start: judged against chance level, log(4)


def _random_task(backbone_dir, poison_scale, tmp_path, **fed):
    torch.manual_seed(0)
    x, y = torch.randn(160, 3, 32, 32), torch.randint(0, 4, (160,))
    parts = [np.arange(i * 40, (i + 1) * 40) for i in range(4)]
    x[parts[0]] *= poison_scale  # client 0's camera is broken
    args = FederatedArguments(**{**dict(num_clients=4, clients_per_round=4, rounds=1, batch_size=8, lr=0.05,
                                        local_steps=4, local_epochs=0, output_dir=str(tmp_path)), **fed})
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=4))
    return FederatedTrainer(model, FedAvg(), (x, y), (x[40:80], y[40:80]), parts, args)


def test_a_diverging_client_is_excluded_and_the_round_completes(backbone_dir, tmp_path, caplog):
    trainer = _random_task(backbone_dir, 30.0, tmp_path)
    record = trainer.run_round(1)
    assert record["failed_clients"] == [0] and record["train_loss"] < 2.0
    assert "excluded clients [0]" in caplog.text
    assert torch.isfinite(trainer.global_state).all()
    assert record["bytes_aggregated"] == 3 * trainer.global_state.numel() * 4
    loose = _random_task(backbone_dir, 30.0, tmp_path, divergence_factor=0.0).run_round(1)  # the check off
    assert loose["failed_clients"] == [] and loose["train_loss"] > 1e3


def test_simulated_dropout_is_seeded_and_skips_clients(backbone_dir, tmp_path):
    trainer = _random_task(backbone_dir, 1.0, tmp_path, dropout_rate=0.5, rounds=5)
    before = trainer.global_state.clone()
    records = [trainer.run_round(r) for r in range(1, 5)]
    dropped = [r["dropped_clients"] for r in records]
    assert dropped == [dropped_clients(0, r, sample_clients(0, r, 4, 4), 0.5) for r in range(1, 5)]  # deterministic
    assert any(dropped) and not all(len(d) == 4 for d in dropped)
    for r in records:
        assert set(r["dropped_clients"]) <= set(r["clients"])
        assert r["bytes_aggregated"] == (4 - len(r["dropped_clients"])) * trainer.global_state.numel() * 4
    everyone_gone = next((r for r in records if len(r["dropped_clients"]) == 4), None)
    if everyone_gone is None:  # no round lost every client: check the rule directly
        trainer.args.dropout_rate = 0.999
        everyone_gone = trainer.run_round(5)
        assert len(everyone_gone["dropped_clients"]) == 4
    assert everyone_gone["train_loss"] is None and trainer.state.failed_streak == 0  # no update, but no failure
    assert not torch.equal(before, trainer.global_state)


# -- 3. crash safety: SIGKILL in the middle of a save, then resume ---------------------------------

_KILLER = """
    import os, runpy, signal, sys
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if {target!r} in os.fspath(dst):
            os.kill(os.getpid(), signal.SIGKILL)  # the file is fully written under its temporary name, not renamed
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    sys.argv = ["federated.py", *{args!r}]
    runpy.run_path({script!r}, run_name="__main__")
"""


def _run_until_killed(args, target):
    code = textwrap.dedent(_KILLER).format(target=target, args=args, script=os.path.join(ROOT, "examples", "federated.py"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def straight_run(backbone_dir, digits_dir, tmp_path_factory):
    """The uninterrupted run, in a process like the killed one (same thread count, so bitwise comparable)."""
    out = tmp_path_factory.mktemp("straight")
    assert run_example(cli_args(backbone_dir("resnet10t"), digits_dir, out, rounds=3)).returncode == 0
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("target", [
    os.path.join(".tmp-round-00002", "state.safetensors"),  # round 2's checkpoint: its state file
    os.path.join("checkpoints", "round-00002"),  # round 2's checkpoint: its folder
], ids=["state-file", "checkpoint-folder"])
def test_killed_mid_checkpoint_then_resume_finishes_the_same_run(target, straight_run, backbone_dir, digits_dir,
                                                                 tmp_path):
    backbone = backbone_dir("resnet10t")
    killed = _run_until_killed(cli_args(backbone, digits_dir, tmp_path, rounds=3), target)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "round-00001"  # the previous checkpoint stands
    resumed = run_example(cli_args(backbone, digits_dir, tmp_path, rounds=3, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert final.keys() == straight_run.keys() and all(torch.equal(final[k], straight_run[k]) for k in final)


def test_save_pretrained_killed_mid_save_keeps_the_previous_model(backbone_dir, tmp_path):
    folder = tmp_path / "model"
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2))
    model.save_pretrained(folder)
    code = textwrap.dedent(f"""
        import os, signal, torch
        from fedsq_hf import FedSQModel
        model = FedSQModel.from_pretrained({str(folder)!r})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        model.save_pretrained({str(folder)!r})
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    loaded = FedSQModel.from_pretrained(folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert sorted(n for n in os.listdir(folder) if not n.startswith(".tmp-")) == ["config.json", "model.safetensors"]


# -- 4. untrusted files --------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (open, (os.environ["FEDSQ_SENTINEL"], "w"))


def test_loading_never_unpickles_or_runs_code_from_the_folder(backbone_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForImageClassification

    sentinel = tmp_path / "pwned"
    monkeypatch.setenv("FEDSQ_SENTINEL", str(sentinel))
    folder = tmp_path / "ckpt"
    FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2)).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Payload()))
    (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w')\nclass Evil: pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    assert type(FedSQModel.from_pretrained(folder)) is FedSQModel
    assert type(AutoModelForImageClassification.from_pretrained(folder)) is FedSQModel
    os.remove(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="has no model.safetensors"):  # the pickle is never a fallback
        FedSQModel.from_pretrained(folder)
    assert not sentinel.exists()


@pytest.mark.parametrize("field, value, match", [
    ("model_type", "bert", "not a FedSQ config.*model_type='bert'"),
    ("bn_mode", "sometimes", "Unknown bn_mode 'sometimes'"),
    ("fixed_gating", "yes", "fixed_gating must be bool, got str 'yes'"),
    ("gated_ops", "relu", "gated_ops must be list or None"),
    ("gated_ops", ["relu", "gelu"], r"Unknown gated_ops \['gelu'\]"),
    ("backbone", 7, "backbone must be str"),
    ("backbone_kwargs", ["drop_rate"], "backbone_kwargs must be dict or None"),
])
def test_config_json_is_validated(field, value, match, backbone_dir, tmp_path):
    folder = tmp_path / "ckpt"
    FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        FedSQModel.from_pretrained(folder)


def test_config_json_that_is_not_json(backbone_dir, tmp_path):
    folder = tmp_path / "ckpt"
    FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2)).save_pretrained(folder)
    (folder / "config.json").write_text("{'model_type': 'fedsq'}")  # a Python repr, not JSON
    with pytest.raises(CheckpointError, match="not a readable JSON config"):
        FedSQModel.from_pretrained(folder)


def test_the_package_never_unpickles_or_evaluates():
    """Source check: no pickle loads, no eval/exec, and torch.load only with weights_only=True."""
    package = os.path.join(ROOT, "fedsq_hf")
    for root, _, names in os.walk(package):
        for name in (n for n in names if n.endswith(".py")):
            source = open(os.path.join(root, name)).read()
            assert not re.search(r"pickle\.loads?\(|(?<![.\w])(eval|exec)\(", source), name
            for line in (line for line in source.splitlines() if "torch.load(" in line):
                assert "weights_only=True" in line, f"{name}: {line}"
