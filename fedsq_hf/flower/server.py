"""The library's round loop on a Flower `Grid`: `RoundLoop` (strategies, callbacks, evaluation, the gate
warm-up, checkpoints and exact resume) with a runtime that delivers each round's fits to the sites. A query
before round 1 maps the nodes to their partition ids, so round r trains the clients the simulator's round r
trains, each seeded as there: the same global weights."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from ..errors import FedSQError
from ..federated.protocol import ClientUpdate, ModelTensors, tensor_bytes
from ..federated.runtime import RoundLoop
from ..federated.server import RoundAggregate
from ..serialization import tensors_sha256
from .records import SiteTask, read_update_content
from .run_config import FlowerArguments, RunArguments

__all__ = ["FlowerServer"]

SITE_METRICS = ("site_time", "setup_time", "fit_time", "gate_cache_hits")  # each site's, in the round's record

logger = logging.getLogger(__name__)


class FlowerServer(RoundLoop):
    """A federation of `run.fed.num_clients` sites, one per SuperNode, on `grid`.

    Args:
        grid: the ServerApp's grid.
        run: the run's arguments (from the run config).
        The others as `RoundLoop` takes them (`args` is `run.fed`).
    """

    def __init__(self, grid: Grid, run: RunArguments, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grid, self.run = grid, run
        tensors = ModelTensors.of(self.model)  # what a client starts from, as the simulator's clients do
        self.initial = {k: t.detach().cpu().clone() for k, t in {**tensors.local, **tensors.counters}.items()}
        self.local_keys = set(tensors.local)
        self._digest: tuple[int | None, str] | None = None  # (freeze round, digest) of the structural copy
        self.nodes: dict[int, int] = {}  # client -> node id
        self.holding: dict[int, str] = {}  # client -> digest of the structural copy it was sent

    def resume_groups(self) -> tuple[type, ...]:
        return (*super().resume_groups(), FlowerArguments)

    def train(self) -> dict[str, Any]:
        self.connect()
        return super().train()

    def connect(self) -> None:
        """Wait for the run's nodes, query each (its site checks its data and backbone), map the partitions."""
        need, wait = self.num_clients, self.run.flower.node_wait
        deadline = time.monotonic() + wait
        nodes = sorted(self.grid.get_node_ids())
        while len(nodes) < need and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = sorted(self.grid.get_node_ids())
        if len(nodes) < need:
            raise FedSQError(f"{len(nodes)} of the {need} nodes this run needs (num-clients) connected within "
                             f"{wait:g} s (node-wait): start one SuperNode per site, or raise node-wait.")
        task = SiteTask(self._model_config(query=True))
        replies = self._send({node: task for node in nodes}, MessageType.QUERY, self.run.flower.round_timeout)
        errors = [f"node {node}: {reply}" for node, reply in replies.items() if isinstance(reply, str)]
        errors += [f"node {node}: no reply within round-timeout" for node in nodes if node not in replies]
        if errors:
            raise FedSQError("Sites refused the run before round 1:\n  " + "\n  ".join(errors))
        holders: dict[int, list[int]] = {}
        for node, reply in replies.items():
            holders.setdefault(int(reply["partition-id"]), []).append(node)
        twice = {c: n for c, n in holders.items() if len(n) > 1}
        missing = sorted(set(range(need)) - set(holders))
        if twice or missing:
            raise FedSQError(f"Every client index 0..{need - 1} needs exactly one node: nodes {twice} share a "
                             f"partition-id, and no node has {missing}; fix their --node-config partition-id.")
        self.nodes = {c: n[0] for c, n in holders.items()}
        samples = {c: int(replies[n]["num-examples"]) for c, n in sorted(self.nodes.items())}
        self.run_config.update(num_train_samples=sum(samples.values()), site_samples=samples)  # the sites', not ours
        self.privacy.start([samples[c] for c in range(need)])
        logger.info("Sites: %s", {c: f"node {n}, {samples[c]} samples" for c, n in sorted(self.nodes.items())})

    def _model_config(self, query: bool = False) -> dict[str, Any]:
        config = self.model.config.to_dict()
        if query:  # the site's backbone must give the pretrained gates, calibrated or not
            config.update(calibrated=False, gates_frozen_at_round=None)
        return config

    def _evaluate_into(self, record: dict[str, Any]) -> None:
        super()._evaluate_into(record)
        if not self.run.flower.evaluate_sites:
            return
        tasks = self._tasks(record["round"], sorted(self.nodes), fit=False, current=record)
        replies = self._send({self.nodes[c]: t for c, t in tasks.items()}, MessageType.EVALUATE,
                             self.run.flower.round_timeout)
        answered = {c: replies[self.nodes[c]] for c in tasks if isinstance(replies.get(self.nodes[c]), dict)}
        record["bytes_structural"] += self._delivered(tasks, answered)
        record["site_eval_clients"] = sorted(answered)
        total = sum(m["num-examples"] for m in answered.values())
        for key in {k for m in answered.values() for k in m} - {"num-examples"}:
            record[f"site_eval_{key}"] = sum(m[key] * m["num-examples"] for m in answered.values()) / total

    def _delivered(self, tasks: dict[int, SiteTask], answered: Any) -> int:
        """Record which clients now hold the structural copy their task carried; the bytes sent for it."""
        for client in answered:
            if tasks[client].structural is not None:
                self.holding[client] = tasks[client].structural_sha256
        return sum(tensor_bytes(t.structural) for t in tasks.values() if t.structural is not None)

    def _send(self, tasks: dict[int, SiteTask], kind: str, timeout: float) -> dict[int, Any]:
        """Node -> its reply's content, or the error it sent (a str); a node missing was not heard from."""
        messages = [Message(t.content(), dst_node_id=node, message_type=kind) for node, t in tasks.items()]
        replies = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                replies[node] = reply.error.reason or f"error code {reply.error.code}"
            elif kind in (MessageType.QUERY, MessageType.EVALUATE):
                replies[node] = dict(reply.content["metrics"])
            else:
                try:
                    replies[node] = read_update_content(reply.content)
                except FedSQError as err:
                    replies[node] = str(err)
        return replies

    def _state_round(self, client: int, current: dict[str, Any] | None = None) -> int:
        """The last round (of the history, and `current`, a round done but not yet in it) whose update of
        `client` the server used: its kept state is from then (0 where a client keeps nothing)."""
        if not self.local_keys:
            return 0
        used = [h["round"] for h in self.state.history + ([current] if current else []) if client in h["clients"]
                and client not in h["dropped_clients"] and client not in h["failed_clients"]]
        return max(used, default=0)

    def _tasks(self, round_: int, clients: list[int], fit: bool, current: dict[str, Any] | None = None
               ) -> dict[int, SiteTask]:
        """Each of `clients`' task (a fit, or an evaluation after `current`, the round just done), from one
        copy of what they all get."""
        online = set(self.grid.get_node_ids())
        base = SiteTask(self._model_config(), round_, self.global_model.params())
        return {c: self._task(base, c, self.fit_config(round_, c) if fit else {}, current) for c in clients
                if self.nodes[c] in online}

    def _task(self, base: SiteTask, client: int, config: dict[str, Any], current: dict[str, Any] | None) -> SiteTask:
        dual = self.model.dual_copy
        fixed = dual.gating and dual.gates_enabled
        digest, structural = "", None
        if fixed and self.model.config.calibrated:
            digest = self._structural_digest()
            if self.holding.get(client) != digest:
                structural = {k: t.detach().cpu() for k, t in dual.structural.state_dict().items()}
        state_round = self._state_round(client, current)
        initial = {k: t for k, t in self.initial.items() if state_round == 0 or k not in self.local_keys}
        return dataclasses.replace(base, config=config, gates="fixed" if fixed else "own", state_round=state_round,
                                   initial=initial, structural_sha256=digest, structural=structural)

    def _structural_digest(self) -> str:
        frozen = self.model.config.gates_frozen_at_round
        if self._digest is None or self._digest[0] != frozen:
            self._digest = frozen, tensors_sha256(self.model.dual_copy.structural.state_dict())
        return self._digest[1]

    def run_round(self, round_: int) -> dict[str, Any]:
        """Sample the round's clients as the simulator does, fit them at their sites, aggregate."""
        start = time.perf_counter()
        clients, dropped, active = self.round_clients(round_)
        tasks = self._tasks(round_, active, fit=True)
        replies = self._send({self.nodes[c]: t for c, t in tasks.items()}, MessageType.TRAIN,
                             self.run.flower.round_timeout)
        trained = time.perf_counter()
        aggregate, errors, updates = RoundAggregate.start(self.global_model, self.strategy, active), {}, {}
        for client in active:  # in client order, as the simulator adds them: the same sums
            node = self.nodes[client]
            reply = replies.get(node, "no reply within round-timeout" if client in tasks else "node offline")
            if isinstance(reply, ClientUpdate):
                self._event("on_client_end", client=client, update=reply)
                aggregate.add(client, reply, self.codec, self.global_model)
                updates[client] = reply
            else:
                aggregate.fail(client)
                errors[str(client)] = f"node {node}: {reply}"
        if errors:
            logger.warning("round %d: no update from %s", round_, errors)
        self.finish_round(round_, aggregate)
        record = self.round_record(round_, clients, dropped, aggregate, start, trained)
        sites = {str(c): {k: u.metrics[k] for k in SITE_METRICS if k in u.metrics} for c, u in updates.items()}
        record.update(client_errors=errors, bytes_structural=self._delivered(tasks, updates),
                      bytes_sent=len(tasks) * tensor_bytes(self.global_model.params()), sites=sites)
        return record
