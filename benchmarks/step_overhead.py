"""FedSQ training step vs plain fine-tuning step: same backbone, batch and optimizer, one run.

    python benchmarks/step_overhead.py                       # resnet18, 32x32, batch 64
    python benchmarks/step_overhead.py --archs resnet18 vgg11 --sizes 32 224

Prints median step times and ratios (FedSQ / plain) with gates computed every step and with the
gate cache (after one epoch over `--batches` distinct batches has filled it), and the floor of the
every-step ratio: 1 + (an inference forward of the plain backbone) / (a plain step). Any DualCopy
that computes exact gates by running the structural copy pays at least that second forward. Steps
of all variants are interleaved so that machine noise hits them alike. Writes JSON (+ PNG) to
--output-dir.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import timm
import torch

from fedsq_hf import FedSQConfig, FedSQModel
from fedsq_hf.plotting import pyplot, save_figure
from report import write_json


def make_models(arch: str, num_labels: int, bn_mode: str, folder: str):
    timm.models.save_for_hf(timm.create_model(arch, pretrained=False), folder, safe_serialization=True)
    models = {}
    for name, gating in (("plain", False), ("fedsq", True), ("fedsq+cache", True)):
        torch.manual_seed(0)
        config = FedSQConfig(backbone=folder, num_labels=num_labels, fixed_gating=gating, bn_mode=bn_mode)
        models[name] = FedSQModel(config).train()
    models["fedsq+cache"].enable_gate_cache(4 << 30)
    return models


def bench(arch: str, size: int, batch: int, batches: int, reps: int, bn_mode: str, channels_last: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen),
             torch.arange(i * batch, (i + 1) * batch)) for i in range(batches)]
    with tempfile.TemporaryDirectory() as folder:
        models = make_models(arch, 10, bn_mode, folder)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    opts = {}
    for name, model in models.items():
        model.to(memory_format=fmt)
        opts[name] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # What the structural pass is at best: the plain backbone's inference forward.
    inference = copy.deepcopy(models["plain"].dual_copy.quantitative).eval().requires_grad_(False)

    def step(name: str, i: int) -> float:
        x, y, keys = data[i % batches]
        x = x.contiguous(memory_format=fmt)
        start = time.perf_counter()
        if name == "forward":
            with torch.no_grad():
                inference(x)
            return time.perf_counter() - start
        opts[name].zero_grad(set_to_none=True)
        out = models[name](x, labels=y, gate_keys=keys if name == "fedsq+cache" else None)
        out.loss.backward()
        opts[name].step()
        return time.perf_counter() - start

    names = [*models, "forward"]
    for i in range(batches):  # warm-up; fills the gate cache (the "first epoch")
        for name in names:
            step(name, i)
    times = {name: [] for name in names}
    for i in range(reps):
        for name in names:
            times[name].append(step(name, i))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "arch": arch, "size": size, "batch": batch, "bn_mode": bn_mode, "reps": reps,
        "median_s": med,
        "ratio_every_step": med["fedsq"] / med["plain"],
        "ratio_cached": med["fedsq+cache"] / med["plain"],
        "ratio_floor": 1 + med["forward"] / med["plain"],
        "cache_bytes_per_sample": models["fedsq+cache"].dual_copy.gate_cache.bytes_used / (batch * batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches (one epoch) cycled over")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--bn-mode", default="train", choices=["train", "frozen"],
                        help="BatchNorm mode of both models (train = standard fine-tuning)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default="outputs/benchmarks/step_overhead")
    args = parser.parse_args()
    if args.device != "cpu":
        torch.set_default_device(args.device)
    results = []
    print(f"{'arch':<12}{'size':>6}{'plain ms':>10}{'fedsq ms':>10}{'cached ms':>10}{'every':>8}{'floor':>8}"
          f"{'cached':>8}")
    for arch in args.archs:
        for size in args.sizes:
            r = bench(arch, size, args.batch_size, args.batches, args.reps, args.bn_mode, args.channels_last)
            results.append(r)
            m = r["median_s"]
            print(f"{arch:<12}{size:>6}{1e3 * m['plain']:>10.1f}{1e3 * m['fedsq']:>10.1f}"
                  f"{1e3 * m['fedsq+cache']:>10.1f}{r['ratio_every_step']:>7.2f}x{r['ratio_floor']:>7.2f}x"
                  f"{r['ratio_cached']:>7.2f}x")
    path = write_json(args.output_dir, {"args": vars(args), "results": results})
    plot(results, os.path.join(args.output_dir, "step_overhead.png"))
    print(f"wrote {path} and step_overhead.png")


def plot(results: list[dict], path: str) -> None:
    plt = pyplot()
    labels = [f"{r['arch']}\n{r['size']}px" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 4))
    ax.bar([i - 0.27 for i in x], [r["ratio_every_step"] for r in results], 0.27, label="gates every step")
    ax.bar(list(x), [r["ratio_floor"] for r in results], 0.27,
           label="floor: 1 + inference forward / plain step")
    ax.bar([i + 0.27 for i in x], [r["ratio_cached"] for r in results], 0.27, label="gate cache")
    for target, style in ((1.20, "--"), (1.05, ":")):
        ax.axhline(target, color="gray", linestyle=style, linewidth=1, label=f"target {target:.2f}x")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("FedSQ step / plain step (median)")
    ax.legend(fontsize=8)
    save_figure(fig, path)

if __name__ == "__main__":
    main()
