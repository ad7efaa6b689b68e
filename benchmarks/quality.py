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
from typing import NamedTuple

import datasets

from fedsq_hf import FedSQError
from fedsq_hf.federated import DataArguments, FederatedArguments, ModelArguments, run_federated
from fedsq_hf.federated.cli import resume_marks, run_config, unread_flags
from fedsq_hf.federated.server import GATE_ALIGNMENT_BELOW, greater_is_better
from fedsq_hf.plotting import pyplot, save_figure
from report import method_colors, write_json

# name -> what the method sets; all train the same backbone from the same warm start. FedSQ is fixed gating
# + plain averaging, as in the paper; "+drift" warms the gates up in the federation until they settle
# (--freeze-gates-when-drift-below); "+auto" lets the clients' update alignment and label share choose
# (--freeze-gates auto; "-global" / "-pretrained": --skewed-gates global / pretrained);
# "+calib" re-freezes them after a central calibration warm-up.
METHODS = {
    "FedSQ": dict(model="fedsq"),
    "FedSQ+drift": dict(model="fedsq", drift=True),
    "FedSQ+auto": dict(model="fedsq", auto="auto"),
    "FedSQ+auto-global": dict(model="fedsq", auto="global"),
    "FedSQ+auto-pretrained": dict(model="fedsq", auto="pretrained"),
    "FedSQ+calib": dict(model="fedsq", calibrate=True),
    "FedAvg": dict(model="plain"),
    "FedProx": dict(model="plain", strategy="fedprox"),
}
SHARED_CIFAR10 = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"))


def parse_split(text: str) -> tuple[str, float]:
    """'iid' or 'dirichlet:0.1'."""
    name, _, alpha = text.partition(":")
    return name, float(alpha or 0.5)


class Run(NamedTuple):
    """One run's seed, accuracy per round, the round its gates were fixed at by a gate schedule (None: never, or
    no schedule), which gates ("global", "pretrained", "own": never fixed; None: no schedule) and whether it
    stopped because every client failed (diverged) round after round."""

    seed: int
    curve: list[float]
    frozen: int | None
    gates: str | None
    stopped: bool
    alignment: list[float | None]  # update_alignment per round
    label_share: list[float | None]  # client_label_share per round (None: not asked)


def run_one(args: argparse.Namespace, method: str, split: str, seed: int, *, variant: str = "",
            **federated: object) -> Run:
    """One run of `method` (see `Run`). `federated`: further `FederatedArguments` fields, the run's `variant`
    (its folder's name under the method's)."""
    spec = METHODS[method]
    partition, alpha = parse_split(split)
    out = os.path.join(args.output_dir, "runs", split.replace(":", "-"), method, variant, f"seed{seed}")
    drift = dict(freeze_gates_when_drift_below=args.drift_below, gate_probe_samples=args.gate_probe_samples,
                 max_warmup_rounds=min(args.max_warmup_rounds, args.rounds - 1)) if spec.get("drift") else {}
    if spec.get("auto"):
        scored = spec["auto"] != "pretrained"  # round M's model is scored in round M + 1, its gates fixed from M + 2
        drift = dict(freeze_gates="auto", gate_alignment_below=args.alignment_below, skewed_gates=spec["auto"],
                     max_warmup_rounds=min(args.max_warmup_rounds, args.rounds - (2 if scored else 1)))
    calibrate = spec.get("calibrate", False)
    run_args = (
        ModelArguments(backbone=args.backbone, backbone_weights=getattr(args, "backbone_weights", None),
                       model=spec["model"], **({"calibration_epochs": args.calibration_epochs} if calibrate else {}),
                       gate_cache_mb=args.gate_cache_mb if spec["model"] == "fedsq" and args.augment == "none" else 0),
        DataArguments(dataset=args.dataset, image_column=args.image_column, label_column=args.label_column,
                      max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                      image_size=args.image_size, augment=args.augment,
                      calibration_samples=args.calibration_samples if calibrate else 0),
        FederatedArguments(num_clients=args.num_clients, clients_per_round=args.clients_per_round, rounds=args.rounds,
                           partition=partition, alpha=alpha, strategy=spec.get("strategy", "fedavg"), lr=args.lr,
                           batch_size=args.batch_size, seed=seed, save_every=args.rounds, disable_tqdm=True,
                           num_workers=args.num_workers, output_dir=out, overwrite_output_dir=True, **drift,
                           **({"mu": args.mu} if spec.get("strategy") == "fedprox" else {}), **federated),
    )
    try:
        config = {**run_config(*run_args), "strategy_config": run_args[2].make_strategy().describe(),
                  "greater_is_better": greater_is_better(run_args[2].metric_for_best_model, run_args[2].greater_is_better)}
        summary = (args.reuse_runs and finished_run(out, config, run_args)) or run_federated(*run_args)
    except FedSQError as err:  # every client failed --max-failed-rounds rounds in a row: the run stopped there
        print(f"{method} {split} seed {seed}: {err}", flush=True)
        summary = {"stopped": True}
    if not args.keep_models:  # 14 MB per model; a grid keeps only the records (history, summary, plots)
        for folder in ("best", "final", "checkpoints"):
            shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
    with open(os.path.join(out, "history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    curve = [h.get("eval_accuracy") for h in history]
    curve += curve[-1:] * (args.rounds - len(curve))  # a stopped run keeps its last global model
    frozen = next((h["round"] for h in history if h.get("gates_frozen")), None)
    gates = next((h["gate_decision"]["gates"] for h in history if "gate_decision" in h), None)
    return Run(seed, curve, frozen, gates, bool(summary.get("stopped")), [h.get("update_alignment") for h in history],
               [h.get("client_label_share") for h in history])


def finished_run(folder: str, config: dict, run_args: tuple = ()) -> dict | None:
    """The summary of a finished run in `folder` with the same weight-changing settings, else None. A flag the
    run's options do not read (`OPTION_FLAGS`, for `run_args` = (model, data, federated) arguments) is not
    compared: its value changed nothing."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    given = {k for k, v in config.items() if v is not None}  # only a flag with a value is asked, as the check does
    moot = {row.field for row in unread_flags(*run_args, given)} if run_args else set()
    same = all(summary["config"].get(k) == config[k] for k in resume_marks()
               if k in config and k != "backbone" and k not in moot)
    return summary if same and summary["rounds"] == config["rounds"] else None


def describe(runs: list[Run], at_rounds: list[int]) -> dict:
    curves = [run.curve for run in runs]
    best = [max(c) for c in curves]
    to_best = [c.index(max(c)) + 1 for c in curves]
    mean = lambda xs: statistics.fmean(xs)  # noqa: E731
    std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    return {
        "bva_mean": mean(best), "bva_std": std(best), "bva_min": min(best), "bva_max": max(best),
        "rounds_to_best_mean": mean(to_best), "rounds_to_best": to_best,
        "accuracy_at": {r: {"mean": mean([c[r - 1] for c in curves]), "std": std([c[r - 1] for c in curves])}
                        for r in at_rounds},
        "seeds": [run.seed for run in runs], "curves": curves, "frozen_at_round": [run.frozen for run in runs],
        "gates": [run.gates for run in runs],
        "stopped": [run.stopped for run in runs], "update_alignment": [run.alignment for run in runs],
        "client_label_share": [run.label_share for run in runs],
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
    parser.add_argument("--drift-below", type=float, default=0.02, help="FedSQ+drift: --freeze-gates-when-drift-below")
    parser.add_argument("--max-warmup-rounds", type=int, default=5,
                        help="FedSQ+drift: bound on the warm-up; FedSQ+auto: the rounds whose alignment decides")
    parser.add_argument("--alignment-below", type=float, default=GATE_ALIGNMENT_BELOW,
                        help="FedSQ+auto: --gate-alignment-below")
    parser.add_argument("--gate-probe-samples", type=int, default=256, help="FedSQ+drift: probe set (first eval samples)")
    parser.add_argument("--calibration-samples", type=int, default=300, help="FedSQ+calib: shared calibration set")
    parser.add_argument("--calibration-epochs", type=int, default=2, help="FedSQ+calib: epochs of the warm-up")
    parser.add_argument("--gate-cache-mb", type=int, default=512, help="FedSQ gate cache (used with --augment none)")
    parser.add_argument("--augment", default="none", choices=["none", "flip", "timm"], help="client augmentation")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers per process")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="take a finished run with the same settings from --output-dir instead of training it again "
                             "(to continue an interrupted grid)")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's best/final models and checkpoints")
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality")


def run_grid(args: argparse.Namespace, label: str = "") -> dict:
    """{split: {method: describe(...)}} over args.splits x args.methods x args.seeds."""
    at_rounds = sorted({max(1, args.rounds // 2), args.rounds})
    results = {}
    for split in args.splits:
        results[split] = {}
        for method in args.methods:
            runs = [run_one(args, method, split, seed) for seed in args.seeds]
            results[split][method] = r = describe(runs, at_rounds)
            frozen = f"  gates frozen at {r['frozen_at_round']}" if any(r["frozen_at_round"]) else ""
            frozen += f"  stopped (all clients diverging): {sum(r['stopped'])} of {len(runs)}" if any(r["stopped"]) else ""
            print(f"{label}{split:<15}{method:<13} BVA {100 * r['bva_mean']:5.1f} ± {100 * r['bva_std']:4.1f} "
                  f"(min {100 * r['bva_min']:.1f}, max {100 * r['bva_max']:.1f})  rounds-to-best {r['rounds_to_best']}"
                  + frozen, flush=True)
    return results


def print_table(results: dict) -> None:
    at_rounds = list(next(iter(next(iter(results.values())).values()))["accuracy_at"])
    header = "| split | method | BVA (mean ± std) | min-max | rounds-to-best | gates frozen at | " + " | ".join(
        f"acc @ round {r}" for r in at_rounds) + " |"
    print("\n" + header + "\n|" + "---|" * (6 + len(at_rounds)))
    for split, by_method in results.items():
        for method, r in by_method.items():
            at = " | ".join(f"{100 * r['accuracy_at'][k]['mean']:.1f} ± {100 * r['accuracy_at'][k]['std']:.1f}" for k in at_rounds)
            gates = r.get("gates") or [None] * len(r["frozen_at_round"])  # an earlier grid's results lack them
            frozen = ", ".join(_fixed_at(f, g) for f, g in zip(r["frozen_at_round"], gates)) \
                if any(r["frozen_at_round"]) or any(gates) else ("1" if method.startswith("FedSQ") else "-")
            print(f"| {split} | {method} | {100 * r['bva_mean']:.1f} ± {100 * r['bva_std']:.1f} | "
                  f"{100 * r['bva_min']:.1f}-{100 * r['bva_max']:.1f} | {r['rounds_to_best_mean']:.1f} "
                  f"({', '.join(map(str, r['rounds_to_best']))}) | {frozen} | {at} |"
                  + (f" stopped: {sum(r['stopped'])} of {len(r['stopped'])}" if any(r["stopped"]) else ""))


def print_alignment(results: dict, window: int) -> None:
    """The update alignment each method's clients sent: round 1 per seed, and the lowest in rounds 1..`window`
    (what `--freeze-gates auto` reads; a round without fixed gates only where the method had none then), and
    their label share in round 1 where they sent one."""
    print(f"\n| split | method | update alignment, round 1 (per seed) | lowest in rounds 1-{window} (per seed) | "
          "client label share, round 1 |\n|---|---|---|---|---|")
    for split, by_method in results.items():
        for method, r in by_method.items():
            runs = [[a for a in run[:window] if a is not None] for run in r.get("update_alignment", [])]
            shares = [run[0] if run else None for run in r.get("client_label_share", [])]
            if runs and all(runs):
                print(f"| {split} | {method} | {', '.join(f'{run[0]:.2f}' for run in runs)} | "
                      f"{', '.join(f'{min(run):.2f}' for run in runs)} | "
                      f"{', '.join(f'{x:.2f}' for x in shares) if shares and all(x is not None for x in shares) else '-'} |")


def paired_gaps(results: dict, method: str = "FedSQ+auto", baselines: tuple[str, ...] = ("FedSQ", "FedAvg")) -> dict:
    """Per split, `method`'s best validation accuracy minus each baseline's, seed by seed over the seeds both ran
    (the same partition): {split: {baseline: {"mean", "se", "ahead", "seeds"}}}, the mean gap, its standard error
    and in how many of those seeds `method` was ahead."""
    gaps = {}
    for split, by_method in results.items():
        if method not in by_method:
            continue
        mine = dict(zip(by_method[method]["seeds"], map(max, by_method[method]["curves"])))
        for baseline in (b for b in baselines if b in by_method):
            theirs = dict(zip(by_method[baseline]["seeds"], map(max, by_method[baseline]["curves"])))
            d = [mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys())]
            if d:
                se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
                gaps.setdefault(split, {})[baseline] = {"mean": statistics.fmean(d), "se": se,
                                                        "ahead": sum(x > 0 for x in d), "seeds": len(d)}
    return gaps


def print_paired(gaps: dict, method: str = "FedSQ+auto") -> None:
    """`paired_gaps` as a table, in points."""
    print(f"\n| split | {method} minus | mean ± standard error (points) | seeds ahead |\n|---|---|---|---|")
    for split, by_baseline in gaps.items():
        for baseline, g in by_baseline.items():
            print(f"| {split} | {baseline} | {100 * g['mean']:+.1f} ± {100 * g['se']:.1f} | {g['ahead']} of {g['seeds']} |")


def _fixed_at(frozen: int | None, gates: str | None) -> str:
    """A run's "gates frozen at" cell: R, R + "p" for the pretrained gates, "none" when never fixed."""
    if frozen is None:
        return "none" if gates == "own" else "-"
    return f"{frozen}p" if gates == "pretrained" else str(frozen)


def runs_of(r: dict) -> list[Run]:
    """The runs `describe` summed up in `r`."""
    n = len(r["curves"])
    return [Run(*fields) for fields in zip(r["seeds"], r["curves"], r["frozen_at_round"],
                                           r.get("gates", [None] * n), r["stopped"], r.get("update_alignment", [[]] * n),
                                           r.get("client_label_share", [[]] * n))]


def add_results(results: dict, path: str) -> dict:
    """`results` with the splits and methods of an earlier grid's results.json (same settings) before them. A
    method of a split in both is this grid's, or, where the two grids ran other seeds, both grids' runs."""
    with open(path) as f:
        written = json.load(f)
    earlier = written["results"]
    for by_method in earlier.values():
        for r in by_method.values():
            r["accuracy_at"] = {int(k): v for k, v in r["accuracy_at"].items()}
            r.setdefault("seeds", written["args"]["seeds"])  # a results.json older than "seeds": its grid's
    for split, by_method in results.items():
        for method, r in by_method.items():
            before = earlier.get(split, {}).get(method)
            if before and not set(before["seeds"]) & set(r["seeds"]):
                by_method[method] = describe(sorted(runs_of(before) + runs_of(r)), list(r["accuracy_at"]))
    splits = [*earlier, *(split for split in results if split not in earlier)]
    return {split: {**earlier.get(split, {}), **results.get(split, {})} for split in splits}


def plot(results: dict, path: str) -> None:
    plt = pyplot()
    splits = list(results)
    colors = method_colors(results)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3.6), sharey=True, squeeze=False)
    lines = {}
    for ax, split in zip(axes[0], splits):
        for method, r in results[split].items():
            curves, color = r["curves"], colors[method]
            rounds = range(1, len(curves[0]) + 1)
            lines[method], = ax.plot(rounds, [statistics.fmean(v) for v in zip(*curves)], marker="o", color=color)
            ax.fill_between(rounds, [min(v) for v in zip(*curves)], [max(v) for v in zip(*curves)], color=color, alpha=0.15)
        ax.set_title(split)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend([lines[m] for m in colors], list(colors))
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
    parser.add_argument("--add-results", metavar="RESULTS_JSON",
                        help="an earlier grid's results.json with the same settings: its splits and methods join the "
                             "table and plot; a method both ran with other seeds has both grids' runs")
    args = parser.parse_args()
    if args.dataset == SHARED_CIFAR10 and not os.path.isdir(SHARED_CIFAR10):
        parser.error(f"no CIFAR-10 at {SHARED_CIFAR10}; pass --dataset (a Hub id such as uoft-cs/cifar10, or a folder)")
    datasets.disable_progress_bars()
    results = run_grid(args)
    if args.add_results:
        results = add_results(results, args.add_results)
    print_table(results)
    print_alignment(results, args.max_warmup_rounds)
    gaps = paired_gaps(results)
    print_paired(gaps)
    path = write_json(args.output_dir, {"args": vars(args), "results": results, "paired": gaps})
    plot(results, os.path.join(args.output_dir, "quality.png"))
    print(f"wrote {path} and quality.png")


if __name__ == "__main__":
    main()
