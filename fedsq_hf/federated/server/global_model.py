"""The server's global model: its shared tensors as one flat fp32 vector (what strategies update), FedBN's
local states, and both written into the model for evaluation and saving."""

from __future__ import annotations

import torch

from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..protocol import ModelTensors, ParamLayout
from .local_states import LocalStates
from .strategies import Strategy

__all__ = ["GlobalModel"]


class GlobalModel:
    """The global state of `model` (its tensors as built: the pretrained or calibrated start) in a federation
    of `num_clients` clients."""

    def __init__(self, model: FedSQModel, num_clients: int) -> None:
        self.model = model
        tensors = self.tensors
        self.layout, self.local_layout = ParamLayout(tensors.shared), ParamLayout(tensors.local)
        self.vector = self.layout.flatten(tensors.shared)
        self.local_states = LocalStates(self.local_layout, self.local_layout.flatten(tensors.local), num_clients) \
            if len(self.local_layout) else None

    @property
    def tensors(self) -> ModelTensors:
        """The model's own state tensors, by role (read anew: `model.to(...)` may replace them)."""
        return ModelTensors.of(self.model)

    def trained_mask(self) -> torch.Tensor:
        """True on the coordinates of `vector` that clients train: parameters, not BatchNorm's running
        statistics (which `--bn-mode frozen` clients never change)."""
        trained = {k for k, p in self.model.named_parameters() if p.requires_grad}
        return torch.cat([torch.full((shape.numel(),), k in trained) for k, shape in self.layout.shapes.items()])

    def params(self) -> dict[str, torch.Tensor]:
        """The shared tensors by state-dict key (views into `vector`): what clients start a round from."""
        return self.layout.unflatten(self.vector)

    def step(self, strategy: Strategy, update: torch.Tensor, round_: int) -> None:
        """Apply the round's aggregated update with the strategy's server update; refuse a non-finite result."""
        strategy.server_update(self.vector, update.to(self.vector.device))
        if not bool(torch.isfinite(self.vector).all()):  # not written: the last checkpoint stays good
            raise FedSQError(f"Round {round_}: the server update made the global model non-finite; lower "
                             "--server-lr (or --lr), or try --strategy fedavg.")

    def write(self) -> None:
        """The global model into the model (under FedBN, with the clients' mean BatchNorm)."""
        local = self.local_layout.unflatten(self.local_states.mean()) if self.local_states else {}
        self.tensors.load({**self.params(), **local})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of it."""
        return {"global_state": self.vector, **(self.local_states.tensors() if self.local_states else {})}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Take a checkpoint's tensors and write the global model; False if they do not fit this model."""
        vector = tensors.get("global_state")
        if vector is None or vector.shape != self.vector.shape \
                or (self.local_states is not None and not self.local_states.load(tensors)):
            return False
        self.vector = vector.to(self.vector.device)
        self.write()
        return True
