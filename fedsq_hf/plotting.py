"""Headless matplotlib for the PNGs runs and benchmarks write (imported lazily: plotting is optional work)."""

from __future__ import annotations

import io
from typing import Any

from .serialization import atomic_write_bytes


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
