"""Gate drift: how many piecewise-linear regimes of a model differ from another's on the same inputs.

This is the "regime change" measurement behind FedSQ: under plain fine-tuning the gates move away
from the pretrained ones; under FedSQ the gates used are the pretrained ones by construction.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from .errors import GatingError
from .gating import Gate, GateTape, find_gateable_modules, install_gates, record_gates, remove_gates

__all__ = ["GateRecorder", "gate_drift"]


def _backbone(model: nn.Module) -> nn.Module:
    return model.quantitative if hasattr(model, "quantitative") else model


def _shapes(gate: Gate) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in (gate if isinstance(gate, tuple) else (gate,))]


def _differ(a: Gate, b: Gate) -> torch.Tensor:
    """Per position: True where the regime differs (a tuple gate differs if any of its parts does)."""
    if isinstance(a, tuple):
        out = torch.zeros_like(a[0], dtype=torch.bool)
        for x, y in zip(a, b):
            out |= x != y
        return out
    return a != b


class GateRecorder:
    """The gates a model chooses for itself (its own regimes), via a frozen gate-recording copy."""

    def __init__(self, model: nn.Module) -> None:
        self.module = remove_gates(copy.deepcopy(_backbone(model))).eval().requires_grad_(False)
        self.tape = GateTape()
        sites, _ = find_gateable_modules(self.module)
        if not sites:
            raise GatingError(f"{type(self.module).__name__} has no piecewise-linear unit: it has no gates to compare.")
        install_gates(self.module, sites, self.tape, records=True)

    def gates(self, pixels: torch.Tensor, batch_size: int = 64) -> list[list[tuple[str, Gate]]]:
        device = next(self.module.parameters()).device
        return [record_gates(self.module, self.tape, pixels[i : i + batch_size].to(device))
                for i in range(0, len(pixels), batch_size)]


@torch.no_grad()
def gate_drift(
    reference: nn.Module | list[list[tuple[str, Gate]]],
    model: nn.Module | list[list[tuple[str, Gate]]],
    pixels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Fraction of gates of `model` that differ from `reference`'s on `pixels`, per gated unit (in
    forward order) and over all units (`"all"`). Models are FedSQ models (their quantitative copy's
    own gates are compared) or plain modules of the same architecture; either may also be given as
    precomputed `GateRecorder(...).gates(pixels, batch_size)` (then `pixels` may be None)."""
    ref_gates, new_gates = (g if isinstance(g, list) else GateRecorder(g).gates(pixels, batch_size)
                            for g in (reference, model))
    differing, total = defaultdict(int), defaultdict(int)
    for ref_batch, new_batch in zip(ref_gates, new_gates, strict=True):
        ref_sites, new_sites = [site for site, _ in ref_batch], [site for site, _ in new_batch]
        if ref_sites != new_sites or any(_shapes(a) != _shapes(b) for (_, a), (_, b) in zip(ref_batch, new_batch)):
            first = next((f"{a} vs {b}" for a, b in zip(ref_sites, new_sites) if a != b),
                         f"{len(ref_sites)} vs {len(new_sites)} gated units, or other shapes")
            raise GatingError(f"The two models differ in structure ({first}): gate drift compares two models of one "
                              "architecture (e.g. two checkpoints of one run).")
        for (site, a), (_, b) in zip(ref_batch, new_batch):
            diff = _differ(a, b)
            differing[site] += int(diff.sum())
            total[site] += diff.numel()
    result = {site: differing[site] / total[site] for site in total}
    result["all"] = sum(differing.values()) / max(1, sum(total.values()))
    return result
