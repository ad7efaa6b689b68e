"""One client's local training, as a unit of its own: the federated simulator runs it for every client
of a round, the calibration warm-up and the benchmarks run it directly, and a real silo (a Flower
`ClientApp`, say) can run it on its own data. It knows nothing of rounds, servers or processes:
it trains `model` in place from its current weights on some samples, seeded by `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from ..modeling_fedsq import FedSQModel
from .arguments import FederatedArguments
from .optim import create_optimizer
from .samples import ClientBatches, make_loader
from .strategies import Strategy

__all__ = ["ClientTrainer", "ClientResult", "client_seed", "diverged"]


def client_seed(seed: int, round_: int, client: int = -1) -> int:
    """The seed of (run seed, round, client): every random draw of a client's round derives from it."""
    return int(np.random.SeedSequence([seed, round_, client + 1]).generate_state(1)[0])


def diverged(losses: list[float], factor: float, num_labels: int) -> bool:
    """True if a client's training went wrong: no or non-finite losses, or (factor > 0) the mean loss of
    its last steps above `factor` times its first loss (at least the chance-level loss, log(num_labels),
    so that a client starting near zero loss is not flagged for ordinary noise)."""
    if not losses or not np.all(np.isfinite(losses)):
        return True
    tail = losses[-max(1, len(losses) // 4):]
    return factor > 0 and float(np.mean(tail)) > factor * max(losses[0], float(np.log(max(num_labels, 2))))


@dataclass
class ClientResult:
    """What one client's local training produced (its weights are the model's, in place)."""

    num_samples: int
    losses: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def train_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")


class ClientTrainer:
    """Local training on `samples` (a `StreamedSamples`, `PreloadedSamples`, or any dataset indexed by a
    batch of (index, seed) pairs). One loader, whose workers serve every `train` call."""

    def __init__(self, model: FedSQModel, samples: torch.utils.data.Dataset, args: FederatedArguments,
                 accelerator: Accelerator) -> None:
        self.model, self.samples, self.args, self.accelerator = model.to(accelerator.device), samples, args, accelerator
        self.batches = ClientBatches(args.batch_size, drop_single=model.config.bn_mode in ("train", "local"))
        self.loader = make_loader(samples, self.batches, args.num_workers, accelerator.device)
        self.pipeline = getattr(samples, "pipeline", None)
        scaler = accelerator.scaler
        self._initial_scale = scaler.state_dict() if scaler is not None else None

    def steps(self, num_samples: int) -> int:
        return self.args.local_steps or self.args.local_epochs * self.batches.steps_per_epoch(num_samples)

    def train(self, indices: np.ndarray, seed: int, lr: float | None = None,
              strategy: Strategy | None = None) -> ClientResult:
        """Train on the samples `indices` for `--local-epochs` (or `--local-steps`); every random draw
        (data order, augmentation, dropout) derives from `seed`. `strategy` adds its client-side loss."""
        args, model, device = self.args, self.model, self.accelerator.device
        torch.manual_seed(seed)
        self.batches.start(indices, seed, self.steps(len(indices)))
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params] if strategy is not None and strategy.needs_global_params else None
        scaler = self.accelerator.scaler  # fp16 on a GPU: loss scaling, through accelerator.backward
        if scaler is not None:  # every client starts from the initial scale: results do not depend on client order
            scaler.load_state_dict(self._initial_scale)
        opt = AcceleratedOptimizer(create_optimizer(params, args, args.lr if lr is None else lr),
                                   device_placement=False, scaler=scaler)
        use_keys = getattr(model.dual_copy, "gate_cache", None) is not None
        model.train()
        losses = []
        for step, (x, y, keys) in enumerate(self.loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.pipeline is not None:
                x = self.pipeline.finish(x, seed=client_seed(seed, step))
            with self.accelerator.autocast():
                logits = model(x, gate_keys=keys if use_keys else None).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
                extra = strategy.client_loss(params, anchor) if anchor is not None else None
                total = loss if extra is None else loss + extra
            opt.zero_grad(set_to_none=True)
            self.accelerator.backward(total)
            if args.max_grad_norm:
                if scaler is not None:
                    scaler.unscale_(opt.optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            opt.step()
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):
                break
        return ClientResult(num_samples=len(indices), losses=losses)
