"""What both runtimes share above the client and the server: the server's round loop (events, evaluation,
the gate warm-up, the failure rules, the summary), its checkpoints, and the run's data and model as
every runtime builds them."""

from .checkpoints import TrainerCheckpoints
from .loop import RoundLoop, run_accelerator
from .setup import (PreparedRun, RunData, build_claimed, build_model, choose_preload, load_run_data, prepare_run,
                    run_samples)

__all__ = ["RoundLoop", "TrainerCheckpoints", "run_accelerator", "RunData", "PreparedRun", "load_run_data",
           "build_model", "run_samples", "prepare_run", "choose_preload", "build_claimed"]
