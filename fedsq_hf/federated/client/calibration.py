"""Calibration warm-up: a short centralized fine-tuning before the structural copy is frozen.

An extra assumption plain FedSQ does not make: a calibration set shared with the server. The gates
then come from a model already adapted to the target domain instead of the ImageNet one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from accelerate import Accelerator

from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..data import as_samples
from ..protocol import client_seed
from .arguments import ClientArguments
from .trainer import ClientTrainer

__all__ = ["calibrate"]


def calibrate(
    model: FedSQModel,
    data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
    args: ClientArguments,
    epochs: int,
    accelerator: Accelerator | None = None,
    seed: int | None = None,
) -> list[float]:
    """Fine-tune `model` on `data` (samples, or model-ready (pixels, labels)) for `epochs` without fixed
    gates (the client loop of `args`: optimizer, batch size, BatchNorm mode), then re-freeze its structural
    copy from the result. Every draw comes from `seed` (default: `args.seed` where `args` has one, as a
    run's `FederatedArguments` does; else 0). In place; returns the step losses."""
    if not model.dual_copy.gating:
        raise FedSQError("calibrate needs a FedSQ model with fixed gating (fixed_gating=True): a plain model "
                         "has no structural copy to re-freeze.")
    # the server's own shared data: outside the clients' DP-SGD guarantee, so trained without it
    run = dataclasses.replace(ClientArguments.from_arguments(args), local_epochs=epochs, local_steps=0,
                              dp_sgd_noise_multiplier=None)
    data = as_samples(data)
    client = ClientTrainer(model, data, run, accelerator)
    seed = getattr(args, "seed", 0) if seed is None else seed
    with model.dual_copy.ungated():
        losses = client.train(np.arange(len(data)), client_seed(seed, 0, 0)).losses
    model.dual_copy.sync_structural()
    model.config.calibrated = True
    return losses
