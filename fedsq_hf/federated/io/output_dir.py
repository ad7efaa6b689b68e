"""The output folder of a run: checked before any data or model loads, and held by one run at a time."""

from __future__ import annotations

import fcntl
import os
import shutil

import torch
from accelerate import Accelerator
from accelerate.utils import reduce

from ...errors import FedSQError

__all__ = ["OutputDirLock", "claim_output_dir", "clear_previous_run"]

SET_ASIDE = ".previous-run"  # where a run being cleared away goes first, so that an interrupted clear leaves no mix
PREVIOUS_RUN = ("history.jsonl", "summary.json", os.path.join("checkpoints", "latest"))  # what a run leaves behind
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


def _refuse_previous_run(path: str) -> None:
    found = [name for name in PREVIOUS_RUN if os.path.exists(os.path.join(path, name))]
    if found:
        raise FedSQError(f"--output-dir {path!r} holds a previous run ({', '.join(found)}); pass --resume to continue "
                         "it, --overwrite-output-dir to start over there, or pick another --output-dir.")


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


def clear_previous_run(path: str) -> list[str]:
    """Remove what a previous run wrote in `path` (`OUTPUT_FILES`, `OUTPUT_FOLDERS`) and nothing else, so that
    a run started over there never mixes with it; returns the names removed. Each is first renamed into one
    hidden folder, removed last (and by the next clear, if this one is interrupted)."""
    aside = os.path.join(path, SET_ASIDE)
    names = [n for n in OUTPUT_FOLDERS + OUTPUT_FILES if os.path.lexists(os.path.join(path, n))]
    if names:
        os.makedirs(aside, exist_ok=True)
        for name in names:
            os.replace(os.path.join(path, name), os.path.join(aside, name))
    shutil.rmtree(aside, ignore_errors=True)
    return names
