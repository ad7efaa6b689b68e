"""Reliability: the bad-input catalogue, failing and dropping clients, crash safety, untrusted files."""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fedsq_hf import BackboneLoadError, CheckpointError, FedSQConfig, FedSQError, FedSQModel, GatingError
from fedsq_hf.federated import FedAvg, FederatedArguments, FederatedTrainer, run_federated
from fedsq_hf.federated import dropped_clients, sample_clients
from helpers import ROOT, cli_args, run_example, tiny_args


def _parquet_dataset(folder, train_labels, test_labels, names=None, test_names=None, drop_test=None, images=True):
    """train/test parquet files of 8x8 images; `names` makes the label a ClassLabel (`test_names` for the
    test split), `drop_test` leaves a column out of the test split, `images=False` stores strings instead."""
    from datasets import ClassLabel, Dataset, Image

    os.makedirs(folder, exist_ok=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        pixels = [np.full((8, 8), 16 * (i % 16), np.uint8) for i in range(len(labels))]
        ds = Dataset.from_dict({"img": pixels if images else [f"img{i}.png" for i in range(len(labels))],
                                "label": labels})
        ds = ds.cast_column("img", Image()) if images else ds
        split_names = test_names if split == "test" and test_names else names
        if split_names:
            ds = ds.cast_column("label", ClassLabel(names=split_names))
        if split == "test" and drop_test:
            ds = ds.remove_columns(drop_test)
        ds.to_parquet(os.path.join(folder, f"{split}.parquet"))
    return str(folder)


def _imagefolder(folder, empty):
    """An imagefolder with a `cat` class of 4 PNGs and an `empty` class folder with none."""
    from PIL import Image

    for name in ("cat", empty):
        os.makedirs(folder / "train" / name, exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / "train" / "cat" / f"{i}.png")
    return str(folder)


@pytest.fixture(scope="module")
def finished_run(backbone_dir, digits_dir, tmp_path_factory):
    """A finished 1-round run (checkpoint included), to resume from with other settings."""
    out = tmp_path_factory.mktemp("finished")
    run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=1))
    return out


def _file(path):
    path.write_text("not a folder")
    return str(path)


def _snapshot(folder):
    """Every file under `folder` with a hash of its bytes: equal snapshots mean nothing was written."""
    result = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            result[os.path.relpath(path, folder)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return result


# -- 1. bad input: each raises a named error before any training --------------------------------

def _holding(folder, name, kind):
    """`folder` with `name` in it as a file, a folder or a broken link."""
    folder.mkdir(exist_ok=True)
    entry = folder / name
    {"file": lambda: entry.write_text("x"), "folder": entry.mkdir,
     "link": lambda: entry.symlink_to(folder / "nowhere")}[kind]()
    return entry if kind == "link" else folder


def _case(tmp, backbone_dir, digits_dir, finished, name):
    """(model/data/fed overrides, output dir) of one bad-input case."""
    resume = dict(resume=True, rounds=2)
    cases = {
        "unknown backbone id": lambda: ({"backbone": "nobody/no-such-backbone"}, {}, {}),
        "unreadable backbone folder": lambda: ({"backbone": str(tmp)}, {}, {}),
        "backbone without gateable ops": lambda: ({"backbone": backbone_dir("mobilenetv3_small_050")}, {}, {}),
        "missing dataset folder": lambda: ({}, {"dataset": str(tmp / "no" / "such" / "data")}, {}),
        "no image column": lambda: ({}, {"image_column": "pixels"}, {}),
        "no label column": lambda: ({}, {"label_column": "target"}, {}),
        "unlabelled eval split (-1)": lambda: ({}, {"dataset": _parquet_dataset(tmp / "unlabelled", [0, 1] * 20, [0, -1], ["a", "b"])}, {}),
        "eval labels never seen in train": lambda: ({}, {"dataset": _parquet_dataset(tmp / "unseen", [0, 1] * 20, [1, 7])}, {}),
        "num_clients < 1": lambda: ({}, {}, {"num_clients": 0}),
        "num_clients > samples": lambda: ({}, {}, {"num_clients": 500, "clients_per_round": 2, "min_partition_size": 1}),
        "alpha <= 0": lambda: ({}, {}, {"alpha": -1.0}),
        "clients_per_round > num_clients": lambda: ({}, {}, {"clients_per_round": 5}),
        "local_epochs and local_steps both 0": lambda: ({}, {}, {"local_epochs": 0, "local_steps": 0}),
        "batch size < 1": lambda: ({}, {}, {"batch_size": 0}),
        "empty eval split": lambda: ({}, {"dataset": _parquet_dataset(tmp / "empty", [0, 1] * 20, [], ["a", "b"])}, {}),
        "unknown strategy": lambda: ({}, {}, {"strategy": "fedsgd"}),
        "unknown partition": lambda: ({}, {}, {"partition": "by-color"}),
        "dropout rate 1": lambda: ({}, {}, {"dropout_rate": 1.0}),
        "gate cache with augmentation": lambda: ({"gate_cache_mb": 8}, {"augment": "flip"}, {}),
        "unknown augmentation": lambda: ({}, {"augment": "mixup"}, {}),
        "timm options without --augment timm": lambda: ({}, {"augment": "flip", "re_prob": 0.25}, {}),
        "unknown auto-augment policy": lambda: ({}, {"augment": "timm", "auto_augment": "rand-xyz"}, {}),
        "crop scale out of range": lambda: ({}, {"augment": "timm", "crop_scale": [0.5, 1.5]}, {}),
        "unknown preload mode": lambda: ({}, {"preload": "sometimes"}, {}),
        "unknown client optimizer": lambda: ({}, {}, {"optim": "adamw2"}),
        "unknown lr scheduler": lambda: ({}, {}, {"lr_scheduler": "step"}),
        "warm-up as long as the run": lambda: ({}, {}, {"warmup_rounds": 2}),
        "trim beta of one half": lambda: ({}, {}, {"strategy": "fedtrimmedavg", "trim_beta": 0.5}),
        "a strategy flag the strategy does not take": lambda: ({}, {}, {"mu": 0.5}),
        "unknown update codec": lambda: ({}, {}, {"update_codec": "zip"}),
        "resume: other update codec": lambda: ({}, {}, {**resume, "update_codec": "fp16"}),
        "unknown best-model metric": lambda: ({}, {}, {"metric_for_best_model": "f1"}),
        "output dir is a file": lambda: ({}, {}, {"output_dir": _file(tmp / "a-file")}),
        "output dir under a file": lambda: ({}, {}, {"output_dir": os.path.join(_file(tmp / "a-file"), "run")}),
        "fp16 without a GPU": lambda: ({}, {}, {"mixed_precision": "fp16"}),
        "dataset file that is not parquet": lambda: ({}, {"dataset": _file(tmp / "data.csv")}, {}),
        "parquet file that is not parquet": lambda: ({}, {"dataset": _file(tmp / "data.parquet")}, {}),
        "eval split without the image column": lambda: ({}, {"dataset": _parquet_dataset(tmp / "nocol", [0, 1] * 20, [0, 1], ["a", "b"], drop_test="img")}, {}),
        "image column holds no images": lambda: ({}, {"dataset": _parquet_dataset(tmp / "strings", [0, 1] * 20, [0, 1], ["a", "b"], images=False)}, {}),
        "splits name their classes differently": lambda: ({}, {"dataset": _parquet_dataset(tmp / "names", [0, 1] * 20, [0, 1], ["a", "b"], test_names=["b", "a"])}, {}),
        "null labels": lambda: ({}, {"dataset": _parquet_dataset(tmp / "nulls", [0, None] * 20, [0, 1])}, {}),
        "imagefolder with an empty class": lambda: ({}, {"dataset": _imagefolder(tmp / "folder", empty="dog")}, {}),
        "momentum 1": lambda: ({}, {}, {"momentum": 1.0}),
        "negative weight decay": lambda: ({}, {}, {"weight_decay": -0.1}),
        "one-sample clients with BatchNorm in train mode": lambda: ({"bn_mode": "train"}, {}, {"min_partition_size": 1}),
        "weights file that is text": lambda: ({"backbone": "torchvision:resnet18", "backbone_weights": _file(tmp / "w.pth")}, {}, {}),
        "gate warm-up with a plain model": lambda: ({"model": "plain"}, {}, {"freeze_gates_at_round": 2}),
        "gate warm-up by round and by drift": lambda: ({}, {}, {"freeze_gates_at_round": 2, "freeze_gates_when_drift_below": 0.1}),
        "gates frozen after the last round": lambda: ({}, {}, {"freeze_gates_at_round": 3}),
        "drift threshold not a fraction": lambda: ({}, {}, {"freeze_gates_when_drift_below": 1.5}),
        "warm-up bound as long as the run": lambda: ({}, {}, {"freeze_gates_when_drift_below": 0.1, "max_warmup_rounds": 2}),
        "no probe samples": lambda: ({}, {}, {"gate_probe_samples": 0}),
        "resume: other gate warm-up": lambda: ({}, {}, {**resume, "freeze_gates_at_round": 2}),
        "auto gates with a fixed freeze round": lambda: ({}, {}, {"freeze_gates": "auto", "freeze_gates_at_round": 2}),
        "auto gates with one client a round": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "clients_per_round": 1}),
        "auto gates with a calibration": lambda: ({}, {"calibration_samples": 40}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3}),
        "auto gates with a plain model": lambda: ({"model": "plain"}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3}),
        "auto gates without a round to fix them in": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1}),
        "client scores without auto gates": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "skewed_gates": "pretrained", "client_eval_samples": 64}),
        "no client scores": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3, "client_eval_samples": 0}),
        "auto gates window as long as the run": lambda: ({}, {}, {"freeze_gates": "auto"}),
        "alignment threshold out of range": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "gate_alignment_below": 1.0}),
        "alignment threshold without auto gates": lambda: ({}, {}, {"gate_alignment_below": 0.2}),
        "label share threshold out of range": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3, "label_share_below": 0.0}),
        "label share threshold without auto skewed gates": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3, "skewed_gates": "global", "label_share_below": 0.3}),
        "probe samples with auto gates": lambda: ({}, {}, {"freeze_gates": "auto", "max_warmup_rounds": 1, "rounds": 3, "gate_probe_samples": 64}),
        "unknown gate schedule": lambda: ({}, {}, {"freeze_gates": "drift"}),
        "negative seed": lambda: ({}, {}, {"seed": -1}),
        "unknown tracker": lambda: ({}, {}, {"report_to": "bogus"}),
        "tracker not installed": lambda: ({}, {}, {"report_to": "mlflow"}),
        "server momentum nan": lambda: ({}, {}, {"strategy": "fedavgm", "server_momentum": float("nan")}),
        "server lr 0": lambda: ({}, {}, {"strategy": "fedavgm", "server_lr": 0.0}),
        "infinite lr": lambda: ({}, {}, {"lr": float("inf")}),
        "CUDA-only optimizer": lambda: ({}, {}, {"optim": "fusedadam"}),
        "second-order optimizer": lambda: ({}, {}, {"optim": "adahessian"}),
        "Kron on CPU": lambda: ({}, {}, {"optim": "kronw"}),
        "huge image size": lambda: ({}, {"image_size": 5000}, {}),
        "gate cache with a plain model": lambda: ({"model": "plain", "gate_cache_mb": 8}, {}, {}),
        "output dir inside the dataset": lambda: ({}, {}, {"output_dir": os.path.join(digits_dir, "runs", "a")}),
        "output dir holding a previous run": lambda: ({}, {}, {"output_dir": shutil.copytree(finished, tmp / "old")}),
        "output dir with a file for a folder": lambda: ({}, {}, {"output_dir": _holding(tmp / "odd", "checkpoints", "file")}),
        "output dir with a folder for a file": lambda: ({}, {}, {"output_dir": _holding(tmp / "odd", "metrics.png", "folder")}),
        "output dir a broken link": lambda: ({}, {}, {"output_dir": _holding(tmp, "gone", "link")}),
        "resume and overwrite": lambda: ({}, {}, {**resume, "overwrite_output_dir": True}),
        "empty dataset name": lambda: ({}, {"dataset": ""}, {}),
        "evaluation on the training split": lambda: ({}, {"eval_split": "train"}, {}),
        "backbone a file": lambda: ({"backbone": os.path.join(backbone_dir("resnet10t"), "config.json")}, {}, {}),
        "resume: other best-model metric": lambda: ({}, {}, {**resume, "metric_for_best_model": "loss"}),
        "resume without checkpoint": lambda: ({}, {}, resume),
        "resume: other backbone": lambda: ({"backbone": shutil.copytree(backbone_dir("resnet10t"), tmp / "bb2")}, {}, resume),
        "resume: other num_labels": lambda: ({}, {"dataset": _parquet_dataset(tmp / "three", [0, 1, 2] * 20, [0, 1, 2])}, resume),
        "resume: other num_clients": lambda: ({}, {}, {**resume, "num_clients": 5}),
        "resume: other image size": lambda: ({}, {"image_size": 48}, resume),
        "resume: other augmentation": lambda: ({}, {"augment": "flip"}, resume),
        "resume: other learning rate": lambda: ({}, {}, {**resume, "lr": 0.02}),
        "push_to_hub without credentials": lambda: ({}, {}, {"push_to_hub": True, "hub_model_id": "me/model"}),
        "push_to_hub without repo id": lambda: ({}, {}, {"push_to_hub": True}),
        "invalid hub repo id": lambda: ({}, {}, {"push_to_hub": True, "hub_model_id": "me/my model"}),
        "a flag of an option not chosen": lambda: ({}, {}, {"partition": "iid", "alpha": 0.1}),
    }
    out = tmp / "run"
    if name.startswith("resume:"):
        shutil.copytree(finished, out)
    return cases[name](), out


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
    ("timm options without --augment timm", FedSQError, "--re-prob has no effect without --augment timm"),
    ("unknown auto-augment policy", FedSQError, "--auto-augment 'rand-xyz' is not a timm policy.*rand-m9-mstd0.5"),
    ("crop scale out of range", FedSQError, r"--crop-scale needs two values 0 < MIN <= MAX <= 1, got \[0.5, 1.5\]"),
    ("unknown preload mode", FedSQError, r"--preload must be one of \['auto', 'always', 'never'\]"),
    ("unknown client optimizer", FedSQError, "--optim must be sgd or a timm optimizer .*got 'adamw2'"),
    ("unknown lr scheduler", FedSQError, r"--lr-scheduler must be one of \['constant', 'linear', 'cosine'\]"),
    ("warm-up as long as the run", FedSQError, r"--warmup-rounds must be in \[0, --rounds\), got 2"),
    ("trim beta of one half", FedSQError, r"--trim-beta must be in \[0, 0.5\), got 0.5"),
    ("a strategy flag the strategy does not take", FedSQError, r"--strategy fedavg does not use --mu \(it takes no parameters"),
    ("unknown update codec", FedSQError, r"--update-codec must be one of \['fp16', 'identity'\], got 'zip'"),
    ("resume: other update codec", CheckpointError, "another run: update_codec 'identity' \\(checkpoint\\) vs 'fp16'"),
    ("unknown best-model metric", FedSQError, "--metric-for-best-model 'f1' is not among the evaluation's metrics"),
    ("output dir is a file", FedSQError, "--output-dir '.*a-file' is an existing file, not a folder"),
    ("output dir under a file", FedSQError, "--output-dir '.*a-file/run' cannot be created"),
    pytest.param("fp16 without a GPU", FedSQError, "--mixed-precision fp16 needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ("dataset file that is not parquet", FedSQError, "Dataset file '.*data.csv' is not a .parquet file"),
    ("parquet file that is not parquet", FedSQError, "Could not read the parquet files of '.*data.parquet'.*export them again"),
    ("eval split without the image column", FedSQError, "The test split of .* has no column 'img'"),
    ("image column holds no images", FedSQError, "Column 'img' of the train split of .* holds .*string.*, not images"),
    ("splits name their classes differently", FedSQError, "The train and test splits of .* name their classes differently"),
    ("null labels", FedSQError, "Column 'label' of the train split of .* has missing \\(null\\) labels"),
    ("imagefolder with an empty class", FedSQError, "Class folder '.*dog' of the imagefolder .* holds no images"),
    ("momentum 1", FedSQError, r"--momentum must be in \[0, 1\), got 1.0"),
    ("negative weight decay", FedSQError, "--weight-decay must be >= 0, got -0.1"),
    ("one-sample clients with BatchNorm in train mode", FedSQError, "--min-partition-size must be >= 2"),
    ("weights file that is text", BackboneLoadError, "Weights file '.*w.pth' is not a PyTorch state dict fedsq-hf can read safely"),
    ("gate warm-up with a plain model", FedSQError, "--freeze-gates-at-round, --freeze-gates-when-drift-below and --freeze-gates auto need --model fedsq"),
    ("gate warm-up by round and by drift", FedSQError, "give --freeze-gates-at-round or --freeze-gates-when-drift-below, not both"),
    ("gates frozen after the last round", FedSQError, r"--freeze-gates-at-round 3 is after the last round \(2\).*--model plain"),
    ("drift threshold not a fraction", FedSQError, r"--freeze-gates-when-drift-below must be a fraction in \(0, 1\), got 1.5"),
    ("warm-up bound as long as the run", FedSQError, r"--max-warmup-rounds must be in \[1, --rounds\) \(2\), got 2"),
    ("no probe samples", FedSQError, "--gate-probe-samples must be >= 1, got 0"),
    ("resume: other gate warm-up", CheckpointError, "another run: freeze_gates_at_round 1 \\(checkpoint\\) vs 2"),
    ("auto gates with a fixed freeze round", FedSQError, "--freeze-gates auto decides the gate schedule itself: leave out --freeze-gates-at-round"),
    ("auto gates with one client a round", FedSQError, "--freeze-gates auto compares the clients' updates in a round: --clients-per-round must be >= 2"),
    ("auto gates with a calibration", FedSQError, "--freeze-gates auto and --calibration-samples both decide the gates.*give one of them"),
    ("auto gates with a plain model", FedSQError, "--freeze-gates auto need --model fedsq"),
    ("auto gates without a round to fix them in", FedSQError, r"--freeze-gates auto \(--skewed-gates auto\) scores round 1's model in round 2 and fixes the gates from round 3: --rounds \(2\) must be at least that"),
    ("client scores without auto gates", FedSQError, "--client-eval-samples has no effect without --freeze-gates auto --skewed-gates global or auto"),
    ("no client scores", FedSQError, "--client-eval-samples must be >= 1, got 0"),
    ("auto gates window as long as the run", FedSQError, r"--max-warmup-rounds must be in \[1, --rounds\) \(2\), got 5: lower it or raise --rounds"),
    ("alignment threshold out of range", FedSQError, r"--gate-alignment-below must be in \(-1, 1\), got 1.0"),
    ("label share threshold out of range", FedSQError, r"--label-share-below must be in \(0, 1\], got 0.0"),
    ("label share threshold without auto skewed gates", FedSQError, "--label-share-below has no effect without --freeze-gates auto --skewed-gates auto"),
    ("alignment threshold without auto gates", FedSQError, "--gate-alignment-below has no effect without --freeze-gates auto"),
    ("probe samples with auto gates", FedSQError, "--gate-probe-samples has no effect without --freeze-gates-when-drift-below"),
    ("unknown gate schedule", FedSQError, r"--freeze-gates must be one of \['round', 'auto'\], got 'drift'"),
    ("negative seed", FedSQError, r"--seed must be in \[0, 2\*\*32\), got -1"),
    ("unknown tracker", FedSQError, "--report-to must be none, all or one of .*tensorboard.*got 'bogus'"),
    pytest.param("tracker not installed", FedSQError, "--report-to mlflow: the mlflow package is not installed; `pip install mlflow`",
                 marks=pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")),
    ("server momentum nan", FedSQError, "--server-momentum must be a finite number, got nan"),
    ("server lr 0", FedSQError, "--server-lr must be > 0, got 0.0"),
    ("infinite lr", FedSQError, "--lr must be a finite number, got inf"),
    pytest.param("CUDA-only optimizer", FedSQError, "--optim fusedadam cannot train here .*CUDA required",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ("second-order optimizer", FedSQError, "--optim adahessian cannot train here"),
    pytest.param("Kron on CPU", FedSQError, "--optim kronw needs a CUDA GPU: timm's Kron compiles",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ("huge image size", FedSQError, "--image-size must be between 8 and 1024 px, got 5000"),
    ("gate cache with a plain model", FedSQError, "--gate-cache-mb needs --model fedsq"),
    ("output dir inside the dataset", FedSQError, "--output-dir '.*/runs/a' is inside the dataset folder"),
    ("output dir holding a previous run", FedSQError, r"holds a previous run \(history.jsonl, summary.json, "
     r"partition.json, partition.png and \d+ more\); pass --resume to continue it, --overwrite-output-dir to start over"),
    ("resume: other best-model metric", CheckpointError, "another run: metric_for_best_model 'accuracy' \\(checkpoint\\) vs 'loss'"),
    ("output dir with a file for a folder", FedSQError,
     "--output-dir '.*odd': 'checkpoints' is not a folder but the run writes one there; move it away"),
    ("output dir with a folder for a file", FedSQError, "'metrics.png' is a folder but the run writes a file there"),
    ("output dir a broken link", FedSQError, "--output-dir '.*gone' is a broken link \\(to '.*nowhere'\\)"),
    ("resume and overwrite", FedSQError, "--resume continues the run .* give one of them"),
    ("empty dataset name", FedSQError, "--dataset is empty"),
    ("evaluation on the training split", FedSQError, "--eval-split train would evaluate on the clients' own training images"),
    ("backbone a file", BackboneLoadError, "Backbone folder '.*config.json' is a file, not a folder"),
    ("resume without checkpoint", CheckpointError, "holds no checkpoint.*nothing to resume; start over with --overwrite-output-dir"),
    ("resume: other backbone", CheckpointError, "another run: backbone"),
    ("resume: other num_labels", CheckpointError, "another run: .*num_labels 10 \\(checkpoint\\) vs 3"),
    ("resume: other num_clients", CheckpointError, "another run: num_clients 4 \\(checkpoint\\) vs 5"),
    ("resume: other image size", CheckpointError, "another run: image_size 32 \\(checkpoint\\) vs 48.*same settings"),
    ("resume: other augmentation", CheckpointError, "another run: augment 'none' \\(checkpoint\\) vs 'flip'"),
    ("resume: other learning rate", CheckpointError, "another run: lr 0.01 \\(checkpoint\\) vs 0.02"),
    ("push_to_hub without credentials", FedSQError, "needs Hub credentials: run `hf auth login` or set HF_TOKEN"),
    ("push_to_hub without repo id", FedSQError, "--push-to-hub needs --hub-model-id"),
    ("invalid hub repo id", FedSQError, "--hub-model-id 'me/my model' is not a Hub repo id"),
    ("a flag of an option not chosen", FedSQError, "--alpha has no effect without --partition dirichlet"),
]


@pytest.mark.parametrize("name, error, match", BAD_INPUT, ids=[c.values[0] if hasattr(c, "values") else c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_before_training(name, error, match, backbone_dir, digits_dir, finished_run, tmp_path,
                                              monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (model_kw, data_kw, fed_kw), out = _case(tmp_path, backbone_dir, digits_dir, finished_run, name)
    before = _snapshot(out)
    with pytest.raises(error, match=match):  # the arguments refuse a bad value of their own when they are built
        model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, fed_kw.pop("output_dir", out), **fed_kw)
        model, data = dataclasses.replace(model, **model_kw), dataclasses.replace(data, **data_kw)
        run_federated(model, data, fed)
    assert _snapshot(out) == before  # nothing trained, nothing written


# -- 2. failing and dropping clients --------------------------------------------------------------



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
    assert torch.isfinite(trainer.global_model.vector).all()
    assert record["bytes_aggregated"] == 3 * trainer.global_model.vector.numel() * 4
    loose = _random_task(backbone_dir, 30.0, tmp_path, divergence_factor=0.0).run_round(1)  # the check off
    assert loose["failed_clients"] == [] and loose["train_loss"] > 1e3


def test_simulated_dropout_is_seeded_and_skips_clients(backbone_dir, tmp_path):
    trainer = _random_task(backbone_dir, 1.0, tmp_path, dropout_rate=0.5, rounds=5)
    before = trainer.global_model.vector.clone()
    records = [trainer.run_round(r) for r in range(1, 5)]
    dropped = [r["dropped_clients"] for r in records]
    assert dropped == [dropped_clients(0, r, sample_clients(0, r, 4, 4), 0.5) for r in range(1, 5)]  # deterministic
    assert any(dropped) and not all(len(d) == 4 for d in dropped)
    for r in records:
        assert set(r["dropped_clients"]) <= set(r["clients"])
        assert r["bytes_aggregated"] == (4 - len(r["dropped_clients"])) * trainer.global_model.vector.numel() * 4
    everyone_gone = next((r for r in records if len(r["dropped_clients"]) == 4), None)
    if everyone_gone is None:  # no round lost every client: check the rule directly
        trainer.args.dropout_rate = 0.999
        everyone_gone = trainer.run_round(5)
        assert len(everyone_gone["dropped_clients"]) == 4
    assert everyone_gone["train_loss"] is None and trainer.state.failed_streak == 0  # no update, but no failure
    assert not torch.equal(before, trainer.global_model.vector)


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
@pytest.mark.slow
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


# -- 5. output folders and shareable files ---------------------------------------------------------

def _locked(folder):
    """True if some process holds the run lock on `folder`."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _wait_for_lock(folder, process):

    for _ in range(600):
        if os.path.isdir(folder) and _locked(folder):
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("the first run never took the output folder")


@pytest.mark.slow
def test_a_second_run_into_the_same_output_dir_is_refused_until_the_first_ends(backbone_dir, digits_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    example = os.path.join(ROOT, "examples", "federated.py")
    args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=10000)  # busy until killed
    first = subprocess.Popen([sys.executable, example, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(str(tmp_path / "run"), first)
        second = run_example(cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=1))
        assert second.returncode == 2 and "is in use by another run" in second.stderr
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not _locked(str(tmp_path / "run"))  # a crash releases the folder: the kernel drops the lock
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=1,
                                       overwrite_output_dir=True))  # the killed run's files are there
    assert summary["rounds"] == 1


def test_an_unwritable_output_dir_is_refused_before_loading(backbone_dir, digits_dir, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permissions, not the immutable flag
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root and chattr +i is not available on this file system")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, folder)
        data.dataset = str(tmp_path / "never-loaded")  # would fail later, if anything loaded
        with pytest.raises(FedSQError, match="--output-dir '.*read-only' is not writable"):
            run_federated(model, data, fed)
    finally:
        subprocess.run(undo, check=True)


@pytest.mark.slow
@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_everything_written_honours_the_umask(mask, file_mode, dir_mode, backbone_dir, digits_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "federated.py"),
                             *cli_args(backbone_dir("resnet10t"), digits_dir, out, rounds=1)],
                            env=env, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(mask))
    assert result.returncode == 0, result.stderr[-3000:]
    seen = 0
    for root, dirs, files in os.walk(out):
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == dir_mode, name
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == file_mode, name
            seen += 1
    assert seen >= 10  # history, summary, plots, partition, best/, final/, the checkpoint


@pytest.mark.slow
def test_a_misspelled_flag_is_a_usage_error_naming_the_closest_flag(tmp_path):
    result = run_example(["--trim-betta", "0.3", "--output_dir", str(tmp_path)])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unrecognized arguments: --trim-betta 0.3 (--trim-betta: did you mean --trim-beta?)" in result.stderr


@pytest.mark.parametrize("damage, match", [
    ("latest points nowhere", r"'.*latest' points to '.*round-00009', which does not exist"),
    ("latest is empty", r"'.*latest' should name a checkpoint folder such as 'round-00003' but holds ''.*Write the newest"),
    ("latest leaves the folder", r"'.*latest' should name a checkpoint folder .* but holds '../../elsewhere/round-00001'"),
    ("latest is not text", "'.*latest' should name a checkpoint folder .* but holds '\ufffdround'"),
    ("latest is a folder", r"'.*latest' is not a file \(a folder or a broken link\)"),
    ("round folder is a file", r"points to '.*round-00001', which is not a folder"),
    ("state of another round", r"trainer_state.json' is at round 0, not at that of its folder"),
    ("state file missing", r"'.*round-00001/state.safetensors' is not a readable safetensors file"),
    ("round disagrees with history", r"trainer_state.json' is at round 2 but its history holds rounds \[1\]"),
    ("round of the wrong type", r"cannot read '.*trainer_state.json' \(wrong type of round\)"),
    ("history of the wrong type", r"cannot read '.*trainer_state.json' \(wrong type of history\)"),
    ("state is a list", r"cannot read '.*trainer_state.json' \(it holds a JSON list, not an object of state fields\); "
     r"it was edited or damaged: restore it, or start over with --overwrite-output-dir"),
    ("state has an unknown field", r"cannot read '.*trainer_state.json' \(unknown fields 'new_field', not written by "
     r"this version of fedsq-hf\)"),
    ("tensors missing", r"does not match this model \(missing tensors or another size\)"),
    ("tensors not finite", r"checkpoint '.*state.safetensors' hold NaN or Inf values in global_state"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file(damage, match, backbone_dir, digits_dir, finished_run, tmp_path):
    out = shutil.copytree(finished_run, tmp_path / "run")
    checkpoint = out / "checkpoints" / "round-00001"
    pointer = {"latest points nowhere": b"round-00009", "latest is empty": b"",
               "latest leaves the folder": b"../../elsewhere/round-00001", "latest is not text": b"\xffround"}
    if damage in pointer:
        (out / "checkpoints" / "latest").write_bytes(pointer[damage])
    elif damage == "latest is a folder":
        (out / "checkpoints" / "latest").unlink()
        (out / "checkpoints" / "latest").mkdir()
    elif damage == "round folder is a file":
        shutil.rmtree(checkpoint)
        checkpoint.write_text("x")
    elif damage == "state file missing":
        (checkpoint / "state.safetensors").unlink()
    elif damage.startswith("tensors"):
        tensors = load_file(checkpoint / "state.safetensors")
        tensors = {"other": tensors["global_state"]} if damage == "tensors missing" else \
            {**tensors, "global_state": torch.full_like(tensors["global_state"], float("nan"))}
        save_file(tensors, checkpoint / "state.safetensors")
    else:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        edit = {"round disagrees with history": {"round": 2}, "round of the wrong type": {"round": "1"},
                "history of the wrong type": {"history": ["round 1"]}, "state has an unknown field": {"new_field": 1},
                "state of another round": {"round": 0, "history": []}}
        state = [state] if damage == "state is a list" else {**state, **edit[damage]}
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=match):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=2, resume=True))


def test_a_checkpoint_of_other_backbone_weights_is_refused(backbone_dir, digits_dir, finished_run, tmp_path):
    out = shutil.copytree(finished_run, tmp_path / "run")
    file = out / "checkpoints" / "round-00001" / "trainer_state.json"
    state = json.loads(file.read_text())
    assert len(state["run"]["backbone_sha256"]) == 64
    state["run"]["backbone_sha256"] = "0" * 64  # as if the backbone folder was re-saved with other weights since
    file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="another run: backbone_sha256 '0000.*' \\(checkpoint\\) vs '"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=2, resume=True))


def test_a_checkpoint_of_an_older_version_is_refused_naming_what_it_lacks(backbone_dir, digits_dir, finished_run,
                                                                         tmp_path):
    out = shutil.copytree(finished_run, tmp_path / "run")
    file = out / "checkpoints" / "round-00001" / "trainer_state.json"
    state = json.loads(file.read_text())
    del state["run"]["strategy_config"], state["run"]["update_codec"]  # as fedsq-hf 0.1's checkpoints were
    file.write_text(json.dumps(state))
    # update_codec is at its default (an option that version did not have); what strategy it ran, nobody knows
    with pytest.raises(CheckpointError, match="records no strategy_config: an older version of "
                                              "fedsq-hf wrote it. Resume it with that version, or start over"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=2, resume=True))


def test_a_checkpoint_of_an_older_version_resumes_where_nothing_can_differ(backbone_dir, digits_dir, finished_run,
                                                                          tmp_path, caplog):
    def older(name):
        out = shutil.copytree(finished_run, tmp_path / name)
        file = out / "checkpoints" / "round-00001" / "trainer_state.json"
        state = json.loads(file.read_text())
        for key in ("dp_clip_norm", "update_codec", "train_data_fingerprint", "eval_data_fingerprint"):
            del state["run"][key]  # options added since, at their defaults; fingerprints it did not record
        file.write_text(json.dumps(state))
        return out

    assert run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, older("a"), rounds=2, resume=True))["rounds"] == 2
    assert "records no train_data_fingerprint, eval_data_fingerprint (an older version of fedsq-hf wrote it): not " \
           "compared" in caplog.text
    with pytest.raises(CheckpointError, match="records no dp_clip_norm"):  # not at its default: it may differ
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, older("b"), rounds=2, resume=True,
                                 dp_clip_norm=1.0, dp_noise_multiplier=1.0))


def test_a_trainer_that_will_not_train_frees_its_output_dir(backbone_dir, digits_dir, tmp_path):
    from fedsq_hf.federated import build_trainer

    first = build_trainer(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1))
    with pytest.raises(FedSQError, match="is in use by another run"):
        build_trainer(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1))
    first.close()
    build_trainer(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1)).close()


def test_a_previous_run_is_replaced_only_when_asked(backbone_dir, digits_dir, finished_run, tmp_path):
    out = shutil.copytree(finished_run, tmp_path / "run")
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, out, rounds=1, lr=0.02,
                                       overwrite_output_dir=True))
    assert summary["config"]["lr"] == 0.02 and len((out / "history.jsonl").read_text().splitlines()) == 1


def test_paths_starting_with_a_tilde_are_expanded():
    from fedsq_hf.federated import DataArguments, ModelArguments

    home = os.path.expanduser("~")
    assert FederatedArguments(output_dir="~/runs/a").output_dir == os.path.join(home, "runs/a")
    assert DataArguments(dataset="~/data").dataset == os.path.join(home, "data")
    assert ModelArguments(backbone_weights="~/w.pth").backbone_weights == os.path.join(home, "w.pth")
    # a pathlib.Path from the API is taken as its str (it goes into summary.json and every checkpoint)
    assert FederatedArguments(output_dir=pathlib.Path("~/runs/b")).output_dir == os.path.join(home, "runs/b")
    assert DataArguments(dataset=pathlib.Path("data")).dataset == "data"


def test_a_non_finite_server_update_stops_before_writing(backbone_dir, tmp_path):
    from fedsq_hf.federated import FedAvgM

    trainer = _random_task(backbone_dir, 1.0, tmp_path)
    trainer.strategy = FedAvgM(server_lr=float("inf"))  # a server step far too large
    with pytest.raises(FedSQError, match="Round 1: the server update made the global model non-finite; lower --server-lr"):
        trainer.train()
    assert not (tmp_path / "final").exists() and not (tmp_path / "best").exists()  # no NaN model written


def test_a_finite_but_exploded_global_model_stops_before_writing(backbone_dir, tmp_path):
    from fedsq_hf.federated import FedAvgM

    trainer = _random_task(backbone_dir, 1.0, tmp_path)
    trainer.strategy = FedAvgM(server_lr=1e30)  # finite weights of 1e30: the outputs are NaN
    with pytest.raises(FedSQError, match=r"Round 1: the global model's evaluation loss is nan .*lower --server-lr"):
        trainer.train()
    assert not (tmp_path / "final").exists() and not (tmp_path / "best").exists()


@pytest.mark.parametrize("settings, match", [
    (dict(rounds=2, lr_scheduler="cosine"), "another run: .*lr_scheduler 'constant' \\(checkpoint\\) vs 'cosine'"),
    (dict(rounds=3), None),  # a constant schedule may be extended
])
def test_resume_with_other_rounds(settings, match, backbone_dir, digits_dir, finished_run, tmp_path):
    out = shutil.copytree(finished_run, tmp_path / "run")
    args = tiny_args(backbone_dir("resnet10t"), digits_dir, out, resume=True, **settings)
    if match:
        with pytest.raises(CheckpointError, match=match):
            run_federated(*args)
    else:
        assert run_federated(*args)["rounds"] == 3


def test_a_run_in_which_no_round_had_a_usable_update_fails(backbone_dir, digits_dir, tmp_path):
    with pytest.raises(FedSQError, match="1 consecutive rounds had no usable client update"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, lr=1e12, local_steps=20,
                                 local_epochs=0))
    assert not (tmp_path / "final").exists()


def test_a_backbone_that_cannot_take_the_images_is_refused_before_training(digits_dir, tmp_path):
    from conftest import save_backbone

    one_channel = save_backbone(tmp_path / "grey", "resnet10t", in_chans=1)
    with pytest.raises(FedSQError, match="cannot take this dataset's images .*in_chans"):
        run_federated(*tiny_args(one_channel, digits_dir, tmp_path / "run", rounds=1))


@pytest.mark.slow
def test_ctrl_c_in_a_run_is_one_line_saying_how_to_resume(backbone_dir, digits_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    example = os.path.join(ROOT, "examples", "federated.py")
    args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=10000, disable_tqdm="true")
    # as from a terminal: a shell that started these tests in the background (CI) ignores SIGINT, and a
    # child inherits that (Python then installs no KeyboardInterrupt handler)
    run = subprocess.Popen([sys.executable, example, *args], env=env, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not os.path.isdir(tmp_path / "run" / "checkpoints" / "round-00001") and time.monotonic() < deadline:
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: every file is written atomically") and "--resume" in last
    resumed = run_example(cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=2, resume="true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["federated", "gate_drift", "convert"])
def test_ctrl_c_while_a_command_line_starts_is_one_line(command):
    """The console scripts enter through fedsq_hf_cli, so a Ctrl-C while torch and transformers import is no
    traceback either."""
    code = f"import sys; print('started', flush=True); import fedsq_hf_cli; sys.exit(fedsq_hf_cli.{command}())"
    run = subprocess.Popen([sys.executable, "-c", code, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert run.stdout.readline() == "started\n"  # Python is up; importing the package takes seconds more
        time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130 and err.strip() == "interrupted while starting: nothing was written", err[-2000:]


def test_every_command_line_has_one_error_path(capsys):
    """A bad input, Ctrl-C and a failed write each end in one line and their own exit status."""
    import errno

    from fedsq_hf.commands import run_command

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/checkpoints/.tmp-x")

    def interrupt():
        raise KeyboardInterrupt

    def bad():
        raise FedSQError("--lr must be > 0")

    kept = lambda: "the last checkpoint is whole: --resume continues"  # noqa: E731
    assert [run_command(f, kept) for f in (bad, interrupt, full_disk)] == [2, 130, 1]
    assert capsys.readouterr().err.splitlines() == [
        "error: --lr must be > 0",
        "interrupted: the last checkpoint is whole: --resume continues",
        "error: /out/checkpoints/.tmp-x: No space left on device; the last checkpoint is whole: --resume continues"]
