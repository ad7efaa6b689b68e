"""The default callback that shares a run on the Hub: the repo is reached before training, the model is
pushed at each checkpoint (`--hub-strategy every_save`, in the background) and at the end. A checkpoint's
push that fails is a warning (training goes on); the final push that fails is one `FedSQError` saying
where the run's outputs are and how to push them again."""

from __future__ import annotations

import logging
import os
import shlex
from concurrent.futures import Future

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from ...errors import FedSQError
from ...hub import ensure_repo, model_card, percent
from ...plotting import plot_metrics
from .base import FederatedCallback

__all__ = ["HubPushCallback"]

logger = logging.getLogger(__name__)


class HubPushCallback(FederatedCallback):
    """Push the global model with its card and metrics plot (main process only)."""

    def __init__(self) -> None:
        self.pending: list[Future] = []

    def on_train_begin(self, args, state, control, **kwargs):
        """Create (or reach) the repo now, so that bad credentials fail in seconds, not hours."""
        if not state.is_world_process_zero:
            return
        try:
            ensure_repo(HfApi(), args.hub_model_id, private=args.hub_private_repo, revision=args.hub_revision)
        except (HfHubHTTPError, OSError) as err:
            raise FedSQError(
                f"--push-to-hub: cannot create or reach the Hub repo {args.hub_model_id!r} ({type(err).__name__}: {err}). "
                "Check --hub-model-id and your write access (hf auth login or HF_TOKEN)."
            ) from err

    def on_save(self, args, state, control, model=None, run_config=None, **kwargs):
        if args.hub_strategy == "every_save" and state.round < state.max_rounds and not control.should_training_stop:
            try:
                self._push(args, state, model, {**state.summary(), "config": run_config}, background=True)
            except Exception as err:  # staging it (or reaching the repo) failed: the next push may work
                logger.warning("round %d: push to the Hub failed (%s); training goes on", state.round, _cause(err))

    def on_train_end(self, args, state, control, model=None, summary=None, **kwargs):
        try:
            self._push(args, state, model, summary, background=False)
        except Exception as err:
            final = os.path.join(args.output_dir, "final")
            branch = f" --revision {shlex.quote(args.hub_revision)}" if args.hub_revision else ""
            raise FedSQError(
                f"--push-to-hub: the final push to {args.hub_model_id!r} failed ({_cause(err)}). The run's outputs are "
                f"saved in {args.output_dir} (the model in {final}); push them again with "
                f"`FedSQModel.from_pretrained({final!r}).push_to_hub({args.hub_model_id!r}"
                f"{f', revision={args.hub_revision!r}' if args.hub_revision else ''})` or "
                f"`hf upload {args.hub_model_id} {shlex.quote(final)} .{branch}`."
            ) from err

    def _push(self, args, state, model, summary: dict, background: bool) -> None:
        if not state.is_world_process_zero:
            return
        if not background:
            for pending in self.pending:
                pending.exception()  # wait; failures were already logged
        plot = os.path.join(args.output_dir, "metrics.png")
        if background or not os.path.exists(plot):  # at the end, PlotCallback (called before) has drawn it
            plot_metrics(state.history, plot, best_round=state.best_round)
        card = model_card(model.config, args.hub_model_id, summary=summary, history=state.history,
                          plot="metrics.png", license=args.hub_license)
        value = summary["final_metrics"].get(state.best_key)
        shown = percent(value) if value is not None and "loss" not in state.best_key else value
        message = f"Round {state.round}/{state.max_rounds}: {state.metric_for_best_model} {shown}"
        result = model.push_to_hub(args.hub_model_id, commit_message=message, private=args.hub_private_repo,
                                   revision=args.hub_revision, model_card=card, extra_files={"metrics.png": plot},
                                   run_as_future=background)
        if background:
            round_ = state.round
            result.add_done_callback(lambda f: f.exception() and logger.warning(
                "round %d: push to the Hub failed (%s); training goes on", round_, _cause(f.exception())))
            self.pending.append(result)


def _cause(err: BaseException, limit: int = 200) -> str:
    """`err` on one line: its type and the start of its message."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
