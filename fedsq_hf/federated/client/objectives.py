"""What a client adds to, or judges from, its local loss: FedProx's proximal term and the divergence rule."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["proximal_term", "diverged"]


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx (Li et al. 2020): (mu / 2) * ||w - w_global||^2, `anchor` holding the global weights."""
    return 0.5 * mu * sum((p - g).pow(2).sum() for p, g in zip(params, anchor))


def diverged(losses: list[float], factor: float, num_labels: int) -> bool:
    """True if a client's training went wrong: no or non-finite losses, or (factor > 0) the mean loss of
    its last steps above `factor` times its first loss (at least the chance-level loss, log(num_labels),
    so that a client starting near zero loss is not flagged for ordinary noise)."""
    if not losses or not np.all(np.isfinite(losses)):
        return True
    tail = losses[-max(1, len(losses) // 4):]
    return factor > 0 and float(np.mean(tail)) > factor * max(losses[0], float(np.log(max(num_labels, 2))))
