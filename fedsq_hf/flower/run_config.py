"""A Flower run config (`[tool.flwr.app.config]`, `flwr run --run-config`) as the library's argument
dataclasses: keys are the command line's flags without the dashes (`local-epochs` or `local_epochs`),
values are checked against each field's type, then each group checks itself as on the command line."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import FedSQError
from ..federated.cli.arguments import DataArguments, FederatedArguments, ModelArguments, with_example_defaults
from ..federated.fields import argument, check_fields, require

__all__ = ["FlowerArguments", "RunArguments", "parse_run_config", "config_value", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("num-clients", "rounds", "output-dir")


@dataclass
class FlowerArguments:
    """What a deployment adds to a run's arguments."""

    node_wait: float = argument(120.0, resume="any", help=(
        "Seconds the server waits for `num-clients` nodes to connect (and answer its query) before it refuses "
        "to start."))
    round_timeout: float = argument(600.0, resume="any", help=(
        "Seconds the server waits for a round's replies; a node that has not replied by then counts as failed "
        "for that round (`failed_clients`)."))
    run_name: str | None = argument(None, resume="same", help=(
        "The federation's name: it keys what each site keeps on its own disk between rounds and across a "
        "resume (FedBN's BatchNorm, the re-frozen structural copy). Default: the output folder's name."))

    evaluate_sites: bool = argument(False, resume="any", help=(
        "Also evaluate the global model at every site on its own evaluation split in each evaluation round "
        "(under FedBN with the site's own BatchNorm); the sample-weighted means go in the round's record as "
        "`site_eval_<metric>`."))

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_fields(self)
        require([(self.node_wait > 0, f"node-wait must be > 0 seconds, got {self.node_wait}"),
                  (self.round_timeout > 0, f"round-timeout must be > 0 seconds, got {self.round_timeout}"),
                  (self.run_name is None or (self.run_name and os.sep not in self.run_name and self.run_name != ".."),
                   f"run-name must be a plain name (no {os.sep!r}), got {self.run_name!r}")])


@dataclass
class RunArguments:
    """The argument groups of one Flower run."""

    model: ModelArguments
    data: DataArguments
    fed: FederatedArguments
    flower: FlowerArguments

    @property
    def run_name(self) -> str:
        return self.flower.run_name or os.path.basename(os.path.normpath(self.fed.output_dir))


_GROUPS = {"model": ModelArguments, "data": DataArguments, "fed": FederatedArguments, "flower": FlowerArguments}


def parse_run_config(run_config: Mapping[str, Any]) -> RunArguments:
    """`RunArguments` from a Flower run config (without a dataset: the offline example's, as on the command
    line); `FedSQError` naming the key for an unknown key, a value of the wrong type, or a missing required
    key (`REQUIRED_KEYS`)."""
    groups = {f.name: group for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
    hints = {name: hint for cls in _GROUPS.values() for name, hint in typing.get_type_hints(cls).items()}
    given: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in groups:
            close = difflib.get_close_matches(name, list(groups), n=1)
            hint = f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""
            raise FedSQError(f"The run config's key {key!r} is no fedsq-hf argument{hint} (keys are the flags of "
                             "`fedsq-federated --help` and of FlowerArguments, without the leading dashes).")
        if name in given[groups[name]]:
            raise FedSQError(f"The run config sets {name.replace('_', '-')!r} twice (with '-' and with '_'); keep one.")
        given[groups[name]][name] = config_value(key, value, hints[name])
    missing = [k for k in REQUIRED_KEYS if k.replace("-", "_") not in {n for g in given.values() for n in g}]
    if missing:
        raise FedSQError(f"The run config lacks {missing}: a deployment must state them (in "
                         "[tool.flwr.app.config] or with `flwr run --run-config`).")
    run = RunArguments(**{group: cls(**given[group]) for group, cls in _GROUPS.items()})
    run.data = with_example_defaults(run.data)
    run.fed = dataclasses.replace(run.fed, clients_per_round=run.fed.clients_per_round or run.fed.num_clients)
    return run


def config_value(key: str, value: Any, hint: Any, source: str = "run config") -> Any:
    """`value` as the field of type `hint` takes it (an int for a float, a list from a space-separated string,
    None from "" where the field may be unset: TOML has no null); `FedSQError` naming `key` of `source`."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [h for h in typing.get_args(hint) if h is not type(None)] if union else [hint]
    if union and value == "":
        return None
    for option in options:
        origin = typing.get_origin(option)
        if origin is Literal and isinstance(value, str):
            return value  # its choices are the group's own check
        if origin is list and isinstance(value, str):
            item = typing.get_args(option)[0]
            try:
                return [item(v) for v in value.replace(",", " ").split()]
            except ValueError:
                break
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
    names = " or ".join(getattr(o, "__name__", None) or str(o) for o in options)
    raise FedSQError(f"The {source}'s {key!r} must be {names}, got {value!r} ({type(value).__name__}).")
