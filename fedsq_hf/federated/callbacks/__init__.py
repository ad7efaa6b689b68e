"""Callbacks of a federated run, in the manner of transformers' `TrainerCallback`: events with a
control object, the flow (evaluate, save, stop), and the reporting ones every run uses."""

from .base import CallbackHandler, FederatedCallback, FederatedControl
from .defaults import default_callbacks
from .flow import DefaultFlowCallback, EarlyStoppingCallback
from .gate_drift import GateDriftCallback
from .hub_push import HubPushCallback
from .reporting import BestModelCallback, HistoryCallback, PlotCallback, ProgressCallback, TrackerCallback

__all__ = ["CallbackHandler", "FederatedCallback", "FederatedControl", "default_callbacks", "DefaultFlowCallback",
           "EarlyStoppingCallback", "GateDriftCallback", "HubPushCallback", "BestModelCallback", "HistoryCallback",
           "PlotCallback", "ProgressCallback", "TrackerCallback"]
