"""Checkpoints of a federated run: `round-N/` with the global tensors (safetensors) and the
`FederatedState` (JSON), written under a temporary name and renamed; `latest` names the newest."""

from __future__ import annotations

import json
import os
import shutil

import torch

from ..errors import CheckpointError
from ..serialization import atomic_write_bytes, load_weights, save_weights
from .state import FederatedState

__all__ = ["save_checkpoint", "load_checkpoint", "RESUME_KEYS"]

# The settings a checkpoint must share with the run that resumes it.
RESUME_KEYS = ("backbone", "num_labels", "num_clients", "model", "bn_mode", "partition", "alpha", "seed", "strategy")


def save_checkpoint(folder: str, state: FederatedState, tensors: dict[str, torch.Tensor]) -> str:
    """Write `round-N/` (N = `state.round`) whole, point `latest` at it, drop older rounds; returns its path."""
    name = f"round-{state.round:05d}"
    final, tmp = os.path.join(folder, name), os.path.join(folder, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_weights(os.path.join(tmp, "state.safetensors"), tensors)
    state.save_to_json(os.path.join(tmp, "trainer_state.json"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(os.path.join(folder, "latest"), name.encode())
    for old in os.listdir(folder):
        if old.startswith("round-") and old != name:
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
    return final


def load_checkpoint(folder: str, run: dict) -> tuple[FederatedState, dict[str, torch.Tensor]]:
    """The state and tensors of the newest checkpoint in `folder`, refused if it is of another run."""
    pointer = os.path.join(folder, "latest")
    if not os.path.isfile(pointer):
        raise CheckpointError(f"--resume: {folder!r} holds no checkpoint (no 'latest' file); run without --resume.")
    with open(pointer) as f:
        path = os.path.join(folder, f.read().strip())
    try:
        state = FederatedState.load_from_json(os.path.join(path, "trainer_state.json"))
    except (OSError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"--resume: cannot read the state of the checkpoint in {path!r} ({err}).") from err
    differs = {k: (state.run.get(k), run.get(k)) for k in RESUME_KEYS if state.run.get(k) != run.get(k)}
    if differs:
        raise CheckpointError(
            f"--resume: the checkpoint in {path!r} is of another run: "
            + ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in differs.items())
            + ". Use the same settings or another --output-dir."
        )
    return state, load_weights(os.path.join(path, "state.safetensors"))
