"""Privacy accounting with Opacus's RDP accountant for the subsampled Gaussian mechanism: client-level DP
(DP-FedAvg), one step per round with the round's client sampling rate; sample-level DP-SGD, each client's
local steps at its batch sampling rate.

The RDP bound is Poisson subsampling's (each client in a round with probability q = clients per round /
clients). The rounds here sample a fixed number of clients without replacement; the bound is the one
Flower, TensorFlow Federated and Opacus report for such sampling, but strictly it is Poisson's (README,
Privacy)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ...errors import FedSQError

__all__ = ["dp_epsilon", "dp_noise_multiplier", "PrivacyAccount", "SampleLevelAccount", "MAX_NOISE_MULTIPLIER"]

MAX_NOISE_MULTIPLIER = 100  # beyond it a target epsilon is refused: noise of 100x the clipping bound per coordinate


@functools.lru_cache(maxsize=4096)
def dp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after `rounds` steps of the subsampled Gaussian mechanism (RDP, Opacus)."""
    from opacus.accountants import RDPAccountant

    if rounds == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)  # a run's arguments ask for it more than once (checks, strategy, account)
def dp_noise_multiplier(target_epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier that keeps `rounds` rounds within (`target_epsilon`, `delta`) (Opacus's
    `get_noise_multiplier`, RDP); `FedSQError` when no sane one can."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        z = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                 steps=rounds, accountant="rdp", epsilon_tolerance=target_epsilon * 1e-3)
    except ValueError as err:
        raise FedSQError(f"--dp-target-epsilon {target_epsilon}: no noise multiplier meets it over {rounds} rounds at "
                         f"sampling rate {sample_rate:g} and delta {delta:g} ({err}); raise the target, or sample fewer "
                         "clients per round or run fewer rounds.") from None
    if z > MAX_NOISE_MULTIPLIER:
        raise FedSQError(f"--dp-target-epsilon {target_epsilon} over {rounds} rounds needs noise multiplier {z:.0f} (> "
                         f"{MAX_NOISE_MULTIPLIER}): the noise would drown the updates of any federation. Raise the "
                         "target, or sample fewer clients per round or run fewer rounds.")
    return float(z)


@dataclass(frozen=True)
class PrivacyAccount:
    """A run's client-level (epsilon, delta): noise multiplier z, the rounds' client sampling rate q, delta,
    and the budget the run may not exceed (None: none)."""

    noise_multiplier: float
    sample_rate: float
    delta: float
    target_epsilon: float | None = None

    def epsilon(self, rounds: int) -> float:
        return dp_epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta)

    def allows(self, rounds: int) -> bool:
        """Whether `rounds` rounds stay within the budget."""
        return self.target_epsilon is None or self.epsilon(rounds) <= self.target_epsilon * (1 + 1e-6)

    def describe(self, rounds: int) -> dict[str, float | int | str | None]:
        """What the summary and the model card say of it after `rounds` rounds."""
        return {"mechanism": "DP-FedAvg (client level)", "accountant": "RDP (Opacus), Poisson subsampling bound",
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "delta": self.delta,
                "target_epsilon": self.target_epsilon, "rounds": rounds, "epsilon": self.epsilon(rounds)}


@dataclass(frozen=True)
class SampleLevelAccount:
    """Each client's record-level (epsilon, delta) under DP-SGD: `steps_per_round[c]` local steps at sampling
    rate batch size / `sizes[c]` in every round it trains (sampled and not dropped out: a client whose reply
    never came counts, its records may have been used). `delta` default: 1 / sizes[c]^1.1 for each client."""

    noise_multiplier: float
    batch_size: int
    sizes: tuple[int, ...]
    steps_per_round: tuple[int, ...]
    delta: float | None = None

    def client_delta(self, client: int) -> float:
        return self.delta if self.delta is not None else self.sizes[client] ** -1.1

    def epsilons(self, history: list[dict]) -> list[float]:
        """Every client's epsilon after the rounds of `history` (records with `clients` and `dropped_clients`)."""
        rounds = [0] * len(self.sizes)
        for record in history:
            for c in set(record["clients"]) - set(record["dropped_clients"]):
                rounds[c] += 1
        return [dp_epsilon(self.noise_multiplier, min(1.0, self.batch_size / n), k * s, self.client_delta(c))
                for c, (n, s, k) in enumerate(zip(self.sizes, self.steps_per_round, rounds))]

    def describe(self, history: list[dict]) -> dict[str, Any]:
        epsilons = self.epsilons(history)
        return {"mechanism": "DP-SGD (sample level, Opacus)", "accountant": "RDP (Opacus), Poisson subsampling bound",
                "noise_multiplier": self.noise_multiplier, "batch_size": self.batch_size,
                "delta": self.delta if self.delta is not None else "1 / client samples^1.1",
                "epsilon": max(epsilons), "epsilon_by_client": epsilons}
