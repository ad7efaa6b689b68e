"""Quality: FedSQ vs FedAvg vs FedProx from the same warm start, IID and Dirichlet splits, several seeds.

    python benchmarks/quality.py      # CIFAR-10 subset (../shared/data/cifar10), ImageNet EfficientNet-Lite0, CPU
    python benchmarks/quality.py --backbone timm/resnet18.a1_in1k --dataset uoft-cs/cifar10 --image-column img \\
        --max-train-samples 50000 --max-eval-samples 10000 --rounds 50      # a GPU machine with Hub access

Every method trains the same backbone from the same ImageNet weights with the same budget (rounds,
clients per round, local epochs, batch size, learning rate) and the same seeds, which fix the
partition, client sampling and data order. Reports best validation accuracy (BVA), rounds-to-best,
accuracy at fixed rounds and the spread over seeds; plots mean accuracy per round (band: min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics

import datasets

from fedsq_hf.federated import DataArguments, FederatedArguments, ModelArguments, run_federated
from fedsq_hf.plotting import pyplot, save_figure
from report import write_json

# name -> (model, strategy); FedSQ is fixed gating + plain averaging, as in the paper.
METHODS = {"FedSQ": ("fedsq", "fedavg"), "FedAvg": ("plain", "fedavg"), "FedProx": ("plain", "fedprox")}
SHARED_CIFAR10 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


def parse_split(text: str) -> tuple[str, float]:
    """'iid' or 'dirichlet:0.1'."""
    name, _, alpha = text.partition(":")
    return name, float(alpha or 0.5)


def run_one(args: argparse.Namespace, method: str, split: str, seed: int) -> list[float | None]:
    model, strategy = METHODS[method]
    partition, alpha = parse_split(split)
    out = os.path.join(args.output_dir, "runs", split.replace(":", "-"), method, f"seed{seed}")
    run_federated(
        ModelArguments(backbone=args.backbone, backbone_weights=getattr(args, "backbone_weights", None), model=model,
                       gate_cache_mb=args.gate_cache_mb if model == "fedsq" and args.augment == "none" else 0),
        DataArguments(dataset=args.dataset, image_column=args.image_column, label_column=args.label_column,
                      max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                      image_size=args.image_size, augment=args.augment),
        FederatedArguments(num_clients=args.num_clients, clients_per_round=args.clients_per_round, rounds=args.rounds,
                           partition=partition, alpha=alpha, strategy=strategy, mu=args.mu, lr=args.lr,
                           batch_size=args.batch_size, seed=seed, save_every=args.rounds, disable_tqdm=True,
                           num_workers=args.num_workers, output_dir=out),
    )
    if not args.keep_models:  # 14 MB per model; a grid keeps only the records (history, summary, plots)
        for folder in ("best", "final", "checkpoints"):
            shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
    with open(os.path.join(out, "history.jsonl")) as f:
        return [json.loads(line).get("eval_accuracy") for line in f]


def describe(curves: list[list[float]], at_rounds: list[int]) -> dict:
    best = [max(c) for c in curves]
    to_best = [c.index(max(c)) + 1 for c in curves]
    mean = lambda xs: statistics.fmean(xs)  # noqa: E731
    std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    return {
        "bva_mean": mean(best), "bva_std": std(best), "bva_min": min(best), "bva_max": max(best),
        "rounds_to_best_mean": mean(to_best), "rounds_to_best": to_best,
        "accuracy_at": {r: {"mean": mean([c[r - 1] for c in curves]), "std": std([c[r - 1] for c in curves])}
                        for r in at_rounds},
        "curves": curves,
    }


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `run_grid` reads beyond the data and backbone, with this script's defaults
    (`parser.set_defaults` changes them)."""
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--splits", nargs="+", default=["iid", "dirichlet:0.5", "dirichlet:0.1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--clients-per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight")
    parser.add_argument("--gate-cache-mb", type=int, default=512, help="FedSQ gate cache (used with --augment none)")
    parser.add_argument("--augment", default="none", choices=["none", "flip", "timm"], help="client augmentation")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers per process")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's best/final models and checkpoints")
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality")


def run_grid(args: argparse.Namespace, label: str = "") -> dict:
    """{split: {method: describe(...)}} over args.splits x args.methods x args.seeds."""
    at_rounds = sorted({max(1, args.rounds // 2), args.rounds})
    results = {}
    for split in args.splits:
        results[split] = {}
        for method in args.methods:
            curves = [run_one(args, method, split, seed) for seed in args.seeds]
            results[split][method] = r = describe(curves, at_rounds)
            print(f"{label}{split:<15}{method:<9} BVA {100 * r['bva_mean']:5.1f} ± {100 * r['bva_std']:4.1f} "
                  f"(min {100 * r['bva_min']:.1f}, max {100 * r['bva_max']:.1f})  rounds-to-best {r['rounds_to_best']}",
                  flush=True)
    return results


def print_table(results: dict) -> None:
    at_rounds = list(next(iter(next(iter(results.values())).values()))["accuracy_at"])
    header = "| split | method | BVA (mean ± std) | min-max | rounds-to-best | " + " | ".join(
        f"acc @ round {r}" for r in at_rounds) + " |"
    print("\n" + header + "\n|" + "---|" * (5 + len(at_rounds)))
    for split, by_method in results.items():
        for method, r in by_method.items():
            at = " | ".join(f"{100 * r['accuracy_at'][k]['mean']:.1f} ± {100 * r['accuracy_at'][k]['std']:.1f}" for k in at_rounds)
            print(f"| {split} | {method} | {100 * r['bva_mean']:.1f} ± {100 * r['bva_std']:.1f} | "
                  f"{100 * r['bva_min']:.1f}-{100 * r['bva_max']:.1f} | {r['rounds_to_best_mean']:.1f} | {at} |")


def plot(results: dict, path: str) -> None:
    plt = pyplot()
    splits = list(results)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3.6), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        for i, (method, r) in enumerate(results[split].items()):
            curves = r["curves"]
            rounds = range(1, len(curves[0]) + 1)
            ax.plot(rounds, [statistics.fmean(v) for v in zip(*curves)], marker="o", color=f"C{i}", label=method)
            ax.fill_between(rounds, [min(v) for v in zip(*curves)], [max(v) for v in zip(*curves)], color=f"C{i}", alpha=0.15)
        ax.set_title(split)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: the example's ImageNet EfficientNet-Lite0")
    parser.add_argument("--dataset", default=SHARED_CIFAR10)
    parser.add_argument("--image-column", default="img")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--max-eval-samples", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=32)
    add_grid_arguments(parser)
    args = parser.parse_args()
    if args.dataset == SHARED_CIFAR10 and not os.path.isdir(SHARED_CIFAR10):
        parser.error(f"no CIFAR-10 at {SHARED_CIFAR10}; pass --dataset (a Hub id such as uoft-cs/cifar10, or a folder)")
    datasets.disable_progress_bars()
    results = run_grid(args)
    print_table(results)
    path = write_json(args.output_dir, {"args": vars(args), "results": results})
    plot(results, os.path.join(args.output_dir, "quality.png"))
    print(f"wrote {path} and quality.png")


if __name__ == "__main__":
    main()
