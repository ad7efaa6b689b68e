"""Calibration warm-up: a short centralized fine-tuning before the structural copy is frozen.

An extra assumption plain FedSQ does not make: a calibration set shared with the server. The gates
then come from a model already adapted to the target domain instead of the ImageNet one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from accelerate import Accelerator

from ..errors import FedSQError
from ..modeling_fedsq import FedSQModel
from .arguments import FederatedArguments
from .strategies import FedAvg
from .trainer import FederatedTrainer, as_samples

__all__ = ["calibrate"]


def calibrate(
    model: FedSQModel,
    data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
    args: FederatedArguments,
    epochs: int,
    accelerator: Accelerator | None = None,
) -> list[float]:
    """Fine-tune `model` on `data` (samples, or model-ready (pixels, labels)) for `epochs` without fixed gates (the client loop of `args`:
    optimizer, batch size, BatchNorm mode, seed), then re-freeze its structural copy from the result.
    In place; returns the step losses."""
    if not model.dual_copy.gating:
        raise FedSQError("calibrate needs a FedSQ model with fixed gating (fixed_gating=True): a plain model "
                         "has no structural copy to re-freeze.")
    run = dataclasses.replace(args, num_clients=1, clients_per_round=1, local_epochs=epochs, local_steps=0,
                              gate_drift_samples=0, dropout_rate=0.0, push_to_hub=False)
    data = as_samples(data)
    trainer = FederatedTrainer(model, FedAvg(), data, data, [np.arange(len(data))], run, accelerator=accelerator)
    with model.dual_copy.ungated():
        losses = trainer.train_client(0, 0)
    model.dual_copy.sync_structural()
    model.config.calibrated = True
    return losses
