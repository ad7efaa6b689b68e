"""Gate warm-up inside the federation: the first rounds train without fixed gates (plain updates, same
strategy), then a rule (`gate_rules`) fixes the gates: re-frozen from the global model and sent to the
clients, or the pretrained ones (`--freeze-gates auto` under label skew), or none (the gates follow the model).

The drift rule measures on the server: after each warm-up round a probe set (the first `--gate-probe-samples`
evaluation samples) runs through the global model, giving the fraction of its own gates that changed since the
previous round (the step drift) and its probe loss. The first round whose step drift is below the threshold and
below the previous round's (the gates are settling) while the probe loss fell (the model is still learning: a
model that collapsed to a constant answer also stops moving its gates), or `--max-warmup-rounds`, ends the
warm-up. Round 1 alone never ends it: it starts from a zero-initialised head, whose first steps send almost no
gradient into the backbone, so its drift understates how far the gates will move.

A rule that reads the clients' scores (`--freeze-gates auto`) keeps the best-scored warm-up model's weights
until it decides: a model's score comes a round later, from the clients it was sent to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from ...errors import FedSQError
from ...gate_drift import GateRecorder, gate_drift
from ...modeling_fedsq import FedSQModel
from ..data import first_model_inputs
from ..protocol import tensor_bytes
from .gate_rules import GateDecision, GateRule

__all__ = ["GateWarmup"]


class GateWarmup:
    """The server's gate schedule: train without fixed gates until `rule` decides (see the module doc). The
    round loop calls `start`, then per round `begin_round`, `measure` (while warming up) and `end_round`, which
    adds to the round's record `gates` ("own" while the gates follow the model, then "fixed"),
    `gate_step_drift` and `gate_probe_loss` (warm-up rounds of a rule with a probe set), `gate_decision` (the
    round the rule decided in: `GateDecision.to_dict()`), `gates_frozen` and
    `bytes_structural` (a re-frozen structural copy sent to clients that had not received it yet). While a rule
    that reads scores is undecided, `eval_samples` is what the round config asks the clients to score on;
    `label_share`, whether it asks them for their label share."""

    def __init__(self, rule: GateRule, probe_samples: int = 256, client_eval_samples: int = 128) -> None:
        self.gate_rule, self.probe_samples, self.client_eval_samples = rule, probe_samples, client_eval_samples
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (pixels, labels)
        self.reference: list | None = None  # the previous round's global gates on the probe set
        self.eval_samples = 0  # what this round's clients score the model they receive on (0: no scores)
        self.label_share = False  # whether this round's clients send their label share
        self.sent: dict[str, torch.Tensor] | None = None  # the weights of the model this round's clients score
        self.best: dict[str, torch.Tensor] | None = None  # the best-scored warm-up model's, until the decision

    @property
    def rule(self) -> str:
        return self.gate_rule.describe()

    def decision(self, history: list[dict[str, Any]]) -> GateDecision | None:
        return self.gate_rule.decide(history)

    def start(self, model: FedSQModel, history: list[dict[str, Any]], eval_set: torch.utils.data.Dataset,
              device: torch.device) -> bool:
        """Before the first round to train (also on a resume). Returns True if the gates were already
        re-frozen from the global model (resumed after that: the checkpoint must have held the copy)."""
        if model.dual_copy.structural is None:
            raise FedSQError("A gate warm-up needs a FedSQ model (fixed_gating=True): a plain model has no gates to freeze.")
        decision = self.decision(history)
        if decision is not None and decision.round is not None and len(history) >= decision.round:
            model.config.gates_frozen_at_round = decision.round
            return decision.source == "global"
        model.dual_copy.disable_gates()
        if self.gate_rule.needs_probe:
            self.probe = first_model_inputs(eval_set, self.probe_samples, device)
            self.reference = GateRecorder(model).gates(self.probe[0])
        return False

    def begin_round(self, model: FedSQModel, round_: int, history: list[dict[str, Any]]) -> GateDecision | None:
        """Fix the gates at the start of `round_` if the rule says so; the decision if it fixed them now."""
        dual, decision = model.dual_copy, self.decision(history)
        self.eval_samples, self.sent = 0, None
        undecided = not dual.gates_enabled and decision is None
        self.label_share = undecided and self.gate_rule.asks_labels(history)
        if undecided and self.gate_rule.needs_scores and round_ > 1:
            self.eval_samples = self.client_eval_samples  # round 1's model is the warm start's, with a blank head
            keys = dual.structural.state_dict().keys()
            self.sent = {k: t.detach().clone() for k, t in dual.quantitative.state_dict().items() if k in keys}
        if dual.gates_enabled or decision is None or decision.round is None or round_ < decision.round:
            return None
        dual.enable_gates()
        if decision.source == "global":
            dual.sync_structural(None if decision.model_round is None else self.best)  # None: the current model
            model.config.calibrated = True
        model.config.gates_frozen_at_round = round_
        self.reference = self.best = None
        return decision

    @torch.no_grad()
    def measure(self, model: FedSQModel, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                ) -> torch.Tensor | None:
        """(step drift, probe loss) of the global model after a warm-up round of a rule with a probe set; else None."""
        if model.dual_copy.gates_enabled or self.probe is None:
            return None
        gates = GateRecorder(model).gates(self.probe[0])
        pixels, labels = self.probe
        model.eval()
        with autocast():
            logits = torch.cat([model(pixels[i : i + 64]).logits.float() for i in range(0, len(pixels), 64)])
        loss = torch.nn.functional.cross_entropy(logits, labels)
        drift = torch.tensor(gate_drift(self.reference, gates)["all"])
        self.reference = gates
        return torch.stack([drift, loss.cpu()])

    def end_round(self, model: FedSQModel, record: dict[str, Any], history: list[dict[str, Any]],
                  measured: torch.Tensor | None) -> None:
        """Add the gate schedule's fields to `record`, the round just done (not yet in `history`)."""
        dual = model.dual_copy
        record["gates"] = "fixed" if dual.gates_enabled else "own"
        if self.sent is not None and self.gate_rule.best_scored([*history, record]) == record["round"] - 1:
            self.best = self.sent  # the model this round's clients scored is the best so far
        if measured is not None:
            record["gate_step_drift"], record["gate_probe_loss"] = measured.tolist()
        if not dual.gates_enabled:
            decision = self.decision([*history, record])
            if decision is not None and (not history or self.decision(history) is None):  # decided now
                record["gate_decision"] = decision.to_dict()
                if decision.model_round is None:  # no earlier model's gates to fix
                    self.best = None
            return
        freeze = model.config.gates_frozen_at_round
        record["gates_frozen"] = record["round"] == freeze
        if "bytes_structural" not in record:  # a runtime that sends the copies counts them itself
            received = {c for h in history[freeze - 1 :] for c in _active(h)}
            sent = len(set(_active(record)) - received) if model.config.calibrated else 0  # pretrained: held
            record["bytes_structural"] = sent * tensor_bytes(dual.structural.state_dict())

    def summary(self, model: FedSQModel, history: list[dict[str, Any]], num_eval_samples: int) -> dict[str, Any]:
        """The warm-up's outcome, for `summary.json` and the card."""
        decision, freeze, statistic = self.decision(history), model.config.gates_frozen_at_round, self.gate_rule.statistic
        out = {"rule": self.rule, "decided": None if decision is None else decision.reason,
               "frozen_at_round": freeze, "gates": "own" if decision is None else decision.gates,
               "statistic": statistic,
               "by_round": {h["round"]: h.get(statistic) for h in history if statistic and h.get("gates") == "own"},
               "bytes_structural": sum(h.get("bytes_structural", 0) for h in history)}
        if self.gate_rule.needs_labels:
            out["client_label_share"] = {h["round"]: h["client_label_share"] for h in history if "client_label_share" in h}
        if self.gate_rule.needs_scores:  # a model's score is in the next round's record
            out["client_balanced_accuracy"] = {h["round"] - 1: h["client_balanced_accuracy"] for h in history
                                           if "client_balanced_accuracy" in h}
            chosen = decision is not None and decision.round is not None and decision.source == "global"
            out["gates_of_round"] = (decision.model_round or decision.round - 1) if chosen else None
        if self.gate_rule.needs_probe:
            out.update(step_drift_at_freeze=out["by_round"].get(freeze - 1) if freeze else None,
                       probe_samples=min(self.probe_samples, num_eval_samples))
        return out

    def lacks_best(self, history: list[dict[str, Any]]) -> list[int]:
        """The rounds whose scores a resumed warm-up decides from without the best-scored model's weights (the
        checkpoint lacked them); empty where it has them or needs none."""
        decision = self.decision(history)
        needed = decision is None or (decision.round is not None and decision.source == "global")
        scored = [h["round"] for h in history if "client_balanced_accuracy" in h]
        return scored if self.gate_rule.needs_scores and needed and self.best is None else []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold for an exact resume: the best-scored warm-up model's weights, until the
        decision (the model the next round's clients score is the checkpoint's global model)."""
        return {} if self.best is None else {k: t.cpu() for k, t in self.best.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.best = tensors or None


def _active(record: dict[str, Any]) -> list[int]:
    return [c for c in record["clients"] if c not in record["dropped_clients"]]
