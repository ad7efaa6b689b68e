"""`PrivacyArguments`: client-level differential privacy (DP-FedAvg) of a run, the fields `FederatedArguments`
takes from it, and the strategy wrapper and accounting they lead to (README, Privacy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fields import argument, require
from ..server import (DP_CLIPPING, DP_NOISE_SOURCES, DP_STRATEGIES, AdaptiveClipping, ClientLevelDP, PrivacyAccount,
                      Strategy, dp_noise_multiplier)

__all__ = ["PrivacyArguments"]


@dataclass
class PrivacyArguments:
    """Mixed into `FederatedArguments`, whose `num_clients`, `clients_per_round`, `rounds`, `seed` and
    `strategy` it reads."""

    dp_clip_norm: float | None = argument(
        None, resume="same",
        help="client-level differential privacy (DP-FedAvg): clip each client's update to this L2 norm (the first "
             "round's, with --dp-clip-quantile), weight the clients equally and add Gaussian noise to their sum on "
             "the server; needs --dp-noise-multiplier or --dp-target-epsilon (README, Privacy)")
    dp_noise_multiplier: float | None = argument(
        None, help="the noise's standard deviation as a multiple of --dp-clip-norm (z > 0)", resume="same")
    dp_target_epsilon: float | None = argument(
        None, resume="same",
        help="privacy budget epsilon: alone, picks the smallest --dp-noise-multiplier that keeps --rounds within it "
             "(Opacus, RDP); with --dp-noise-multiplier, the run stops before a round would exceed it")
    dp_delta: float | None = argument(
        None, help="delta of the (epsilon, delta) guarantee (default 1 / num_clients^1.1)", resume="same")
    dp_clip_quantile: float | None = argument(
        None, resume="same",
        help="adaptive clipping (Andrew et al. 2021): move the bound each round towards this quantile of the "
             "clients' update norms (e.g. 0.5), from a noised count of the clients it did not clip")
    dp_clip_lr: float = argument(0.2, help="adaptive clipping: the bound's geometric learning rate", resume="same")
    dp_clipped_count_stddev: float | None = argument(
        None, resume="same",
        help="adaptive clipping: the noise of the count of unclipped clients (default clients per round / 20)")
    dp_clipping: Literal[DP_CLIPPING] = argument(
        "server", resume="same",
        help="where updates are clipped: server (it sees raw updates), or client (each client clips its own before "
             "it leaves; the server clips again, so the bound holds whatever a client sends)")
    dp_noise_source: Literal[DP_NOISE_SOURCES] | None = argument(
        None, resume="same",
        help="seeded: the noise from a generator seeded by (seed, round), reproducible and resumed exactly; os: a "
             "fresh seed from the OS each round. Default: seeded in the simulator, os in the Flower runtime")

    dp_sgd_delta: float | None = argument(
        None, resume="same", help="DP-SGD: delta of each client's (epsilon, delta) (default 1 / its samples^1.1)")

    def check_privacy(self) -> None:
        z, target, delta, clip = self.dp_noise_multiplier, self.dp_target_epsilon, self.dp_delta, self.dp_clip_norm
        require([
            (clip is None or clip > 0, f"--dp-clip-norm must be > 0, got {clip}"),
            (z is None or z > 0, f"--dp-noise-multiplier must be > 0 (no noise is no privacy), got {z}"),
            (target is None or target > 0, f"--dp-target-epsilon must be > 0, got {target}"),
            (delta is None or 0 < delta < 1, f"--dp-delta must be in (0, 1), got {delta}"),
            (clip is None or z is not None or target is not None,
             "--dp-clip-norm needs --dp-noise-multiplier or --dp-target-epsilon (how much noise to add)"),
            (clip is None or self.strategy in DP_STRATEGIES,
             f"--dp-clip-norm needs --strategy {', '.join(DP_STRATEGIES)}: {self.strategy}'s step has no sensitivity "
             "bound from clipping"),
            (self.dp_sgd_delta is None or 0 < self.dp_sgd_delta < 1, f"--dp-sgd-delta must be in (0, 1), got {self.dp_sgd_delta}"),
            (self.dp_sgd_noise_multiplier is None or self.strategy != "fedprox",
             "DP-SGD with --strategy fedprox: the proximal term's gradient is not a per-sample gradient Opacus can "
             "clip; use fedavg, fedavgm or fedadam"),
            (self.dp_noise_source in (None, *DP_NOISE_SOURCES),
             f"--dp-noise-source must be one of {list(DP_NOISE_SOURCES)}, got {self.dp_noise_source!r}"),
        ])
        self.adaptive_clipping()

    def adaptive_clipping(self) -> AdaptiveClipping | None:
        """`--dp-clip-quantile`'s rule (None: a fixed bound)."""
        if self.dp_clip_quantile is None:
            return None
        return AdaptiveClipping(self.dp_clip_quantile, self.dp_clip_lr, self.dp_clipped_count_stddev)

    def privacy_account(self) -> PrivacyAccount | None:
        """The run's (epsilon, delta) accounting under `--dp-clip-norm` (its noise multiplier picked from
        `--dp-target-epsilon` where not given); None without DP."""
        if self.dp_clip_norm is None:
            return None
        rate = (self.clients_per_round or self.num_clients) / self.num_clients
        delta = self.dp_delta if self.dp_delta is not None else self.num_clients ** -1.1
        z = self.dp_noise_multiplier
        if z is None:
            z = dp_noise_multiplier(self.dp_target_epsilon, rate, self.rounds, delta)
        return PrivacyAccount(z, rate, delta, self.dp_target_epsilon)

    def make_private(self, strategy: Strategy, noise_source: str = "seeded") -> Strategy:
        """`strategy` inside `ClientLevelDP` with `--dp-clip-norm` (`noise_source`: the runtime's default of
        `--dp-noise-source`), else itself."""
        privacy = self.privacy_account()
        if privacy is None:
            return strategy
        return ClientLevelDP(strategy, self.dp_clip_norm, privacy.noise_multiplier,
                             self.clients_per_round or self.num_clients, self.seed, self.adaptive_clipping(),
                             self.dp_clipping, self.dp_noise_source or noise_source)
