"""Fixed gating: a frozen structural copy decides the regime of every piecewise-linear unit, a
trainable quantitative copy computes the values inside that regime.

Gated units are the original modules with their class swapped for a gated subclass (the trick
`torch.nn.utils.parametrize` uses), so parameter names, `isinstance` checks and state-dict keys are
unchanged. Both copies share one `GateTape`: the structural pass appends one gate per unit call, in
call order; the quantitative pass consumes them in the same order, so a module called twice in
one forward gets the right gate each time. The tape is per thread, so threads may call one model at once.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GatingError
from .gate_cache import GateCache

__all__ = [
    "DualCopy",
    "GateTape",
    "GATE_KINDS",
    "find_gateable_modules",
    "install_gates",
    "record_gates",
    "register_gate",
    "remove_gates",
]

Gate = Any  # a tensor or a tuple of tensors, batch-first, detached


class _GatedUnit:
    """Mixin for a gated module. `record` computes output and gate; `apply` reuses a gate."""

    _fedsq_tape: GateTape
    _fedsq_site: str
    _fedsq_records: bool

    def forward(self, x: torch.Tensor):
        if self._fedsq_records:
            out, gate = self.record(x)
            self._fedsq_tape.push(self._fedsq_site, gate)
            return out
        return self.apply(x, self._fedsq_tape.pop(self._fedsq_site))

    def record(self, x: torch.Tensor) -> tuple[torch.Tensor, Gate]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, gate: Gate) -> torch.Tensor:
        raise NotImplementedError

    def __reduce_ex__(self, protocol: int) -> tuple:
        # The gated class is made at run time, so pickle cannot find it by name: rebuild it from its base.
        return _new_gated, (self._fedsq_base, self._fedsq_kind), self.__getstate__()


def _new_gated(base: type[nn.Module], kind: str) -> nn.Module:
    """An empty instance of the gated subclass of `base` (for unpickling; its state is set after)."""
    cls = _gated_class(base, kind)
    return cls.__new__(cls)


class ReLUGate(_GatedUnit):
    def record(self, x):
        out = F.relu(x, inplace=self.inplace)
        return out, out > 0

    def apply(self, x, gate):
        return x.mul_(gate) if self.inplace else x * gate


class HardtanhGate(_GatedUnit):
    """ReLU6/Hardtanh: three regimes, clipped low (constant), linear (slope 1), clipped high."""

    def record(self, x):
        out = F.hardtanh(x, self.min_val, self.max_val, inplace=self.inplace)
        return out, ((out > self.min_val) & (out < self.max_val), out >= self.max_val)

    def apply(self, x, gate):
        linear, high = gate
        out = x.mul_(linear) if self.inplace else x * linear
        if self.max_val != 0:
            out = out.add_(high, alpha=self.max_val)
        if self.min_val != 0:
            out = out.add_(~(linear | high), alpha=self.min_val)
        return out


class LeakyReLUGate(_GatedUnit):
    def record(self, x):
        positive = x > 0
        return F.leaky_relu(x, self.negative_slope, inplace=self.inplace), positive

    def apply(self, x, gate):
        return torch.where(gate, x, x * self.negative_slope)


class PReLUGate(_GatedUnit):
    def record(self, x):
        positive = x > 0
        return F.prelu(x, self.weight), positive

    def apply(self, x, gate):
        weight = self.weight
        if x.dim() >= 2 and weight.numel() > 1:
            weight = weight.view(-1, *([1] * (x.dim() - 2)))
        return torch.where(gate, x, x * weight)


class MaxPool2dGate(_GatedUnit):
    """The structural copy picks the argmax; the quantitative copy reads its values there."""

    def record(self, x):
        out, indices = F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode, return_indices=True,
        )
        return ((out, indices) if self.return_indices else out), indices

    def apply(self, x, gate):
        out = x.flatten(-2).gather(-1, gate.flatten(-2)).view(gate.shape)
        return (out, gate) if self.return_indices else out


# kind name -> (module class whose semantics the gate reproduces, gate mixin)
GATE_KINDS: dict[str, tuple[type[nn.Module], type[_GatedUnit]]] = {
    "relu": (nn.ReLU, ReLUGate),
    "relu6": (nn.ReLU6, HardtanhGate),
    "hardtanh": (nn.Hardtanh, HardtanhGate),
    "leaky_relu": (nn.LeakyReLU, LeakyReLUGate),
    "prelu": (nn.PReLU, PReLUGate),
    "max_pool2d": (nn.MaxPool2d, MaxPool2dGate),
}
# Module classes that compute exactly what their registered base computes (exact type -> kind).
_EXTRA_CLASSES: dict[type[nn.Module], str] = {}

# Nonlinear module types that have no gate: a backbone containing one is refused unless opted in.
_UNGATEABLE: tuple[type[nn.Module], ...] = (
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Softsign, nn.GLU, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink,
    nn.Hardshrink, nn.RReLU, nn.Threshold, nn.Softmax, nn.MultiheadAttention,
    nn.MaxPool1d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.FractionalMaxPool2d, nn.LPPool1d, nn.LPPool2d,
)

_GATED_CLASS_CACHE: dict[type[nn.Module], type[nn.Module]] = {}


def register_gate(module_class: type[nn.Module], kind: str) -> None:
    """Declare that `module_class` computes exactly what the registered `kind` computes.

    Example: `register_gate(timm.layers.activations.PReLU, "prelu")`.
    """
    if kind not in GATE_KINDS:
        raise ValueError(f"Unknown gate kind {kind!r}; known kinds: {sorted(GATE_KINDS)}.")
    _EXTRA_CLASSES[module_class] = kind
    _GATED_CLASS_CACHE.pop(module_class, None)


def gate_kind(module: nn.Module) -> str | None:
    """The gate kind of `module`, or None. A subclass counts only if it keeps its base's forward."""
    cls = type(module)
    if issubclass(cls, _GatedUnit):
        return None
    if cls in _EXTRA_CLASSES:
        return _EXTRA_CLASSES[cls]
    for kind, (base, _) in GATE_KINDS.items():
        if cls is base:
            return kind
    for kind, (base, _) in GATE_KINDS.items():
        # GATE_KINDS lists nn.ReLU6 before nn.Hardtanh, so a ReLU6 subclass maps to "relu6".
        if isinstance(module, base) and cls.forward is base.forward:
            return kind
    return None


def _is_ungateable(module: nn.Module) -> bool:
    cls = type(module)
    return (
        isinstance(module, _UNGATEABLE)
        or cls.__module__.startswith("timm.layers.activations")
        or "MaxPool" in cls.__name__
    )


def find_gateable_modules(
    module: nn.Module, gated_ops: Iterable[str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Scan `module`: return ({name: kind} of units to gate, {name: class name} of ungateable ones).

    Units of a supported kind that is not in `gated_ops` are left as they are and reported in
    neither dict.
    """
    wanted = set(GATE_KINDS if gated_ops is None else gated_ops)
    unknown = wanted - set(GATE_KINDS)
    if unknown:
        raise GatingError(
            f"Unknown gated_ops {sorted(unknown)}; choose from {sorted(GATE_KINDS)}."
        )
    gated, ungateable = {}, {}
    for name, sub in module.named_modules():
        kind = gate_kind(sub)
        if kind is not None:
            if kind in wanted:
                gated[name] = kind
        elif _is_ungateable(sub):
            ungateable[name] = type(sub).__name__
    return gated, ungateable


def _gated_class(cls: type[nn.Module], kind: str) -> type[nn.Module]:
    if cls not in _GATED_CLASS_CACHE:
        mixin = GATE_KINDS[kind][1]
        _GATED_CLASS_CACHE[cls] = type(f"Gated{cls.__name__}", (mixin, cls), {"_fedsq_base": cls, "_fedsq_kind": kind})
    return _GATED_CLASS_CACHE[cls]


def remove_gates(module: nn.Module) -> nn.Module:
    """Turn gated units of `module` back into their plain classes, in place (they pick their own regimes)."""
    for sub in module.modules():
        base = getattr(type(sub), "_fedsq_base", None)
        if base is not None:
            sub.__class__ = base
            for attr in ("_fedsq_tape", "_fedsq_site", "_fedsq_records"):
                sub.__dict__.pop(attr, None)
    return module


class GateTape(threading.local):
    """Gates of one forward pass, in call order, shared by the two copies. Each thread has its own
    entries and cursor (`threading.local`), so concurrent forward calls never read each other's gates."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Gate]] = []
        self.cursor = 0

    def __reduce__(self) -> tuple:
        return GateTape, ()  # a tape holds gates only during a forward pass: a copy starts empty

    def clear(self) -> None:
        self.entries = []
        self.cursor = 0

    def push(self, site: str, gate: Gate) -> None:
        self.entries.append((site, gate))

    def pop(self, site: str) -> Gate:
        if self.cursor >= len(self.entries):
            raise GatingError(
                f"Gated unit {site!r} ran without a structural gate: call the DualCopy (or "
                "FedSQModel) itself, not its quantitative copy alone."
            )
        recorded_site, gate = self.entries[self.cursor]
        if recorded_site != site:
            raise GatingError(
                f"Gate order mismatch at call {self.cursor}: the structural copy ran {recorded_site!r} "
                f"but the quantitative copy ran {site!r}. The two copies must have the same control flow."
            )
        self.cursor += 1
        return gate

    def load(self, entries: list[tuple[str, Gate]]) -> None:
        self.entries = entries
        self.cursor = 0


def install_gates(module: nn.Module, sites: dict[str, str], tape: GateTape, records: bool) -> None:
    """Gate the units `sites` ({name: kind}) of `module` in place: recording (structural side) or
    applying (quantitative side) the gates on `tape`."""
    for name, sub in module.named_modules():
        if name in sites:
            sub.__class__ = _gated_class(type(sub), sites[name])
            sub._fedsq_tape = tape
            sub._fedsq_site = name
            sub._fedsq_records = records


@torch.no_grad()
def record_gates(module: nn.Module, tape: GateTape, *args: Any, **kwargs: Any) -> list[tuple[str, Gate]]:
    """Run `module`, whose units record to `tape`, and return the gates of every unit call, in order."""
    tape.clear()
    try:
        module(*args, **kwargs)
        return tape.entries
    finally:
        tape.clear()


class DualCopy(nn.Module):
    """A quantitative copy whose piecewise-linear units follow the gates of a frozen structural copy.

    Args:
        quantitative: the module to train (its units get gated in place).
        structural: the frozen twin that computes gates; a deep copy of `quantitative` if None.
            It may differ outside its gated units (e.g. no classifier head).
        gated_ops: gate kinds to fix (default: every kind in `GATE_KINDS`).
        allow_ungated: leave ungateable nonlinearities (GELU, SiLU, ...) free instead of raising.
        gating: False gives a plain model (no structural copy), for baselines with the same layout.

    The structural copy is not a registered submodule: it is absent from `parameters()`,
    `state_dict()` and optimizers, but follows `.to()`, `.half()` etc.
    """

    def __init__(
        self,
        quantitative: nn.Module,
        structural: nn.Module | None = None,
        *,
        gated_ops: Sequence[str] | None = None,
        allow_ungated: bool = False,
        gating: bool = True,
    ) -> None:
        super().__init__()
        self.quantitative = quantitative
        self.tape = GateTape()
        self.sites: dict[str, str] = {}
        self.gate_cache: GateCache | None = None
        self.gates_enabled = True
        object.__setattr__(self, "_structural", None)
        if not gating:
            return
        sites, ungateable = find_gateable_modules(quantitative, gated_ops)
        if ungateable and not allow_ungated:
            found = ", ".join(f"{n} ({c})" for n, c in list(ungateable.items())[:12])
            more = f" and {len(ungateable) - 12} more" if len(ungateable) > 12 else ""
            raise GatingError(
                f"The backbone has nonlinear ops that cannot be gated: {found}{more}. FedSQ needs a "
                "piecewise-linear network (ReLU, ReLU6/Hardtanh, LeakyReLU/PReLU, MaxPool2d). Pick such "
                "a backbone, or pass allow_ungated=True to leave these ops ungated."
            )
        if ungateable:
            warnings.warn(f"Leaving {len(ungateable)} ungateable ops free: {sorted(set(ungateable.values()))}")
        if not sites:
            found = sorted({type(m).__name__ for m in quantitative.modules() if gate_kind(m)})
            raise GatingError(
                "The backbone has no piecewise-linear op to gate"
                + (f" among gated_ops={list(gated_ops)} (found: {found})" if gated_ops is not None else "")
                + f". Supported: {sorted(GATE_KINDS)}."
            )
        if structural is None:
            structural = copy.deepcopy(quantitative)
        missing = sorted(set(sites) - {n for n, m in structural.named_modules() if gate_kind(m) == sites.get(n)})
        if missing:
            raise GatingError(f"The structural copy lacks the gated units {missing[:8]}: the copies must match.")
        structural.eval().requires_grad_(False)
        self.sites = sites
        install_gates(structural, sites, self.tape, records=True)
        install_gates(quantitative, sites, self.tape, records=False)
        object.__setattr__(self, "_structural", structural)

    @property
    def structural(self) -> nn.Module | None:
        return self._structural

    @property
    def gate_cache(self) -> GateCache | None:
        return self._gate_cache

    @gate_cache.setter
    def gate_cache(self, cache: GateCache | None) -> None:
        """Attach `cache` (e.g. `GateCache.load(path)`), refused if its gates do not fit this model."""
        if cache is not None and cache.input_shape is not None and self._structural is not None:
            like = next(self._structural.parameters(), torch.empty(0))  # the copy's dtype and device
            cache.check_layout(self.compute_gates(like.new_zeros(1, *cache.input_shape)))
        object.__setattr__(self, "_gate_cache", cache)

    @property
    def gating(self) -> bool:
        """Whether forward applies the structural gates (a structural copy exists and gates are enabled)."""
        return self._structural is not None and self.gates_enabled

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._structural is not None:
            self._structural._apply(fn, recurse)
        return self

    def compute_gates(self, *args: Any, **kwargs: Any) -> list[tuple[str, Gate]]:
        """Run the structural copy (no grad) and return the gates of every unit call, in order."""
        return record_gates(self._structural, self.tape, *args, **kwargs)

    def disable_gates(self) -> None:
        """Let the quantitative copy pick its own regimes, as a plain model does, until `enable_gates()`
        (e.g. a gate warm-up); the structural copy is kept."""
        if self.gating:
            remove_gates(self.quantitative)
            self.gates_enabled = False

    def enable_gates(self) -> None:
        """Apply the structural gates again after `disable_gates()`."""
        if self._structural is not None and not self.gates_enabled:
            install_gates(self.quantitative, self.sites, self.tape, records=False)
            self.gates_enabled = True

    @contextlib.contextmanager
    def ungated(self) -> Iterator[DualCopy]:
        """Within the block the quantitative copy picks its own regimes, as a plain model does (e.g.
        for a calibration warm-up); its gates are back in place afterwards."""
        was_gating = self.gating
        self.disable_gates()
        try:
            yield self
        finally:
            if was_gating:
                self.enable_gates()

    @torch.no_grad()
    def sync_structural(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Re-freeze the structural copy from the quantitative copy's current weights (after a
        calibration warm-up), or from `state`, a state dict it had earlier; a cached gate is then stale,
        so the cache is emptied."""
        state = self.quantitative.state_dict() if state is None else state
        missing, _ = self._structural.load_state_dict(state, strict=False)
        if missing:
            raise GatingError(f"The structural copy has tensors the quantitative copy lacks: {missing[:8]}")
        if self.gate_cache is not None:
            self.gate_cache = GateCache(self.gate_cache.max_bytes, verify=self.gate_cache.verify)

    def enable_gate_cache(self, max_bytes: int, verify: bool = True) -> GateCache:
        """Cache gates per sample (see `GateCache`); forward then needs `gate_keys`. Opt-in: only
        valid when a sample's input is identical every time it is seen (no random augmentation)."""
        self.gate_cache = GateCache(max_bytes, verify=verify) if self.gating else None
        return self.gate_cache

    def disable_gate_cache(self) -> None:
        self.gate_cache = None

    def forward(
        self,
        x: torch.Tensor,
        *args: Any,
        gates: list[tuple[str, Gate]] | None = None,
        gate_keys: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Forward through the quantitative copy with the structural gates for the same input.

        `gates` (from `compute_gates`) skips the structural pass; `gate_keys` (one id per sample,
        e.g. the dataset index) looks gates up in the gate cache, when one is enabled.
        """
        if not self.gating:
            return self.quantitative(x, *args, **kwargs)
        cache = self.gate_cache if gate_keys is not None else None
        if gates is None and cache is not None:
            gates = cache.lookup(gate_keys, x)
            if gates is None:
                gates = self.compute_gates(x, *args, **kwargs)
                cache.store(gate_keys, x, gates)
        if gates is None:
            gates = self.compute_gates(x, *args, **kwargs)
        self.tape.load(gates)
        try:
            out = self.quantitative(x, *args, **kwargs)
            if self.tape.cursor != len(gates):
                raise GatingError(
                    f"The quantitative copy used {self.tape.cursor} of {len(gates)} structural gates: "
                    "the copies must have the same control flow."
                )
            return out
        finally:
            self.tape.clear()

    def extra_repr(self) -> str:
        if self._structural is None:
            return "gating=False"
        if not self.gates_enabled:
            return f"gated_units={len(self.sites)}, gates disabled"
        return f"gated_units={len(self.sites)}, structural=<frozen copy, not a submodule>"
