"""Calibration warm-up: a short centralized fine-tuning before the structural copy is frozen.

An extra assumption plain FedSQ does not make: a calibration set shared with the server. The gates
then come from a model already adapted to the target domain instead of the ImageNet one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from accelerate import Accelerator

from ..modeling_fedsq import FedSQModel
from .arguments import FederatedArguments
from .strategies import FedAvg
from .trainer import FederatedTrainer

__all__ = ["calibrate"]


def calibrate(
    model: FedSQModel,
    data: tuple[torch.Tensor, torch.Tensor],
    args: FederatedArguments,
    epochs: int,
    accelerator: Accelerator | None = None,
) -> list[float]:
    """Fine-tune `model` on `data` for `epochs` without fixed gates (the client loop of `args`:
    optimizer, batch size, BatchNorm mode, seed), then re-freeze its structural copy from the result.
    In place; returns the step losses."""
    plain = FedSQModel(type(model.config).from_dict({**model.config.to_dict(), "fixed_gating": False}))
    plain.load_state_dict(model.state_dict())
    run = dataclasses.replace(args, num_clients=1, clients_per_round=1, local_epochs=epochs, local_steps=0,
                              gate_drift_samples=0, dropout_rate=0.0, push_to_hub=False)
    trainer = FederatedTrainer(plain, FedAvg(), data, data, [np.arange(len(data[1]))], run, accelerator=accelerator)
    losses = trainer.train_client(0, 0)
    model.load_state_dict(plain.state_dict())
    model.dual_copy.sync_structural()
    model.config.calibrated = True
    return losses
