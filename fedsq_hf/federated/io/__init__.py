"""What a run keeps on disk: its state as JSON, atomic checkpoints, and the output folder it holds."""

from .checkpoint import START_OVER, checkpoint_name, load_checkpoint, save_checkpoint
from .output_dir import MODEL_FILE, OutputDirLock, claim_output_dir, clear_previous_run
from .state import FederatedState, write_history

__all__ = ["FederatedState", "save_checkpoint", "load_checkpoint", "checkpoint_name", "START_OVER", "OutputDirLock",
           "claim_output_dir", "clear_previous_run", "MODEL_FILE", "write_history"]
