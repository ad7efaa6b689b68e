"""Memory: whole-process peak RSS of a one-round federated run as the training set grows.

    python benchmarks/memory.py --output-dir benchmarks/results/memory   # CIFAR-10 parquet at 224 px, ~15 min

Each run is `examples/federated.py` in a fresh process (2 processes: `torchrun --nproc_per_node 2`),
on the example's ImageNet EfficientNet-Lite0, with `--max-train-samples N` for each N of
`--train-samples`. The peak is the largest resident set of any process of the run (the kernel's
`ru_maxrss` of the waited-for process tree, read with `os.wait4`). The clients take `--local-steps`
steps each, since the training set's size, not the amount of training, is what is measured.
Modes: `--preload never` (streamed: what must stay flat) and `auto` (which preloads what fits in its
budget). Reports the growth from the smallest to the largest N, and 2 processes over 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from report import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CIFAR10 = os.path.join(ROOT, "..", "shared", "data", "cifar10")


def peak_rss_mb(command: list[str]) -> float:
    """Run `command`; the peak RSS (MB) of its largest process, children included."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", 1))}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def run(args: argparse.Namespace, samples: int, processes: int, preload: str, out: str) -> float:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29561"]
    command = launcher + [
        os.path.join(ROOT, "examples", "federated.py"), "--dataset", args.dataset, "--image_column", args.image_column,
        "--max_train_samples", str(samples), "--max_eval_samples", str(args.eval_samples),
        "--image_size", str(args.image_size), "--rounds", "1", "--num_clients", str(args.num_clients),
        "--local_epochs", "0", "--local_steps", str(args.local_steps), "--batch_size", str(args.batch_size),
        "--preload", preload, "--num_workers", str(args.num_workers), "--disable_tqdm", "true", "--output_dir", out,
    ] + (["--backbone", args.backbone] if args.backbone else [])
    return peak_rss_mb(command)


def plot(rows: list[dict], path: str) -> None:
    from fedsq_hf.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["processes"], r["preload"]) for r in rows}):
        points = sorted((r["train_samples"], r["peak_rss_mb"] / 1024) for r in rows if (r["processes"], r["preload"]) == key)
        ax.plot(*zip(*points), marker="o", label=f"{key[0]} process{'es' if key[0] > 1 else ''}, --preload {key[1]}")
    ax.set_xlabel("training images")
    ax.set_ylabel("peak RSS of one process (GB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=SHARED_CIFAR10)
    parser.add_argument("--image-column", default="img")
    parser.add_argument("--backbone", default=None, help="default: the example's ImageNet EfficientNet-Lite0")
    parser.add_argument("--train-samples", nargs="+", type=int, default=[1000, 5000, 20000, 50000],
                        help="50,000 is the size of CIFAR-100's training split, the paper's setting")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--preload", nargs="+", default=["never", "auto"], choices=["never", "auto", "always"])
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-clients", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/benchmarks/memory")
    args = parser.parse_args()
    if args.dataset == SHARED_CIFAR10 and not os.path.isdir(SHARED_CIFAR10):
        parser.error(f"no CIFAR-10 at {SHARED_CIFAR10}; pass --dataset (a Hub id such as uoft-cs/cifar10, or a folder)")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for preload in args.preload:
            for processes in args.processes:
                for n in args.train_samples:
                    mb = run(args, n, processes, preload, os.path.join(folder, f"{preload}-{processes}-{n}"))
                    rows.append({"preload": preload, "processes": processes, "train_samples": n, "peak_rss_mb": mb})
                    print(f"--preload {preload:<6} {processes} process(es) {n:>7} images: peak RSS {mb:8.0f} MB", flush=True)
    lo, hi = min(args.train_samples), max(args.train_samples)
    summary = []
    for preload in args.preload:
        for processes in args.processes:
            peak = {r["train_samples"]: r["peak_rss_mb"] for r in rows if (r["preload"], r["processes"]) == (preload, processes)}
            summary.append({"preload": preload, "processes": processes, "growth_mb": peak[hi] - peak[lo]})
            line = f"--preload {preload:<6} {processes} process(es): {lo} -> {hi} images: {peak[hi] - peak[lo]:+.0f} MB"
            if processes != 1 and 1 in args.processes:
                one = {r["train_samples"]: r["peak_rss_mb"] for r in rows if (r["preload"], r["processes"]) == (preload, 1)}
                ratios = [peak[n] / one[n] for n in args.train_samples]
                summary[-1]["vs_1_process"] = ratios
                line += ", per process vs 1 process: " + " / ".join(f"{x:.2f}x" for x in ratios)
            print(line)
    path = write_json(args.output_dir, {"args": vars(args), "results": rows, "summary": summary})
    plot(rows, os.path.join(args.output_dir, "memory.png"))
    print(f"wrote {path} and memory.png")


if __name__ == "__main__":
    main()
