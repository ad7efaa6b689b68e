"""Callbacks: code that watches the federated run at its events and steers it through a control object,
in the manner of transformers' `TrainerCallback`.

Every event is called as `callback.on_<event>(args, state, control, **kwargs)` with the run's
`FederatedArguments`, its `FederatedState` and a `FederatedControl`. As in transformers, `kwargs` always
hold what a callback may need: `model` (the global model), `accelerator`, `eval_dataset` (the server's
evaluation samples) and `run_config` (the run's settings, JSON-ready); and per event `partition_summary`
(on_train_begin), `client` and `update` (a `ClientUpdate`, on_client_end), `metrics` (on_evaluate),
`record` and `is_best` (on_round_end), `checkpoint` (on_save) and `summary` (on_train_end). On N processes
every process calls every event (on_client_end for its own clients); callbacks that write check
`state.is_world_process_zero`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..io import FederatedState

if TYPE_CHECKING:
    from ..cli.arguments import FederatedArguments

__all__ = ["FederatedControl", "FederatedCallback", "CallbackHandler"]


@dataclass
class FederatedControl:
    """Switches a callback can set. `should_training_stop` stays set; the others are reset at each round's start.

    Args:
        should_training_stop: stop after this round (its checkpoint is still written).
        should_evaluate: evaluate the global model at the end of this round.
        should_save: write a checkpoint at the end of this round.
    """

    should_training_stop: bool = False
    should_evaluate: bool = False
    should_save: bool = False


class FederatedCallback:
    """Base class: override the events you need; each may change `control` (and may return it)."""

    def on_init_end(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """At the end of the trainer's `__init__`: the model as built, before a resume loads a checkpoint."""

    def on_train_begin(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """Before the first round (also when resuming)."""

    def on_round_begin(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """Before the clients of a round train; `state.round` is still the previous round."""

    def on_client_end(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """After one client's fit (`client`, `update`: its `ClientUpdate`), on the process that trained it."""

    def on_evaluate(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """After the global model was evaluated (`metrics`: names without the `eval_` prefix)."""

    def on_round_end(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """After aggregation (and evaluation): `record` is the round's history entry, `is_best` whether it is a new best."""

    def on_save(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """After a checkpoint was written (`checkpoint`: its folder)."""

    def on_train_end(self, args: FederatedArguments, state: FederatedState, control: FederatedControl, **kwargs):
        """After the last round (`summary`: what `train()` returns)."""


class CallbackHandler:
    """Calls its callbacks in order at each event and hands the control object on."""

    def __init__(self, callbacks: list[FederatedCallback | type[FederatedCallback]] | None = None) -> None:
        self.callbacks: list[FederatedCallback] = []
        for callback in callbacks or []:
            self.add_callback(callback)

    def add_callback(self, callback: FederatedCallback | type[FederatedCallback]) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def pop_callback(self, callback: FederatedCallback | type[FederatedCallback]) -> FederatedCallback | None:
        """Remove and return the first callback that is `callback` (an instance or a class)."""
        for cb in self.callbacks:
            if cb is callback or (isinstance(callback, type) and isinstance(cb, callback)):
                self.callbacks.remove(cb)
                return cb
        return None

    def call_event(self, event: str, args: FederatedArguments, state: FederatedState, control: FederatedControl,
                   **kwargs: Any) -> FederatedControl:
        if event == "on_round_begin":
            control.should_evaluate = control.should_save = False
        for callback in self.callbacks:
            result = getattr(callback, event)(args, state, control, **kwargs)
            control = result if result is not None else control
        return control
