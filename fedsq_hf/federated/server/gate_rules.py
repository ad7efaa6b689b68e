"""The gate schedule's rules: from the round history, the round at whose start a gate warm-up fixes the gates
and which gates it fixes. A rule reads only the history, so a resumed run decides as the interrupted one did.

- `FixedRound` (`--freeze-gates-at-round R`): the global model's gates at round R.
- `DriftRule` (`--freeze-gates-when-drift-below`): the global model's gates once they settle on a labelled
  probe set on the server (see `GateWarmup`), or at `--max-warmup-rounds`.
- `AlignmentRule` (`--freeze-gates auto`): no server data. The warm-up rounds train without fixed gates, as
  FedAvg does, and the server reads the alignment of each round's client updates (`update_alignment`: 1 when
  they are the same, 0 when orthogonal). A round of the first `--max-warmup-rounds` below the threshold means
  the clients pull apart (label skew): the global model's gates are fixed after those rounds (or, with
  `--skewed-gates pretrained`, the backbone's from the next round on: FedSQ as published). Aligned through
  them, the clients are close to IID, where fixed gates cost accuracy: the gates follow the model to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AlignmentRule", "DriftRule", "FixedRound", "GateDecision", "GateRule", "GATE_ALIGNMENT_BELOW", "GATE_SOURCES"]

GATE_ALIGNMENT_BELOW = 0.3  # --gate-alignment-below's default (see README, "Gate schedule")
GATE_SOURCES = ("global", "pretrained")  # the gates a decision fixes: re-frozen from the global model, or the backbone's


@dataclass(frozen=True)
class GateDecision:
    """What a rule decided.

    Args:
        round: the round at whose start the gates are fixed; None: never, they follow the model to the end.
        source: "global" (the structural copy re-frozen from the global model and sent to the clients) or
            "pretrained" (the backbone's structural copy, which every client holds).
        reason: what decided, in words, for the summary and the card.
    """

    round: int | None
    source: str = "global"
    reason: str = ""

    @property
    def gates(self) -> str:
        """The gates the run trains with after the decision: its source, or "own" (never fixed)."""
        return "own" if self.round is None else self.source

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "gates": self.gates, "reason": self.reason}


class GateRule:
    """A gate schedule's rule. `statistic`: the round record's field it reads (None: none); `needs_probe`:
    whether the server measures the global model on a probe set of its own after each warm-up round
    (`gate_step_drift`, `gate_probe_loss`)."""

    statistic: str | None = None
    needs_probe = False

    def describe(self) -> str:
        raise NotImplementedError

    def decide(self, history: list[dict[str, Any]]) -> GateDecision | None:
        """The decision the rounds of `history` lead to; None while undecided."""
        raise NotImplementedError


class FixedRound(GateRule):
    """Round `round_`, whatever the warm-up shows (the drift is measured and recorded all the same)."""

    statistic, needs_probe = "gate_step_drift", True

    def __init__(self, round_: int) -> None:
        self.round = round_

    def describe(self) -> str:
        return f"fixed round {self.round}"

    def decide(self, history: list[dict[str, Any]]) -> GateDecision:
        return GateDecision(self.round, "global", f"--freeze-gates-at-round {self.round}")


class DriftRule(GateRule):
    """The first warm-up round (from round 2) whose gate step drift is below `below` and the previous round's
    while the probe loss fell, or round `max_rounds`, ends the warm-up."""

    statistic, needs_probe = "gate_step_drift", True

    def __init__(self, below: float, max_rounds: int) -> None:
        self.below, self.max_rounds = below, max_rounds

    def describe(self) -> str:
        return f"gate step drift < {self.below} with a falling probe loss (at most {self.max_rounds} warm-up rounds)"

    def decide(self, history: list[dict[str, Any]]) -> GateDecision | None:
        previous = None
        for record in history:
            if "gate_step_drift" not in record:
                continue
            drift, loss, round_ = record["gate_step_drift"], record["gate_probe_loss"], record["round"]
            if previous is not None and drift < min(self.below, previous[0]) and loss < previous[1]:
                return GateDecision(round_ + 1, "global", f"gate step drift {drift:.4f} < {self.below} and falling, "
                                                          f"probe loss falling, in round {round_}")
            if round_ >= self.max_rounds:
                return GateDecision(round_ + 1, "global", f"--max-warmup-rounds {self.max_rounds} (gate step drift "
                                                          f"{drift:.4f} in round {round_})")
            previous = drift, loss
        return None


class AlignmentRule(GateRule):
    """`--freeze-gates auto` (see the module doc). Clients pull apart in a round whose update alignment is below
    `below`; `skewed` says what follows: "global", the warm-up goes on to round `max_rounds` and the global
    model's gates are fixed after it, or "pretrained", the backbone's gates from the next round. Aligned in every
    round 1..`max_rounds`: no gates are fixed. A round with fewer than two usable updates gives no alignment
    and does not count; with none in the window, the pretrained gates."""

    statistic = "update_alignment"

    def __init__(self, below: float, max_rounds: int, skewed: str = "global") -> None:
        self.below, self.max_rounds, self.skewed = below, max_rounds, skewed

    def describe(self) -> str:
        return (f"auto: the {self.skewed} gates if the client update alignment falls below {self.below} in rounds "
                f"1-{self.max_rounds}, else none fixed (no server data)")

    def decide(self, history: list[dict[str, Any]]) -> GateDecision | None:
        measured, pulled = 0, None
        for record in history[: self.max_rounds]:
            value, round_ = record.get("update_alignment"), record["round"]
            if value is not None and value < self.below and pulled is None:
                pulled = f"update alignment {value:.3f} < {self.below} in round {round_}: the clients pull apart"
                if self.skewed == "pretrained":
                    return GateDecision(round_ + 1, "pretrained", f"{pulled}; the pretrained gates")
            measured += value is not None
            if round_ >= self.max_rounds:
                if pulled is not None:
                    return GateDecision(round_ + 1, "global", f"{pulled}; the global model's gates after round {round_}")
                if not measured:
                    return GateDecision(round_ + 1, "pretrained", f"no two client updates to align in rounds "
                                                                  f"1-{round_}; the pretrained gates")
                return GateDecision(None, "global", f"update alignment >= {self.below} in rounds 1-{round_}: the "
                                                    "clients agree; the gates follow the model")
        return None
