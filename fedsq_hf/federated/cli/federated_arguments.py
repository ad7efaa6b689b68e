"""`FederatedArguments`: the federation (clients, partition, rounds, strategy, gate schedule), the run's
outputs and the Hub, on top of the clients' own `ClientArguments`. Each field checks itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...hub_names import check_branch_name, check_license, check_repo_id
from ..client import ClientArguments
from ..data import PARTITIONS, check_partition
from ..fields import argument, expand_path, flag, require
from ..protocol import make_codec
from ..server import (GATE_ALIGNMENT_BELOW, LABEL_SHARE_BELOW, LR_SCHEDULERS, SKEWED_GATES, AlignmentRule, DriftRule,
                      FedAdam, FedAvgM, FedProx, FedTrimmedAvg, FixedRound, GateRule, Strategy, make_strategy)
from .privacy_arguments import PrivacyArguments

__all__ = ["FederatedArguments", "STRATEGY_FLAGS"]

# the strategy parameters the command line sets: flag name -> parameter name of the strategies that take it
STRATEGY_FLAGS = {"mu": "mu", "server_lr": "server_lr", "server_momentum": "server_momentum", "trim_beta": "beta"}


@dataclass
class FederatedArguments(PrivacyArguments, ClientArguments):
    num_clients: int = argument(10, help="number of simulated clients (silos)", resume="same")
    partition: Literal[PARTITIONS] = argument(
        "dirichlet", help="how training samples are split over clients: iid, dirichlet (label skew) or shards",
        resume="same")
    alpha: float = argument(0.5, help="Dirichlet concentration: smaller is more skewed", resume="same")
    shards_per_client: int = argument(2, help="label shards per client with --partition shards", resume="same")
    min_partition_size: int = argument(
        10, help="redraw a Dirichlet partition until every client has at least this many samples", resume="same")
    rounds: int = argument(5, help="federated rounds", resume="grow")
    clients_per_round: int | None = argument(None, help="clients sampled per round (default: all)", resume="same")
    lr_scheduler: Literal[LR_SCHEDULERS] = argument(
        "constant", resume="same",
        help="client learning rate across rounds: constant, linear or cosine (to 0 after the last round)")
    warmup_rounds: int = argument(0, help="rounds of linear warm-up to --lr (round k of W: k/W x lr)", resume="same")
    strategy: str = argument("fedavg", resume="same",
                             help="server strategy: fedavg, fedprox, fedavgm, fedadam, fedmedian, fedtrimmedavg, or "
                                  "one added with register_strategy")
    trim_beta: float | None = argument(
        None, help=f"fraction cut at each end per coordinate (fedtrimmedavg; default {FedTrimmedAvg.beta})", resume="any")
    mu: float | None = argument(None, help=f"FedProx proximal weight (fedprox; default {FedProx.mu})", resume="any")
    server_lr: float | None = argument(
        None, help=f"server learning rate (fedavgm: default {FedAvgM.server_lr}; fedadam: default {FedAdam.server_lr})",
        resume="any")
    server_momentum: float | None = argument(
        None, help=f"server momentum (fedavgm; default {FedAvgM.server_momentum})", resume="any")
    update_codec: str = argument("identity", resume="same",
                                 help="how client updates travel: identity (fp32), fp16 (half the bytes), or one "
                                      "added with register_codec")
    seed: int = argument(0, help="seed of the partition, client sampling, data order, augmentation and dropout",
                         resume="same")
    output_dir: str = argument("outputs/federated", resume="any",
                               help="where history, summary, plots, checkpoints and models are written")
    resume: bool = argument(False, help="continue from the last checkpoint in --output-dir", resume="any")
    overwrite_output_dir: bool = argument(
        False, help="start over in an --output-dir that holds a previous run (refused otherwise)", resume="any")
    save_every: int = argument(1, help="write a checkpoint every N rounds (and after the last)", resume="any")
    eval_every: int = argument(1, help="evaluate every N rounds (and after the last)", resume="any")
    metric_for_best_model: str = argument(
        "accuracy", resume="same", help="eval metric that picks best/ (and early stopping): loss, accuracy, "
                                        "top5_accuracy, macro_f1, or one your compute_metrics returns")
    greater_is_better: bool | None = argument(
        None, help="whether a larger --metric-for-best-model is better (default: unless it is a loss)", resume="same")
    max_failed_rounds: int = argument(
        3, help="stop after this many rounds in a row without a usable client update", resume="any")
    dropout_rate: float = argument(0.0, help="probability that a sampled client drops out of a round", resume="same")
    report_to: str = argument("none", help="Accelerate tracker to log to: none, tensorboard, wandb, ...", resume="any")
    disable_tqdm: bool = argument(False, help="no progress bar", resume="any")
    gate_drift_samples: int = argument(
        0, resume="any",
        help="record each round how many of the model's own gates differ from the pretrained ones, on this many "
             "eval samples")
    freeze_gates_at_round: int = argument(
        1, resume="same",
        help="gate warm-up (--model fedsq): rounds before this one train without fixed gates (plain updates, same "
             "strategy); at its start the structural copy is re-frozen from the global model and sent to the "
             "clients. 1: FedSQ as published (the backbone's gates throughout)")
    freeze_gates_when_drift_below: float | None = argument(
        None, resume="same",
        help="choose that round by gate drift: freeze after the first warm-up round (from round 2) in which the "
             "global model's own gates changed on less than this fraction of the probe set's gates, and on fewer "
             "than in the round before, while the model's loss on the probe set fell (e.g. 0.01)")
    freeze_gates: Literal["round", "auto"] = argument(
        "round", resume="same",
        help="gate schedule (--model fedsq): round (by --freeze-gates-at-round or --freeze-gates-when-drift-below), "
             "or auto, from what the server sees without data of its own: rounds 1..--max-warmup-rounds train without "
             "fixed gates; if the clients' update alignment falls below --gate-alignment-below in one of them (the "
             "clients pull apart: label skew), the gates are fixed after them (--skewed-gates), else the gates go on "
             "training with the model (close to IID, where fixed gates cost accuracy)")
    gate_alignment_below: float = argument(
        GATE_ALIGNMENT_BELOW, resume="same",
        help="--freeze-gates auto: the update alignment (1: the clients' updates are the same, 0: orthogonal) under "
             "which the clients count as pulling apart")
    skewed_gates: Literal[SKEWED_GATES] = argument(
        "auto", resume="same",
        help="--freeze-gates auto, when a round's clients pull apart: global (train on without fixed gates through "
             "--max-warmup-rounds + 1, then fix the gates of the warm-up's global model its clients scored best), "
             "pretrained (the backbone's gates from the next round: FedSQ as published), or auto: pretrained where "
             "the clients' labels span few classes each (their mean label share below --label-share-below), else "
             "global")
    label_share_below: float = argument(
        LABEL_SHARE_BELOW, resume="same",
        help="--skewed-gates auto: the mean label share under which the clients hold few classes each (a client's "
             "label share: the effective number of classes of the labels it trained on, exp of their entropy, over "
             "the number of classes; 1: all equally, 0.1 of 10: one; what is sent: that one number per client, in "
             "the warm-up rounds until the clients pull apart)")
    client_eval_samples: int = argument(
        128, resume="same",
        help="--freeze-gates auto --skewed-gates global or auto: each warm-up round's clients score the global model "
             "they receive on this many of their own samples before training (federated evaluation; what is sent: "
             "per class, how many it got right of how many)")
    max_warmup_rounds: int = argument(
        5, resume="same", help="with --freeze-gates-when-drift-below: freeze after at most this many warm-up rounds; "
                               "with --freeze-gates auto: the rounds whose alignment decides")
    gate_probe_samples: int = argument(
        256, resume="same", help="probe set of the drift rule: the first N evaluation samples, run through the global "
                                 "model on the server (their labels are not used)")
    push_to_hub: bool = argument(False, help="push the final global model with its card to the Hub", resume="any")
    hub_model_id: str | None = argument(None, help="Hub repo id (namespace/name) for --push-to-hub", resume="any")
    hub_strategy: Literal["end", "every_save"] = argument(
        "end", help="end, or every_save: also push at each checkpoint (in the background)", resume="any")
    hub_revision: str | None = argument(None, help="branch to push to (created if missing)", resume="any")
    hub_private_repo: bool | None = argument(None, help="create the Hub repo private", resume="any")
    hub_license: str = argument("apache-2.0", help="license id for the model card", resume="any")

    def __post_init__(self) -> None:
        self.output_dir = expand_path(self.output_dir)
        self.check()

    def check(self) -> None:
        """`FedSQError` naming the first bad field of the group."""
        super().check()
        drift, auto = self.freeze_gates_when_drift_below, self.freeze_gates == "auto"
        check_partition(self.partition, self.num_clients, self.alpha, self.shards_per_client, self.min_partition_size)
        require([
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (self.clients_per_round is None or 1 <= self.clients_per_round <= self.num_clients,
             f"--clients-per-round must be between 1 and --num-clients ({self.num_clients}), got {self.clients_per_round}"),
            (0 <= self.warmup_rounds < self.rounds, f"--warmup-rounds must be in [0, --rounds), got {self.warmup_rounds}"),
            (0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}"),
            (self.save_every >= 1 and self.eval_every >= 1, "--save-every and --eval-every must be >= 1"),
            (0 <= self.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {self.dropout_rate}"),
            (self.max_failed_rounds >= 1, f"--max-failed-rounds must be >= 1, got {self.max_failed_rounds}"),
            (self.gate_drift_samples >= 0, f"--gate-drift-samples must be >= 0, got {self.gate_drift_samples}"),
            (self.freeze_gates_at_round >= 1, f"--freeze-gates-at-round must be >= 1, got {self.freeze_gates_at_round}"),
            (self.freeze_gates_at_round == 1 or drift is None,
             "give --freeze-gates-at-round or --freeze-gates-when-drift-below, not both"),
            (self.freeze_gates_at_round <= self.rounds,
             f"--freeze-gates-at-round {self.freeze_gates_at_round} is after the last round ({self.rounds}): the gates "
             "would never be fixed; that is --model plain"),
            (drift is None or 0 < drift < 1, f"--freeze-gates-when-drift-below must be a fraction in (0, 1), got {drift}"),
            (not auto or (self.freeze_gates_at_round == 1 and drift is None),
             "--freeze-gates auto decides the gate schedule itself: leave out --freeze-gates-at-round and "
             "--freeze-gates-when-drift-below"),
            ((drift is None and not auto) or 1 <= self.max_warmup_rounds < self.rounds,
             f"--max-warmup-rounds must be in [1, --rounds) ({self.rounds}), got {self.max_warmup_rounds}: lower it or "
             "raise --rounds"),
            (self.client_eval_samples >= 1, f"--client-eval-samples must be >= 1, got {self.client_eval_samples}"),
            (not auto or (self.clients_per_round or self.num_clients) >= 2,
             "--freeze-gates auto compares the clients' updates in a round: --clients-per-round must be >= 2"),
            (-1 < self.gate_alignment_below < 1,
             f"--gate-alignment-below must be in (-1, 1), got {self.gate_alignment_below}"),
            (self.gate_probe_samples >= 1, f"--gate-probe-samples must be >= 1, got {self.gate_probe_samples}"),
            (0 < self.label_share_below <= 1, f"--label-share-below must be in (0, 1], got {self.label_share_below}"),
            (not auto or self.skewed_gates == "pretrained" or self.max_warmup_rounds + 1 < self.rounds,
             f"--freeze-gates auto (--skewed-gates {self.skewed_gates}) scores round {self.max_warmup_rounds}'s model in round "
             f"{self.max_warmup_rounds + 1} and fixes the gates from round {self.max_warmup_rounds + 2}: --rounds "
             f"({self.rounds}) must be at least that; raise it or lower --max-warmup-rounds"),
            (not self.push_to_hub or self.hub_model_id, "--push-to-hub needs --hub-model-id"),
            (not (self.resume and self.overwrite_output_dir),
             "--resume continues the run in --output-dir and --overwrite-output-dir starts over there: give one of them"),
        ])
        _check_hub_fields(self.hub_model_id, self.hub_revision, self.hub_license)
        self.check_privacy()
        self.make_strategy()
        make_codec(self.update_codec)

    def gate_rule(self) -> GateRule | None:
        """The gate warm-up's rule these arguments ask for; None: FedSQ as published (the backbone's gates from round 1)."""
        if self.freeze_gates == "auto":
            return AlignmentRule(self.gate_alignment_below, self.max_warmup_rounds, self.skewed_gates,
                                 self.label_share_below)
        if self.freeze_gates_when_drift_below is not None:
            return DriftRule(self.freeze_gates_when_drift_below, self.max_warmup_rounds)
        return None if self.freeze_gates_at_round == 1 else FixedRound(self.freeze_gates_at_round)

    def make_strategy(self, noise_source: str = "seeded") -> Strategy:
        """The strategy these arguments ask for (inside `ClientLevelDP` with `--dp-clip-norm`, `noise_source` the
        runtime's default of `--dp-noise-source`); the strategy flags left unset take its own defaults, and one it
        does not take is refused, naming the flag."""
        given = {param: getattr(self, name) for name, param in STRATEGY_FLAGS.items() if getattr(self, name) is not None}
        strategy = make_strategy(self.strategy, {param: flag(name) for name, param in STRATEGY_FLAGS.items()}, **given)
        return self.make_private(strategy, noise_source)


def _check_hub_fields(repo_id: str | None, revision: str | None, license: str) -> None:
    """The Hub's names checked before anything loads, not found out by the final push."""
    if repo_id is not None:
        check_repo_id(repo_id, "--hub-model-id")
    if revision is not None:
        check_branch_name(revision, "--hub-revision")
    check_license(license, "--hub-license")
