"""The PNGs of a run: metrics per round, the partition heatmap, gate drift. Headless matplotlib, imported
lazily (plotting is optional work); every figure is written atomically."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .serialization import atomic_write_bytes

__all__ = ["pyplot", "save_figure", "plot_metrics", "plot_partition", "plot_drift", "MAX_CELLS"]

MAX_CELLS = 40  # labels (clients) a partition heatmap draws a column (row) for; beyond, neighbours are summed


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


def _groups(count: int, cap: int) -> np.ndarray:
    """First index of each of at most `cap` runs of neighbours that together cover range(count)."""
    return np.unique(np.linspace(0, count, min(count, cap) + 1).astype(int)[:-1])


def _run_names(starts: np.ndarray, count: int, names: list[str]) -> list[str]:
    """A tick label per run: its own name when alone, else the range of ids it sums."""
    ends = [*starts[1:], count]
    return [names[a] if b - a == 1 else f"{a}\u2013{b - 1}" for a, b in zip(starts, ends)]


def plot_partition(summary: dict[str, Any], path: str, title: str = "", label_names: list[str] | None = None) -> None:
    """Heatmap of samples per (client, label), each cell with its count, each row with its client's total.
    Beyond `MAX_CELLS` labels (or clients), neighbours are summed into one column (row), so that the figure,
    its ticks and its drawing time stay bounded at any class count."""
    hist = np.asarray(summary["label_histogram"]).reshape(len(summary["samples_per_client"]), -1)
    clients, labels = hist.shape
    cols, rows = _groups(labels, MAX_CELLS), _groups(clients, MAX_CELLS)
    cells = np.add.reduceat(np.add.reduceat(hist, rows, axis=0), cols, axis=1) if hist.size else hist
    fig, ax = pyplot().subplots(figsize=(1.5 + 0.55 * max(len(cols), 1), 1 + 0.4 * max(len(rows), 1)))
    im = ax.imshow(cells, aspect="auto", cmap="viridis")
    if cells.size <= 400:  # counts stay legible
        for (i, j), count in np.ndenumerate(cells):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count < cells.max() / 2 else "black")
    names = _run_names(cols, labels, label_names or [str(j) for j in range(labels)])
    long = max(map(len, names), default=0) > 3
    ax.set_xticks(range(len(cols)), names, rotation=45 if long else 0, ha="right" if long else "center")
    totals = np.add.reduceat(np.asarray(summary["samples_per_client"]), rows) if clients else []
    ax.set_yticks(range(len(rows)), [f"{c} ({n})" for c, n in zip(_run_names(rows, clients, [str(i) for i in
                                                                                          range(clients)]), totals)])
    ax.set_xlabel("label" if len(cols) == labels else f"label ({labels} ids, neighbours summed)")
    ax.set_ylabel("client (samples)" if len(rows) == clients else f"clients ({clients}, neighbours summed)")
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
