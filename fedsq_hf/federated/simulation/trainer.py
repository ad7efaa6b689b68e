"""Federated simulation on Accelerate: each process plays its share of a round's clients one after another
on one model instance, through the client API (`ClientTrainer.fit`); one all-reduce per round sums the
processes' aggregates; the server side (`RoundLoop`: strategy, gate warm-up, FedBN's local states,
evaluation, checkpoints) runs on every process alike, so a run gives the same global weights on 1 or N
processes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator

from ...modeling_fedsq import FedSQModel
from ..callbacks import FederatedCallback
from ..client import ClientArguments, ClientState, ClientTrainer
from ..data import as_samples
from ..protocol import UpdateCodec, make_codec
from ..runtime import RoundLoop, run_accelerator
from ..server import MetricsFn, RoundAggregate, Strategy
from .collectives import gather_updates, reduce_aggregate
from .placement import assign_clients

if TYPE_CHECKING:
    from ..cli.arguments import FederatedArguments

__all__ = ["FederatedTrainer"]


class FederatedTrainer(RoundLoop):
    """Simulate a federation of `len(partitions)` clients training `model` with `strategy`.

    Args:
        train_data: the clients' samples (`StreamedSamples`, `PreloadedSamples`, or model-ready (pixels, labels)).
        partitions: sample indices of each client into `train_data`.
        The others as `RoundLoop` takes them.
    """

    def __init__(self, model: FedSQModel, strategy: Strategy,
                 train_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
                 eval_data: torch.utils.data.Dataset | tuple[torch.Tensor, torch.Tensor],
                 partitions: list[np.ndarray], args: FederatedArguments, run_config: dict[str, Any] | None = None,
                 partition_summary: dict[str, Any] | None = None, accelerator: Accelerator | None = None,
                 callbacks: list[FederatedCallback] | None = None, compute_metrics: MetricsFn | None = None,
                 codec: UpdateCodec | None = None) -> None:
        accelerator, codec = accelerator or run_accelerator(args), codec or make_codec(args.update_codec)
        self.partitions, self.train_set = partitions, as_samples(train_data)
        self.sizes = torch.tensor([float(len(p)) for p in partitions])
        self.client = ClientTrainer(model, self.train_set, ClientArguments.from_arguments(args), accelerator, codec)
        super().__init__(model, strategy, eval_data, len(partitions), args, run_config, partition_summary, accelerator,
                         callbacks, compute_metrics, codec)
        self.privacy.start([len(p) for p in partitions])

    def run_round(self, round_: int) -> dict[str, Any]:
        """Sample clients, train this process's share, aggregate across processes, update the global model."""
        acc, start = self.accelerator, time.perf_counter()
        clients, dropped, active = self.round_clients(round_)
        assignment = assign_clients(active, self.sizes.int().tolist(), acc.num_processes)
        mine = self._train_share(round_, assignment[acc.process_index], active)
        trained = time.perf_counter()
        aggregate = reduce_aggregate(acc, mine)
        gathered = gather_updates(acc, mine.updates, max(len(a) for a in assignment), self.global_model.layout.numel) \
            if aggregate.summed is None and aggregate.num_samples > 0 else None
        self.finish_round(round_, aggregate, gathered)
        return self.round_record(round_, clients, dropped, aggregate, start, trained)

    def _train_share(self, round_: int, mine: list[int], active: list[int]) -> RoundAggregate:
        """Fit this process's clients one after another, each from the global model and its own state."""
        server = self.global_model
        aggregate = RoundAggregate.start(server, self.strategy, active)
        global_params = server.params()
        for client in mine:
            state = ClientState(server.local_states.of(client) if server.local_states else {})
            update = self.client.fit(global_params, self.fit_config(round_, client), indices=self.partitions[client],
                                     state=state)
            self._event("on_client_end", client=client, update=update)
            aggregate.add(client, update, self.codec, server)
        return aggregate
