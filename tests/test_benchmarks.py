"""The benchmark scripts run from a clean checkout (shrunk to seconds; their figures are in README)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT


def run_script(name, *args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_step_overhead(tmp_path):
    out = run_script("step_overhead.py", "--archs", "resnet10t", "--sizes", "32", "--batch-size", "4", "--batches", "2",
                     "--reps", "2", "--output-dir", tmp_path)
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert result["ratio_every_step"] > 0 and result["ratio_floor"] > 1 and "resnet10t" in out and (tmp_path / "step_overhead.png").exists()


def test_simulation(backbone_dir, digits_dir, tmp_path):
    out = run_script("simulation.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir,
                     "--image-column", "img", "--max-train-samples", "120", "--max-eval-samples", "20",
                     "--num-clients", "3", "--rounds", "1", "--repeats", "1", "--pipeline-sizes", "16",
                     "--output-dir", tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    results = written["results"]
    assert [r["model"] for r in results] == ["plain", "fedsq"] and all(len(r["ratios"]) == 1 for r in results)
    assert results[0]["upload_bytes_per_round"] == 3 * results[0]["model_bytes"] and "ratio" in out
    assert [(r["image_size"], r["augment"]) for r in written["data_paths"]] == [(16, "none"), (16, "timm")]
    assert all(r["samples"] == 120 and r["ratio"] > 0 for r in written["data_paths"]) and "streamed/preloaded" in out


def test_memory(backbone_dir, digits_dir, tmp_path):
    out = run_script("memory.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir, "--train-samples",
                     "100", "200", "--processes", "1", "--preload", "never", "--eval-samples", "20", "--image-size", "32",
                     "--num-clients", "2", "--local-steps", "1", "--batch-size", "8", "--output-dir", tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert [(r["train_samples"], r["processes"]) for r in written["results"]] == [(100, 1), (200, 1)]
    assert all(r["peak_rss_mb"] > 100 for r in written["results"]) and "100 -> 200 images" in out
    assert (tmp_path / "memory.png").exists()


def test_quality(backbone_dir, digits_dir, tmp_path):
    out = run_script("quality.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir,
                     "--max-train-samples", "100", "--max-eval-samples", "20", "--num-clients", "4",
                     "--clients-per-round", "2", "--rounds", "2", "--seeds", "0", "1", "--splits", "dirichlet:0.5",
                     "--calibration-samples", "20", "--output-dir", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["results"]["dirichlet:0.5"]
    assert set(results) == {"FedSQ", "FedSQ+drift", "FedSQ+calib", "FedAvg", "FedProx"}
    assert len(results["FedSQ"]["curves"]) == 2 and "| dirichlet:0.5 | FedSQ |" in out
    assert results["FedSQ+drift"]["frozen_at_round"] == [2, 2] and results["FedSQ"]["frozen_at_round"] == [None, None]


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data", "cifar10")),
                    reason="../shared/data/cifar10 is not here (only on this project's machines)")
def test_quality_default_dataset_loads():
    """The default dataset of quality.py (CIFAR-10 from ../shared) loads through the run's data path."""
    from fedsq_hf.federated.data import load_image_dataset

    train, evaluation, names = load_image_dataset(os.path.join(ROOT, "..", "shared", "data", "cifar10"), "img",
                                                  max_train_samples=10, max_eval_samples=10)
    assert len(names) == 10 and len(train) == 10 and len(evaluation) == 10


def test_paper_offline_grid(tmp_path):
    out = run_script("paper.py", "--offline", "--seeds", "0", "--splits", "iid", "--output-dir", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"digits/AlexNet", "digits/ResNet-18"}
    assert set(results["digits/AlexNet"]["iid"]) == {"FedSQ", "FedAvg", "FedProx"}
    assert "| digits | iid |" in out and (tmp_path / "digits" / "AlexNet" / "accuracy.png").exists()
