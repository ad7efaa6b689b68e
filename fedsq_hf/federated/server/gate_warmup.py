"""Gate warm-up inside the federation: the first rounds train without fixed gates (plain updates, same
strategy), then the structural copy is re-frozen from the global model and FedSQ trains gated.

The freeze round R is fixed (`--freeze-gates-at-round`) or chosen by drift (`--freeze-gates-when-drift-below`):
after each warm-up round the server runs a probe set (the first `--gate-probe-samples` evaluation samples)
through the global model and measures the fraction of its own gates that changed since the previous round
(the step drift), and the probe loss of the global model. The first round whose step drift is below the
threshold and below the previous round's (the gates are settling) while the probe loss fell (the model is
still learning: a model that collapsed to a constant answer also stops moving its gates), or
`--max-warmup-rounds`, ends the warm-up. Round 1 alone never ends it: it starts
from a zero-initialised head, whose first steps send almost no gradient into the backbone, so its drift
understates how far the gates will move. R is read from the history, so a resumed run decides as the
interrupted one did.
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

__all__ = ["GateWarmup"]


class GateWarmup:
    """The server's gate schedule: train without fixed gates until round R, then freeze the global model's
    gates (see the module doc). The round loop calls `start`, then per round `begin_round`, `measure` (while
    warming up) and `end_round`, which adds to the round's record `gates` ("own" while warming up, then
    "fixed"), `gate_step_drift` and `gate_probe_loss` (warm-up rounds), `gates_frozen` and `bytes_structural`
    (the structural copy sent to clients that had not received it yet, from round R on)."""

    def __init__(self, freeze_at_round: int = 1, drift_below: float | None = None, max_warmup_rounds: int = 5,
                 probe_samples: int = 256) -> None:
        self.freeze_at_round, self.drift_below = freeze_at_round, drift_below
        self.max_warmup_rounds, self.probe_samples = max_warmup_rounds, probe_samples
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (pixels, labels)
        self.reference: list | None = None  # the previous round's global gates on the probe set

    @property
    def rule(self) -> str:
        if self.drift_below is None:
            return f"fixed round {self.freeze_at_round}"
        return (f"gate step drift < {self.drift_below} with a falling probe loss (at most {self.max_warmup_rounds} "
                "warm-up rounds)")

    def freeze_round(self, history: list[dict[str, Any]]) -> int | None:
        """The round at whose start the gates freeze, or None while the drift rule has not decided."""
        if self.drift_below is None:
            return self.freeze_at_round
        previous = None
        for record in history:
            if "gate_step_drift" not in record:
                continue
            drift, loss = record["gate_step_drift"], record["gate_probe_loss"]
            settling = previous is not None and drift < min(self.drift_below, previous[0]) and loss < previous[1]
            if settling or record["round"] >= self.max_warmup_rounds:
                return record["round"] + 1
            previous = drift, loss
        return None

    def start(self, model: FedSQModel, history: list[dict[str, Any]], eval_set: torch.utils.data.Dataset,
              device: torch.device) -> bool:
        """Before the first round to train (also on a resume). Returns True if the gates are already frozen
        (resumed after the freeze: the checkpoint must have held the frozen structural copy)."""
        if model.dual_copy.structural is None:
            raise FedSQError("A gate warm-up needs a FedSQ model (fixed_gating=True): a plain model has no gates to freeze.")
        freeze = self.freeze_round(history)
        if freeze is not None and len(history) >= freeze:
            model.config.gates_frozen_at_round = freeze
            return True
        model.dual_copy.disable_gates()
        self.probe = first_model_inputs(eval_set, self.probe_samples, device)
        self.reference = GateRecorder(model).gates(self.probe[0])
        return False

    def begin_round(self, model: FedSQModel, round_: int, history: list[dict[str, Any]]) -> bool:
        """Freeze the gates at the start of `round_` if it is R; True if it froze them now."""
        dual, freeze = model.dual_copy, self.freeze_round(history)
        if dual.gates_enabled or freeze is None or round_ < freeze:
            return False
        dual.enable_gates()
        dual.sync_structural()
        model.config.calibrated, model.config.gates_frozen_at_round = True, round_
        self.reference = None
        return True

    @torch.no_grad()
    def measure(self, model: FedSQModel, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                ) -> torch.Tensor | None:
        """(step drift, probe loss) of the global model after a warm-up round; None once the gates are fixed."""
        if model.dual_copy.gates_enabled:
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
        if measured is not None:
            record["gate_step_drift"], record["gate_probe_loss"] = measured.tolist()
            return
        freeze = model.config.gates_frozen_at_round
        received = {c for h in history[freeze - 1 :] for c in _active(h)}
        record["gates_frozen"] = record["round"] == freeze
        if "bytes_structural" not in record:  # a runtime that sends the copies counts them itself
            record["bytes_structural"] = len(set(_active(record)) - received) * tensor_bytes(dual.structural.state_dict())

    def summary(self, model: FedSQModel, history: list[dict[str, Any]], num_eval_samples: int) -> dict[str, Any]:
        """The warm-up's outcome, for `summary.json` and the card."""
        freeze = model.config.gates_frozen_at_round
        drifts = {h["round"]: h["gate_step_drift"] for h in history if "gate_step_drift" in h}
        return {"rule": self.rule, "frozen_at_round": freeze,
                "step_drift_at_freeze": drifts.get(freeze - 1) if freeze else None,
                "probe_samples": min(self.probe_samples, num_eval_samples),
                "bytes_structural": sum(h.get("bytes_structural", 0) for h in history)}


def _active(record: dict[str, Any]) -> list[int]:
    return [c for c in record["clients"] if c not in record["dropped_clients"]]
