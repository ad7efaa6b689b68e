"""A client's side of differential privacy: clipping its update to the bound the server sends (client-level
DP, client-side clipping), and sample-level DP-SGD with Opacus's `DPOptimizer` (per-sample clipping and
Gaussian noise in every local step).

The per-sample gradients come from `torch.func` over the whole model (one `vmap` of the loss's gradient,
each sample its own forward pass, structural copy included). Opacus's own per-layer hooks cannot serve a
gated model: they recompute a layer such as timm's `BatchNormAct2d` on its own, and its gated activation
would then read the wrong structural gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.func import functional_call, grad_and_value, vmap

from ..protocol import squared_norm

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

    from .arguments import ClientArguments

__all__ = ["clip_update", "per_sample_gradients", "dp_optimizer"]


def clip_update(update: dict[str, torch.Tensor], bound: float) -> tuple[dict[str, torch.Tensor], int]:
    """`update` scaled to L2 norm at most `bound` over all its tensors, and 1 if it was within it already
    (what adaptive clipping counts), else 0."""
    norm = squared_norm(update) ** 0.5
    if norm <= bound:
        return update, 1
    return {k: t * (bound / norm) for k, t in update.items()}, 0


def per_sample_gradients(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], x: torch.Tensor,
                         y: torch.Tensor, label_smoothing: float = 0.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The gradient of each sample's cross-entropy with respect to `params` (by name; a leading batch
    dimension on each), and the per-sample losses. Random layers (dropout) draw per sample."""
    detached = {k: p.detach() for k, p in params.items()}

    def loss(weights: dict[str, torch.Tensor], x_i: torch.Tensor, y_i: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, weights, (x_i.unsqueeze(0),)).logits
        return torch.nn.functional.cross_entropy(logits.float(), y_i.unsqueeze(0), label_smoothing=label_smoothing)

    return vmap(grad_and_value(loss), in_dims=(None, 0, 0), randomness="different")(detached, x, y)


def dp_optimizer(optimizer: torch.optim.Optimizer, args: ClientArguments, generator: torch.Generator) -> DPOptimizer:
    """`optimizer` inside Opacus's `DPOptimizer`: each step clips every sample's gradient to
    `--dp-sgd-max-grad-norm`, adds N(0, (z C)^2) noise drawn from `generator` and divides by the batch size."""
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(optimizer, noise_multiplier=args.dp_sgd_noise_multiplier, max_grad_norm=args.dp_sgd_max_grad_norm,
                       expected_batch_size=args.batch_size, loss_reduction="mean", generator=generator)
