"""The output folder of a run: checked before any data or model loads, and held by one run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile

import torch
from accelerate import Accelerator
from accelerate.utils import reduce

from ...errors import FedSQError

__all__ = ["OutputDirLock", "claim_output_dir", "clear_previous_run"]

SET_ASIDE = ".fedsq-previous-run-"  # where a run being cleared away goes first: an interrupted clear leaves no mix
# what a run writes inside its folders: checkpoints and their pointer; a saved model's files (and its card)
CHECKPOINT_ENTRY = re.compile(r"round-\d{5,}|\.tmp-round-\d{5,}|latest")
MODEL_FILE = re.compile(r"config\.json|README\.md|(model|structural)(\.[\w.-]+?)?(-\d{5}-of-\d{5})?\.safetensors"
                        r"|(model|structural)\.safetensors\.index(\.[\w.-]+)?\.json|\.tmp-.*")
# what a run writes there, by kind ("fedsq-hf": the --report-to trackers' logs)
OUTPUT_FOLDERS = ("checkpoints", "best", "final", "fedsq-hf")
OUTPUT_FILES = ("history.jsonl", "summary.json", "partition.json", "partition.png", "metrics.png", "gate_drift.png")


class OutputDirLock:
    """An exclusive `flock` on the output folder itself (nothing is written for it). The kernel drops it
    when the process ends, whether it exits, crashes or is killed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = release  # a trainer dropped without training frees the folder


def _check(path: str) -> None:
    if os.path.islink(path) and not os.path.exists(path):
        raise FedSQError(f"--output-dir {path!r} is a broken link (to {os.readlink(path)!r}); create its target, or "
                         "pick another --output-dir.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FedSQError(f"--output-dir {path!r} is an existing file, not a folder; pick another --output-dir.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise FedSQError(f"--output-dir {path!r} cannot be created ({err.strerror}); pick a folder you can create.") from err
    probe = os.path.join(path, f".fedsq-write-test-{os.getpid()}")
    try:  # os.access says yes to root on a read-only file system; a real write does not lie
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise FedSQError(f"--output-dir {path!r} is not writable ({err.strerror}); pick a folder you can write to.") from err
    wrong = [f"{name!r} is not a folder but the run writes one there" for name in OUTPUT_FOLDERS
             if os.path.lexists(os.path.join(path, name)) and not os.path.isdir(os.path.join(path, name))]
    wrong += [f"{name!r} is a folder but the run writes a file there" for name in OUTPUT_FILES
              if os.path.isdir(os.path.join(path, name))]
    if wrong:  # else the run would fail when it first writes there, perhaps after hours of training
        raise FedSQError(f"--output-dir {path!r}: {'; '.join(wrong)}; move it away, or pick another --output-dir.")


def _lock(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FedSQError(f"--output-dir {path!r} is in use by another run; wait for it to end or pick another "
                         "--output-dir.") from None
    return fd


def previous_run(path: str) -> list[str]:
    """What a run writes that `path` already holds (relative paths)."""
    found = [n for n in OUTPUT_FILES if os.path.lexists(os.path.join(path, n))]
    return found + [e for n in OUTPUT_FOLDERS if os.path.isdir(os.path.join(path, n)) for e in _own_entries(path, n)]


def _refuse_previous_run(path: str) -> None:
    found = previous_run(path)
    if found:
        listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FedSQError(f"--output-dir {path!r} holds a previous run ({listed}); pass --resume to continue it, "
                         "--overwrite-output-dir to start over there (only the run's own files are removed), or pick "
                         "another --output-dir.")


def claim_output_dir(path: str, accelerator: Accelerator, resume: bool = False, overwrite: bool = False) -> OutputDirLock:
    """Make sure `path` can take the run's outputs, that no other run writes there (the main process
    holds the lock) and that no previous run there is overwritten unless `resume` or `overwrite`; every
    process raises the same `FedSQError` if not, so none waits forever."""
    error, fd = None, None
    try:
        if accelerator.is_main_process:
            _check(path)
            fd = _lock(path)
            if not (resume or overwrite):
                _refuse_previous_run(path)
    except FedSQError as err:
        error = err
    if accelerator.num_processes > 1:
        failed = reduce(torch.tensor([float(error is not None)], device=accelerator.device), reduction="sum")
        if float(failed) and error is None:
            error = FedSQError(f"--output-dir {path!r} cannot be used (see the main process's error).")
    if error is not None:
        if fd is not None:
            os.close(fd)
        raise error
    return OutputDirLock(fd)


def _own_entries(folder: str, name: str) -> list[str]:
    """What a run writes inside its folder `name`, found in `folder` (relative paths)."""
    if name == "fedsq-hf":  # the trackers' logs: theirs to name
        return [name]
    pattern = CHECKPOINT_ENTRY if name == "checkpoints" else MODEL_FILE
    inside = os.path.join(folder, name)
    return [os.path.join(name, entry) for entry in sorted(os.listdir(inside)) if pattern.fullmatch(entry)]


def clear_previous_run(path: str) -> list[str]:
    """Remove what a previous run wrote in `path` and nothing else: its files (`OUTPUT_FILES`), and inside its
    folders (`OUTPUT_FOLDERS`) the entries a run writes there (a folder left empty goes too), so that a run
    started over there never mixes with it; returns what was removed. Each entry is first renamed into a
    fresh hidden folder, removed last (an interrupted clear leaves a `.fedsq-previous-run-*` folder, which
    the next clear removes)."""
    entries = previous_run(path)
    leftovers = [e for e in os.listdir(path) if e.startswith(SET_ASIDE) and os.path.isdir(os.path.join(path, e))]
    if entries:
        aside = tempfile.mkdtemp(prefix=SET_ASIDE, dir=path)
        for entry in entries:
            os.replace(os.path.join(path, entry), os.path.join(aside, entry.replace(os.sep, "--")))
        leftovers.append(os.path.basename(aside))
    for name in OUTPUT_FOLDERS:
        with contextlib.suppress(OSError):  # only if empty: a user's file inside keeps it
            os.rmdir(os.path.join(path, name))
    for leftover in leftovers:
        shutil.rmtree(os.path.join(path, leftover), ignore_errors=True)
    return entries
