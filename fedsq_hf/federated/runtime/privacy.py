"""What a run's round loop does for differential privacy: the checks that need the model, the budget stop,
epsilon in every round's record and in the summary, one OS-drawn noise seed on every process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast

from ...errors import FedSQError
from ..data import ClientBatches
from ..server import ClientLevelDP, GlobalModel, SampleLevelAccount, Strategy

if TYPE_CHECKING:
    from ..cli.arguments import FederatedArguments

__all__ = ["RunPrivacy"]

logger = logging.getLogger(__name__)


class RunPrivacy:
    """Client-level DP (`strategy` a `ClientLevelDP`, accounted per round) and sample-level DP-SGD (each
    client's own epsilon, once `start` has the clients' sizes)."""

    def __init__(self, args: FederatedArguments, strategy: Strategy, global_model: GlobalModel, bn_mode: str) -> None:
        self.args, self.client_level = args, args.privacy_account()
        self.dp = strategy if isinstance(strategy, ClientLevelDP) else None
        if self.client_level is not None and self.dp is None:
            raise FedSQError(f"--dp-clip-norm: the strategy {strategy.describe()['name']!r} adds no noise; pass "
                             "args.make_strategy() (ClientLevelDP around it), or leave --dp-clip-norm out.")
        if self.dp is not None:
            if bn_mode == "train":
                raise FedSQError("--dp-clip-norm with --bn-mode train: BatchNorm's running statistics would be "
                                 "averaged without noise; use --bn-mode frozen or local (FedBN: they stay at the client).")
            self.dp.noised_only(global_model.trained_mask())
        self.sample_level: SampleLevelAccount | None = None

    def start(self, sizes: list[int]) -> None:
        """The clients' sample counts, for DP-SGD's accounting."""
        args = self.args
        if args.dp_sgd_noise_multiplier is None:
            return
        batches = ClientBatches(args.batch_size)
        steps = [args.local_steps or args.local_epochs * batches.steps_per_epoch(n) for n in sizes]
        self.sample_level = SampleLevelAccount(args.dp_sgd_noise_multiplier, args.batch_size, tuple(sizes), tuple(steps),
                                               args.dp_sgd_delta)

    def allows(self, round_: int, is_main_process: bool) -> bool:
        """Whether round `round_` stays within `--dp-target-epsilon` (a warning when it does not)."""
        account = self.client_level
        if account is None or account.allows(round_):
            return True
        if is_main_process:
            logger.warning("Stopping before round %d: epsilon would be %.4g, past --dp-target-epsilon %g.",
                           round_, account.epsilon(round_), account.target_epsilon)
        return False

    def begin_round(self, accelerator: Accelerator) -> None:
        """After the strategy's `begin_round`: an OS-drawn noise seed made the same on every process."""
        if self.dp is not None and self.dp.noise_source == "os":
            seed = torch.tensor([self.dp.noise_seed], dtype=torch.int64, device=accelerator.device)
            self.dp.noise_seed = int(broadcast(seed).item())

    def record(self, round_: int, history: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, float]:
        """Epsilon after `record`'s round: the run's (client level), the worst-off client's (DP-SGD)."""
        out = {} if self.client_level is None else {"dp_epsilon": self.client_level.epsilon(round_)}
        if self.sample_level is not None:
            out["dp_sgd_epsilon"] = max(self.sample_level.epsilons([*history, record]))
        return out

    def summary(self, rounds: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        out = {} if self.client_level is None else {"privacy": self.client_level.describe(rounds)}
        if self.sample_level is not None:
            out["dp_sgd"] = self.sample_level.describe(history)
        return out
