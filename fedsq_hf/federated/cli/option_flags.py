"""Which flags belong to which option: one table, so that a flag the chosen options never read is refused
(or, for settings a shared config may reasonably hold, warned about once) instead of silently doing nothing.
The strategies' own parameters (`--mu`, `--server-lr`, ...) are refused by the strategy that does not take
them (`FederatedArguments.make_strategy`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate import PartialState

from ...errors import FedSQError
from ..client import optimizer_takes_momentum
from ..fields import flag, given_fields

__all__ = ["OptionFlag", "OPTION_FLAGS", "check_option_flags", "unread_flags"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptionFlag:
    """`field` is read only when `applies(model, data, fed)`, which `needs` says in words; `warn`: a setting a
    shared config may hold (warn, do not refuse)."""

    field: str
    needs: str
    applies: Callable[[Any, Any, Any], bool]
    warn: bool = False


def _rows(fields: tuple[str, ...], needs: str, applies: Callable[[Any, Any, Any], bool],
          warn: bool = False) -> list[OptionFlag]:
    return [OptionFlag(f, needs, applies, warn) for f in fields]


OPTION_FLAGS: tuple[OptionFlag, ...] = (
    *_rows(("alpha", "min_partition_size"), "--partition dirichlet", lambda m, d, f: f.partition == "dirichlet"),
    *_rows(("shards_per_client",), "--partition shards", lambda m, d, f: f.partition == "shards"),
    *_rows(("local_epochs",), "--local-steps 0 (--local-steps replaces epochs)",
           lambda m, d, f: f.local_steps == 0 or f.local_epochs == 0),
    *_rows(("momentum",), "an --optim that takes momentum (sgd, ...) and more than one local step",
           lambda m, d, f: optimizer_takes_momentum(f.optim) and f.local_steps != 1),
    *_rows(("lr_scheduler",), "--rounds > 1 (a schedule across rounds)", lambda m, d, f: f.rounds > 1),
    *_rows(("trim_beta",), "--clients-per-round large enough to trim one (beta x clients >= 1)",
           lambda m, d, f: int(f.trim_beta * (f.clients_per_round or f.num_clients)) >= 1),
    *_rows(("allow_ungated",), "--model fedsq (a plain model gates nothing)", lambda m, d, f: m.model == "fedsq"),
    *_rows(("calibration_epochs",), "--calibration-samples > 0", lambda m, d, f: d.calibration_samples > 0),
    *_rows(("auto_augment", "re_prob", "crop_scale"), "--augment timm", lambda m, d, f: d.augment == "timm"),
    *_rows(("preload_budget_mb",), "--preload auto", lambda m, d, f: d.preload == "auto"),
    *_rows(("backbone_weights",), "a torchvision:<name> --backbone",
           lambda m, d, f: (m.backbone or "").startswith("torchvision:")),
    *_rows(("gate_probe_samples",), "--freeze-gates-when-drift-below",
           lambda m, d, f: f.freeze_gates_when_drift_below is not None),
    *_rows(("max_warmup_rounds",), "--freeze-gates-when-drift-below or --freeze-gates auto",
           lambda m, d, f: f.freeze_gates_when_drift_below is not None or f.freeze_gates == "auto"),
    *_rows(("gate_alignment_below", "skewed_gates"), "--freeze-gates auto", lambda m, d, f: f.freeze_gates == "auto"),
    *_rows(("client_eval_samples",), "--freeze-gates auto --skewed-gates global or auto",
           lambda m, d, f: f.freeze_gates == "auto" and f.skewed_gates != "pretrained"),
    *_rows(("label_share_below",), "--freeze-gates auto --skewed-gates auto",
           lambda m, d, f: f.freeze_gates == "auto" and f.skewed_gates == "auto"),
    *_rows(("dp_noise_multiplier", "dp_target_epsilon", "dp_delta", "dp_clip_quantile", "dp_clipping", "dp_noise_source"),
           "--dp-clip-norm", lambda m, d, f: f.dp_clip_norm is not None),
    *_rows(("dp_sgd_max_grad_norm", "dp_sgd_delta"), "--dp-sgd-noise-multiplier (DP-SGD)",
           lambda m, d, f: f.dp_sgd_noise_multiplier is not None),
    *_rows(("dp_clip_lr", "dp_clipped_count_stddev"), "--dp-clip-quantile (adaptive clipping)",
           lambda m, d, f: f.dp_clip_quantile is not None),
    *_rows(("hub_model_id", "hub_strategy", "hub_revision", "hub_private_repo", "hub_license"), "--push-to-hub",
           lambda m, d, f: f.push_to_hub, warn=True),
    *_rows(("hub_strategy",), "--save-every < --rounds (a checkpoint before the last round to push)",
           lambda m, d, f: f.hub_strategy == "end" or f.save_every < f.rounds or not f.push_to_hub),
)


def check_option_flags(model: Any, data: Any, fed: Any, table: tuple[OptionFlag, ...] = OPTION_FLAGS) -> list[str]:
    """Refuse (`FedSQError`) a flag that `table` says the chosen options never read; warn once about the
    `warn` ones. Returns the flags warned about."""
    unread = unread_flags(model, data, fed, given_fields(model) | given_fields(data) | given_fields(fed), table)
    refused = [row for row in unread if not row.warn]
    if refused:
        raise FedSQError("; ".join(f"{flag(r.field)} has no effect without {r.needs}" for r in refused)
                         + ": drop it, or set what it needs.")
    by_need: dict[str, list[str]] = {}
    for row in unread:
        by_need.setdefault(row.needs, []).append(flag(row.field))
    if by_need and PartialState().is_main_process:
        logger.warning("Ignoring %s.", "; ".join(f"{', '.join(flags)} (read only with {needs})"
                                                for needs, flags in by_need.items()))
    return [name for flags in by_need.values() for name in flags]


def unread_flags(model: Any, data: Any, fed: Any, fields: set[str],
                 table: tuple[OptionFlag, ...] = OPTION_FLAGS) -> list[OptionFlag]:
    """The rows of `table` for `fields` that the chosen options (model, data, fed) never read."""
    return [row for row in table if row.field in fields and not row.applies(model, data, fed)]
