"""Build a federated run from its arguments: data, partition, model, strategy, trainer."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..callbacks import FederatedCallback
from ..cli.arguments import DataArguments, FederatedArguments, ModelArguments, run_config, with_example_defaults
from ..cli.checks import check_run
from ..runtime import build_claimed, prepare_run, run_accelerator
from ..server import MetricsFn
from .trainer import FederatedTrainer

__all__ = ["build_trainer", "run_federated"]

logger = logging.getLogger(__name__)


def run_federated(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                  callbacks: list[FederatedCallback] | None = None,
                  compute_metrics: MetricsFn | None = None) -> dict[str, Any]:
    """Run a whole simulation; returns the summary (also written to `output_dir/summary.json`)."""
    return build_trainer(model_args, data_args, fed_args, callbacks, compute_metrics).train()


def build_trainer(model_args: ModelArguments, data_args: DataArguments, fed_args: FederatedArguments,
                  callbacks: list[FederatedCallback] | None = None,
                  compute_metrics: MetricsFn | None = None) -> FederatedTrainer:
    """Everything a run needs, checked and loaded: data, partition, model, strategy, in a trainer.
    `callbacks` come after the default ones; `compute_metrics` replaces the built-in metrics."""
    check_run(model_args, data_args, fed_args)
    example, data_args = data_args.dataset is None, with_example_defaults(data_args)
    fed_args = replace(fed_args, clients_per_round=fed_args.clients_per_round or fed_args.num_clients)
    strategy = fed_args.make_strategy()
    accelerator = run_accelerator(fed_args)
    if example and accelerator.is_main_process:
        logger.info("No --dataset: the offline example, %s with max_train_samples %s, max_eval_samples %s, image_size %s "
                    "(name a dataset to use it whole).", data_args.dataset, data_args.max_train_samples,
                    data_args.max_eval_samples, data_args.image_size)

    def build() -> FederatedTrainer:
        run = prepare_run(model_args, data_args, fed_args, run_config(model_args, data_args, fed_args), accelerator)
        return FederatedTrainer(run.model, strategy, run.splits["train"], run.splits["eval"], run.partitions, fed_args,
                                run_config=run.run_config, partition_summary=run.partition_summary,
                                accelerator=accelerator, callbacks=callbacks, compute_metrics=compute_metrics)

    return build_claimed(fed_args, accelerator, build)
