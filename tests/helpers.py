"""Shared test helpers: the example's command line, running it in a fresh process, comparing two runs."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_args(backbone, dataset, output_dir, **extra):
    args = ["--backbone", backbone, "--dataset", dataset, "--image_column", "img", "--max_train_samples", "240",
            "--max_eval_samples", "60", "--image_size", "32", "--num_clients", "4", "--clients_per_round", "2",
            "--batch_size", "16", "--alpha", "1.0", "--min_partition_size", "5", "--lr", "0.01",
            "--output_dir", str(output_dir)]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


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
