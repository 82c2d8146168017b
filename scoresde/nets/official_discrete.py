"""Reference checkpoints trained in discrete time (``training.continuous=False``) and the DDPM architecture.

The reference (yang-song/score_sde_pytorch, ``models/utils.py: get_score_fn``, ``losses.py``) trains two discrete
models, and we load both through SDEs defined at every ``t``, exact at the training noise levels:

* **DDPM** (VP, ``get_ddpm_loss_fn``): timestep ``k = 0 .. N-1`` has ``abar_k = prod_{i <= k} (1 - beta_i)``,
  ``beta_i = linspace(beta_min / N, beta_max / N, N)``; the network predicts the noise at label ``k``. The SDE is
  :class:`~scoresde.sde.DiscreteVPSDE` (``k`` at ``t = (k + 1) / N``), the network sees ``N t - 1`` and
  ``score = -out / sigma``. (The reference's own score function puts ``k`` at ``t = k / (N - 1)`` and divides by the
  std of ``floor(label)``; at the timesteps both give the same score, between them ours is continuous.)
* **SMLD / NCSN** (VE, ``get_smld_loss_fn``): noise level ``j = 0 .. N-1`` is
  ``sigma_j = sigma_max (sigma_min / sigma_max)^(j / (N - 1))``; the network (``scale_by_sigma``) returns its
  output divided by ``sigma_j``. These are exactly the :class:`~scoresde.sde.VESDE` marginals at
  ``t_j = 1 - j / (N - 1)``, so the SDE is the VESDE; the network sees ``(N - 1)(1 - t)`` (the reference rounds
  it; the fractional label keeps the score continuous in ``t``) and the division is by ``sigma(t)``.

The DDPM architecture (``model.name="ddpm"``, :class:`~scoresde.nets.ddpm.DDPM`) also loads continuous-time
checkpoints (``vp/ddpm/cifar10_continuous``, ``subvp/cifar10_ddpm_continuous``) with the continuous rules.
"""

from __future__ import annotations

from typing import Any

import torch

from scoresde.interop.timestep_model import TimestepScoreModel
from scoresde.nets.ddpm import DDPM
from scoresde.nets.ncsnpp import NCSNpp
from scoresde.nets.official import (
    _CIFAR10,
    _DDPMPP_CIFAR10,
    _EMA_SLOW,
    _NCSNPP_CIFAR10,
    net_kwargs_from_config,
    score_kwargs_from_config,
    sde_from_config,
)
from scoresde.score import ScoreModel
from scoresde.sde import VESDE, DiscreteVPSDE, LinearSDE

_DDPM_ACTIVATIONS = ("swish",)

_NCSNPP_POSITIONAL = dict(_NCSNPP_CIFAR10, embedding_type="positional")
_DDPM_CIFAR10 = dict(  # configs/vp/ddpm/cifar10.py: Ho et al.'s U-Net as models/ddpm.py builds it
    name="ddpm",
    nf=128,
    ch_mult=[1, 2, 2, 2],
    num_res_blocks=2,
    attn_resolutions=[16],
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    scale_by_sigma=False,
    nonlinearity="swish",
    normalization="GroupNorm",
    sigma_min=0.01,
    sigma_max=50.0,
    num_scales=1000,
    beta_min=0.1,
    beta_max=20.0,
    ema_rate=0.9999,
)


def _cfg(sde: str, model: dict, centered: bool, continuous: bool = False) -> dict:
    data = dict(_CIFAR10, centered=centered)
    return {"training": {"sde": sde, "continuous": continuous}, "model": model, "data": data}


DISCRETE_CONFIGS: dict[str, dict] = {
    "ve/cifar10_ncsnpp": _cfg("vesde", _NCSNPP_POSITIONAL, centered=False),
    "vp/cifar10_ddpmpp": _cfg("vpsde", _DDPMPP_CIFAR10, centered=True),
    "vp/cifar10_ncsnpp": _cfg("vpsde", dict(_NCSNPP_POSITIONAL, scale_by_sigma=False, **_EMA_SLOW), centered=True),
    "vp/ddpm/cifar10": _cfg("vpsde", _DDPM_CIFAR10, centered=True),
    "ve/cifar10_ddpm": _cfg("vesde", dict(_DDPM_CIFAR10, scale_by_sigma=True, ema_rate=0.999), centered=False),
    "vp/ddpm/cifar10_continuous": _cfg("vpsde", _DDPM_CIFAR10, centered=True, continuous=True),
    "subvp/cifar10_ddpm_continuous": _cfg("subvpsde", _DDPM_CIFAR10, centered=True, continuous=True),
}
"""Published reference configs (``<sde>/<file>`` of the reference ``configs/``) built here; the checkpoints of
``ve/cifar10_ncsnpp``, ``vp/cifar10_ddpmpp``, ``vp/ddpm/cifar10`` (folder ``vp/cifar10_ddpm``),
``vp/ddpm/cifar10_continuous`` (``vp/cifar10_ddpm_continuous``) and ``subvp/cifar10_ddpm_continuous`` are published."""


def handles(cfg: dict) -> bool:
    """Whether a reference config is built here (discrete training or the DDPM architecture)."""
    return not _flag(cfg["training"], "continuous", True, "training") or cfg["model"].get("name", "ncsnpp") == "ddpm"


def _flag(section: dict, key: str, default: bool, where: str) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"reference {where}.{key} must be true or false, got {value!r}")
    return value


def _number(section: dict, key: str, where: str = "model", integer: bool = False, positive: bool = True) -> Any:
    if key not in section:
        raise ValueError(f"reference config has no {where}.{key}")
    value = section[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (positive and not value > 0):
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"reference {where}.{key} must be {kind}, got {value!r}")
    return value


def _int_list(section: dict, key: str) -> tuple[int, ...]:
    value = section.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"reference model.{key} must be a list of integers, got {value!r}")
    return tuple(value)


def ddpm_net_kwargs(cfg: dict) -> dict[str, Any]:
    """:class:`DDPM` keyword arguments of a reference ``model.name="ddpm"`` config (what ``models/ddpm.py`` reads)."""
    model, data = cfg["model"], cfg["data"]
    act = str(model.get("nonlinearity", "swish")).lower()
    if act not in _DDPM_ACTIVATIONS:
        raise NotImplementedError(f"reference model.nonlinearity={act!r} is not supported (only 'swish')")
    size = _number(data, "image_size", "data", integer=True)
    dropout = model.get("dropout", 0.1)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"reference model.dropout must be a number in [0, 1), got {dropout!r}")
    return dict(
        data_shape=(_number(data, "num_channels", "data", integer=True), size, size),
        nf=_number(model, "nf", integer=True),
        ch_mult=_int_list(model, "ch_mult"),
        num_res_blocks=_number(model, "num_res_blocks", integer=True, positive=False),
        attn_resolutions=_int_list(model, "attn_resolutions"),
        dropout=float(dropout),
        resamp_with_conv=_flag(model, "resamp_with_conv", True, "model"),
        conditional=_flag(model, "conditional", True, "model"),
    )


def build_network(cfg: dict) -> NCSNpp:
    """The reference network of ``cfg`` (NCSN++ / DDPM++ or DDPM), without the input map and the division by the
    noise level, which the score model applies."""
    name = cfg["model"].get("name", "ncsnpp")
    kwargs = ddpm_net_kwargs(cfg) if name == "ddpm" else net_kwargs_from_config(cfg)
    return DDPM(**kwargs) if name == "ddpm" else NCSNpp(**kwargs)


def discrete_sde(cfg: dict) -> LinearSDE:
    """The SDE of a discrete reference config: DDPM's schedule as a :class:`DiscreteVPSDE`, SMLD's as the VESDE.

    (``n`` = ``model.num_scales``; the reference's ``VPSDE.discrete_betas`` and ``VESDE.discrete_sigmas``.)"""
    model, name = cfg["model"], str(cfg["training"].get("sde", "")).lower()
    n = _number(model, "num_scales", integer=True)
    if name == "vpsde":
        lo, hi = float(_number(model, "beta_min")) / n, float(_number(model, "beta_max")) / n
        if not lo < hi < 1:
            raise ValueError(f"reference model.beta_min, beta_max need 0 < beta_min / N < beta_max / N < 1 (N = {n})")
        return DiscreteVPSDE.from_betas(torch.linspace(lo, hi, n, dtype=torch.float64))
    if name == "vesde":
        if n < 2:
            raise ValueError(f"reference model.num_scales must be >= 2 for SMLD noise levels, got {n}")
        return VESDE(float(_number(model, "sigma_min")), float(_number(model, "sigma_max")), n)
    if name == "subvpsde":
        raise ValueError("reference training.sde='subvpsde' and continuous=False: the reference never trains it")
    raise ValueError(f"unknown reference training.sde {name!r}; expected vpsde or vesde for discrete training")


def build_from_config(cfg: dict) -> tuple[torch.nn.Module, LinearSDE]:
    """A freshly initialised score model and its SDE for a config :func:`handles`; ``model.net`` is the network
    whose state dict a reference checkpoint fills."""
    if _flag(cfg["training"], "continuous", True, "training"):  # the DDPM architecture, continuous rules
        sde = sde_from_config(cfg)
        return ScoreModel(build_network(cfg), sde, **score_kwargs_from_config(cfg)), sde
    sde = discrete_sde(cfg)
    n = int(cfg["model"]["num_scales"])
    scale_by_sigma = _flag(cfg["model"], "scale_by_sigma", False, "model")
    centered = _flag(cfg["data"], "centered", False, "data")
    if str(cfg["training"]["sde"]).lower() == "vpsde":  # DDPM: noise prediction at label k, t = (k + 1) / N
        if scale_by_sigma:
            raise ValueError("reference model.scale_by_sigma=True with discrete VP (DDPM) training is not supported")
        net = build_network(cfg)
        return TimestepScoreModel(net, sde, "epsilon", label_scale=n, label_shift=-1.0, centered=centered), sde
    # SMLD: label j = (N - 1)(1 - t); the network's division by sigma happens in the score model, at sigma(t).
    prediction = "sigma_score" if scale_by_sigma else "score"
    net = build_network(cfg)
    return TimestepScoreModel(net, sde, prediction, -(n - 1), n - 1, centered=centered), sde
