"""One client's local training, as a unit of its own. `fit` is what a round asks of a client: take the
global weights and the round config, train, return the update. It knows nothing of rounds, servers or
processes: the simulator calls it for every client of a round, a Flower `ClientApp` for its site, the
calibration warm-up and the benchmarks call `train` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from ...errors import FedSQError
from ...modeling_fedsq import FedSQModel
from ..data import ClientBatches, make_loader, model_inputs
from ..protocol import ClientUpdate, FitConfig, IdentityCodec, ModelTensors, Scalar, UpdateCodec, client_seed
from .accelerator import make_accelerator
from .arguments import ClientArguments
from .objectives import diverged, proximal_term
from .optim import create_optimizer
from .privacy import clip_update, dp_optimizer, per_sample_gradients
from .state import ClientState

__all__ = ["ClientTrainer", "TrainResult"]


@dataclass
class TrainResult:
    """What a stretch of local training produced (its weights are the model's, in place)."""

    num_samples: int
    losses: list[float]
    label_counts: torch.Tensor | None = None  # per class, the samples of its steps

    @property
    def train_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    @property
    def label_share(self) -> float:
        """The effective number of classes of its steps' labels (exp of their entropy) over the number of
        classes: 1 when they hold every class equally, 1 / num_labels when one class; NaN with no step."""
        counts = self.label_counts
        if counts is None or counts.sum() == 0:
            return float("nan")
        p = counts[counts > 0].double() / counts.sum()
        return float(torch.exp(-(p * p.log()).sum()) / len(counts))


class ClientTrainer:
    """Local training of `model` on `samples` (a `StreamedSamples`, `PreloadedSamples`, or any dataset
    indexed by a batch of (index, seed) pairs). One loader, whose workers serve every call.

    Args:
        codec: how `fit`'s update is encoded for the wire (default: fp32 as it is).
        state: what this client keeps between rounds (`fit` updates it); a simulator that plays many
            clients on one trainer passes each one's own to `fit` instead.
    """

    def __init__(self, model: FedSQModel, samples: torch.utils.data.Dataset, args: ClientArguments,
                 accelerator: Accelerator | None = None, codec: UpdateCodec | None = None,
                 state: ClientState | None = None) -> None:
        self.args, self.samples = args, samples
        self.accelerator = accelerator or make_accelerator(args)
        self.model = model.to(self.accelerator.device)
        self.codec, self.state = codec or IdentityCodec(), state or ClientState()
        self.batches = ClientBatches(args.batch_size, drop_single=model.config.bn_mode in ("train", "local"))
        self.loader = make_loader(samples, self.batches, args.num_workers, self.accelerator.device)
        self.pipeline = getattr(samples, "pipeline", None)
        scaler = self.accelerator.scaler
        self._initial_scale = scaler.state_dict() if scaler is not None else None
        tensors = self.tensors  # every client starts its first round from these, and every round from these counters
        self._initial_local = {k: t.clone() for k, t in tensors.local.items()}
        self._initial_counters = {k: t.clone() for k, t in tensors.counters.items()}

    @property
    def tensors(self) -> ModelTensors:
        """The model's own state tensors, by role (read anew: `model.to(...)` may replace them)."""
        return ModelTensors.of(self.model)

    def steps(self, num_samples: int) -> int:
        return self.args.local_steps or self.args.local_epochs * self.batches.steps_per_epoch(num_samples)

    def fit(self, global_params: Mapping[str, torch.Tensor], config: Mapping[str, Scalar], *,
            indices: np.ndarray | None = None, state: ClientState | None = None) -> ClientUpdate:
        """Load `global_params` (the shared tensors, by state-dict key), train on `indices` (default: every
        sample) as `config` says (a `FitConfig` as a dict), and return the update `local - global`."""
        fit, state, own = FitConfig.from_dict(config), self.state if state is None else state, self.tensors
        self._check(global_params, state, own)
        own.load({**self._initial_local, **self._initial_counters, **state.local_batchnorm, **global_params})
        indices = np.arange(len(self.samples)) if indices is None else indices
        scored = self.score(indices, fit.eval_samples, fit.seed) if fit.eval_samples else {}
        result = self.train(indices, fit.seed, fit.lr, fit.proximal_mu)
        metrics = {"train_loss": result.train_loss, "steps": len(result.losses), **scored}
        if fit.label_share:
            metrics["label_share"] = result.label_share
        tensors = {**own.shared, **own.local}
        if diverged(result.losses, self.args.divergence_factor, self.model.config.num_labels) \
                or not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            return ClientUpdate({}, result.num_samples, metrics, diverged=True)
        update = {k: t.detach().float() - global_params[k].to(t.device, torch.float32)
                  for k, t in own.shared.items()}
        if fit.dp_clip_norm > 0:
            update, metrics["dp_unclipped"] = clip_update(update, fit.dp_clip_norm)
        state.local_batchnorm = {k: t.detach().clone() for k, t in own.local.items()}
        payload = self.codec.encode(update)
        return ClientUpdate(payload, result.num_samples, metrics, local_state=state.local_batchnorm,
                            num_bytes=self.codec.num_bytes(payload))

    @torch.no_grad()
    def score(self, indices: np.ndarray, count: int, seed: int) -> dict[str, list[float]]:
        """The model, as it is, on up to `count` of the samples `indices` (drawn by `seed`), in eval mode and
        without augmentation: per class, the samples it got right (`eval_class_correct`) and those scored
        (`eval_class_samples`). Draws from no global RNG: training after it is what it would be without."""
        chosen = np.sort(np.random.default_rng(seed).choice(indices, min(count, len(indices)), replace=False))
        num_labels, step = self.model.config.num_labels, 2 * self.args.batch_size
        correct, seen = torch.zeros(num_labels), torch.zeros(num_labels)
        self.model.eval()
        for start in range(0, len(chosen), step):
            x, y = model_inputs(self.samples, chosen[start : start + step], self.accelerator.device)
            with self.accelerator.autocast():
                hit = self.model(x).logits.argmax(-1) == y
            seen += torch.bincount(y, minlength=num_labels).cpu()
            correct += torch.bincount(y[hit], minlength=num_labels).cpu()
        return {"eval_class_correct": correct.tolist(), "eval_class_samples": seen.tolist()}

    @staticmethod
    def _check(global_params: Mapping[str, torch.Tensor], state: ClientState, tensors: ModelTensors) -> None:
        for what, given, own in (("global parameters do", global_params, tensors.shared),
                                 ("client state's BatchNorm does", state.local_batchnorm, tensors.local)):
            if own is tensors.local and not given:  # a client before its first round
                continue
            missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
            shapes = [k for k in own if k in given and given[k].shape != own[k].shape]
            if missing or unexpected or shapes:
                raise FedSQError(f"The {what} not fit this client's model (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]}, other shapes {shapes[:3]}): they are of another model; build the "
                                 "client's model from the same backbone, labels and --bn-mode.")

    def train(self, indices: np.ndarray, seed: int, lr: float | None = None, proximal_mu: float = 0.0) -> TrainResult:
        """Train in place on the samples `indices` for `--local-epochs` (or `--local-steps`); every random
        draw (data order, augmentation, dropout, DP-SGD's noise) derives from `seed`. `proximal_mu` > 0 adds
        FedProx's proximal term towards the weights the model had when called."""
        args, model, device = self.args, self.model, self.accelerator.device
        torch.manual_seed(seed)
        self.batches.start(indices, seed, self.steps(len(indices)))
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
        scaler = self.accelerator.scaler  # fp16 on a GPU: loss scaling, through accelerator.backward
        if scaler is not None:  # every client starts from the initial scale: results do not depend on client order
            scaler.load_state_dict(self._initial_scale)
        optimizer = create_optimizer(params, args, args.lr if lr is None else lr)
        dp_sgd = args.dp_sgd_noise_multiplier is not None
        if dp_sgd:  # the noise has a stream of its own, from the round's seed
            optimizer = dp_optimizer(optimizer, args, torch.Generator(device).manual_seed(client_seed(seed, 0)))
        opt = AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
        use_keys = getattr(model.dual_copy, "gate_cache", None) is not None and not dp_sgd
        model.train()
        losses, counts = [], torch.zeros(model.config.num_labels, dtype=torch.long)
        for step, (x, y, keys) in enumerate(self.loader):
            counts += torch.bincount(y.cpu(), minlength=len(counts))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.pipeline is not None:
                x = self.pipeline.finish(x, seed=client_seed(seed, step))
            if dp_sgd:
                losses.append(self._private_step(opt, x, y))
            else:
                losses.append(self._step(opt, x, y, keys if use_keys else None, params, anchor, proximal_mu))
            if not np.isfinite(losses[-1]):
                break
        return TrainResult(num_samples=len(indices), losses=losses, label_counts=counts)

    def _step(self, opt: AcceleratedOptimizer, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor | None,
              params: list[torch.nn.Parameter], anchor: list[torch.Tensor] | None, proximal_mu: float) -> float:
        with self.accelerator.autocast():
            logits = self.model(x, gate_keys=keys).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=self.args.label_smoothing)
            total = loss if anchor is None else loss + proximal_term(params, anchor, proximal_mu)
        opt.zero_grad(set_to_none=True)
        self.accelerator.backward(total)
        if self.args.max_grad_norm:
            if self.accelerator.scaler is not None:
                self.accelerator.scaler.unscale_(opt.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        opt.step()
        return loss.item()

    def _private_step(self, opt: AcceleratedOptimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        """DP-SGD's step: per-sample gradients, which Opacus's optimizer clips, noises and averages."""
        named = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        grads, losses = per_sample_gradients(self.model, named, x, y, self.args.label_smoothing)
        for k, p in named.items():
            p.grad_sample = grads[k]
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(losses.mean())
