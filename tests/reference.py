"""An independent reference for fixed gating: forward hooks on plain (un-gated) copies."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

GATED_TYPES = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.MaxPool2d)


def _not_inplace(model):
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def record_regimes(structural: nn.Module, x: torch.Tensor) -> list:
    """Per call, in call order: the regime each unit of the pretrained model is in."""
    model = _not_inplace(copy.deepcopy(structural)).eval()
    regimes = []

    def hook(module, inputs, output):
        (inp,) = inputs
        if isinstance(module, nn.MaxPool2d):
            _, idx = F.max_pool2d(inp, module.kernel_size, module.stride, module.padding,
                                  module.dilation, module.ceil_mode, return_indices=True)
            regimes.append(idx)
        elif isinstance(module, nn.Hardtanh):
            regimes.append(((inp > module.min_val) & (inp < module.max_val), inp >= module.max_val))
        else:
            regimes.append(inp > 0)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, GATED_TYPES)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return regimes


def forward_with_regimes(quantitative: nn.Module, x: torch.Tensor, regimes: list) -> torch.Tensor:
    """Forward `quantitative` (a plain model; its in-place units are made out-of-place), replacing
    each unit's output by its value in the recorded regime."""
    model = _not_inplace(quantitative)
    calls = iter(regimes)

    def hook(module, inputs, output):
        (inp,) = inputs
        regime = next(calls)
        if isinstance(module, nn.MaxPool2d):
            return inp.flatten(2).gather(2, regime.flatten(2)).view(regime.shape)
        if isinstance(module, nn.Hardtanh):
            linear, high = regime
            clip = torch.where(high, torch.full_like(inp, module.max_val), torch.full_like(inp, module.min_val))
            return torch.where(linear, inp, clip)
        if isinstance(module, nn.PReLU):
            w = module.weight.view(-1, *([1] * (inp.dim() - 2))) if module.weight.numel() > 1 else module.weight
            return torch.where(regime, inp, inp * w)
        if isinstance(module, nn.LeakyReLU):
            return torch.where(regime, inp, inp * module.negative_slope)
        return inp * regime

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, GATED_TYPES)]
    out = model(x)
    for h in handles:
        h.remove()
    return out
