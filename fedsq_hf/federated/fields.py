"""Fields of the argument dataclasses: help text and a resume mark on every one, and the checks every
group runs on itself (finite numbers, `Literal` choices, its own rules)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any, Literal

from ..errors import FedSQError

__all__ = ["argument", "RESUME_MARKS", "check_fields", "require", "flag", "expand_path", "real_path", "mark_given", "given_fields",
           "field_default"]

# How a field may differ between an interrupted run and the run that resumes it:
#   same: it changes the weights (or what "best" means), so a resume must keep it;
#   any: outputs, speed or reporting only;
#   grow: `rounds`, which may grow when the learning rate is constant across rounds.
RESUME_MARKS = ("same", "any", "grow")


def argument(default: Any = dataclasses.MISSING, *, help: str, resume: Literal["same", "any", "grow"],
             **kwargs: Any) -> Any:
    """A dataclass field with its `--help` text and its resume mark (see `RESUME_MARKS`)."""
    if resume not in RESUME_MARKS:
        raise ValueError(f"resume must be one of {RESUME_MARKS}, got {resume!r}")
    return dataclasses.field(default=default, metadata={"help": help, "resume": resume}, **kwargs)


def flag(name: str) -> str:
    """`--max-grad-norm` for the field `max_grad_norm`."""
    return "--" + name.replace("_", "-")


def expand_path(path: str | os.PathLike | None) -> str | None:
    """A str with `~` expanded, as a shell would (a path given as `--flag=~/x` or quoted reaches us unexpanded)."""
    path = os.fspath(path) if isinstance(path, os.PathLike) else path  # a pathlib.Path, as the API may get
    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def real_path(path: str | None) -> str | None:
    """A local file or folder as its real path (links and `..` resolved); anything else (a Hub id) as is."""
    return os.path.realpath(path) if path and os.path.exists(path) else path


def _choices(hint: Any) -> tuple | None:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def check_fields(group: Any) -> None:
    """`FedSQError` for a float field that is not finite or a `Literal` field holding another value."""
    hints = typing.get_type_hints(type(group))
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise FedSQError(f"{flag(f.name)} must be a finite number, got {item}")
        choices = _choices(hints[f.name])
        if choices is not None and value not in choices:
            raise FedSQError(f"{flag(f.name)} must be one of {list(choices)}, got {value!r}")


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise `FedSQError` with the message of the first check that fails."""
    for ok, message in checks:
        if not ok:
            raise FedSQError(message)


def mark_given(group: Any, names: Any) -> Any:
    """`group` with `names` recorded as given by the user (a command line's flags, a run config's keys), even
    where the value given is the default; returns `group`."""
    object.__setattr__(group, "_given", frozenset(names) & {f.name for f in dataclasses.fields(group)})
    return group


def field_default(f: dataclasses.Field) -> Any:
    """The value a dataclass field takes when not given."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def given_fields(group: Any) -> set[str]:
    """The fields of `group` the user set: those off their default, and those `mark_given` recorded."""
    marked = getattr(group, "_given", frozenset())
    return {f.name for f in dataclasses.fields(group) if f.name in marked or getattr(group, f.name) != field_default(f)}
