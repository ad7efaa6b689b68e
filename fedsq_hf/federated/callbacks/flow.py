"""Callbacks that steer a run: when to evaluate and save, and when to stop early."""

from __future__ import annotations

import logging

from .base import FederatedCallback

__all__ = ["DefaultFlowCallback", "EarlyStoppingCallback"]

logger = logging.getLogger(__name__)


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
