"""The federated trainer's state: what callbacks see and what a checkpoint keeps, as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ...serialization import atomic_write_bytes, atomic_write_json, is_of_type

__all__ = ["FederatedState", "write_history"]


_FIELD_TYPES = {"round": (int,), "max_rounds": (int,), "history": (list,), "best_metric": (int, float, type(None)),
                "best_round": (int, type(None)), "metric_for_best_model": (str,), "greater_is_better": (bool,),
                "failed_streak": (int,), "run": (dict,)}


@dataclass
class FederatedState:
    """The state of a federated run, in the manner of transformers' `TrainerState`.

    Args:
        round: the last round completed (0 before the first).
        max_rounds: the rounds the run is set to do.
        history: one record per completed round (what `history.jsonl` holds).
        best_metric / best_round: the best value of `metric_for_best_model` so far, and its round.
        metric_for_best_model / greater_is_better: what "best" means (`eval_` + the metric's name).
        failed_streak: rounds in a row without any usable client update.
        run: the settings a resumed run must share with this one.
        is_world_process_zero / is_local_process_zero: whether this process writes (set by the trainer).
    """

    round: int = 0
    max_rounds: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_round: int | None = None
    metric_for_best_model: str = "accuracy"
    greater_is_better: bool = True
    failed_streak: int = 0
    run: dict[str, Any] = field(default_factory=dict)
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True

    @property
    def best_key(self) -> str:
        return f"eval_{self.metric_for_best_model}"

    def update_best(self, record: dict[str, Any]) -> bool:
        """Take `record`'s best-model metric into account; True if it is a new best."""
        value = record.get(self.best_key)
        if value is None or not math.isfinite(value):
            return False
        better = self.best_metric is None or (value > self.best_metric if self.greater_is_better else value < self.best_metric)
        if better:
            self.best_metric, self.best_round = float(value), record["round"]
        return better

    def summary(self) -> dict[str, Any]:
        """The run's outcome: best and final metrics, rounds, time."""
        evaluated = [h for h in self.history if h.get(self.best_key) is not None]
        return {
            "metric_for_best_model": self.metric_for_best_model, "best_metric": self.best_metric,
            "best_round": self.best_round,
            "final_metrics": {k: v for k, v in evaluated[-1].items() if k.startswith("eval_") and isinstance(v, (int, float))}
            if evaluated else {},
            "rounds": len(self.history), "stopped_early": self.round < self.max_rounds,
            "wall_time": sum(h.get("wall_time", 0.0) for h in self.history),
        }

    def save_to_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, dataclasses.asdict(self))

    @classmethod
    def load_from_json(cls, path: str | os.PathLike) -> FederatedState:
        """The state in `path`; `TypeError` if it is not one (a damaged or edited file, or another version's)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise TypeError(f"it holds a JSON {type(data).__name__}, not an object of state fields")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown fields {', '.join(map(repr, unknown))}, not written by this version of fedsq-hf")
        state = cls(**data)
        wrong = [name for name, kinds in _FIELD_TYPES.items() if not is_of_type(getattr(state, name), kinds)]
        if not wrong and not all(isinstance(h, dict) and isinstance(h.get("round"), int)
                                 and isinstance(h.get(state.best_key), (int, float, type(None))) for h in state.history):
            wrong.append("history")
        if wrong:
            raise TypeError(f"wrong type of {', '.join(dict.fromkeys(wrong))}")
        return state


def write_history(output_dir: str, history: list[dict[str, Any]]) -> None:
    """`history.jsonl` of `output_dir`: one JSON record per round, written atomically."""
    atomic_write_bytes(os.path.join(output_dir, "history.jsonl"), "".join(json.dumps(h) + "\n" for h in history).encode())
