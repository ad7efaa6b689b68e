"""The simulator's checkpoints: what of a run a checkpoint holds, and how a resume takes it back."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from ...errors import CheckpointError
from ..io import MODEL_FILE, START_OVER, checkpoint_name, load_checkpoint, save_checkpoint, write_history

__all__ = ["TrainerCheckpoints"]

logger = logging.getLogger(__name__)


class TrainerCheckpoints:
    """The round loop's checkpoint methods: `checkpoints/round-N/` holds the global state
    (`global_state`), FedBN's local states, the server optimizer's buffers (`strategy.*`) and, once the
    gates were re-frozen (calibration or gate warm-up), the structural copy (`structural.*`), and what the gate
    warm-up keeps until it decides (`gate_warmup.*`)."""

    def resume_groups(self) -> tuple[type, ...]:
        """The argument classes of this runtime's run."""
        from ..cli.arguments import DataArguments, ModelArguments

        return ModelArguments, DataArguments, type(self.args)

    def resume_marks(self) -> dict[str, str]:
        """What a resume must share with the interrupted run (run-config key -> resume mark)."""
        from ..cli.arguments import resume_marks

        return resume_marks(*self.resume_groups())

    def save_checkpoint(self) -> str:
        """`checkpoints/round-N/` of the current state (written by the main process); returns its path."""
        folder = os.path.join(self.args.output_dir, "checkpoints")
        if not self.state.is_world_process_zero:
            return os.path.join(folder, checkpoint_name(self.state.round))
        tensors = {**self.global_model.state_tensors(), **{f"strategy.{k}": v for k, v in self.strategy.state_dict().items()}}
        if self.model.config.calibrated and self.model.structural is not None:  # re-frozen gates: not the backbone's
            tensors.update({f"structural.{k}": v for k, v in self.model.structural.state_dict().items()})
        if self.gate_warmup is not None:
            tensors.update({f"gate_warmup.{k}": v for k, v in self.gate_warmup.state_dict().items()})
        return save_checkpoint(folder, self.state, tensors)

    def load_checkpoint(self) -> None:
        """Continue from the newest checkpoint in `output_dir`, refused if it is of another run."""
        folder = os.path.join(self.args.output_dir, "checkpoints")
        from ..cli.arguments import FINGERPRINT_KEYS, field_defaults

        state, tensors = load_checkpoint(folder, self.state.run, self.resume_marks(), field_defaults(*self.resume_groups()),
                                         FINGERPRINT_KEYS)
        if not self.global_model.load_state_tensors(tensors):
            raise CheckpointError(f"--resume: the checkpoint in {folder!r} does not match this model (missing tensors "
                                  f"or another size); it was damaged or is of another model: {START_OVER}.")
        self.strategy.load_state_dict(_prefixed(tensors, "strategy."))
        if self.gate_warmup is not None:
            self.gate_warmup.load_state_dict(_prefixed(tensors, "gate_warmup."))
        structural = _prefixed(tensors, "structural.")
        if structural:
            self.model.structural.load_state_dict(structural)
            self.model.config.calibrated = True
        current = self.state  # this run's settings; the checkpoint's progress, best recomputed under them
        current.round, current.history, current.failed_streak = state.round, state.history, state.failed_streak
        for record in current.history:
            current.update_best(record)
        if current.is_world_process_zero:
            self._drop_lost_rounds()

    def _drop_lost_rounds(self) -> None:
        """What the interrupted run wrote of rounds after its last checkpoint, which the resumed run trains
        again: their lines of `history.jsonl`, and `best/` if one of them made it (not the checkpoint's best)."""
        out, state = self.args.output_dir, self.state
        try:
            with open(os.path.join(out, "history.jsonl"), encoding="utf-8") as f:
                written = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            written = []
        lost = [r for r in written if isinstance(r, dict) and isinstance(r.get("round"), int) and r["round"] > state.round]
        if not lost:
            return
        write_history(out, state.history)
        best = dataclasses.replace(state)  # the best of the checkpoint's rounds, then of the lost ones
        for record in lost:
            best.update_best(record)
        best_dir = os.path.join(out, "best")
        if best.best_round != state.best_round and os.path.isdir(best_dir):
            for name in os.listdir(best_dir):
                if MODEL_FILE.fullmatch(name):
                    os.remove(os.path.join(best_dir, name))
            logger.warning("--resume: best/ held the model of round %d, after the checkpoint of round %d: removed; "
                           "the next best round writes it again.", best.best_round, state.round)

    def check_warmup_state(self) -> None:
        """A run resumed inside a gate warm-up that reads the clients' scores must have the best-scored model back."""
        scored = self.gate_warmup.lacks_best(self.state.history)
        if scored:
            raise CheckpointError(f"--resume: the checkpoint of round {self.state.round} lacks the weights of the gate "
                                  f"warm-up's best-scored model (clients scored rounds {scored}); it was damaged: "
                                  f"{START_OVER}.")

    def check_frozen_structural(self) -> None:
        """A run resumed after its gate warm-up froze the gates must have its re-frozen structural copy back."""
        if not self.model.config.calibrated:
            raise CheckpointError(f"--resume: the checkpoint of round {self.state.round} lacks the structural copy "
                                  f"frozen at round {self.model.config.gates_frozen_at_round}; it was damaged: "
                                  f"{START_OVER}.")


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
