"""The fedsq-hf `ServerApp`: the run config to arguments, the run checked and loaded (the server's
evaluation split, calibration, the model), then `FlowerServer` trains on the grid and writes what the
simulator writes: `history.jsonl`, `summary.json`, checkpoints, `best/` and `final/`, the model card."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..federated.callbacks import FederatedCallback
from ..federated.cli.arguments import run_config
from ..federated.cli.checks import check_run
from ..federated.runtime import build_claimed, prepare_run, run_accelerator
from ..federated.server import MetricsFn
from .run_config import RunArguments, parse_run_config
from .server import FlowerServer

__all__ = ["app", "build_server"]

logger = logging.getLogger(__name__)
app = ServerApp()


def build_server(grid: Grid, run: RunArguments, callbacks: list[FederatedCallback] | None = None,
                 compute_metrics: MetricsFn | None = None) -> FlowerServer:
    """The run's server on `grid`, checked and loaded (`train()` then waits for the sites and runs)."""
    check_run(run.model, run.data, run.fed)
    strategy, accelerator = run.fed.make_strategy(noise_source="os"), run_accelerator(run.fed)

    def build() -> FlowerServer:
        config = {**run_config(run.model, run.data, run.fed), **asdict(run.flower), "runtime": "flower"}
        prepared = prepare_run(run.model, run.data, run.fed, config, accelerator, ("eval", "calibration"))
        return FlowerServer(grid, run, prepared.model, strategy, prepared.splits["eval"], run.fed.num_clients, run.fed,
                            run_config=prepared.run_config, partition_summary=prepared.partition_summary,
                            accelerator=accelerator, callbacks=callbacks, compute_metrics=compute_metrics)

    return build_claimed(run.fed, accelerator, build)


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fedsq_hf").setLevel(logging.INFO)
    summary: dict[str, Any] = build_server(grid, parse_run_config(context.run_config)).train()
    logger.info("best %s %s at round %s of %s; results in %s", summary["metric_for_best_model"], summary["best_metric"],
                summary["best_round"], summary["rounds"], summary["config"]["output_dir"])
