"""The entry points of fedsq-hf's command lines, outside the `fedsq_hf` package: importing the package
(torch, transformers, timm) takes seconds, and a Ctrl-C in them would end in the interpreter's traceback
before `fedsq_hf.commands.run_command` could make it one line. Here it is one line too."""

from __future__ import annotations

import importlib
import sys

__all__ = ["federated", "gate_drift", "convert"]


def _run(target: str) -> int:
    module, name = target.split(":")
    try:
        main = getattr(importlib.import_module(module), name)
    except KeyboardInterrupt:
        print("interrupted while starting: nothing was written", file=sys.stderr)
        return 130
    return main()


def federated() -> int:
    """`fedsq-federated`."""
    return _run("fedsq_hf.federated.cli.federated:main")


def gate_drift() -> int:
    """`fedsq-gate-drift`."""
    return _run("fedsq_hf.federated.cli.gate_drift:main")


def convert() -> int:
    """`fedsq-convert-efficientnet-lite0`."""
    return _run("fedsq_hf.convert:main")
