"""One site of a deployment, apart from Flower's message plumbing: its node config, its data (a partition
of a dataset every site holds, or a dataset of its own), its model (built from the server's config with
the site's own copy of the backbone) and what it keeps on its disk between messages (each message runs in
a fresh process) and across a resumed run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import psutil
import torch

from ..configuration_fedsq import FedSQConfig
from ..convert import cache_dir, convert_efficientnet_lite0
from ..errors import FedSQError
from ..federated.client import ClientArguments, ClientState, ClientTrainer, make_accelerator
from ..federated.data import StreamedSamples
from ..federated.protocol import ClientUpdate, ModelTensors, make_codec
from ..federated.runtime import RunData, load_run_data, run_samples
from ..federated.server import Evaluator
from ..gate_cache import GateCache
from ..modeling_fedsq import FedSQModel
from ..serialization import load_weights, save_weights, tensors_sha256
from .records import SiteTask
from .run_config import RunArguments, config_value

__all__ = ["SiteConfig", "Site"]

_NODE_KEYS = ("partition-id", "num-partitions", "dataset", "backbone", "state-dir")


@dataclass
class SiteConfig:
    """A SuperNode's `--node-config`.

    Args:
        partition_id: this site's client index in the federation (0 .. num-clients - 1).
        num_partitions: set: the site trains partition `partition_id` of `dataset` split as the simulator
            splits it (every site holds the same dataset; the run's --partition and --seed); unset: the
            whole train split of `dataset` is the site's own data.
        dataset: a dataset path or Hub id (default: the run config's `dataset`).
        backbone: the site's copy of the backbone (default: the run config's `backbone`).
        state_dir: where the site keeps its state between messages (default: `flower/` in fedsq-hf's cache,
            `$FEDSQ_HF_CACHE` or `~/.cache/fedsq_hf`).
    """

    partition_id: int
    num_partitions: int | None = None
    dataset: str | None = None
    backbone: str | None = None
    state_dir: str | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteConfig:
        unknown = sorted(set(node_config) - set(_NODE_KEYS))
        if unknown:
            raise FedSQError(f"The node config has unknown keys {unknown}; it takes {list(_NODE_KEYS)}.")
        if "partition-id" not in node_config:
            raise FedSQError("The node config lacks partition-id: start the SuperNode with "
                             "--node-config \"partition-id=N\" (its client index, and num-partitions=M to train "
                             "partition N of M of a shared dataset).")
        hints = typing.get_type_hints(cls)
        return cls(**{k.replace("-", "_"): config_value(k, v, hints[k.replace("-", "_")], "node config")
                      for k, v in node_config.items()})


class Site:
    """What one message needs of its site; each property is built at most once per message."""

    def __init__(self, run: RunArguments, config: SiteConfig) -> None:
        self.run, self.config = run, config
        fed, pid, parts = run.fed, config.partition_id, config.num_partitions
        if parts is not None and parts != fed.num_clients:
            raise FedSQError(f"This site's num-partitions is {parts}, but the run has num-clients {fed.num_clients}; "
                             "start every SuperNode with num-partitions equal to the run's num-clients.")
        if not 0 <= pid < fed.num_clients:
            raise FedSQError(f"This site's partition-id {pid} is outside the run's {fed.num_clients} clients "
                             f"(0 .. {fed.num_clients - 1}).")
        state_dir = os.path.expanduser(config.state_dir) if config.state_dir else os.path.join(cache_dir(), "flower")
        self.folder = os.path.join(state_dir, run.run_name)
        self.gate_cache_file: str | None = None  # set by `model` where it has a gate cache

    @cached_property
    def data(self) -> RunData:
        dataset = self.config.dataset or self.run.data.dataset
        shared = self.config.num_partitions is not None
        try:
            return load_run_data(self.run.data, self.run.fed, dataset, None if shared else 0)
        except FedSQError as err:
            raise FedSQError(f"This site's data {dataset!r}: {err}") from err

    @cached_property
    def indices(self) -> np.ndarray:
        """This site's samples in `data.train`."""
        if self.config.num_partitions is None:
            return np.arange(len(self.data.train))
        return self.data.partitions(self.run.data.label_column, self.run.fed)[self.config.partition_id]

    def model(self, task: SiteTask) -> FedSQModel:
        """The model of `task`'s config on this site's backbone (its digest checked where it gives the
        gates), with the re-frozen structural copy where the server has one, and the initial tensors."""
        backbone = self.config.backbone or self.run.model.backbone or convert_efficientnet_lite0()
        config = FedSQConfig.from_dict({**task.model_config, "backbone": backbone})
        names = [config.id2label[i] for i in range(config.num_labels)]
        if list(self.data.names) != names:  # in order: a label's id is its index
            raise FedSQError(f"This site's data has the classes {list(self.data.names)[:5]}..., the run's model "
                             f"{names[:5]}... (in this order): give the site a dataset with the run's labels.")
        model = FedSQModel(config)
        if self.run.model.gate_cache_mb:
            model.enable_gate_cache(self.run.model.gate_cache_mb << 20)
        if task.structural_sha256:
            model.structural.load_state_dict(self._structural(task))
        ModelTensors.of(model).load(task.initial)
        if task.gates == "own":
            model.dual_copy.disable_gates()
        elif model.dual_copy.gate_cache is not None:
            self.gate_cache_file = self._gate_cache_path(task, config)
            if os.path.isfile(self.gate_cache_file):
                model.dual_copy.gate_cache = GateCache.load(self.gate_cache_file, self.run.model.gate_cache_mb << 20)
        return model

    def _gate_cache_path(self, task: SiteTask, config: FedSQConfig) -> str:
        """Where this client's gate cache lives between messages: keyed by the structural copy's digest and
        what makes its samples (a sample's gates never change while both stay the same)."""
        key = {"structural": task.structural_sha256 or config.backbone_sha256, "site": dataclasses.asdict(self.config),
               "data": dataclasses.asdict(self.run.data), "seed": self.run.fed.seed,
               "num_clients": self.run.fed.num_clients, "pipeline": config.pretrained_cfg}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return os.path.join(self.folder, f"client-{self.config.partition_id}", f"gate-cache-{digest}.safetensors")

    def _structural(self, task: SiteTask) -> dict[str, torch.Tensor]:
        path = os.path.join(self.folder, "structural.safetensors")
        if task.structural is not None:
            if tensors_sha256(task.structural) != task.structural_sha256:
                raise FedSQError("The structural copy the server sent does not match its digest; send it again.")
            save_weights(path, task.structural)
            return task.structural
        if not os.path.isfile(path):
            raise FedSQError(f"This site holds no structural copy for run {self.run.run_name!r} ({path}); the server "
                             "sends it once: the site's state-dir was cleared or changed. Resume the run on the server "
                             "(it sends the copy again to every site).")
        structural = load_weights(path)
        if tensors_sha256(structural) != task.structural_sha256:
            raise FedSQError(f"This site's structural copy ({path}) is not the run's (another run named "
                             f"{self.run.run_name!r}?); give the run its own run-name, or resume it on the server.")
        return structural

    def _state_path(self, round_: int) -> str:
        return os.path.join(self.folder, f"client-{self.config.partition_id}", f"round-{round_}.safetensors")

    def client_state(self, state_round: int) -> ClientState:
        """What this client kept after round `state_round` (0: nothing yet)."""
        if state_round == 0:
            return ClientState()
        path = self._state_path(state_round)
        if not os.path.isfile(path):
            raise FedSQError(f"This site lacks its state after round {state_round} ({path}): its state-dir was "
                             "cleared or changed since; point state-dir back at it.")
        return ClientState.load(path)

    def samples(self, model: FedSQModel, split: str) -> StreamedSamples:
        return run_samples(self.data, model.config, self.run.data, (split,))[split]

    def query(self, task: SiteTask) -> dict[str, int]:
        """Check the site before round 1: its data loads, its backbone is the run's."""
        self.model(task)
        return {"partition-id": self.config.partition_id, "num-examples": len(self.indices)}

    def fit(self, task: SiteTask) -> ClientUpdate:
        """Train on this site's samples (FedSQ's gate cache, `gate-cache-mb`, kept on the site's disk across
        messages). The update's metrics add where the message's time went: `site_time` (since this process
        started), `setup_time` (data, model and trainer) and `fit_time` (training), and `gate_cache_hits`."""
        begin = time.perf_counter()
        model = self.model(task)
        args = ClientArguments.from_arguments(self.run.fed)
        trainer = ClientTrainer(model, self.samples(model, "train"), args, codec=make_codec(self.run.fed.update_codec))
        state = self.client_state(task.state_round)
        cache = model.dual_copy.gate_cache
        cached = len(cache) if cache is not None else 0
        start = time.perf_counter()
        update = trainer.fit(task.params, task.config, indices=self.indices, state=state)
        end = time.perf_counter()
        if update.local_state:
            state.save(self._state_path(task.round))
        if cache is not None and len(cache) > cached:
            cache.save(self.gate_cache_file)
        update.metrics.update(setup_time=start - begin, fit_time=end - start, gate_cache_hits=cache.hits if cache else 0,
                              site_time=time.time() - psutil.Process().create_time())
        return update

    def evaluate(self, task: SiteTask) -> dict[str, float]:
        """The global model (with this client's own BatchNorm under FedBN) on the site's evaluation split."""
        model, local = self.model(task), self.client_state(task.state_round).local_batchnorm
        ModelTensors.of(model).load({**local, **task.params})
        samples, args = self.samples(model, "eval"), ClientArguments.from_arguments(self.run.fed)
        metrics = Evaluator(model, samples, 2 * args.batch_size, args.num_workers, make_accelerator(args)).evaluate()
        return {"num-examples": len(samples), **metrics}
