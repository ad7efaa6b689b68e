"""Evaluation of the global model on the server's data: split over processes (one on a real server),
gathered, then `compute_metrics`."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather
from transformers import EvalPrediction

from ...modeling_fedsq import FedSQModel
from .metrics import MetricsFn, compute_classification_metrics
from ..data import OrderedBatches, make_loader

__all__ = ["Evaluator"]


class Evaluator:
    """Each process evaluates its contiguous shard of `samples` (one loader for the whole run); the
    logits are gathered so that `compute_metrics` sees every sample once, in order, on every process."""

    def __init__(self, model: FedSQModel, samples: torch.utils.data.Dataset, batch_size: int, num_workers: int,
                 accelerator: Accelerator, compute_metrics: MetricsFn | None = None) -> None:
        self.model, self.accelerator = model, accelerator
        self.compute_metrics = compute_metrics or compute_classification_metrics
        self.shards = np.array_split(np.arange(len(samples)), accelerator.num_processes)
        self.loader = make_loader(samples, OrderedBatches(self.shards[accelerator.process_index], batch_size),
                                  num_workers, accelerator.device)
        self.pipeline = getattr(samples, "pipeline", None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """`loss` (mean cross-entropy) and whatever `compute_metrics` returns, as floats."""
        acc, device = self.accelerator, self.accelerator.device
        self.model.eval()
        logits, labels = [], []
        for x, y, _ in self.loader:
            x = x.to(device, non_blocking=True)
            if self.pipeline is not None:
                x = self.pipeline.finish(x)
            with acc.autocast():
                logits.append(self.model(x).logits.float())
            labels.append(y.to(device))
        num_labels = self.model.config.num_labels
        logits = torch.cat(logits) if logits else torch.zeros(0, num_labels, device=device)
        labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
        if acc.num_processes > 1:  # shards differ by at most one sample: pad, gather, cut the padding off
            rows = max(len(s) for s in self.shards)
            padded = torch.zeros(rows, num_labels + 1, device=device)
            padded[: len(labels), :num_labels], padded[: len(labels), num_labels] = logits, labels.float()
            everything = gather(padded).view(acc.num_processes, rows, -1)
            everything = torch.cat([everything[p, : len(s)] for p, s in enumerate(self.shards)])
            logits, labels = everything[:, :num_labels], everything[:, num_labels].long()
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        metrics = self.compute_metrics(EvalPrediction(predictions=logits.cpu().numpy(), label_ids=labels.cpu().numpy()))
        return {"loss": loss, **{k: float(v) for k, v in metrics.items()}}
