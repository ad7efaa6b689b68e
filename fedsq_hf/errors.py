"""Exceptions raised by fedsq-hf. Each message names the problem and the fix."""


class FedSQError(ValueError):
    """Base class for fedsq-hf errors caused by bad input."""


class GatingError(FedSQError):
    """The backbone or the call cannot be gated as asked."""


class BackboneLoadError(FedSQError, OSError):
    """The backbone could not be found or read."""


class CheckpointError(FedSQError, OSError):
    """A saved checkpoint is missing, corrupted or does not match the model."""


class UnsupportedArgumentError(FedSQError, TypeError):
    """An argument that transformers accepts but FedSQ models cannot honour (or do not know)."""
