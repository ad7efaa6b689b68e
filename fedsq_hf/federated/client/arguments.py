"""The arguments of one client's local training: what a silo needs to train, and nothing of rounds,
servers or processes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..fields import argument, check_fields, require
from .optim import optimizer_names

__all__ = ["ClientArguments"]


@dataclass
class ClientArguments:
    local_epochs: int = argument(1, help="local epochs per client and round (when --local-steps is 0)", resume="same")
    local_steps: int = argument(0, help="local optimizer steps per client and round (overrides --local-epochs)",
                                resume="same")
    batch_size: int = argument(32, help="client batch size (evaluation uses twice this)", resume="same")
    optim: str = argument("sgd", resume="same",
                          help="client optimizer: sgd (with --momentum, no Nesterov), one added with "
                               "register_optimizer, or any timm optimizer name (adamw, lamb, lion, ...)")
    lr: float = argument(0.003, help="client learning rate (of the schedule's peak)", resume="same")
    momentum: float = argument(0.9, help="client momentum (sgd and the optimizers that take one)", resume="same")
    weight_decay: float = argument(0.0, help="client weight decay", resume="same")
    max_grad_norm: float = argument(0.0, help="clip each client step's gradient norm to this (0: off)", resume="same")
    label_smoothing: float = argument(0.0, help="label smoothing of the clients' cross-entropy", resume="same")
    divergence_factor: float = argument(
        10.0, resume="same",
        help="exclude a client whose loss at the end of local training exceeds this times its first loss (0: off)")
    dp_sgd_noise_multiplier: float | None = argument(
        None, resume="same",
        help="sample-level differential privacy at every client (DP-SGD, Opacus): each local step clips every "
             "sample's gradient to --dp-sgd-max-grad-norm and adds Gaussian noise of this multiple of it (README, Privacy)")
    dp_sgd_max_grad_norm: float = argument(1.0, help="DP-SGD: the per-sample gradient clipping bound", resume="same")
    mixed_precision: Literal["no", "fp16", "bf16"] = argument("no", help="no, fp16 or bf16 (Accelerate)", resume="same")
    num_workers: int = argument(
        0, resume="any",
        help="data loader worker processes per process (decode + augment); they live for the whole run")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """`FedSQError` naming the first bad field (of the subclass's fields too: finite, `Literal` choices)."""
        check_fields(self)
        require([
            (self.local_epochs >= 0 and self.local_steps >= 0, "--local-epochs and --local-steps must be >= 0"),
            (self.local_epochs > 0 or self.local_steps > 0,
             "--local-epochs and --local-steps are both 0: clients would not train"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.optim in optimizer_names(), f"--optim must be sgd or a timm optimizer "
             f"({', '.join(optimizer_names()[1:8])}, ...), got {self.optim!r}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (0 turns clipping off), got {self.max_grad_norm}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.divergence_factor >= 0,
             f"--divergence-factor must be >= 0 (0 turns the check off), got {self.divergence_factor}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
        ])
        if self.dp_sgd_noise_multiplier is not None:
            require([
                (self.dp_sgd_noise_multiplier > 0,
                 f"--dp-sgd-noise-multiplier must be > 0 (no noise is no privacy), got {self.dp_sgd_noise_multiplier}"),
                (self.dp_sgd_max_grad_norm > 0, f"--dp-sgd-max-grad-norm must be > 0, got {self.dp_sgd_max_grad_norm}"),
                (self.max_grad_norm == 0, "--max-grad-norm with DP-SGD: DP-SGD clips each sample's gradient "
                                          "(--dp-sgd-max-grad-norm); drop --max-grad-norm"),
                (self.mixed_precision == "no", f"DP-SGD computes per-sample gradients in fp32: drop --mixed-precision "
                                               f"{self.mixed_precision}"),
            ])

    @classmethod
    def from_arguments(cls, args: Any) -> ClientArguments:
        """The local-training fields of `args` (e.g. a run's `FederatedArguments`), as `ClientArguments`."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
