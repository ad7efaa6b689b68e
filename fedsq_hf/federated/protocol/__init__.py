"""What client and server share: the round config and the client's update, seeds, the packing of a
model's tensors, and the update codecs."""

from .codecs import CODECS, Float16Codec, IdentityCodec, UpdateCodec, make_codec, register_codec
from .params import ModelTensors, ParamLayout, squared_norm, tensor_bytes
from .seeds import client_seed
from .update import ClientUpdate, FitConfig, Scalar

__all__ = ["ClientUpdate", "FitConfig", "Scalar", "client_seed", "ModelTensors", "ParamLayout", "tensor_bytes", "squared_norm",
           "UpdateCodec", "IdentityCodec", "Float16Codec", "CODECS", "register_codec", "make_codec"]
