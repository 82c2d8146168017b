"""Typed configuration of a training run (plain dataclasses; the Hydra wrapper validates YAML against them).

The sections mirror the config groups: ``model`` (network + parameterization), ``data``, ``loss``, ``optim``
(optimizer / scheduler built from ``_target_`` with ``_partial_``) and ``trainer`` (loop, checkpoints, speed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scoresde.schema import ConfigError


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
    name: str = "auto"  # auto (edm for model.parameterization=edm, else dsm) | dsm | ddpm | smld | edm
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
    # the preview sampler, in the shape of the conf/sampler group: {name: ..., option: value, ...} (a bare name
    # means that sampler with its defaults)
    sampler: Any = field(default_factory=lambda: {"name": "euler_maruyama", "steps": 200})
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


# --- the diffusion family (issue 16): latent diffusion and cascaded super-resolution --------------------------
@dataclass
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): train on the latents of an autoencoder of train_autoencoder.py."""

    autoencoder: str | None = None  # autoencoder.safetensors; null: train on the data itself
    sha256: str | None = None  # its content hash; filled in by the trainer, checked whenever the run is loaded
    cache_dir: str | None = None  # where the encoded latents are cached (null: beside the autoencoder file)


@dataclass
class SuperResConfig:
    """Cascaded super-resolution (Ho et al. 2022): the net conditioned on ``downsample(x, factor)``."""

    factor: int = 2
    aug_max: float = 0.3  # noise-conditioning augmentation levels s ~ U(0, aug_max) in training (Sec. 4.4)
    upsample: str = "bilinear"  # nearest | bilinear | bicubic: how the low-res input is brought to full size


TASKS = ("generate", "superres")
# --- end of the diffusion family's sections ---------------------------------------------------------------------


@dataclass
class TrainConfig:
    seed: int = 0
    sde: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task: str = "generate"  # generate | superres (TASKS)
    latent: LatentConfig = field(default_factory=LatentConfig)
    superres: SuperResConfig = field(default_factory=SuperResConfig)


class LinearWarmup:
    """Learning-rate factor ``min(step / warmup, 1)`` of the 0-based optimizer step (the reference's linear warm-up,
    yang-song/score_sde_pytorch ``losses.optimization_manager`` with ``state['step']`` starting at 0: its first step
    has learning rate 0). ``LambdaLR`` calls it with 0 for the first step, 1 after one ``scheduler.step()``, ... A
    picklable object, so ``LambdaLR.state_dict`` stores it as plain values."""

    def __init__(self, warmup: int = 5000):
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup <= 0 else min(step / self.warmup, 1.0)


class WarmupCosine(LinearWarmup):
    """:class:`LinearWarmup`, then a half-cosine from the full rate down to ``final`` times it at step ``total``
    (Loshchilov & Hutter 2017, SGDR, without restarts); ``final`` after ``total``. For short runs, where an annealed
    rate reaches better samples than a constant one in the same number of steps (the digits main job). ``total=None``
    (the presets): the run's own length, ``trainer.steps``, set by the trainer when it starts or resumes, so a run
    resumed with more steps stretches the cosine over the new length."""

    def __init__(self, warmup: int = 100, total: int | None = None, final: float = 0.0):
        super().__init__(warmup)
        self.configured_total = None if total is None else int(total)
        self.total: int | None = None
        self.final = float(final)
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"WarmupCosine: final must lie in [0, 1], got {self.final}")
        if self.configured_total is not None:
            self.fit_run_length(self.configured_total)

    def fit_run_length(self, steps: int) -> None:
        """Use ``steps`` as ``total`` unless a ``total`` was configured (called by the trainer)."""
        if self.configured_total is not None and self.configured_total <= max(self.warmup, 0):
            raise ValueError(f"WarmupCosine: total ({self.configured_total}) must exceed warmup ({self.warmup})")
        # a run no longer than its warm-up (a short test run) never reaches the cosine
        self.total = self.configured_total if self.configured_total is not None else int(steps)

    def __call__(self, step: int) -> float:
        start = max(self.warmup, 0)
        if step <= start:  # the warm-up, and its end (the full rate), need no run length
            return super().__call__(step)
        if self.total is None:
            raise RuntimeError("WarmupCosine: the run length is unknown (give total, or let the trainer set it)")
        progress = min((step - start) / (self.total - start), 1.0) if self.total > start else 1.0
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- checks ---------------------------------------------------------------------------------------------------
PRECISION_NAMES = ("fp32", "bf16", "fp16")

#: Keys a resumed run may change (how long, how often, where and how it reports); any other difference between the
#: stored config and the new one means a different experiment and is refused.
RESUMABLE = (
    "trainer.steps",
    "trainer.resume",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_examples",
    "trainer.sample_every",
    "trainer.sample_n",
    "trainer.sampler",
    "trainer.ckpt_every",
    "trainer.keep_every",
    "trainer.export",
    "trainer.device",
    "trainer.progress",
    "trainer.tensorboard",
    "trainer.num_threads",
)


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse values that would fail (or silently mean something else) only after training started."""
    from scoresde.schema import require

    t = cfg.trainer
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "grad_accum", "eval_examples"):
        value = getattr(t, key)
        require(value >= 1, f"trainer.{key}", value, "must be >= 1")
    for key in ("eval_every", "sample_every", "sample_n", "keep_every"):
        value = getattr(t, key)
        require(value >= 0, f"trainer.{key}", value, "must be >= 0 (0: off / only at the end)")
    require(t.num_threads is None or t.num_threads >= 1, "trainer.num_threads", t.num_threads, "must be >= 1 or null")
    require(t.precision in PRECISION_NAMES, "trainer.precision", t.precision, f"choose one of {PRECISION_NAMES}")
    require(0 <= t.ema_rate <= 1, "trainer.ema_rate", t.ema_rate, "must lie in [0, 1]")
    ema = cfg.model.ema_rate
    require(ema is None or 0 <= ema <= 1, "model.ema_rate", ema, "must lie in [0, 1] or be null")
    require(isinstance(t.sampler, (str, dict)), "trainer.sampler", t.sampler, "a sampler name or {name: ..., ...}")
    clip = cfg.optim.grad_clip
    require(clip is None or clip > 0, "optim.grad_clip", clip, "must be > 0 or null (no clipping)")
    for key in ("sde", "model.net", "optim.optimizer"):
        node = cfg.sde if key == "sde" else cfg.model.net if key == "model.net" else cfg.optim.optimizer
        require(isinstance(node, dict), key, node, "must be a config node with a _target_ (pick a preset)")
    d = cfg.data
    require(d.n_train >= 1 and d.n_test >= 1, "data.n_train/n_test", (d.n_train, d.n_test), "must be >= 1")
    require(d.image_size is None or d.image_size >= 1, "data.image_size", d.image_size, "must be >= 1 or null")
    check_family(cfg)


#: The loss options each loss reads (the others would be ignored silently, so a value set away from its default
#: is refused with the key named).
_LOSS_READS = {"dsm": ("eps", "weighting", "importance_sampling"), "edm": ("eps", "p_mean", "p_std"),
               "ddpm": (), "smld": ()}  # fmt: skip


def check_new_run_config(cfg: TrainConfig) -> None:
    """What a new training must not start with, though a stored config holding it still loads: a negative seed,
    a constant time label, and loss options the loss would ignore (:func:`check_loss_config`)."""
    from scoresde.schema import require

    require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    require(cfg.model.time_scale > 0, "model.time_scale", cfg.model.time_scale, "must be > 0 (0: a constant label)")
    check_loss_config(cfg)


def check_loss_config(cfg: TrainConfig) -> None:
    """``loss.*`` values valid for the loss ``loss.name`` resolved to, before anything is written."""
    from scoresde.losses import WEIGHTINGS
    from scoresde.schema import require

    c, default = cfg.loss, LossConfig()
    require(c.name in _LOSS_READS, "loss.name", c.name, f"choose one of {['auto', *_LOSS_READS]}")
    require(c.eps > 0, "loss.eps", c.eps, "must be > 0")
    require(c.weighting in WEIGHTINGS, "loss.weighting", c.weighting, f"choose one of {WEIGHTINGS}")
    require(c.p_std > 0, "loss.p_std", c.p_std, "must be > 0")
    require(0 <= c.label_dropout < 1, "loss.label_dropout", c.label_dropout, "must lie in [0, 1)")
    reads = _LOSS_READS[c.name]
    for key in ("eps", "weighting", "importance_sampling", "p_mean", "p_std"):
        value = getattr(c, key)
        why = (f"is not an option of loss.name={c.name} (auto means edm for model.parameterization=edm, else dsm), "
               f"which reads {', '.join(reads) or 'none of them'}")  # fmt: skip
        require(key in reads or value == getattr(default, key), f"loss.{key}", value, why)
    net = cfg.model.net if isinstance(cfg.model.net, dict) else {}
    require(
        c.label_dropout == 0 or net.get("num_classes"),
        "loss.label_dropout",
        c.label_dropout,
        "needs a class-conditional network (model.net.num_classes)",
    )


def check_family(cfg: TrainConfig) -> None:
    """``task``, ``latent`` and ``superres`` (diffusion family, issue 16)."""
    from scoresde.nets.superres import UPSAMPLE_MODES
    from scoresde.schema import require

    require(cfg.task in TASKS, "task", cfg.task, f"choose one of {TASKS}")
    sr, lat = cfg.superres, cfg.latent
    require(sr.factor >= 2, "superres.factor", sr.factor, "must be an integer >= 2")
    require(0 <= sr.aug_max < 1, "superres.aug_max", sr.aug_max, "must lie in [0, 1)")
    require(sr.upsample in UPSAMPLE_MODES, "superres.upsample", sr.upsample, f"choose one of {UPSAMPLE_MODES}")
    if lat.autoencoder is None:
        require(lat.sha256 is None, "latent.sha256", lat.sha256, "is only meaningful with latent.autoencoder")
        return
    require(cfg.task == "generate", "latent.autoencoder", lat.autoencoder, "super-resolution runs on pixels only")
    require(cfg.model.centered, "model.centered", cfg.model.centered, "latents are not pixels: keep it true")


_NET_MOVED = ("scale_by_sigma", "centered", "sigma_min", "sigma_max", "num_scales")  # left NCSN++ for ScoreModel


def _migrate_net_options(model: dict) -> dict:
    """NCSN++ / DDPM configs stored before the input map and the 1/sigma scaling moved into the preconditioning
    layer: ``model.net.scale_by_sigma`` becomes ``model.scale_by_sigma`` (NCSN++'s old default was true), and
    ``model.net.centered`` must agree with ``model.centered``, which now does both jobs."""
    net = model.get("net")
    target = str(net.get("_target_", "")) if isinstance(net, dict) else ""
    if target.rsplit(".", 1)[-1] not in ("NCSNpp", "DDPM") or not any(k in net for k in _NET_MOVED):
        return model
    net = {k: v for k, v in net.items() if k not in _NET_MOVED}
    old = model["net"]
    model = {**model, "net": net}
    if "scale_by_sigma" not in model:
        model["scale_by_sigma"] = bool(old.get("scale_by_sigma", target.endswith("NCSNpp")))
    if "centered" in old and "centered" in model and bool(old["centered"]) != bool(model["centered"]):
        raise ConfigError(
            f"model.net.centered={old['centered']!r} differs from model.centered={model['centered']!r}: the stored "
            "config comes from a version that allowed it; both must now agree (model.centered)"
        )
    if "centered" in old and "centered" not in model:
        model["centered"] = bool(old["centered"])
    return model


def migrate_stored_config(data: dict) -> dict:
    """A config stored by an earlier version in today's shape (``trainer.sampler`` + ``sampler_options`` became one
    sampler node; NCSN++'s input map and 1/sigma scaling became ``model.centered`` / ``model.scale_by_sigma``)."""
    if isinstance(data.get("model"), dict):
        data = {**data, "model": _migrate_net_options(data["model"])}
    trainer = data.get("trainer")
    if isinstance(trainer, dict) and "sampler_options" in trainer:
        trainer = dict(trainer)
        options = trainer.pop("sampler_options") or {}
        name = trainer.get("sampler", "euler_maruyama")
        trainer["sampler"] = {"name": name, **options} if isinstance(name, str) else name
        data = {**data, "trainer": trainer}
    return data


def _leaves(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out else {prefix: {}}
    return {prefix: node}


def changed_settings(stored: TrainConfig, new: TrainConfig) -> list[str]:
    """``key: stored -> new`` for every setting that differs outside :data:`RESUMABLE`."""
    import dataclasses

    a, b = _leaves(dataclasses.asdict(stored)), _leaves(dataclasses.asdict(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in RESUMABLE):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return out
