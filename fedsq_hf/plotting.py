"""The PNGs of a run: metrics per round, the partition heatmap, gate drift. Headless matplotlib, imported
lazily (plotting is optional work); every figure is written atomically."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .serialization import atomic_write_bytes

__all__ = ["pyplot", "save_figure", "plot_metrics", "plot_partition", "plot_drift"]


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str) -> None:
    """Write `fig` as a PNG, atomically (a reader never sees half a plot), and close it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=100, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _rounds_axis(ax: Any, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_metrics(history: list[dict[str, Any]], path: str, label: str = "", best_round: int | None = None) -> None:
    """One panel per eval metric against the round (integer ticks), the best round marked."""
    from .hub import eval_metric_keys

    names = eval_metric_keys(history) or ["eval_accuracy"]
    fig, axes = pyplot().subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(h["round"], h[name]) for h in history if h.get(name) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label or None)
        if best_round:
            ax.axvline(best_round, color="gray", linestyle=":", label=f"best: round {best_round}")
        _rounds_axis(ax, name.removeprefix("eval_").replace("_", " "))
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def plot_partition(summary: dict[str, Any], path: str, title: str = "", label_names: list[str] | None = None) -> None:
    """Heatmap of samples per (client, label), each cell with its count, each row with its client's total."""
    hist = np.asarray(summary["label_histogram"])
    clients, labels = hist.shape
    fig, ax = pyplot().subplots(figsize=(1.5 + 0.55 * labels, 1 + 0.4 * clients))
    im = ax.imshow(hist, aspect="auto", cmap="viridis")
    if clients * labels <= 400:  # counts stay legible
        for (i, j), count in np.ndenumerate(hist):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count < hist.max() / 2 else "black")
    names = label_names or [str(j) for j in range(labels)]
    long = max(map(len, names)) > 3
    ax.set_xticks(range(labels), names, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(clients), [f"{i} ({n})" for i, n in enumerate(summary["samples_per_client"])])
    ax.set_xlabel("label")
    ax.set_ylabel("client (samples)")
    ax.set_title(title or "samples per client and label")
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def plot_drift(history: list[dict], path: str, title: str = "") -> None:
    """Gate drift (all units) per round, from a run's history."""
    points = [(h["round"], 100 * h["gate_drift"]) for h in history if h.get("gate_drift") is not None]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(*zip(*points), marker="o")
    _rounds_axis(ax, "gates differing from the pretrained model (%)")
    ax.set_title(title)
    save_figure(fig, path)
