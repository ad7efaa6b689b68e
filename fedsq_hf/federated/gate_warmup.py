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

import logging
from typing import Any

import torch
from accelerate.utils import broadcast

from ..errors import CheckpointError, FedSQError
from ..gate_drift import GateRecorder, gate_drift
from .arguments import FederatedArguments
from .callbacks import FederatedCallback
from .checkpoint import START_OVER
from .samples import first_model_inputs

__all__ = ["GateWarmupCallback"]

logger = logging.getLogger(__name__)


class GateWarmupCallback(FederatedCallback):
    """Train without fixed gates until round R, then freeze the global model's gates (see the module doc).

    Adds to each round's record `gates` ("own" while warming up, then "fixed"), `gate_step_drift` (warm-up
    rounds) and `bytes_structural` (the structural copy sent to clients that had not received it yet, from
    round R on), and `gate_warmup` to the summary.
    """

    def __init__(self, freeze_at_round: int = 1, drift_below: float | None = None, max_warmup_rounds: int = 5,
                 probe_samples: int = 256) -> None:
        self.freeze_at_round, self.drift_below = freeze_at_round, drift_below
        self.max_warmup_rounds, self.probe_samples = max_warmup_rounds, probe_samples
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (pixels, labels)
        self.reference: list | None = None  # the previous round's global gates on the probe set

    @classmethod
    def from_args(cls, args: FederatedArguments) -> GateWarmupCallback | None:
        """The callback the arguments ask for, or None for FedSQ as published (gates fixed from round 1)."""
        if args.freeze_gates_at_round == 1 and args.freeze_gates_when_drift_below is None:
            return None
        return cls(args.freeze_gates_at_round, args.freeze_gates_when_drift_below, args.max_warmup_rounds,
                   args.gate_probe_samples)

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

    def _gates(self, trainer) -> list:
        return GateRecorder(trainer.model).gates(self.probe[0])

    @torch.no_grad()
    def _probe_loss(self, trainer) -> torch.Tensor:
        model, (pixels, labels) = trainer.model.eval(), self.probe
        with trainer.accelerator.autocast():
            logits = torch.cat([model(pixels[i : i + 64]).logits.float() for i in range(0, len(pixels), 64)])
        return torch.nn.functional.cross_entropy(logits, labels)

    def on_train_begin(self, args, state, control, trainer=None, **kwargs):
        model = trainer.model
        if model.dual_copy.structural is None:
            raise FedSQError("A gate warm-up needs a FedSQ model (fixed_gating=True): a plain model has no gates to freeze.")
        freeze = self.freeze_round(state.history)
        if freeze is not None and state.round >= freeze:  # resumed after the freeze
            if not model.config.calibrated:
                raise CheckpointError(f"--resume: the checkpoint of round {state.round} lacks the structural copy "
                                      f"frozen at round {freeze}; it was damaged: {START_OVER}.")
            model.config.gates_frozen_at_round = freeze
            return
        model.dual_copy.disable_gates()
        self.probe = first_model_inputs(trainer.eval_set, self.probe_samples, trainer.accelerator.device)
        self.reference = self._gates(trainer)
        if state.is_world_process_zero:
            rule = (f"until round {self.freeze_at_round}" if self.drift_below is None else
                    f"until the gates change on less than {self.drift_below:.2%} of {len(self.probe[0])} probe samples' "
                    f"gates in a round while their loss falls (at most {self.max_warmup_rounds} rounds)")
            logger.info("Gate warm-up: training without fixed gates %s.", rule)

    def on_round_begin(self, args, state, control, trainer=None, **kwargs):
        dual, round_ = trainer.model.dual_copy, state.round + 1
        freeze = self.freeze_round(state.history)
        if dual.gates_enabled or freeze is None or round_ < freeze:
            return
        dual.enable_gates()
        dual.sync_structural()
        trainer.model.config.calibrated, trainer.model.config.gates_frozen_at_round = True, round_
        self.reference = None
        if state.is_world_process_zero:
            logger.info("Round %d: gates frozen from the global model after %d warm-up round(s).", round_, round_ - 1)

    def on_round_end(self, args, state, control, record=None, trainer=None, **kwargs):
        dual = trainer.model.dual_copy
        record["gates"] = "fixed" if dual.gates_enabled else "own"
        if not dual.gates_enabled:
            gates = self._gates(trainer)
            measured = torch.stack([torch.tensor(gate_drift(self.reference, gates)["all"]), self._probe_loss(trainer).cpu()])
            drift, loss = broadcast(measured.to(trainer.accelerator.device)).tolist()  # one decision on every process
            record["gate_step_drift"], record["gate_probe_loss"] = drift, loss
            self.reference = gates
            return
        freeze = trainer.model.config.gates_frozen_at_round
        received = {c for h in state.history[freeze - 1 : -1] for c in _active(h)}
        record["gates_frozen"] = record["round"] == freeze
        record["bytes_structural"] = len(set(_active(record)) - received) * _nbytes(dual.structural)

    def on_train_end(self, args, state, control, summary=None, trainer=None, **kwargs):
        freeze = trainer.model.config.gates_frozen_at_round
        drifts = {h["round"]: h["gate_step_drift"] for h in state.history if "gate_step_drift" in h}
        summary["gate_warmup"] = {
            "rule": (f"fixed round {self.freeze_at_round}" if self.drift_below is None else
                     f"gate step drift < {self.drift_below} with a falling probe loss (at most {self.max_warmup_rounds} warm-up rounds)"),
            "frozen_at_round": freeze, "step_drift_at_freeze": drifts.get(freeze - 1) if freeze else None,
            "probe_samples": min(self.probe_samples, len(trainer.eval_set)),
            "bytes_structural": sum(h.get("bytes_structural", 0) for h in state.history),
        }


def _active(record: dict[str, Any]) -> list[int]:
    return [c for c in record["clients"] if c not in record["dropped_clients"]]


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
