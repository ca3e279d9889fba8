"""Training: the loop (:func:`fit`, on Lightning Fabric), TBPTT with carried state, optimizers,
schedules, NT-ASGD, early stopping and atomic, pickle-free checkpoints.

>>> from lstmkit.train import fit, TBPTT, TrainConfig
"""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .loop import EpochSampler, FitResult, evaluate_loss, fit
from .optim import NTASGD, EarlyStopping, Schedule, make_optimizer, step_decay, warmup_cosine
from .tbptt import TBPTT, detach_state, reset_state, split_windows

__all__ = [
    "NTASGD",
    "TBPTT",
    "Checkpoint",
    "CheckpointError",
    "EarlyStopping",
    "EpochSampler",
    "FitResult",
    "Schedule",
    "TrainConfig",
    "detach_state",
    "evaluate_loss",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_optimizer",
    "reset_state",
    "save_checkpoint",
    "split_windows",
    "step_decay",
    "warmup_cosine",
]
