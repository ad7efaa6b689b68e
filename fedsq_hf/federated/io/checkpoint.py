"""Checkpoints of a federated run: `round-N/` with the global tensors (safetensors) and the
`FederatedState` (JSON), written under a temporary name and renamed; `latest` names the newest."""

from __future__ import annotations

import logging
import os
import re
import shutil

import torch

from ...errors import CheckpointError
from ...serialization import atomic_write_bytes, check_finite, load_weights, save_weights
from .state import FederatedState

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_name", "START_OVER"]

logger = logging.getLogger(__name__)

# the fix for a damaged checkpoint: a run without --resume would be refused, the folder holding a previous run
START_OVER = "start over with --overwrite-output-dir (or another --output-dir)"


def _differs(key: str, mark: str, then: object, now: dict) -> bool:
    if mark == "grow":  # more rounds continue a constant schedule; other schedules depend on the total
        return now.get("lr_scheduler") != "constant" and then != now.get(key)
    return then != now.get(key)


def checkpoint_name(round_: int) -> str:
    """The folder name of round `round_`'s checkpoint: `round-00003`."""
    return f"round-{round_:05d}"


def save_checkpoint(folder: str, state: FederatedState, tensors: dict[str, torch.Tensor]) -> str:
    """Write `round-N/` (N = `state.round`) whole, point `latest` at it, drop older rounds; returns its path."""
    name = checkpoint_name(state.round)
    final, tmp = os.path.join(folder, name), os.path.join(folder, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_weights(os.path.join(tmp, "state.safetensors"), tensors)
    state.save_to_json(os.path.join(tmp, "trainer_state.json"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(os.path.join(folder, "latest"), name.encode())
    for old in os.listdir(folder):
        if re.fullmatch(r"round-\d{5,}", old) and old != name:  # never a user's round-backup
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
    return final


def load_checkpoint(folder: str, run: dict, marks: dict[str, str], defaults: dict | None = None,
                    unverified: tuple[str, ...] = ()) -> tuple[FederatedState, dict[str, torch.Tensor]]:
    """The state and tensors of the newest checkpoint in `folder`, refused if it is of another run: one whose
    `run` settings differ from this `run`'s on a key of `marks` (key: resume mark, as `fields.RESUME_MARKS`).
    A checkpoint of an older version may lack a key: one of `defaults` where this run has the default (an
    option that version did not have), or one of `unverified` (logged as not compared)."""
    pointer = os.path.join(folder, "latest")
    if os.path.lexists(pointer) and not os.path.isfile(pointer):
        raise CheckpointError(f"--resume: {pointer!r} is not a file (a folder or a broken link); the checkpoint folder "
                              f"was damaged. Restore it, or {START_OVER}.")
    if not os.path.isfile(pointer):  # also a run killed before its first checkpoint was complete
        raise CheckpointError(f"--resume: {folder!r} holds no checkpoint (no 'latest' file), so there is nothing to "
                              f"resume; {START_OVER}.")
    with open(pointer, "rb") as f:
        name = f.read().decode("utf-8", errors="replace").strip()
    if not re.fullmatch(r"round-\d{5,}", name):  # also keeps the pointer inside `folder`
        raise CheckpointError(f"--resume: {pointer!r} should name a checkpoint folder such as 'round-00003' but "
                              f"holds {name[:40]!r}; the checkpoint folder was damaged. Write the newest round-N "
                              f"folder's name into it, or {START_OVER}.")
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        found = "is not a folder" if os.path.lexists(path) else "does not exist"
        raise CheckpointError(f"--resume: {pointer!r} points to {path!r}, which {found}; the checkpoint folder was "
                              f"damaged. Restore it, or {START_OVER}.")
    state_file = os.path.join(path, "trainer_state.json")
    damaged = f"it was edited or damaged: restore it, or {START_OVER}."
    try:
        state = FederatedState.load_from_json(state_file)
    except (OSError, TypeError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"--resume: cannot read {state_file!r} ({err}); {damaged}") from err
    rounds = [h.get("round") for h in state.history]
    if rounds != list(range(1, state.round + 1)):
        raise CheckpointError(f"--resume: {state_file!r} is at round {state.round} but its history holds rounds "
                              f"{rounds[:3]}{'...' if len(rounds) > 3 else ''}; {damaged}")
    if name != checkpoint_name(state.round):
        raise CheckpointError(f"--resume: {state_file!r} is at round {state.round}, not at that of its folder; {damaged}")
    if state.round > run.get("rounds", state.round):
        raise CheckpointError(f"--resume: the checkpoint in {path!r} is at round {state.round}, past --rounds "
                              f"{run['rounds']}; pass --rounds {state.round} or more.")
    defaults = defaults or {}
    missing = [k for k in marks if k not in state.run]
    unrecorded = [k for k in missing if k not in unverified and not (k in defaults and run.get(k) == defaults[k])]
    if set(missing) & set(unverified):
        logger.warning("--resume: the checkpoint in %r records no %s (an older version of fedsq-hf wrote it): not "
                       "compared.", path, ", ".join(k for k in missing if k in unverified))
    state.run.update({k: run.get(k) for k in missing if k not in unrecorded})
    if unrecorded:
        raise CheckpointError(f"--resume: the checkpoint in {path!r} records no {', '.join(unrecorded)}: an older "
                              f"version of fedsq-hf wrote it. Resume it with that version, or {START_OVER}.")
    differs = {k: (state.run.get(k), run.get(k)) for k, mark in marks.items() if _differs(k, mark, state.run.get(k), run)}
    if differs:
        raise CheckpointError(
            f"--resume: the checkpoint in {path!r} is of another run: "
            + ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in differs.items())
            + ". A resumed run must train exactly as the interrupted one did: use the same settings, or another --output-dir."
        )
    file = os.path.join(path, "state.safetensors")
    tensors = load_weights(file)
    check_finite(tensors, f"--resume's checkpoint {file!r}")
    return state, tensors
