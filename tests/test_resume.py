"""What a resume compares (the data's content, not how its path is spelled), starting over without mixing
two runs or touching the user's files, and how a command line ends when a run is cut short."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Image

from conftest import save_backbone
from fedsq_hf import CheckpointError
from fedsq_hf.federated import FederatedCallback, run_federated, split_fingerprint
from fedsq_hf.federated.cli import federated as cli
from helpers import cli_args, tiny_args


def _digits(folder, shift=0):
    """train/test parquet files of 8x8 images; `shift` gives other images of the same shape and labels."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", 200), ("test", 60)):
        labels = np.arange(n) % 4
        images = [np.clip(rng.integers(0, 200, (8, 8)) + 10 * y + shift, 0, 255).astype(np.uint8) for y in labels]
        ds = Dataset.from_dict({"img": images, "label": labels}).cast_column("img", Image())
        ds.cast_column("label", ClassLabel(names=list("abcd"))).to_parquet(os.path.join(folder, f"{split}.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def data_run(backbone_dir, tmp_path_factory):
    """(dataset folder, a finished 1-round run on it)."""
    root = tmp_path_factory.mktemp("resume")
    data, out = _digits(root / "data"), root / "run"
    run_federated(*tiny_args(backbone_dir("resnet10t"), data, out, rounds=1))
    return data, out


def _resume(backbone, data, run, tmp_path, **fed):
    out = shutil.copytree(run, tmp_path / "run")
    return run_federated(*tiny_args(backbone, data, out, rounds=2, resume=True, **fed))


def test_a_resume_on_replaced_data_is_refused(backbone_dir, tmp_path):
    data = _digits(tmp_path / "data")
    run_federated(*tiny_args(backbone_dir("resnet10t"), data, tmp_path / "run", rounds=1))
    _digits(tmp_path / "data", shift=7)  # other images of the same shape in the same files, labels kept
    with pytest.raises(CheckpointError, match=r"another run: train_data_fingerprint '[0-9a-f]{16}' \(checkpoint\) vs "
                                              r"'[0-9a-f]{16}' \(now\), eval_data_fingerprint"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), data, tmp_path / "run", rounds=2, resume=True))


@pytest.mark.parametrize("spelling", ["trailing slash", "dot-dot", "symlink", "relative"])
def test_a_resume_on_the_same_data_spelled_otherwise_is_accepted(spelling, backbone_dir, data_run, tmp_path,
                                                                 monkeypatch):
    data, run = data_run
    if spelling == "symlink":
        os.symlink(data, tmp_path / "link")
    monkeypatch.chdir(os.path.dirname(data))
    path = {"trailing slash": data + "/", "dot-dot": os.path.join(data, "..", os.path.basename(data)),
            "symlink": str(tmp_path / "link"), "relative": os.path.basename(data)}[spelling]
    assert _resume(backbone_dir("resnet10t"), path, run, tmp_path)["rounds"] == 2


def test_fingerprints_follow_content_not_order_of_reading(data_run):
    from fedsq_hf.federated.data import load_image_dataset

    data, _ = data_run
    train, evaluation, _ = load_image_dataset(data, "img", max_train_samples=100, seed=0)
    again, _, _ = load_image_dataset(data + "/", "img", max_train_samples=100, seed=0)
    other, _, _ = load_image_dataset(data, "img", max_train_samples=100, seed=1)  # another sample of the split
    fingerprints = [split_fingerprint(ds, "img", "label") for ds in (train, again, other, evaluation)]
    assert fingerprints[0] == fingerprints[1] and len(set(fingerprints[1:])) == 3
    relabelled = train.map(lambda row: {"label": (row["label"] + 1) % 4})
    assert split_fingerprint(relabelled, "img", "label") != fingerprints[0]


def test_an_image_size_equal_to_the_implicit_one_is_another_run(tmp_path):
    """Without --image-size a backbone's own crop is used (here 32 px at crop_pct 0.875); --image-size 32
    resizes whole images: other inputs, so a resume must refuse it."""
    backbone = str(tmp_path / "small")
    save_backbone(backbone, "resnet10t", pretrained_cfg_overlay=dict(input_size=(3, 32, 32), crop_pct=0.875))
    data = _digits(tmp_path / "data")
    model, data_args, fed = tiny_args(backbone, data, tmp_path / "run", rounds=1)
    data_args.image_size = None
    summary = run_federated(model, data_args, fed)
    assert (summary["config"]["image_size"], summary["config"]["input_size"]) == (None, 32)
    with pytest.raises(CheckpointError, match=r"another run: image_size None \(checkpoint\) vs 32"):
        run_federated(*tiny_args(backbone, data, tmp_path / "run", rounds=2, resume=True))


class _Interrupt(FederatedCallback):
    def on_round_begin(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_starting_over_clears_the_previous_run_and_nothing_else(backbone_dir, data_run, tmp_path):
    data, run = data_run
    out = shutil.copytree(run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    for folder in ("mine", ".previous-run", "best", "checkpoints/round-manual-backup"):
        (out / folder).mkdir(exist_ok=True)
        (out / folder / "notes.txt").write_text("not the run's")
    (out / "mine" / "model.safetensors").write_bytes(b"not the run's")
    before = {name for name in os.listdir(out)}
    assert {"summary.json", "final", "best", "metrics.png", "partition.png", "checkpoints"} <= before
    with pytest.raises(KeyboardInterrupt):  # the new run is cut short in its first round
        run_federated(*tiny_args(backbone_dir("resnet10t"), data, out, rounds=1, lr=0.02, overwrite_output_dir=True),
                      callbacks=[_Interrupt()])
    # the new run's files only, beside everything that was not the previous run's
    assert sorted(os.listdir(out)) == [".previous-run", "best", "checkpoints", "mine", "notes.txt", "partition.json",
                                       "partition.png"]
    assert os.listdir(out / "best") == ["notes.txt"] and os.listdir(out / "checkpoints") == ["round-manual-backup"]
    assert (out / "mine" / "model.safetensors").read_bytes() == b"not the run's"
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), data, out, rounds=1, lr=0.02,
                                       overwrite_output_dir=True))
    assert summary["config"]["lr"] == 0.02 and (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "round-00001", "round-manual-backup"]  # not pruned


def test_any_output_of_a_run_counts_as_a_previous_run(backbone_dir, data_run, tmp_path):
    from fedsq_hf import FedSQError

    data, _ = data_run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.png").write_bytes(b"a plot")  # a run that never wrote its history
    with pytest.raises(FedSQError, match=r"holds a previous run \(metrics.png\); pass --resume"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), data, tmp_path / "run", rounds=1))


def test_a_full_disk_while_saving_is_one_line_and_the_run_resumes(backbone_dir, data_run, tmp_path, monkeypatch,
                                                                 capsys):
    from fedsq_hf.federated.io import checkpoint

    data, _ = data_run
    save, calls = checkpoint.save_weights, []

    def full_disk(path, tensors):
        calls.append(path)
        if len(calls) == 2:  # round 2's checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        save(path, tensors)

    monkeypatch.setattr(checkpoint, "save_weights", full_disk)
    argv = cli_args(backbone_dir("resnet10t"), data, tmp_path / "run", rounds=3, disable_tqdm="true")
    assert cli.main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {calls[1]}: No space left on device; every file is written atomically, so ")
    assert last.endswith("holds the last checkpoint whole: run the same command with --resume to continue")
    monkeypatch.setattr(checkpoint, "save_weights", save)
    assert cli.main([*argv, "--resume", "true"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == 3


def test_an_interrupt_before_the_first_checkpoint_says_to_start_over(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_federated", interrupted)
    assert cli.main(["--output-dir", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == (f"interrupted: no checkpoint was written to {str(tmp_path / 'run')!r} "
                                               "yet: start over with --overwrite-output-dir")


@pytest.mark.parametrize("given", [dict(eval_split="test"), dict(greater_is_better=True)])
def test_a_resume_naming_what_the_run_resolved_to_is_accepted(given, backbone_dir, data_run, tmp_path):
    """`--eval-split test` where the run evaluated on test anyway, `--greater-is-better` where accuracy implied it."""
    data, run = data_run
    model, data_args, fed = tiny_args(backbone_dir("resnet10t"), data, shutil.copytree(run, tmp_path / "run"), rounds=2,
                                      resume=True)
    for group in (data_args, fed):
        for k, v in given.items():
            if hasattr(group, k):
                setattr(group, k, v)
    assert run_federated(model, data_args, fed)["rounds"] == 2


def test_a_resume_with_other_preprocessing_of_the_same_weights_is_refused(tmp_path):
    """A backbone's config.json with another mean (same weights, same path) makes other inputs."""
    backbone = str(tmp_path / "bb")
    save_backbone(backbone, "resnet10t")
    data = _digits(tmp_path / "data")
    run_federated(*tiny_args(backbone, data, tmp_path / "run", rounds=1))
    config = json.loads(open(os.path.join(backbone, "config.json")).read())
    config["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]
    with open(os.path.join(backbone, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match=r"another run: pretrained_cfg .*'mean': \[0.485"):
        run_federated(*tiny_args(backbone, data, tmp_path / "run", rounds=2, resume=True))


def test_a_failed_atomic_write_names_the_file_meant_not_its_temporary(tmp_path, monkeypatch):
    from fedsq_hf.serialization import atomic_write_bytes

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "summary.json"
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"{}")
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert os.listdir(tmp_path) == []  # no temporary file left


def test_the_converter_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import timm
    from safetensors import SafetensorError

    from fedsq_hf import convert

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(timm.models, "save_for_hf", full)
    assert convert.main(["--output-dir", str(tmp_path / "lite0")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'lite0'}: cannot write the converted weights (")
    assert "No space left on device" in err[0] and os.listdir(tmp_path / "lite0") == []


class _KilledAfter(FederatedCallback):
    """Interrupts the run once round `round_` is recorded (history and best/ written), before its checkpoint."""

    def __init__(self, round_):
        self.round = round_

    def on_round_end(self, args, state, control, **kwargs):
        if state.round == self.round:
            raise KeyboardInterrupt


def test_a_resume_drops_what_the_interrupted_run_wrote_after_its_checkpoint(backbone_dir, data_run, tmp_path, caplog):
    data, _ = data_run
    out, backbone = tmp_path / "run", backbone_dir("resnet10t")
    with pytest.raises(KeyboardInterrupt):  # rounds 1-3 recorded, the last checkpoint is round 2's
        run_federated(*tiny_args(backbone, data, out, rounds=4, save_every=2), callbacks=[_KilledAfter(3)])
    lines = (out / "history.jsonl").read_text().splitlines()
    third = json.loads(lines[2])
    third["eval_accuracy"] = 1.0  # round 3 made best/ (whatever it held, it is of a round the checkpoint lacks)
    (out / "history.jsonl").write_text("\n".join([*lines[:2], json.dumps(third)]) + "\n")
    summary = run_federated(*tiny_args(backbone, data, out, rounds=2, resume=True))
    assert [json.loads(line)["round"] for line in (out / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert summary["rounds"] == 2 and summary["best_round"] in (1, 2)
    assert not (out / "best" / "model.safetensors").exists()
    assert "best/ held the model of round 3, after the checkpoint of round 2: removed" in caplog.text


def test_a_run_refused_while_loading_leaves_no_output_folder_behind(backbone_dir, tmp_path):
    from fedsq_hf import FedSQError

    model, data, fed = tiny_args(backbone_dir("resnet10t"), str(tmp_path / "no-such-data"), tmp_path / "new" / "run")
    with pytest.raises(FedSQError, match="does not exist"):
        run_federated(model, data, fed)
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    model, data, fed = tiny_args(backbone_dir("resnet10t"), str(tmp_path / "no-such-data"), tmp_path / "mine")
    with pytest.raises(FedSQError, match="does not exist"):
        run_federated(model, data, fed)
    assert (tmp_path / "mine").is_dir()
