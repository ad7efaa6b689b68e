"""`fedsq-federated` (also `python examples/federated.py`, `accelerate launch -m fedsq_hf.federated.cli.federated`):
federated fine-tuning with FedSQ or a plain baseline, on 1 or N processes."""

from __future__ import annotations

import logging
import os
import sys

from ...commands import run_command
from ..simulation import run_federated
from .arguments import parse_arguments
from .federated_arguments import FederatedArguments

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the federation the command line describes. A bad argument is one `error:` line and exit status
    2; Ctrl-C or a failed write is one line saying how to go on (see `run_command`)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fedsq_hf").setLevel(logging.INFO)
    parsed: list[FederatedArguments] = []

    def kept() -> str:
        if not parsed:
            return ""
        out = parsed[0].output_dir
        if not os.path.isfile(os.path.join(out, "checkpoints", "latest")):
            return f"no checkpoint was written to {out!r} yet: start over with --overwrite-output-dir"
        return (f"every file is written atomically, so {out!r} holds the last checkpoint whole: run the same command "
                "with --resume to continue")

    def run() -> int:
        model_args, data_args, fed_args = parse_arguments(argv)
        parsed.append(fed_args)
        summary = run_federated(model_args, data_args, fed_args)
        out = fed_args.output_dir
        best = f"{summary['best_metric']:.4f}" if summary["best_metric"] is not None else "n/a"
        models = ", ".join(f"{out}/{name}/" for name in ("best", "final") if os.path.isdir(os.path.join(out, name)))
        print(
            f"best {summary['metric_for_best_model']} {best} at round {summary['best_round']} of {summary['rounds']}\n"
            f"results: {out}/summary.json, {out}/history.jsonl\n"
            f"plots:   {out}/metrics.png, {out}/partition.png\n"
            f"models:  {models or 'none written'} (FedSQModel.from_pretrained)"
        )
        return 0

    return run_command(run, kept)


if __name__ == "__main__":
    sys.exit(main())
