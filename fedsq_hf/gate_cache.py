"""Per-sample cache of structural gates, for inputs that repeat exactly across epochs and rounds.

The structural copy is frozen, so a sample's gates never change as long as the sample's pixels do
not (no random augmentation). Masks are stored bit-packed, max-pool argmaxes as int16/int32, one
uint8 row per sample, up to `max_bytes`. Each row also keeps a fingerprint of the input; a cached
sample whose pixels changed raises an error instead of silently using stale gates. The cache records
the per-sample input shape, so a cache attached to a model it was not built for is refused up front.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .errors import CheckpointError, GatingError
from .serialization import atomic_write_bytes

__all__ = ["GateCache"]

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(B, ...) bool -> (B, ceil(n / 8)) uint8."""
    flat = mask.flatten(1)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    bits = flat.view(flat.shape[0], -1, 8).to(torch.uint8) * _BIT_WEIGHTS.to(flat.device)
    return bits.sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    bits = packed.unsqueeze(-1).bitwise_and(_BIT_WEIGHTS.to(packed.device)).ne(0)
    return bits.flatten(1)[:, : math.prod(shape)].view(packed.shape[0], *shape)


class _Field:
    """How one gate tensor (per sample) is stored: its shape, dtype and byte width."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape = tuple(tensor.shape[1:])
        self.dtype = tensor.dtype
        n = math.prod(self.shape)
        if tensor.dtype == torch.bool:
            self.store_dtype, self.nbytes = torch.uint8, (n + 7) // 8
        else:  # integer indices (max-pool argmax)
            bound = int(tensor.max()) if tensor.numel() else 0
            self.store_dtype = torch.int16 if bound < 2**15 else torch.int32
            self.nbytes = n * self.store_dtype.itemsize

    def describe(self) -> list:
        return [list(self.shape), str(self.dtype), str(self.store_dtype), self.nbytes]

    @classmethod
    def described(cls, shape: list[int], dtype: str, store_dtype: str, nbytes: int) -> _Field:
        field = cls.__new__(cls)
        field.shape = tuple(int(n) for n in shape)
        field.dtype, field.store_dtype = (getattr(torch, name.removeprefix("torch.")) for name in (dtype, store_dtype))
        n = math.prod(field.shape)
        field.nbytes = (n + 7) // 8 if field.dtype == torch.bool else n * field.store_dtype.itemsize
        if nbytes != field.nbytes:
            raise ValueError(f"a gate of shape {list(shape)} takes {field.nbytes} bytes, the layout says {nbytes}")
        return field

    def encode(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Stored bytes, or None if an index does not fit the width chosen on the first batch."""
        if self.dtype == torch.bool:
            return _pack_bits(tensor)
        if self.store_dtype == torch.int16 and int(tensor.max()) >= 2**15:
            return None
        return tensor.flatten(1).to(self.store_dtype).view(torch.uint8)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.bool:
            return _unpack_bits(raw, self.shape)
        return raw.contiguous().view(self.store_dtype).to(self.dtype).view(raw.shape[0], *self.shape)


class GateCache:
    """Bit-packed structural gates keyed by sample id (e.g. the dataset row index).

    Args:
        max_bytes: memory bound for stored rows; samples past it are simply not cached.
        verify: check each cached sample's input fingerprint on lookup.
    """

    def __init__(self, max_bytes: int, verify: bool = True) -> None:
        if max_bytes <= 0:
            raise ValueError(f"GateCache max_bytes must be positive, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.verify = verify
        self.hits = 0
        self.misses = 0
        self._layout: list[tuple[str, list[_Field], bool]] | None = None  # (site, fields, is_tuple)
        self._row_bytes = 0
        self._rows = torch.empty(0, 0, dtype=torch.uint8)
        self._fingerprints = torch.empty(0)
        self._used = 0
        self._row_of_key = torch.empty(0, dtype=torch.long)
        self._probe: torch.Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None  # of one sample, set by the first `store`
        self.path: str | None = None  # the file it was loaded from, for error messages
        self._lock = threading.Lock()  # store and lookup from concurrent forward calls

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def bytes_used(self) -> int:
        return self._used * (self._row_bytes + 4)

    def __len__(self) -> int:
        return self._used

    def save(self, path: str | os.PathLike) -> None:
        """Write the cached gates to `path` (safetensors, atomically), for `load` in another process."""
        layout = [[site, [f.describe() for f in fields], is_tuple] for site, fields, is_tuple in self._layout or []]
        tensors = {"rows": self._rows[: self._used], "fingerprints": self._fingerprints[: self._used],
                   "row_of_key": self._row_of_key}
        metadata = {"format": "pt", "layout": json.dumps(layout), "input_shape": json.dumps(self.input_shape)}
        atomic_write_bytes(path, save({k: t.contiguous() for k, t in tensors.items()}, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int, verify: bool = True) -> GateCache:
        """The cache `save` wrote: empty if it holds more than `max_bytes` or predates recorded input shapes
        (it then fills again); a damaged file raises `CheckpointError`. Attaching it to a model
        (`model.dual_copy.gate_cache = cache`) checks that its gates fit that model."""
        cache = cls(max_bytes, verify)
        cache.path = os.fspath(path)
        try:
            with safe_open(cache.path, framework="pt") as f:
                meta = f.metadata() or {}
                layout = json.loads(meta["layout"])
                input_shape = json.loads(meta.get("input_shape", "null"))
                rows, prints, row_of_key = (f.get_tensor(k) for k in ("rows", "fingerprints", "row_of_key"))
            if not layout or input_shape is None or rows.numel() + 4 * len(rows) > max_bytes:
                return cache
            fields = [(site, [_Field.described(*f) for f in fields], is_tuple) for site, fields, is_tuple in layout]
            row_bytes = sum(f.nbytes for _, fs, _ in fields for f in fs)
            if not (rows.dtype == torch.uint8 and rows.dim() == 2 and rows.shape[1] == row_bytes
                    and prints.shape == (len(rows),) and row_of_key.dtype == torch.long and row_of_key.dim() == 1
                    and bool(((row_of_key >= -1) & (row_of_key < len(rows))).all())):
                raise ValueError(f"its tensors (rows {list(rows.shape)} {rows.dtype}, fingerprints {list(prints.shape)}, "
                                 f"row_of_key {list(row_of_key.shape)} {row_of_key.dtype}) do not fit its layout of "
                                 f"{len(fields)} gates, {row_bytes} bytes per sample")
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"{cache.path!r} is not a gate cache as GateCache.save writes it ({type(err).__name__}: {err}). "
                "Delete it: the cache fills again from the structural copy."
            ) from err
        cache._layout, cache._row_bytes, cache.input_shape = fields, row_bytes, tuple(input_shape)
        cache._rows, cache._fingerprints, cache._row_of_key, cache._used = rows, prints, row_of_key, len(rows)
        return cache

    def check_layout(self, gates: list) -> None:
        """Raise `GatingError` unless `gates` (from `DualCopy.compute_gates`) have the sites, shapes and dtypes of
        the cached ones: a cache built for another backbone, gated_ops or image size would feed wrong gates."""
        if self._layout is None:
            return
        found = [(site, [(list(f.shape), f.dtype) for f in fields]) for site, fields, _ in self._layout]
        expected = [(site, [(list(t.shape[1:]), t.dtype) for t in (g if isinstance(g, tuple) else (g,))])
                    for site, g in gates]
        if found == expected:
            return
        i = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        show = lambda gates: f"{gates[i][0]!r} of shape {[s for s, _ in gates[i][1]]}" if i < len(gates) else "none"  # noqa: E731
        raise GatingError(
            f"The gate cache {self.path or '(in memory)'} does not fit this model: it holds {len(found)} gates per "
            f"sample, the model makes {len(expected)}; gate {i} is {show(found)} in the cache, {show(expected)} in "
            "the model. It was built for another backbone, gated_ops or image size: delete the file, or call "
            "enable_gate_cache() for a fresh cache."
        )

    def _fingerprint(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.detach().flatten(1).float()
        if self._probe is None or self._probe.numel() != flat.shape[1]:
            gen = torch.Generator().manual_seed(0)
            self._probe = torch.rand(flat.shape[1], generator=gen)
        return (flat @ self._probe.to(flat.device)).cpu()

    def lookup(self, keys: torch.Tensor, inputs: torch.Tensor) -> list | None:
        """Gates for every sample of the batch, or None if any sample is not cached."""
        with self._lock:
            return self._lookup(keys, inputs)

    def _lookup(self, keys: torch.Tensor, inputs: torch.Tensor) -> list | None:
        if self._layout is not None and tuple(inputs.shape[1:]) != self.input_shape:
            raise GatingError(
                f"The gate cache {self.path or '(in memory)'} holds the gates of inputs of shape "
                f"{list(self.input_shape)}, not {list(inputs.shape[1:])}. Keep the image size it was built for, or "
                "call enable_gate_cache() for a fresh cache."
            )
        keys = keys.detach().cpu().long()
        if self._layout is None or keys.numel() == 0 or int(keys.max()) >= len(self._row_of_key):
            self.misses += 1
            return None
        rows = self._row_of_key[keys]
        if bool((rows < 0).any()):
            self.misses += 1
            return None
        if self.verify:
            expected = self._fingerprints[rows]
            actual = self._fingerprint(inputs)
            bad = (actual - expected).abs() > 1e-3 * (expected.abs() + 1)
            if bool(bad.any()):
                raise GatingError(
                    f"Inputs of cached samples {keys[bad][:8].tolist()} changed since their gates were "
                    "cached. The gate cache needs inputs that repeat exactly (no random augmentation): "
                    "turn augmentation off or disable the gate cache."
                )
        self.hits += 1
        raw = self._rows[rows].to(inputs.device)
        gates, offset = [], 0
        for site, fields, is_tuple in self._layout:
            parts = []
            for field in fields:
                parts.append(field.decode(raw[:, offset : offset + field.nbytes]))
                offset += field.nbytes
            gates.append((site, tuple(parts) if is_tuple else parts[0]))
        return gates

    def store(self, keys: torch.Tensor, inputs: torch.Tensor, gates: list) -> None:
        """Cache the gates of a batch (as returned by `DualCopy.compute_gates`)."""
        with self._lock:
            self._store(keys, inputs, gates)

    def _store(self, keys: torch.Tensor, inputs: torch.Tensor, gates: list) -> None:
        keys = keys.detach().cpu().long()
        if self._layout is None:
            self.input_shape = tuple(inputs.shape[1:])
            self._layout = [
                (site, [_Field(t) for t in (g if isinstance(g, tuple) else (g,))], isinstance(g, tuple))
                for site, g in gates
            ]
            self._row_bytes = sum(f.nbytes for _, fields, _ in self._layout for f in fields)
        room = self.max_bytes // (self._row_bytes + 4) - self._used
        new = keys >= len(self._row_of_key)
        if not bool(new.all()):
            new |= self._row_of_key[keys.clamp(max=len(self._row_of_key) - 1)] < 0
        select = new.nonzero().flatten()[: max(room, 0)]
        if select.numel() == 0:
            return
        parts = [
            field.encode(t)
            for (_, fields, _), (_, g) in zip(self._layout, gates)
            for field, t in zip(fields, g if isinstance(g, tuple) else (g,))
        ]
        if any(p is None for p in parts):
            return
        encoded = torch.cat(parts, dim=1)[select.to(inputs.device)].cpu()
        self._grow(self._used + len(select), int(keys.max()) + 1)
        rows = torch.arange(self._used, self._used + len(select))
        self._rows[rows] = encoded
        self._fingerprints[rows] = self._fingerprint(inputs[select.to(inputs.device)])
        self._row_of_key[keys[select]] = rows
        self._used += len(select)

    def _grow(self, rows_needed: int, keys_needed: int) -> None:
        if rows_needed > self._rows.shape[0]:
            capacity = max(rows_needed, 2 * self._rows.shape[0], 256)
            capacity = min(capacity, self.max_bytes // (self._row_bytes + 4))
            rows = torch.empty(capacity, self._row_bytes, dtype=torch.uint8)
            prints = torch.empty(capacity)
            if self._used:
                rows[: self._used] = self._rows[: self._used]
                prints[: self._used] = self._fingerprints[: self._used]
            self._rows, self._fingerprints = rows, prints
        if keys_needed > len(self._row_of_key):
            grown = torch.full((max(keys_needed, 2 * len(self._row_of_key)),), -1, dtype=torch.long)
            grown[: len(self._row_of_key)] = self._row_of_key
            self._row_of_key = grown
