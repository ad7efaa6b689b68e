"""The callbacks every run reports with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import FederatedCallback
from .flow import DefaultFlowCallback
from .gate_drift import GateDriftCallback
from .hub_push import HubPushCallback
from .reporting import BestModelCallback, HistoryCallback, PlotCallback, ProgressCallback, TrackerCallback

if TYPE_CHECKING:
    from ..cli.arguments import FederatedArguments

__all__ = ["default_callbacks"]


def default_callbacks(args: FederatedArguments) -> list[FederatedCallback]:
    """Intervals, gate drift (when asked: before the reporting ones, it adds to each round's record),
    progress, history and summary, best/final models, plots, and (when asked) trackers and the Hub."""
    drift = [GateDriftCallback(args.gate_drift_samples)] if args.gate_drift_samples else []
    callbacks = [DefaultFlowCallback(), *drift, ProgressCallback(), HistoryCallback(), BestModelCallback(), PlotCallback()]
    return callbacks + ([TrackerCallback()] if args.report_to != "none" else []) \
        + ([HubPushCallback()] if args.push_to_hub else [])
