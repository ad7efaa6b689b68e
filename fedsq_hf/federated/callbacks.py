"""Callbacks: code that watches the federated run at its events and steers it through a control object,
in the manner of transformers' `TrainerCallback`.

Every event is called as `callback.on_<event>(args, state, control, **kwargs)` with the run's
`FederatedArguments`, its `FederatedState` and a `FederatedControl`; `kwargs` always hold `trainer`
(the `FederatedTrainer`, hence `trainer.model`) and, per event, `client` and `result` (on_client_end),
`metrics` (on_evaluate), `record` and `is_best` (on_round_end), `checkpoint` (on_save) and `summary`
(on_train_end). On N processes every process calls every event (on_client_end for its own clients);
callbacks that write check `state.is_world_process_zero`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .arguments import FederatedArguments
from .state import FederatedState

__all__ = ["FederatedControl", "FederatedCallback", "CallbackHandler", "DefaultFlowCallback", "EarlyStoppingCallback",
           "EVENTS"]

logger = logging.getLogger(__name__)

EVENTS = ("on_init_end", "on_train_begin", "on_round_begin", "on_client_end", "on_evaluate", "on_round_end",
          "on_save", "on_train_end")


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
        """After one client's local training (`client`, `result`: a `ClientResult`), on the process that trained it."""

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


class DefaultFlowCallback(FederatedCallback):
    """Evaluate every `eval_every` rounds and save every `save_every` rounds, and both after the last round."""

    def on_round_begin(self, args, state, control, **kwargs):
        round_, last = state.round + 1, state.round + 1 == state.max_rounds
        control.should_evaluate = control.should_evaluate or round_ % args.eval_every == 0 or last
        control.should_save = control.should_save or round_ % args.save_every == 0 or last


class EarlyStoppingCallback(FederatedCallback):
    """Stop when the best-model metric (`--metric-for-best-model`) has not improved by more than `threshold`
    for `patience` evaluations in a row. Reads only `state.history`, so a resumed run counts the same."""

    def __init__(self, patience: int = 3, threshold: float = 0.0) -> None:
        self.patience, self.threshold = patience, threshold

    def on_round_end(self, args, state, control, **kwargs):
        values = [h[state.best_key] for h in state.history if h.get(state.best_key) is not None]
        sign = 1 if state.greater_is_better else -1
        best, stale = None, 0
        for value in values:
            if best is None or sign * (value - best) > self.threshold:
                best, stale = value, 0
            else:
                stale += 1
        if stale >= self.patience:
            if state.is_world_process_zero:
                logger.info("Early stopping after round %d: %s did not improve by more than %g for %d evaluations.",
                            state.round, state.best_key, self.threshold, stale)
            control.should_training_stop = True
