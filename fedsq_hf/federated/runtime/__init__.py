"""What both runtimes share above the client and the server: the server's round loop (events, evaluation,
the gate warm-up, the failure rules, the summary) and its checkpoints."""

from .checkpoints import TrainerCheckpoints
from .loop import RoundLoop, run_accelerator

__all__ = ["RoundLoop", "TrainerCheckpoints", "run_accelerator"]
