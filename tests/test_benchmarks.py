"""The benchmark scripts run from a clean checkout (shrunk to seconds; their figures are in README)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow  # each runs a benchmark script in a fresh process


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
    t = result["median_s"]
    assert result["ratio_every_step"] == pytest.approx(t["fedsq"] / t["plain"])  # ratios of the medians it timed
    assert result["ratio_cached"] == pytest.approx(t["fedsq+cache"] / t["plain"])
    assert result["ratio_floor"] == pytest.approx(1 + t["forward"] / t["plain"])
    assert 0.2 < result["ratio_every_step"] < 20 and result["cache_bytes_per_sample"] > 0
    assert (result["arch"], result["size"], result["batch"]) == ("resnet10t", 32, 4)
    assert "resnet10t" in out and (tmp_path / "step_overhead.png").exists()


def test_simulation(backbone_dir, digits_dir, tmp_path):
    out = run_script("simulation.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir,
                     "--image-column", "img", "--max-train-samples", "120", "--max-eval-samples", "20",
                     "--num-clients", "3", "--rounds", "1", "--repeats", "1", "--pipeline-sizes", "16",
                     "--output-dir", tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    results = written["results"]
    assert [r["model"] for r in results] == ["plain", "fedsq"] and all(len(r["ratios"]) == 1 for r in results)
    for r in results:  # one pair: the ratio is that pair's, and the images/s are the samples over the medians
        assert r["ratio"] == pytest.approx(r["central_s"] / r["federated_s"]) == pytest.approx(r["ratios"][0])
        assert r["central_images_per_s"] == pytest.approx(r["train_samples"] / r["central_s"])
        steps = r["optimizer_steps"]  # every client ends its epoch with a partial batch: at least the central count
        assert steps["centralized"] == 4 and 4 <= steps["federated"] <= 4 + 2  # 120 samples in batches of 32
    model_bytes = results[0]["model_bytes"]
    assert model_bytes == 4 * sum(p.numel() for p in _resnet10t_state(backbone_dir).values())
    assert results[0]["upload_bytes_per_round"] == 3 * model_bytes == results[0]["download_bytes_per_round"]
    assert "ratio" in out
    assert [(r["image_size"], r["augment"]) for r in written["data_paths"]] == [(16, "none"), (16, "timm")]
    for r in written["data_paths"]:
        assert r["samples"] == 120 and r["ratio"] == pytest.approx(r["ratios"][0])
        assert r["streamed_images_per_s"] / r["preloaded_images_per_s"] == pytest.approx(r["ratio"])
    assert "streamed/preloaded" in out


def _resnet10t_state(backbone_dir):
    """The floating state of the FedSQ/plain model the benchmark builds (backbone + a 10-class head)."""
    from fedsq_hf import FedSQConfig, FedSQModel

    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=10))
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def test_quality_plot_gives_a_method_one_colour_in_every_panel(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import quality

    figures = []
    monkeypatch.setattr(quality, "save_figure", lambda fig, path: figures.append(fig))
    run = {"curves": [[0.1, 0.2], [0.2, 0.3]]}
    quality.plot({"iid": {"FedSQ": run, "FedAvg": run}, "dirichlet:0.1": {"FedAvg": run, "FedSQ+auto": run, "FedSQ": run}},
                 str(tmp_path / "quality.png"))
    first, second = figures[0].axes
    assert [line.get_color() for line in first.lines] == ["C0", "C1"]
    assert [line.get_color() for line in second.lines] == ["C1", "C2", "C0"]  # FedAvg, FedSQ+auto, FedSQ
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["FedSQ", "FedAvg", "FedSQ+auto"]


def test_quality_paired_gaps_compare_the_same_seeds(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import quality

    results = {"iid": {"FedSQ+auto": {"seeds": [0, 1, 2], "curves": [[0.5, 0.6], [0.4, 0.3], [0.7, 0.7]]},
                       "FedSQ": {"seeds": [2, 0, 5], "curves": [[0.8], [0.5], [0.9]]},
                       "FedAvg": {"seeds": [0, 1, 2], "curves": [[0.6], [0.4], [0.7]]}},
               "dirichlet:0.1": {"FedSQ": {"seeds": [0], "curves": [[0.1]]}}}
    gaps = quality.paired_gaps(results)
    assert list(gaps) == ["iid"] and list(gaps["iid"]) == ["FedSQ", "FedAvg"]
    fedsq, fedavg = gaps["iid"]["FedSQ"], gaps["iid"]["FedAvg"]
    assert (fedsq["seeds"], fedsq["ahead"]) == (2, 1)  # seeds 0 (+0.1) and 2 (-0.1); seed 5 ran only in FedSQ
    assert fedsq["mean"] == pytest.approx(0.0, abs=1e-12) and fedsq["se"] == pytest.approx(0.1)
    assert (fedavg["mean"], fedavg["ahead"], fedavg["seeds"]) == (0.0, 0, 3)


def test_memory(backbone_dir, digits_dir, tmp_path):
    out = run_script("memory.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir, "--train-samples",
                     "100", "200", "--processes", "1", "--preload", "never", "--eval-samples", "20", "--image-size", "32",
                     "--num-clients", "2", "--local-steps", "1", "--batch-size", "8", "--output-dir", tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert [(r["train_samples"], r["processes"]) for r in written["results"]] == [(100, 1), (200, 1)]
    assert all(300 < r["peak_rss_mb"] < 20000 for r in written["results"]) and "100 -> 200 images" in out
    assert (tmp_path / "memory.png").exists()


def test_quality(backbone_dir, digits_dir, tmp_path):
    grid = ("--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir, "--max-train-samples", "100",
            "--max-eval-samples", "20", "--num-clients", "4", "--clients-per-round", "2", "--rounds", "3", "--seeds",
            "0", "--splits", "dirichlet:0.5", "--max-warmup-rounds", "1", "--output-dir", tmp_path)
    out = run_script("quality.py", *grid, "--calibration-samples", "20")
    results = json.loads((tmp_path / "results.json").read_text())["results"]["dirichlet:0.5"]
    assert set(results) == {"FedSQ", "FedSQ+drift", "FedSQ+auto", "FedSQ+auto-global", "FedSQ+auto-pretrained",
                            "FedSQ+calib", "FedAvg", "FedProx"}
    assert len(results["FedSQ"]["curves"]) == 1 and "| dirichlet:0.5 | FedSQ |" in out
    assert results["FedSQ+drift"]["frozen_at_round"] == [2] and results["FedSQ"]["frozen_at_round"] == [None]
    # auto decides from round 1's alignment (a window of one round): pulled apart, or agreeing and never fixed
    round_1 = results["FedAvg"]["update_alignment"][0][0]
    assert results["FedSQ+auto"]["update_alignment"][0][0] == round_1  # round 1 is FedAvg's, exactly
    pulled = round_1 < 0.3
    assert (results["FedSQ+auto-pretrained"]["frozen_at_round"], results["FedSQ+auto-pretrained"]["gates"]) == \
        (([2], ["pretrained"]) if pulled else ([None], ["own"]))
    assert (results["FedSQ+auto-global"]["frozen_at_round"], results["FedSQ+auto-global"]["gates"]) == \
        (([3], ["global"]) if pulled else ([None], ["own"]))  # round 1's model scored in round 2, fixed from 3
    share = results["FedSQ+auto"]["client_label_share"][0][0]  # asked in round 1, the window
    assert 0 < share <= 1 and results["FedSQ+auto-global"]["client_label_share"] == [[None] * 3]
    picked = results["FedSQ+auto-pretrained" if share < 0.44 else "FedSQ+auto-global"] if pulled else results["FedSQ+auto"]
    assert (results["FedSQ+auto"]["frozen_at_round"], results["FedSQ+auto"]["gates"]) == \
        (picked["frozen_at_round"], picked["gates"]) and results["FedSQ+auto"]["curves"] == picked["curves"]
    assert f"| dirichlet:0.5 | FedAvg | {round_1:.2f} | {round_1:.2f} | - |" in out  # the alignment table
    assert f"| dirichlet:0.5 | FedSQ+auto | {round_1:.2f} | {round_1:.2f} | {share:.2f} |" in out
    gap = json.loads((tmp_path / "results.json").read_text())["paired"]["dirichlet:0.5"]["FedAvg"]
    assert gap["seeds"] == 1 and gap["mean"] == pytest.approx(max(results["FedSQ+auto"]["curves"][0]) - max(results["FedAvg"]["curves"][0]))
    assert f"| dirichlet:0.5 | FedAvg | {100 * gap['mean']:+.1f} ± 0.0 | {gap['ahead']} of 1 |" in out
    # a method run with other seeds joins the earlier grid's runs, one run with the same seeds replaces them
    # (the earlier FedSQ is taken for seed 1's), the methods not run again stay as they were
    earlier = json.loads((tmp_path / "results.json").read_text())
    earlier["results"]["dirichlet:0.5"]["FedSQ"]["seeds"] = [1]
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out = run_script("quality.py", *grid, "--seeds", "1", "--methods", "FedAvg", "FedSQ", "--reuse-runs",
                     "--add-results", tmp_path / "earlier.json")
    merged = json.loads((tmp_path / "results.json").read_text())["results"]["dirichlet:0.5"]
    assert set(merged) == set(results) and merged["FedProx"] == results["FedProx"] and "| dirichlet:0.5 | FedSQ+calib |" in out
    assert merged["FedSQ"]["seeds"] == [1] and len(merged["FedSQ"]["curves"]) == 1
    joined, seed_0 = merged["FedAvg"], results["FedAvg"]
    assert joined["seeds"] == [0, 1] and joined["curves"][0] == seed_0["curves"][0]
    assert joined["update_alignment"][0] == seed_0["update_alignment"][0] and len(joined["stopped"]) == 2
    assert joined["bva_mean"] == pytest.approx(sum(map(max, joined["curves"])) / 2)
    printed = next(line for line in out.splitlines() if line.startswith("dirichlet:0.5  FedAvg "))  # this grid's run
    assert joined["bva_min"] == min(map(max, joined["curves"])) and f"rounds-to-best {joined['rounds_to_best'][1:]}" in printed


def test_privacy(backbone_dir, digits_dir, tmp_path):
    out = run_script("privacy.py", "--backbone", backbone_dir("resnet10t"), "--dataset", digits_dir, "--image-column",
                     "img", "--max-train-samples", "80", "--max-eval-samples", "20", "--num-clients", "8",
                     "--clients-per-round", "4", "--rounds", "2", "--seeds", "0", "--splits", "iid", "--epsilons", "3",
                     "none", "--output-dir", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["results"]["iid"]
    assert set(results) == {"FedSQ", "FedAvg"} and set(results["FedSQ"]) == {"3", "none"}
    assert results["FedSQ"]["3"]["noise_multiplier"] > 0 == results["FedSQ"]["none"]["noise_multiplier"]
    summary = json.loads((tmp_path / "runs" / "iid" / "FedAvg" / "epsilon-3" / "seed0" / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] <= 3 and summary["privacy"]["delta"] == 1e-5
    assert "| iid | FedSQ |" in out and (tmp_path / "privacy.png").exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data", "cifar10")),
                    reason="../shared/data/cifar10 is not here (only on this project's machines)")
def test_quality_default_dataset_loads():
    """The default dataset of quality.py (CIFAR-10 from ../shared) loads through the run's data path."""
    from fedsq_hf.federated.data import load_image_dataset

    train, evaluation, names = load_image_dataset(os.path.join(ROOT, "..", "shared", "data", "cifar10"), "img",
                                                  max_train_samples=10, max_eval_samples=10)
    assert len(names) == 10 and len(train) == 10 and len(evaluation) == 10


def test_paper_offline_grid(tmp_path):
    out = run_script("paper.py", "--offline", "--seeds", "0", "--splits", "iid", "--rounds", "1", "--methods", "FedSQ",
                     "FedProx", "--output-dir", tmp_path)  # FedAvg: FedProx's path with mu 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"digits/AlexNet", "digits/ResNet-18"}
    assert set(results["digits/AlexNet"]["iid"]) == {"FedSQ", "FedProx"}
    assert "| digits | iid |" in out and (tmp_path / "digits" / "AlexNet" / "accuracy.png").exists()
