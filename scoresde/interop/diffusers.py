"""diffusers models as score models (extra ``scoresde[diffusers]``): a ``UNet2DModel`` and its DDPM-type scheduler.

A diffusers UNet is trained on ``N = num_train_timesteps`` timesteps with the scheduler's ``alphas_cumprod``. We
read the schedule from the scheduler's config (data: ``beta_schedule``, ``beta_start``, ``beta_end``,
``trained_betas``; the same float32 arithmetic as diffusers, so the values agree bitwise) and put it on a
:class:`~scoresde.sde.DiscreteVPSDE` (timestep ``k`` at ``t = (k + 1) / N``). The UNet is evaluated at the
continuous timestep ``N t - 1`` and its output read per the scheduler's ``prediction_type`` (``epsilon``,
``v_prediction``, ``sample``). So every sampler of this package and the exact likelihood run on a diffusers
model, and at the training timesteps the score is exactly ``-eps / sigma``.

Inference-only scheduler settings (``clip_sample``, ``thresholding``, ``timestep_spacing``, ``steps_offset``,
``variance_type`` of fixed variances) describe diffusers' samplers, not the model, and are not carried over.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scoresde.interop.timestep_model import TimestepScoreModel
from scoresde.sde import DiscreteVPSDE

#: Scheduler classes whose config describes a DDPM-type training schedule (betas over discrete timesteps).
DDPM_TYPE_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _require_diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("diffusers interop needs the diffusers package: pip install 'scoresde[diffusers]'") from err
    return diffusers


def _glide_cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2`` (Nichol & Dhariwal 2021, Eq. 17 with s = 0.008), as diffusers computes it."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float32)


def alphas_cumprod_from_config(config: dict[str, Any]) -> torch.Tensor:
    """``alphas_cumprod`` (float32, as diffusers computes it) of a DDPM-type scheduler config.

    Refuses, with the key named, what has no faithful discrete VP SDE: unknown ``beta_schedule``s and
    ``rescale_betas_zero_snr`` (alpha_T = 0, an infinite log-SNR at T).
    """
    name = config.get("_class_name")
    if name is not None and name not in DDPM_TYPE_SCHEDULERS:
        known = ", ".join(DDPM_TYPE_SCHEDULERS)
        raise ValueError(f"scheduler _class_name={name!r} is not a DDPM-type scheduler ({known})")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("scheduler rescale_betas_zero_snr=True (zero terminal SNR) is not supported: alpha(T) = 0")
    n = config.get("num_train_timesteps", 1000)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"scheduler num_train_timesteps must be a positive integer, got {n!r}")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        if betas.shape != (n,):
            raise ValueError(f"scheduler trained_betas has shape {tuple(betas.shape)}, expected ({n},)")
    else:
        schedule = config.get("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f"scheduler beta_schedule={schedule!r} is not supported; choose one of {BETA_SCHEDULES}")
        if schedule == "squaredcos_cap_v2":
            betas = _glide_cosine_betas(n)
        else:
            start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
            for key, v in (("beta_start", start), ("beta_end", end)):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                    raise ValueError(f"scheduler {key} must be a number in (0, 1), got {v!r}")
            if schedule == "linear":
                betas = torch.linspace(start, end, n, dtype=torch.float32)
            else:
                betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    if not ((betas > 0) & (betas < 1)).all():
        raise ValueError("scheduler betas must lie in (0, 1)")
    return torch.cumprod(1.0 - betas, dim=0)


class _UNetNet(nn.Module):
    """``net(x, label)`` calling a diffusers ``UNet2DModel`` at the (fractional) timestep ``label``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.unet(x, label, return_dict=False)[0]


@dataclass
class DiffusersModel:
    """A diffusers UNet as a score model: ``score_fn(x, t)`` (with ``eps_hat`` / ``x0_hat``) on ``sde``.

    Data live in [-1, 1] (diffusers' convention); :meth:`to_unit_interval` maps samples to [0, 1].
    """

    score_fn: TimestepScoreModel
    sde: DiscreteVPSDE
    unet: nn.Module
    scheduler_config: dict
    prediction_type: str
    data_shape: tuple[int, int, int]

    def time_of_timestep(self, k: torch.Tensor | int) -> torch.Tensor | float:
        """The continuous time ``(k + 1) / N`` of training timestep ``k``."""
        return self.sde.time_of_timestep(k)

    @staticmethod
    def to_unit_interval(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)


def _config_dict(obj: Any, what: str) -> dict:
    config = getattr(obj, "config", obj)
    if not isinstance(config, dict):  # diffusers' FrozenDict is a dict
        raise TypeError(f"{what} must be a diffusers object with a .config or a config dict, got {type(obj).__name__}")
    return dict(config)


def _check_unet(unet: nn.Module) -> tuple[int, int, int]:
    diffusers = _require_diffusers()
    if not isinstance(unet, diffusers.UNet2DModel):
        raise TypeError(f"from_diffusers maps a diffusers UNet2DModel, got {type(unet).__name__}")
    cfg = unet.config
    if cfg.time_embedding_type != "positional":
        raise ValueError(
            f"UNet2DModel time_embedding_type={cfg.time_embedding_type!r} is not supported: only 'positional' "
            "takes the fractional timesteps between training steps"
        )
    if cfg.num_class_embeds is not None or cfg.class_embed_type is not None:
        raise ValueError("class-conditional UNet2DModels (num_class_embeds / class_embed_type) are not supported")
    if cfg.out_channels != cfg.in_channels:
        raise ValueError(
            f"UNet2DModel out_channels={cfg.out_channels} != in_channels={cfg.in_channels}: learned-variance "
            "outputs are not supported"
        )
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(cfg.in_channels), int(h), int(w)


def from_diffusers(unet: nn.Module, scheduler: Any) -> DiffusersModel:
    """Wrap a diffusers ``UNet2DModel`` and its DDPM-type scheduler (object or config dict) as a score model.

    The SDE's ``alpha^2`` interpolates the scheduler's ``alphas_cumprod`` log-linearly in ``t`` (exact at the
    training timesteps); the score is ``-eps / sigma`` built from the UNet's ``prediction_type`` output.
    """
    data_shape = _check_unet(unet)
    config = _config_dict(scheduler, "scheduler")
    abar = alphas_cumprod_from_config(config)
    theirs = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(theirs, torch.Tensor) and not torch.equal(theirs.detach().cpu().float(), abar):
        raise ValueError(f"{type(scheduler).__name__}.alphas_cumprod differs from the schedule its config describes")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type={prediction!r} is not supported; choose one of {PREDICTION_TYPES}")
    sde = DiscreteVPSDE(abar)
    # label = N t - 1 = timestep_of_time(t)
    score_fn = TimestepScoreModel(_UNetNet(unet), sde, prediction, label_scale=sde.num_timesteps, label_shift=-1.0)
    return DiffusersModel(score_fn.eval(), sde, unet, config, prediction, data_shape)


def _layout(path: Path) -> tuple[Path, Path]:
    """The UNet folder and the scheduler config file of a model folder (pipeline or flat layout)."""
    if (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
        sched = path / "scheduler" / "scheduler_config.json"
    else:
        unet_dir, sched = path, path / "scheduler_config.json"
    if not (unet_dir / "config.json").is_file() or not sched.is_file():
        raise FileNotFoundError(
            f"{path} is not a diffusers model folder: expected unet/config.json with scheduler/scheduler_config.json "
            "(pipeline layout) or config.json with scheduler_config.json"
        )
    return unet_dir, sched


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local diffusers model folder :func:`load_diffusers` reads."""
    try:
        _layout(Path(path))
    except FileNotFoundError:
        return False
    return True


def load_diffusers(
    path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DiffusersModel:
    """Load a local diffusers model folder (``UNet2DModel`` weights and config + ``scheduler_config.json``).

    Configs are read as data (``_class_name`` is checked against ``UNet2DModel`` and the DDPM-type schedulers,
    never imported); weights load through ``UNet2DModel.from_pretrained(..., local_files_only=True)``.
    """
    diffusers = _require_diffusers()
    unet_dir, sched = _layout(Path(path))
    unet_cfg = json.loads((unet_dir / "config.json").read_text())
    if unet_cfg.get("_class_name") != "UNet2DModel":
        found = unet_cfg.get("_class_name")
        raise ValueError(f"{unet_dir / 'config.json'}: _class_name={found!r}, expected 'UNet2DModel'")
    sched_cfg = json.loads(sched.read_text())
    if not isinstance(sched_cfg, dict):
        raise ValueError(f"{sched} does not hold a JSON object")
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    if device is not None or dtype is not None:
        unet = unet.to(device=device, dtype=dtype)
    return from_diffusers(unet.eval(), sched_cfg)
