"""Plots of a run's history."""

from __future__ import annotations

from typing import Any

from ..hub import eval_metric_keys
from ..plotting import pyplot, save_figure

__all__ = ["plot_metrics"]


def plot_metrics(history: list[dict[str, Any]], path: str, label: str = "", best_round: int | None = None) -> None:
    """One panel per eval metric against the round (integer ticks), the best round marked."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    names = eval_metric_keys(history) or ["eval_accuracy"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(h["round"], h[name]) for h in history if h.get(name) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label or None)
        if best_round:
            ax.axvline(best_round, color="gray", linestyle=":", label=f"best: round {best_round}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(name.removeprefix("eval_").replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)
