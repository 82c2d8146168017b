"""Typed configuration of a training run (plain dataclasses; the Hydra wrapper validates YAML against them).

The sections mirror the config groups: ``model`` (network + parameterization), ``data``, ``loss``, ``optim``
(optimizer / scheduler built from ``_target_`` with ``_partial_``) and ``trainer`` (loop, checkpoints, speed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    net: Any = None  # {_target_: ..., ...}; instantiated with data_shape=...
    parameterization: str = "eps"  # score | eps | x0 | v | edm (scoresde.score)
    time_input: str = "t"  # t | sigma | log_sigma | edm
    time_scale: float = 1.0
    sigma_data: float | None = None  # edm preconditioning / loss: the data's std; None: estimated from the data
    scale_by_sigma: bool = False  # parameterization score: the output divided by sigma(t) is the score
    centered: bool = True  # images scaled to [-1, 1] (else [0, 1], and the network sees 2 x - 1)
    ema_rate: float | None = None  # None: trainer.ema_rate
    image_size: int | None = None  # resolution the network is meant for; the image data groups default to it
    official_config: str | None = None  # published presets: the reference config they reproduce


@dataclass
class DataConfig:
    kind: str = "digits"  # toy | digits | mnist | npz | folder | cifar10
    name: str | None = None  # toy: eight_gaussians | checkerboard | swiss_roll | two_moons
    path: str | None = None  # npz / folder / cifar10
    key: str | None = None  # npz: array name
    image_size: int | None = None  # resize images to image_size x image_size
    channels: int = 3  # folder: 1 (grey) or 3 (RGB)
    n_train: int = 10_000  # toy
    n_test: int = 2_000  # toy
    test_fraction: float = 0.1
    seed: int = 0  # fixed train/test split
    dequantize: bool = True
    random_flip: bool = False


@dataclass
class LossConfig:
    name: str = "dsm"  # dsm | ddpm | smld | edm
    eps: float = 1e-5
    reduce_mean: bool = True
    weighting: str = "sigma2"  # sigma2 | likelihood | edm (dsm)
    importance_sampling: bool = False
    p_mean: float = -1.2  # edm: ln(sigma / alpha) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    label_dropout: float = 0.0  # class-conditional nets (model.net.num_classes): null label with this probability


@dataclass
class OptimConfig:
    optimizer: Any = None  # {_target_: torch.optim.Adam, _partial_: true, lr: ...}
    scheduler: Any = None  # {_target_: torch.optim.lr_scheduler.LambdaLR, _partial_: true, ...} or null
    grad_clip: float | None = 1.0


@dataclass
class TrainerConfig:
    steps: int = 2000
    batch_size: int = 128
    resume: str | None = None  # run directory or checkpoint file; the run dir's own checkpoint wins
    ema_rate: float = 0.9999  # used when model.ema_rate is null
    log_every: int = 50
    eval_every: int = 500  # held-out loss (EMA weights, fixed draws); 0: only at the end
    eval_examples: int = 1000
    sample_every: int = 0  # sample grid (EMA weights, fixed seed); 0: only at the end
    sample_n: int = 64
    sampler: str = "euler_maruyama"
    sampler_options: dict[str, Any] = field(default_factory=lambda: {"steps": 200})
    ckpt_every: int = 500
    keep_every: int = 0  # also keep checkpoints/step_XXXXXXXX.pt every k steps (0: only last.pt)
    export: bool = True  # ema.safetensors at the end
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False
    channels_last: bool = False
    grad_accum: int = 1
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = True  # when tensorboard is installed


@dataclass
class TrainConfig:
    seed: int = 0
    sde: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


class LinearWarmup:
    """Learning-rate factor ``min((step + 1) / warmup, 1)`` (the paper's linear warm-up); a picklable object so
    ``LambdaLR.state_dict`` stores it as plain values."""

    def __init__(self, warmup: int = 5000):
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup <= 0 else min((step + 1) / self.warmup, 1.0)
