"""Evaluation metrics: a `compute_metrics(EvalPrediction) -> dict` as the transformers Trainer takes it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import f1_score
from transformers import EvalPrediction

__all__ = ["compute_classification_metrics", "classification_metric_names", "MetricsFn", "greater_is_better"]

MetricsFn = Callable[[EvalPrediction], dict[str, float]]


def compute_classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """accuracy, top-5 accuracy (with more than 5 labels) and macro-F1 of logits against labels."""
    logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    predicted = logits.argmax(-1)
    metrics = {"accuracy": float((predicted == labels).mean())}
    if logits.shape[-1] > 5:
        top5 = np.argpartition(-logits, 5, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(-1).mean())
    metrics["macro_f1"] = float(f1_score(labels, predicted, average="macro", zero_division=0))
    return metrics


def classification_metric_names(num_labels: int) -> list[str]:
    """The names `loss` + `compute_classification_metrics` report for `num_labels` classes."""
    return ["loss", "accuracy", *(["top5_accuracy"] if num_labels > 5 else []), "macro_f1"]


def greater_is_better(metric: str, given: bool | None = None) -> bool:
    """`given`, or implied as transformers implies it: a metric named like a loss is better smaller."""
    return given if given is not None else not metric.endswith("loss")
