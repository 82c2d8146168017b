"""Training: typed config, the one module that builds objects from it, the loop (DSM + Adam + EMA + checkpoints +
DDP) and its result. ``train(config, run_dir)`` is the whole job."""

from scoresde.training.build import build_setup, parse_train_config
from scoresde.training.config import (
    DataConfig,
    LinearWarmup,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    WarmupCosine,
)
from scoresde.training.trainer import (
    DiskFullError,
    NonFiniteLossError,
    Setup,
    Trainer,
    TrainResult,
    fit,
    step_generator,
    train,
)

__all__ = [
    "DataConfig",
    "LinearWarmup",
    "WarmupCosine",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "DiskFullError",
    "NonFiniteLossError",
    "Setup",
    "Trainer",
    "TrainResult",
    "build_setup",
    "fit",
    "parse_train_config",
    "step_generator",
    "train",
]
