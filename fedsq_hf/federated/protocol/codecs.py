"""Update codecs: what a client's update becomes on the wire, and back. The codec sits between a
client's `local - global` and the server's sum; the identity (default) sends fp32 as it is, so the
simulator's one-all-reduce fast path stays a plain sum. A codec says how many bytes it sends, which is
what the traffic figures count. `register_codec` adds one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ...errors import FedSQError
from .params import tensor_bytes

__all__ = ["UpdateCodec", "IdentityCodec", "Float16Codec", "CODECS", "register_codec", "make_codec"]


class UpdateCodec:
    """Encodes a client's update (named tensors) for the wire and decodes it on the server. Codecs are
    stateless: the same instance encodes for every client of a simulation (one with client memory, such as an
    error-feedback residual, needs a place for it in `ClientState` first)."""

    name: ClassVar[str]

    def encode(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, payload: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def num_bytes(payload: Mapping[str, torch.Tensor]) -> int:
        """Bytes `payload` takes on the wire."""
        return tensor_bytes(payload)


class IdentityCodec(UpdateCodec):
    """fp32 tensors as they are (no copy)."""

    name = "identity"

    def encode(self, update):
        return update

    def decode(self, payload):
        return dict(payload)


class Float16Codec(UpdateCodec):
    """Half the bytes: each value rounded to fp16 (values beyond fp16's range are clamped, not infinite)."""

    name = "fp16"

    def encode(self, update):
        limit = torch.finfo(torch.float16).max
        return {k: t.clamp(-limit, limit).half() for k, t in update.items()}

    def decode(self, payload):
        return {k: t.float() for k, t in payload.items()}


CODECS: dict[str, type[UpdateCodec]] = {}


def register_codec(cls: type[UpdateCodec]) -> type[UpdateCodec]:
    """Make `cls` reachable by its `name` (`--update-codec NAME`); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, UpdateCodec)):
        raise FedSQError(f"register_codec takes an UpdateCodec subclass, got {cls!r}.")
    CODECS[cls.name] = cls
    return cls


def make_codec(name: str) -> UpdateCodec:
    if name not in CODECS:
        raise FedSQError(f"--update-codec must be one of {sorted(CODECS)}, got {name!r}")
    return CODECS[name]()


register_codec(IdentityCodec)
register_codec(Float16Codec)
