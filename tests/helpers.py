"""Shared test helpers: a tiny run's arguments, the example's command line, running it in a fresh process,
comparing two runs, a callback that stops a run."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from fedsq_hf.federated import DataArguments, FederatedArguments, FederatedCallback, ModelArguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(backbone, dataset, output_dir, **fed):
    """(model, data, federated) arguments of a run small enough for a test: 240 digits at 32 px, 4 clients."""
    model = ModelArguments(backbone=backbone)
    data = DataArguments(dataset=dataset, image_column="img", max_train_samples=240, max_eval_samples=60, image_size=32)
    defaults = dict(num_clients=4, clients_per_round=2, rounds=2, batch_size=16, partition="dirichlet", alpha=1.0,
                    min_partition_size=5, output_dir=str(output_dir), lr=0.01)
    return model, data, FederatedArguments(**{**defaults, **fed})


class StopAfter(FederatedCallback):
    """Stops a run after round `round_` (its checkpoint is still written)."""

    def __init__(self, round_):
        self.round = round_

    def on_round_end(self, args, state, control, **kwargs):
        if state.round == self.round:
            control.should_training_stop = True


def cli_args(backbone, dataset, output_dir, **extra):
    args = ["--backbone", backbone, "--dataset", dataset, "--image_column", "img", "--max_train_samples", "240",
            "--max_eval_samples", "60", "--image_size", "32", "--num_clients", "4", "--clients_per_round", "2",
            "--batch_size", "16", "--alpha", "1.0", "--min_partition_size", "5", "--lr", "0.01",
            "--output_dir", str(output_dir)]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")


def eval_transform(data_config):
    """timm's eval preprocessing of a data config, as `TimmWrapperImageProcessor` applies it."""
    import timm

    return timm.data.create_transform(**timm.data.resolve_data_config(data_config), is_training=False)


def run_example(args, launcher=(sys.executable,), timeout=300, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, os.path.join(ROOT, "examples", "federated.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_same_run(a, b):
    """Runs in folders `a` and `b` ended with bitwise-equal final weights and equal histories (timings
    aside); returns that history."""
    wa, wb = load_file(os.path.join(a, "final", "model.safetensors")), load_file(os.path.join(b, "final", "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    def history(folder):
        with open(os.path.join(folder, "history.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time")} for line in f]

    assert history(a) == history(b)
    return history(a)
