"""fedsq-hf: FedSQ (Federated Structural-Quantitative learning) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .errors import BackboneLoadError, CheckpointError, FedSQError, GatingError, UnsupportedArgumentError
from .gating import GATE_KINDS, DualCopy, GateTape, find_gateable_modules, register_gate, remove_gates
from .gate_cache import GateCache
from .configuration_fedsq import FedSQConfig
from .modeling_fedsq import FedSQModel
from .image_processing_fedsq import FedSQImageClassificationPipeline, FedSQImageProcessor
from .backbones import load_backbone
from .convert import convert_efficientnet_lite0
from .hub import model_card
from .gate_drift import GateRecorder, gate_drift

__all__ = [
    "FedSQConfig", "FedSQModel", "FedSQImageProcessor", "FedSQImageClassificationPipeline", "load_backbone",
    "convert_efficientnet_lite0", "model_card", "DualCopy", "GateTape", "GATE_KINDS", "find_gateable_modules",
    "register_gate", "remove_gates", "GateCache", "GateRecorder", "gate_drift",
    "FedSQError", "BackboneLoadError", "CheckpointError", "GatingError", "UnsupportedArgumentError",
]
