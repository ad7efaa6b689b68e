"""The library's round messages as Flower records. Tensors travel as `ArrayRecord`s (exact, float32 or
float16), numbers as `ConfigRecord` / `MetricRecord` entries (which take no None or bool: flags travel
as 0/1, "no value" as an empty string)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..errors import FedSQError
from ..federated.protocol import ClientUpdate

__all__ = ["SiteTask", "update_content", "read_update_content", "arrays", "tensors_of"]


def arrays(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: t.detach().cpu().contiguous() for k, t in tensors.items()})


def tensors_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


@dataclass
class SiteTask:
    """What the server asks of a site (a query, a fit or an evaluation).

    Args:
        model_config: the global model's `FedSQConfig` as a dict (the site builds its model from it, with
            its own copy of the backbone).
        round: the round this task belongs to (0: the query before round 1).
        params: the global model's shared tensors (empty for a query).
        config: the round config (`FitConfig` as a dict, the client's seed in it).
        gates: "fixed" (FedSQ's structural gates) or "own" (a gate warm-up round: the model's own gates).
        state_round: the round after which this client's own state (FedBN) was last kept: the site starts
            from what it kept then (0: from `initial`).
        initial: the tensors every client starts from that are not shared (BatchNorm under FedBN, counters).
        structural_sha256: the digest of the re-frozen structural copy the site must use ("": the
            backbone's own, rebuilt at the site).
        structural: that copy, sent once to each site (None: the site holds it on its disk).
    """

    model_config: dict[str, Any]
    round: int = 0
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    gates: str = "fixed"
    state_round: int = 0
    initial: dict[str, torch.Tensor] = field(default_factory=dict)
    structural_sha256: str = ""
    structural: dict[str, torch.Tensor] | None = None

    def content(self) -> RecordDict:
        meta = {"model": json.dumps(self.model_config), "round": self.round, "gates": self.gates, "state-round": self.state_round,
                "structural-sha256": self.structural_sha256}
        records: dict[str, Any] = {"fedsq": ConfigRecord(meta), "config": ConfigRecord(self.config),
                                   "arrays": arrays(self.params), "initial": arrays(self.initial)}
        if self.structural is not None:
            records["structural"] = arrays(self.structural)
        return RecordDict(records)

    @classmethod
    def read(cls, content: RecordDict) -> SiteTask:
        missing = [k for k in ("fedsq", "config", "arrays", "initial") if k not in content]
        if missing:
            raise FedSQError(f"A message lacks {missing}: the ServerApp is not fedsq-hf's, or of another version; "
                             "install the same fedsq-hf on the server and at every site.")
        meta = content["fedsq"]
        return cls(json.loads(meta["model"]), int(meta["round"]), tensors_of(content["arrays"]), dict(content["config"]), meta["gates"],
                   int(meta["state-round"]), tensors_of(content["initial"]), meta["structural-sha256"],
                   tensors_of(content["structural"]) if "structural" in content else None)


def update_content(update: ClientUpdate) -> RecordDict:
    """A site's reply to a fit: its encoded update, its local state (FedBN) and its metrics."""
    metrics = {"num-examples": update.num_samples, "num-bytes": update.num_bytes, "diverged": int(update.diverged),
               **{k: [float(x) for x in v] if isinstance(v, list) else float(v) for k, v in update.metrics.items()}}
    return RecordDict({"metrics": MetricRecord(metrics), "update": arrays(update.tensors),
                       "local_state": arrays(update.local_state)})


def read_update_content(content: RecordDict) -> ClientUpdate:
    if "metrics" not in content or "update" not in content:
        raise FedSQError("A fit reply lacks its update: the site's ClientApp is not fedsq-hf's, or of another version.")
    metrics = dict(content["metrics"])
    num_samples, num_bytes, diverged = (int(metrics.pop(k)) for k in ("num-examples", "num-bytes", "diverged"))
    local = tensors_of(content["local_state"]) if "local_state" in content else {}
    return ClientUpdate(tensors_of(content["update"]), num_samples, metrics, diverged=bool(diverged),
                        local_state=local, num_bytes=num_bytes)
