"""The gate schedule's rules: from the round history, the round at whose start a gate warm-up fixes the gates
and which gates it fixes. A rule reads only the history, so a resumed run decides as the interrupted one did.

- `FixedRound` (`--freeze-gates-at-round R`): the global model's gates at round R.
- `DriftRule` (`--freeze-gates-when-drift-below`): the global model's gates once they settle on a labelled
  probe set on the server (see `GateWarmup`), or at `--max-warmup-rounds`.
- `AlignmentRule` (`--freeze-gates auto`): no server data. The warm-up rounds train without fixed gates, as
  FedAvg does, and the server reads the alignment of each round's client updates (`update_alignment`: 1 when
  they are the same, 0 when orthogonal). A round of the first `--max-warmup-rounds` below the threshold means
  the clients pull apart (label skew). Their warm-up models oscillate then, so the gates are those of the
  warm-up's global model the clients scored best on their own samples (`client_balanced_accuracy`: each
  round's clients score the model they receive before training it, per class; round M's model is scored in
  round M + 1, a last warm-up round), fixed from round M + 2 ("global"), or the backbone's from the next
  round on (FedSQ as published: "pretrained"). `--skewed-gates auto` picks by how strongly: the pretrained
  gates where the clients' labels span few classes each (`client_label_share` below
  `--label-share-below`, over the rounds up to that one), else the best-scored model's. Aligned through
  them, the clients are close to IID, where fixed gates cost accuracy: the gates follow the model to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AlignmentRule", "DriftRule", "FixedRound", "GateDecision", "GateRule", "GATE_ALIGNMENT_BELOW",
           "GATE_SOURCES", "LABEL_SHARE_BELOW", "SKEWED_GATES"]

GATE_ALIGNMENT_BELOW = 0.3  # --gate-alignment-below's default (see README, "Gate schedule")
LABEL_SHARE_BELOW = 0.44  # --label-share-below's default: between Dirichlet 0.1 and 0.5 (README, "Gate schedule")
GATE_SOURCES = ("global", "pretrained")  # the gates a decision fixes: re-frozen from the global model, or the backbone's
SKEWED_GATES = ("auto", *GATE_SOURCES)  # --skewed-gates: one of them, or chosen by the clients' label share


@dataclass(frozen=True)
class GateDecision:
    """What a rule decided.

    Args:
        round: the round at whose start the gates are fixed; None: never, they follow the model to the end.
        source: "global" (the structural copy re-frozen from the global model and sent to the clients) or
            "pretrained" (the backbone's structural copy, which every client holds).
        reason: what decided, in words, for the summary and the card.
        model_round: "global": the round whose global model gives the gates, where it is not the last
            (`round - 1`).
    """

    round: int | None
    source: str = "global"
    reason: str = ""
    model_round: int | None = None

    @property
    def gates(self) -> str:
        """The gates the run trains with after the decision: its source, or "own" (never fixed)."""
        return "own" if self.round is None else self.source

    def to_dict(self) -> dict[str, Any]:
        chosen = {} if self.model_round is None else {"model_round": self.model_round}
        return {"round": self.round, "gates": self.gates, "reason": self.reason, **chosen}


class GateRule:
    """A gate schedule's rule. `statistic`: the round record's field it reads (None: none); `needs_probe`:
    whether the server measures the global model on a probe set of its own after each warm-up round
    (`gate_step_drift`, `gate_probe_loss`); `needs_scores`: whether the round's clients score the global model
    they receive (`client_balanced_accuracy`) while the rule is undecided; `needs_labels`: whether they send
    their `label_share` in some rounds (`asks_labels`)."""

    statistic: str | None = None
    needs_probe = needs_scores = needs_labels = False

    def describe(self) -> str:
        raise NotImplementedError

    def decide(self, history: list[dict[str, Any]]) -> GateDecision | None:
        """The decision the rounds of `history` lead to; None while undecided."""
        raise NotImplementedError

    def asks_labels(self, history: list[dict[str, Any]]) -> bool:
        """Whether the next round's clients send their `label_share` (after the rounds of `history`)."""
        return False

    def best_scored(self, history: list[dict[str, Any]]) -> int | None:
        """A rule that reads scores: the round whose global model the clients of `history` scored best so far
        (the one whose gates it would fix); None: none scored, or a rule that reads none."""
        return None


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
    `below`; `skewed` says what follows: "global", the warm-up goes on to round `max_rounds` + 1 and the gates
    of its best-scored global model are fixed after it, "pretrained", the backbone's gates from the next
    round, or "auto", "pretrained" where the mean `client_label_share` of the rounds up to it is below
    `share_below`, else "global" (no client sent one: "global"). Aligned in every round 1..`max_rounds`: no
    gates are fixed. A round with fewer than two usable updates gives no alignment and does not count; with
    none in the window, the pretrained gates."""

    statistic = "update_alignment"

    def __init__(self, below: float, max_rounds: int, skewed: str = "auto", share_below: float = LABEL_SHARE_BELOW) -> None:
        self.below, self.max_rounds, self.skewed, self.share_below = below, max_rounds, skewed, share_below
        self.needs_scores, self.needs_labels = skewed != "pretrained", skewed == "auto"

    def describe(self) -> str:
        gates = {"global": "the best client-scored warm-up model's", "pretrained": "the pretrained",
                 "auto": f"the pretrained (client label share < {self.share_below}) or the best client-scored warm-up "
                         "model's"}[self.skewed]
        return (f"auto: {gates} gates if the client update alignment falls below {self.below} in rounds "
                f"1-{self.max_rounds}, else none fixed (no server data)")

    def decide(self, history: list[dict[str, Any]]) -> GateDecision | None:
        window, pulled = history[: self.max_rounds], self._pulled(history)
        if pulled is not None:
            why = (f"update alignment {pulled['update_alignment']:.3f} < {self.below} in round {pulled['round']}: "
                   "the clients pull apart")
            skewed, share = self.skewed, self.label_share(history[: pulled["round"]])
            if skewed == "auto" and share is not None:
                skewed = "pretrained" if share < self.share_below else "global"
                why += f"; client label share {share:.3f} {'<' if skewed == 'pretrained' else '>='} {self.share_below}"
            if skewed == "pretrained":
                return GateDecision(pulled["round"] + 1, "pretrained", f"{why}; the pretrained gates")
            return self._best_scored(history, why)
        if len(window) < self.max_rounds:
            return None
        if all(r.get("update_alignment") is None for r in window):
            return GateDecision(self.max_rounds + 1, "pretrained", f"no two client updates to align in rounds "
                                                                   f"1-{self.max_rounds}; the pretrained gates")
        return GateDecision(None, "global", f"update alignment >= {self.below} in rounds 1-{self.max_rounds}: the "
                                            "clients agree; the gates follow the model")

    def asks_labels(self, history: list[dict[str, Any]]) -> bool:
        """"auto": in each window round until one pulls apart (the rounds whose label share the rule reads)."""
        return self.needs_labels and len(history) < self.max_rounds and self._pulled(history) is None

    def _pulled(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The first window round whose clients pulled apart; None: none yet."""
        return next((r for r in history[: self.max_rounds] if r.get("update_alignment") is not None
                     and r["update_alignment"] < self.below), None)

    @staticmethod
    def label_share(history: list[dict[str, Any]]) -> float | None:
        """The mean `client_label_share` of the rounds of `history` that have one; None: none has."""
        shares = [r["client_label_share"] for r in history if r.get("client_label_share") is not None]
        return sum(shares) / len(shares) if shares else None

    def _best_scored(self, history: list[dict[str, Any]], why: str) -> GateDecision | None:
        """After round `max_rounds` + 1: the warm-up's global model (of rounds 1..`max_rounds`) its clients scored
        best, the first of a tie (none scored: the last one's)."""
        last = self.max_rounds + 1
        if len(history) < last:
            return None
        best = self.best_scored(history)
        if best is None:
            return GateDecision(last + 1, "global", f"{why}; no client scored a warm-up model: the global model's "
                                                    f"gates after round {last}")
        return GateDecision(last + 1, "global", f"{why}; the gates of round {best}'s global model, scored best by "
                                                f"its clients ({history[best]['client_balanced_accuracy']:.3f}) of "
                                                f"rounds 1-{self.max_rounds}", model_round=best)

    def best_scored(self, history: list[dict[str, Any]]) -> int | None:
        """Of the models of rounds 1..`max_rounds` (round r's scored in round r + 1), the first of the best."""
        scores = {r["round"] - 1: r["client_balanced_accuracy"] for r in history[1 : self.max_rounds + 1]
                  if "client_balanced_accuracy" in r}
        return max(scores, key=scores.__getitem__) if scores else None
