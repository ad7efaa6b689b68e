"""What travels between server and client in a round: the round config the server sends with the global
weights, and the `ClientUpdate` a client sends back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

import torch

from ...errors import FedSQError

__all__ = ["ClientUpdate", "FitConfig", "Scalar"]

Scalar = Union[int, float, str, bool]


@dataclass(frozen=True)
class FitConfig:
    """The round config of one client's fit, as the server sends it (a flat dict of scalars, like a
    Flower `ConfigRecord`): `seed` drives every random draw of the client's round (data order,
    augmentation, dropout), `lr` is the round's learning rate (default: the client's own `--lr`), and
    `proximal_mu` the weight of FedProx's proximal term (0: none), `dp_clip_norm` the bound the client
    clips its update to before sending it (0: none; client-side clipping of client-level DP), and
    `eval_samples` how many of its samples the client scores the global model it received on before
    training (0: none; federated evaluation, for `--freeze-gates auto`), and `label_share` whether it sends
    how many classes its round's labels span (`TrainResult.label_share`: one number, for `--skewed-gates auto`)."""

    seed: int
    lr: float | None = None
    proximal_mu: float = 0.0
    dp_clip_norm: float = 0.0
    eval_samples: int = 0
    label_share: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Scalar]) -> FitConfig:
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise FedSQError(f"The round config holds {unknown}, which a ClientTrainer does not read (it reads "
                             f"{sorted(cls.__dataclass_fields__)}); the server and the client run different versions.")
        if "seed" not in config:
            raise FedSQError("The round config has no 'seed': the server must send the seed of the client's round.")
        if float(config.get("proximal_mu", 0.0)) < 0:
            raise FedSQError(f"The round config's proximal_mu must be >= 0, got {config['proximal_mu']}.")
        if float(config.get("dp_clip_norm", 0.0)) < 0:
            raise FedSQError(f"The round config's dp_clip_norm must be >= 0, got {config['dp_clip_norm']}.")
        if int(config.get("eval_samples", 0)) < 0:
            raise FedSQError(f"The round config's eval_samples must be >= 0, got {config['eval_samples']}.")
        return cls(**config)


@dataclass
class ClientUpdate:
    """One client's reply to a fit.

    Args:
        tensors: the update `local - global` of every shared tensor, by state-dict key, as the client's
            codec encoded it (empty when `diverged`).
        num_samples: the samples it trained on (the weight of its update in a weighted mean).
        metrics: train metrics (`train_loss`, the mean loss of its steps; `steps`) and, where the config
            asked for `eval_samples`, how the received global model did on them (`ClientTrainer.score`).
        diverged: its training went wrong (non-finite or diverging loss, or non-finite weights): the
            server leaves it out of the round.
        local_state: what the client keeps for itself, sent for the server's evaluation only and never
            averaged (FedBN: its own BatchNorm, by state-dict key).
        num_bytes: the bytes its codec says `tensors` take on the wire.
    """

    tensors: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float | list[float]] = field(default_factory=dict)
    diverged: bool = False
    local_state: dict[str, torch.Tensor] = field(default_factory=dict)
    num_bytes: int = 0
