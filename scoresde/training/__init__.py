"""Training: typed config, the loop (DSM + Adam + EMA + checkpoints + DDP) and its result."""

from scoresde.training.config import (
    DataConfig,
    LinearWarmup,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
)
from scoresde.training.trainer import NonFiniteLossError, Setup, Trainer, TrainResult, fit, step_generator

__all__ = [
    "DataConfig",
    "LinearWarmup",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "NonFiniteLossError",
    "Setup",
    "Trainer",
    "TrainResult",
    "fit",
    "step_generator",
]
