"""The client side of a federation: its arguments, local trainer, state between rounds, optimizers,
objectives, and the calibration warm-up."""

from .accelerator import make_accelerator
from .arguments import ClientArguments
from .calibration import calibrate
from .objectives import diverged, proximal_term
from .optim import CLIENT_OPTIMIZERS, create_optimizer, optimizer_names, optimizer_takes_momentum, register_optimizer
from .state import ClientState
from .trainer import ClientTrainer, TrainResult

__all__ = ["ClientArguments", "ClientTrainer", "TrainResult", "ClientState", "make_accelerator", "calibrate",
           "diverged", "proximal_term", "CLIENT_OPTIMIZERS", "create_optimizer", "optimizer_names",
           "optimizer_takes_momentum", "register_optimizer"]
