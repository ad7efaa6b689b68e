"""The simulation runtime: a whole federation on one machine or one `torchrun` job, on Accelerate."""

from ..runtime import choose_preload
from .builder import build_trainer, run_federated
from .placement import assign_clients
from .trainer import FederatedTrainer

__all__ = ["FederatedTrainer", "build_trainer", "run_federated", "choose_preload", "assign_clients"]
