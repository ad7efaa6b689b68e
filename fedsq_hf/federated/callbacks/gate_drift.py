"""`--gate-drift-samples N`: how far the global model's own gates move from those of the model the run started
from, after each round, on the first N evaluation samples."""

from __future__ import annotations

from ...gate_drift import GateRecorder, gate_drift
from ..data import first_model_inputs
from .base import FederatedCallback

__all__ = ["GateDriftCallback"]


class GateDriftCallback(FederatedCallback):
    """Adds `gate_drift` (the fraction of gates that differ from the starting model's) and `gate_drift_units`
    (per gated unit) to each round's record; `PlotCallback` draws them into `gate_drift.png`."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.pixels, self.reference = None, None

    def on_init_end(self, args, state, control, model=None, eval_dataset=None, accelerator=None, **kwargs):
        # the reference is the model as built, before a resume loads a checkpoint's weights into it
        self.pixels = first_model_inputs(eval_dataset, self.samples, accelerator.device)[0]
        self.reference = GateRecorder(model).gates(self.pixels)

    def on_round_end(self, args, state, control, record=None, model=None, **kwargs):
        drift = gate_drift(self.reference, model, self.pixels)
        record["gate_drift"], record["gate_drift_units"] = drift.pop("all"), drift
