"""The Accelerator a client (or a simulated federation) trains with."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from .arguments import ClientArguments

__all__ = ["make_accelerator"]


def make_accelerator(args: ClientArguments, log_with: str | None = None, project_dir: str | None = None) -> Accelerator:
    """An Accelerator on the best device with `args.mixed_precision`. Without a GPU, `torchrun`/`accelerate
    launch` give a MULTI_CPU (gloo) group."""
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) \
        or torch.backends.mps.is_available()
    return Accelerator(cpu=not accelerated, mixed_precision=args.mixed_precision, log_with=log_with,
                       project_dir=project_dir)
