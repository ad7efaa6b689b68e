"""The FedSQ paper's grid (arXiv 2604.02990): AlexNet and ResNet-18 warm-started from ImageNet-1K, on
CIFAR-100 and CINIC-10, IID and Dirichlet splits, FedSQ vs FedAvg vs FedProx, several seeds; best
validation accuracy (BVA) and the round it is reached, in the paper's table shape.

    python benchmarks/paper.py --cinic10 <hub id or imagefolder>   # a GPU machine with Hub access
    python benchmarks/paper.py --offline --seeds 0                 # the same grid, shrunk, offline

Online, the backbones are torchvision's (ImageNet weights from its weight enums) and CIFAR-100 is
`uoft-cs/cifar100` (`fine_label`); CINIC-10 has no canonical Hub id, so pass a mirror or a local
imagefolder with --cinic10 (without it, CINIC-10 is skipped). The defaults are this library's, not
necessarily the paper's exact hyperparameters: set --rounds, --lr, --batch-size, ... to match it.
`--offline` runs every code path on scikit-learn's digits with random-init local weights (its
accuracies mean nothing): that is what the tests run.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import shutil
import tempfile

import datasets
import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

from quality import add_grid_arguments, plot, run_grid
from report import write_json

BACKBONES = {"AlexNet": "torchvision:alexnet", "ResNet-18": "torchvision:resnet18"}


def offline_inputs(folder: str) -> tuple[dict, dict]:
    """Random-init weights files for the backbones and the digits as a parquet dataset."""
    from sklearn.datasets import load_digits

    weights = {}
    for name, backbone in BACKBONES.items():
        torch.manual_seed(0)
        path = os.path.join(folder, f"{name}.safetensors")
        save_file(torchvision.models.get_model(backbone.split(":")[1]).state_dict(), path)
        weights[name] = path
    digits = load_digits()
    ds = datasets.Dataset.from_dict({"image": [(img * 15).astype(np.uint8) for img in digits.images],
                                     "label": digits.target.astype(np.int64)})
    ds = ds.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=[str(i) for i in range(10)]))
    split = ds.train_test_split(test_size=0.2, seed=0)
    for name in ("train", "test"):
        split[name].to_parquet(os.path.join(folder, f"{name}.parquet"))
    return weights, {"digits": dict(dataset=folder, image_column="image", label_column="label")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", help="shrunk grid on digits with random-init weights")
    parser.add_argument("--cinic10", help="CINIC-10: a Hub id of a mirror or a local imagefolder")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    add_grid_arguments(parser)
    parser.set_defaults(methods=["FedSQ", "FedAvg", "FedProx"], clients_per_round=10, rounds=50, batch_size=64, lr=0.01,
                        gate_cache_mb=0,
                        output_dir="outputs/benchmarks/paper")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    scratch = tempfile.mkdtemp(prefix="fedsq-paper-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if args.offline:
        weights, grid_data = offline_inputs(scratch)
        for key, value in dict(rounds=min(args.rounds, 2), num_clients=4,
                               clients_per_round=2, image_size=64, max_train_samples=96, max_eval_samples=32,
                               batch_size=16).items():
            setattr(args, key, value)
    else:
        weights = dict.fromkeys(BACKBONES)
        grid_data = {"CIFAR-100": dict(dataset="uoft-cs/cifar100", image_column="img", label_column="fine_label")}
        if args.cinic10:
            grid_data["CINIC-10"] = dict(dataset=args.cinic10, image_column="image", label_column="label")
        else:
            print("CINIC-10 skipped: pass --cinic10 <hub id or imagefolder>")
    table = {}
    for data_name, data in grid_data.items():
        for name in args.backbones:
            run = copy.copy(args)
            vars(run).update(backbone=BACKBONES[name], backbone_weights=weights[name], **data,
                             output_dir=os.path.join(args.output_dir, data_name, name))
            table[(data_name, name)] = results = run_grid(run, label=f"{data_name:<10}{name:<10}")
            plot(results, os.path.join(run.output_dir, "accuracy.png"))
    columns = [(b, m) for b in args.backbones for m in args.methods]
    print("\n| dataset | split | " + " | ".join(f"{b} {m}" for b, m in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for data_name in grid_data:
        for split in args.splits:
            cells = [table[(data_name, b)][split][m] for b, m in columns]
            print(f"| {data_name} | {split} | " + " | ".join(
                f"{100 * c['bva_mean']:.1f} ± {100 * c['bva_std']:.1f} (r{c['rounds_to_best_mean']:.0f})" for c in cells) + " |")
    print("BVA in %, mean ± std over seeds; (rN): mean rounds-to-best.")
    path = write_json(args.output_dir, {"args": vars(args), "results": {f"{d}/{b}": r for (d, b), r in table.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
