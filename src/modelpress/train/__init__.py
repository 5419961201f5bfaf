"""The training loop shared by every method that trains or retrains a model."""

from modelpress.core.checkpoint import load_checkpoint, save_checkpoint
from modelpress.train.config import OptimizerName, Schedule, TrainConfig
from modelpress.train.loop import Objective, TrainResult, apply_max_norm_, cross_entropy_objective, train

__all__ = [
    "Objective",
    "OptimizerName",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "apply_max_norm_",
    "cross_entropy_objective",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
