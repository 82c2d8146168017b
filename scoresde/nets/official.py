"""Read checkpoints of the reference implementation (yang-song/score_sde_pytorch) into our networks.

A reference ``checkpoint_*.pth`` is a dict ``{model, ema, optimizer, step}``. ``model`` is the state dict of a
``DataParallel`` network (keys ``module.all_modules.<i>.<name>``, one flat list in construction order, plus a
``sigmas`` buffer); ``ema`` holds ``shadow_params``, a *list* in ``model.parameters()`` order without the
non-trainable Fourier ``W``. We rebuild the network from the reference config (a nested dict like the
reference's ``ml_collections`` config, a ``config.json`` path, or a published config name in
:data:`OFFICIAL_CONFIGS`), map every flat key to our named submodule through :func:`official_module_order` and
load **strictly**: any missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError`.

Score conventions (continuous training, Song et al. 2021), applied by the preconditioning layer
(:class:`~scoresde.score.ScoreModel`): VP / sub-VP networks see ``999 t`` and predict the noise
(``score = -out / std``); VE networks see ``sigma(t)`` and their output divided by sigma is the score
(``scale_by_sigma``); networks for data in [0, 1] (``data.centered=False``) see ``2 x - 1``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scoresde.nets.embeddings import GaussianFourierProjection
from scoresde.nets.ncsnpp import NCSNpp
from scoresde.score import ScoreModel
from scoresde.sde import VESDE, VPSDE, LinearSDE, SubVPSDE


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the network: lists the missing, unexpected and mis-shaped keys."""

    def __init__(self, missing, unexpected, mismatched=(), where: str = "checkpoint"):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{where} does not match the network built from its config:"]
        lines.append(f"  missing keys ({len(self.missing)}): {self.missing}")
        lines.append(f"  unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}): {self.mismatched}")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Published configurations (model and data sections of the reference configs, continuous training).

_NCSNPP_CIFAR10 = dict(
    name="ncsnpp",
    nf=128,
    ch_mult=[1, 2, 2, 2],
    num_res_blocks=4,
    attn_resolutions=[16],
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    fir=True,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="residual",
    progressive_combine="sum",
    attention_type="ddpm",
    init_scale=0.0,
    embedding_type="fourier",
    fourier_scale=16,
    conv_size=3,
    scale_by_sigma=True,
    nonlinearity="swish",
    normalization="GroupNorm",
    sigma_min=0.01,
    sigma_max=50.0,
    num_scales=1000,
    beta_min=0.1,
    beta_max=20.0,
    ema_rate=0.999,
)
_DDPMPP_CIFAR10 = dict(
    _NCSNPP_CIFAR10,
    fir=False,
    progressive_input="none",
    embedding_type="positional",
    scale_by_sigma=False,
    ema_rate=0.9999,
)
_CIFAR10 = dict(image_size=32, num_channels=3)
_VE_FACES = dict(  # configs/ve/{celebahq_256,ffhq}_ncsnpp_continuous.py
    _NCSNPP_CIFAR10,
    ch_mult=[1, 1, 2, 2, 2, 2, 2],
    num_res_blocks=2,
    dropout=0.0,
    progressive="output_skip",
    progressive_input="input_skip",
    num_scales=2000,
)
_EMA_SLOW = dict(ema_rate=0.9999)


def _cfg(sde: str, model: dict, data: dict, centered: bool) -> dict:
    return {"training": {"sde": sde, "continuous": True}, "model": model, "data": dict(data, centered=centered)}


OFFICIAL_CONFIGS: dict[str, dict] = {
    "ve/cifar10_ncsnpp_continuous": _cfg("vesde", _NCSNPP_CIFAR10, _CIFAR10, False),
    "ve/cifar10_ncsnpp_deep_continuous": _cfg("vesde", dict(_NCSNPP_CIFAR10, num_res_blocks=8), _CIFAR10, False),
    "vp/cifar10_ddpmpp_continuous": _cfg("vpsde", _DDPMPP_CIFAR10, _CIFAR10, True),
    "vp/cifar10_ddpmpp_deep_continuous": _cfg("vpsde", dict(_DDPMPP_CIFAR10, num_res_blocks=8), _CIFAR10, True),
    "subvp/cifar10_ddpmpp_continuous": _cfg("subvpsde", _DDPMPP_CIFAR10, _CIFAR10, True),
    "subvp/cifar10_ddpmpp_deep_continuous": _cfg("subvpsde", dict(_DDPMPP_CIFAR10, num_res_blocks=8), _CIFAR10, True),
    "ve/celebahq_256_ncsnpp_continuous": _cfg(
        "vesde", dict(_VE_FACES, sigma_max=348.0), dict(image_size=256, num_channels=3), False
    ),
    "ve/ffhq_ncsnpp_continuous": _cfg(
        "vesde",
        dict(_VE_FACES, nf=16, ch_mult=[1, 2, 4, 8, 16, 32, 32, 32], num_res_blocks=1, sigma_max=1348.0, **_EMA_SLOW),
        dict(image_size=1024, num_channels=3),
        False,
    ),
}
"""Published reference configs by name (``<sde>/<file>`` of the reference ``configs/`` folder)."""

_NET_KEYS = (
    "nf ch_mult num_res_blocks attn_resolutions dropout resamp_with_conv fir fir_kernel skip_rescale resblock_type "
    "progressive progressive_input progressive_combine embedding_type fourier_scale init_scale conditional"
).split()
_SUPPORTED = {"name": "ncsnpp", "nonlinearity": "swish", "normalization": "groupnorm", "attention_type": "ddpm"}


def resolve_config(config: dict | str | os.PathLike) -> dict:
    """A reference config as a nested dict: from a dict, a ``config.json`` path or an :data:`OFFICIAL_CONFIGS` name.
    Every value this module reads is checked for its type (a config file is data: a wrong value is named, not used)."""
    if isinstance(config, dict):
        cfg = copy.deepcopy(config)
    elif str(config) in _published():
        return copy.deepcopy(_published()[str(config)])
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {str(config)!r} is neither a config.json file nor a published config name "
                f"({', '.join(_published())})"
            )
        try:
            cfg = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"reference config {str(path)!r} is not valid JSON: {err}") from None
    check_config_values(cfg, str(config) if not isinstance(config, dict) else "reference config")
    return cfg


_INT, _NUM, _BOOL, _STR, _INTS = "an integer", "a number", "true/false", "a string", "a list of integers"
_MODEL_KEYS = {
    _INT: "nf num_res_blocks num_scales conv_size",
    _INTS: "ch_mult attn_resolutions fir_kernel",
    _NUM: "dropout fourier_scale init_scale sigma_min sigma_max beta_min beta_max ema_rate",
    _BOOL: "resamp_with_conv fir skip_rescale scale_by_sigma conditional",
    _STR: "name resblock_type progressive progressive_input progressive_combine embedding_type nonlinearity "
    "normalization attention_type",
}
_VALUE_TYPES = {
    "training": {"sde": _STR, "continuous": _BOOL},
    "data": {"image_size": _INT, "num_channels": _INT, "centered": _BOOL},
    "model": {key: kind for kind, keys in _MODEL_KEYS.items() for key in keys.split()},
}


def _is(value: Any, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INTS:
        return isinstance(value, list) and all(_is(v, _INT) for v in value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return number and (kind == _NUM or float(value).is_integer())


def check_config_values(cfg: Any, where: str) -> None:
    """Refuse a reference config whose sections are missing or whose values have the wrong type, naming the key."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: a reference config is a mapping with training / model / data sections")
    for section, types in _VALUE_TYPES.items():
        node = cfg.get(section)
        if not isinstance(node, dict):
            raise ValueError(f"{where}: reference config needs a '{section}' section (a mapping), got {node!r}")
        for key, kind in types.items():
            if key in node and not _is(node[key], kind):
                raise ValueError(f"{where}: {section}.{key}={node[key]!r} must be {kind}")


def _published() -> dict[str, dict]:
    """Published reference configs by name: continuous (:data:`OFFICIAL_CONFIGS`) and discrete-time ones."""
    from scoresde.nets.official_discrete import DISCRETE_CONFIGS

    return {**OFFICIAL_CONFIGS, **DISCRETE_CONFIGS}


def net_kwargs_from_config(config: dict | str | os.PathLike) -> dict[str, Any]:
    """``NCSNpp`` keyword arguments (including ``data_shape``) for a reference config."""
    cfg = resolve_config(config)
    model, data = cfg["model"], cfg["data"]
    for key, value in _SUPPORTED.items():
        if str(model.get(key, value)).lower() != value:
            raise NotImplementedError(f"reference model.{key}={model[key]!r} is not supported (only {value!r})")
    if model.get("conv_size", 3) != 3:
        raise NotImplementedError(f"reference model.conv_size={model['conv_size']} is not supported (only 3)")
    kwargs = {k: model[k] for k in _NET_KEYS if k in model}
    for k in ("ch_mult", "attn_resolutions", "fir_kernel"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    kwargs["data_shape"] = (int(data["num_channels"]), int(data["image_size"]), int(data["image_size"]))
    return kwargs


def sde_from_config(config: dict | str | os.PathLike) -> LinearSDE:
    """The SDE of a reference config (``training.sde`` with the ``model`` section's parameters)."""
    cfg = resolve_config(config)
    name, model = cfg["training"]["sde"].lower(), cfg["model"]
    n = int(model.get("num_scales", 1000))
    if name == "vesde":
        return VESDE(model["sigma_min"], model["sigma_max"], n)
    if name in ("vpsde", "subvpsde"):
        cls = VPSDE if name == "vpsde" else SubVPSDE
        return cls(model["beta_min"], model["beta_max"], n)
    raise ValueError(f"unknown reference training.sde {name!r}; expected vesde, vpsde or subvpsde")


def score_kwargs_from_config(config: dict | str | os.PathLike) -> dict[str, Any]:
    """``ScoreModel`` options reproducing the reference's continuous score function."""
    cfg = resolve_config(config)
    if not cfg["training"].get("continuous", True):
        raise NotImplementedError("only continuously trained reference models (training.continuous=True) load")
    model, centered = cfg["model"], bool(cfg["data"]["centered"])
    scale = bool(model.get("scale_by_sigma", False))
    if cfg["training"]["sde"].lower() == "vesde":
        if scale and str(model.get("embedding_type", "fourier")).lower() != "fourier":
            # the reference then divides by the geometric noise level indexed by the label, a discrete-time device
            raise NotImplementedError("reference VE models with scale_by_sigma and a positional embedding do not load")
        return dict(
            parameterization="score", time_input="sigma", time_scale=1.0, centered=centered, scale_by_sigma=scale
        )
    if scale:  # the reference would divide by its label 999 t
        raise NotImplementedError("reference VP / sub-VP models with model.scale_by_sigma=True do not load")
    return dict(parameterization="eps", time_input="t", time_scale=999.0, centered=centered, scale_by_sigma=False)


# ---------------------------------------------------------------------------------------------------------------
# State-dict conversion.


# The reference's NCSNpp (models/ncsnpp.py at its release) appends its modules to one flat list ``all_modules`` as
# it builds them: per down level the blocks (each followed by its attention), the downsampling, then the input
# pyramid's combine (input_skip) or strided conv (residual); the middle; per up level the blocks, the attention, the
# output pyramid's head (norm, conv) or upsampling conv (residual), the upsampling; the output norm and conv.
# Our levels hold the same modules under these names, listed here in that order.
_DOWN_TAIL = ("downsample", "pyramid_down", "pyramid_combine")
_UP_TAIL = ("attn", "pyramid_up", "pyramid_norm", "pyramid_conv", "upsample")


def official_module_order(net: NCSNpp) -> list[str]:
    """Our submodule paths in the order of the reference's ``all_modules`` list: entry ``i`` is the module that
    reference keys ``all_modules.<i>.*`` belong to. Derived from the built network (``net.down`` / ``net.up``
    levels, the embedding and output layers it has); the class-label embedding, not in the reference, is left out."""
    # The parameter-free pyramid resamplers of output_skip / input_skip are, in the reference, one shared module
    # outside all_modules (self.pyramid_upsample / self.pyramid_downsample): they take no index there.
    outside = {"pyramid_up"} if net.progressive == "output_skip" else set()
    outside |= {"pyramid_down"} if net.progressive_input == "input_skip" else set()

    def tail(level: nn.Module, path: str, names: tuple[str, ...]) -> list[str]:
        return [f"{path}.{n}" for n in names if n not in outside and isinstance(getattr(level, n, None), nn.Module)]

    order = [name for name in ("fourier", "embed_fc0", "embed_fc1", "conv_in") if hasattr(net, name)]
    for i, level in enumerate(net.down):
        for j in range(len(level.blocks)):
            order += [f"down.{i}.blocks.{j}"] + ([f"down.{i}.attns.{j}"] if len(level.attns) else [])
        order += tail(level, f"down.{i}", _DOWN_TAIL)
    order += ["mid.block_0", "mid.attn", "mid.block_1"]
    for k, level in enumerate(net.up):
        order += [f"up.{k}.blocks.{j}" for j in range(len(level.blocks))] + tail(level, f"up.{k}", _UP_TAIL)
    return order + [name for name in ("norm_out", "conv_out") if hasattr(net, name)]


def _target(order: list[str], net: NCSNpp, key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """Our key and tensor for one reference key ``all_modules.<i>.<rest>`` (``order``: :func:`official_module_order`),
    or ``None`` if it has no place."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "all_modules" or not parts[1].isdigit():
        return None
    index, rest = int(parts[1]), parts[2:]
    if index >= len(order):
        return None
    path = order[index]
    module = net.get_submodule(path)
    if len(rest) == 2:
        names = getattr(module, "OFFICIAL_NAMES", {})
        sub = getattr(module, names.get(rest[0], ""), None)
        if not isinstance(sub, nn.Module):
            return None
        path, module = f"{path}.{names[rest[0]]}", sub
    elif len(rest) != 1:
        return None
    name = rest[-1]
    if isinstance(module, GaussianFourierProjection):
        return (f"{path}.{name}", value) if name == "W" else None
    if name in ("W", "b"):  # NIN: y = x W + b with W of shape [in, out]
        name = "weight" if name == "W" else "bias"
        if name == "weight":
            value = value.t()
            if isinstance(module, nn.Conv2d):
                value = value[:, :, None, None]
    return f"{path}.{name}", value


def convert_state_dict(
    net: NCSNpp, state: dict[str, torch.Tensor], shadow_params: list[torch.Tensor] | None = None, where="checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a reference model state dict (optionally with the EMA shadow list swapped in) onto ``net``'s keys.

    Raises :class:`CheckpointMismatchError` listing missing / unexpected / mis-shaped keys.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state.pop("sigmas", None)  # derived buffer (geometric noise levels); recomputed from the config when needed
    ours = net.state_dict()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    converted, unexpected, mismatched, official_trainable, seen = {}, [], [], [], set()
    order = official_module_order(net)
    for key, value in state.items():
        tgt = _target(order, net, key, value)
        if tgt is None or tgt[0] not in ours or tgt[0] in seen:
            unexpected.append(key)
            continue
        name, tensor = tgt
        seen.add(name)
        if tuple(tensor.shape) != tuple(ours[name].shape):
            mismatched.append(f"{key} {tuple(value.shape)} -> {name} {tuple(ours[name].shape)}")
            continue
        converted[name] = tensor
        if name in trainable:
            official_trainable.append(key)
    missing = [k for k in ours if k not in seen]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, where)
    if shadow_params is not None:
        if len(shadow_params) != len(official_trainable):
            msg = f"ema.shadow_params: {len(shadow_params)} tensors for {len(official_trainable)} parameters"
            raise CheckpointMismatchError([], [], [msg], where)
        for key, value in zip(official_trainable, shadow_params, strict=True):
            name, tensor = _target(order, net, key, value)
            if tuple(tensor.shape) != tuple(ours[name].shape):
                raise CheckpointMismatchError([], [], [f"ema entry for {key}: {tuple(value.shape)}"], where)
            converted[name] = tensor
    return {k: v.to(ours[k].dtype).contiguous() for k, v in converted.items()}


def check_noise_levels(state: dict[str, torch.Tensor], config: dict, where: str = "checkpoint") -> None:
    """The reference stores its geometric noise levels ``exp(linspace(log sigma_max, log sigma_min, num_scales))`` as
    the ``sigmas`` buffer; it must agree with the config, or the config does not belong to the checkpoint."""
    sigmas = state.get("module.sigmas", state.get("sigmas"))
    if sigmas is None:
        return
    model = config["model"]
    n, lo, hi = int(model.get("num_scales", 1000)), float(model["sigma_min"]), float(model["sigma_max"])
    expected = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64))
    if sigmas.shape != expected.shape or not torch.allclose(sigmas.double(), expected, rtol=1e-6, atol=0):
        found = f"{sigmas.numel()} levels from {sigmas.max().item():.6g} to {sigmas.min().item():.6g}"
        raise CheckpointMismatchError(
            [], [], [f"sigmas: checkpoint has {found}, config sigma_max={hi}, sigma_min={lo}, num_scales={n}"], where
        )


@dataclass
class OfficialModel:
    """A reference checkpoint loaded into our code: the score function is ``score_model(x, t)``.

    ``centered``: the model works on data in [-1, 1] (else [0, 1]); samples map back with ``(x + 1) / 2``.
    """

    score_model: ScoreModel
    sde: LinearSDE
    net: NCSNpp
    config: dict
    step: int
    centered: bool
    data_shape: tuple[int, int, int]
    use_ema: bool

    def to_unit_interval(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images in [0, 1]."""
        return ((x + 1) / 2 if self.centered else x).clamp(0, 1)


def build_from_config(config: dict | str | os.PathLike) -> tuple[ScoreModel, LinearSDE]:
    """A freshly initialised network wrapped in a ``ScoreModel`` with the reference config's SDE."""
    from scoresde.nets import official_discrete

    if official_discrete.handles(resolve_config(config)):  # discrete training or the DDPM architecture
        return official_discrete.build_from_config(resolve_config(config))
    kwargs, sde = net_kwargs_from_config(config), sde_from_config(config)
    net = NCSNpp(**kwargs)
    return ScoreModel(net, sde, **score_kwargs_from_config(config)), sde


def load_official_checkpoint(
    path: str | os.PathLike,
    config: dict | str | os.PathLike,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
) -> OfficialModel:
    """Load a reference ``checkpoint_*.pth`` with the EMA weights (default, as the reference evaluates) or the
    raw model weights, strictly. ``config``: nested dict, ``config.json`` path or :data:`OFFICIAL_CONFIGS` name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference checkpoint at {path}")
    cfg = resolve_config(config)
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a reference checkpoint (expected a dict with 'model', 'ema', 'step')")
    shadow = None
    if use_ema:
        ema = ckpt.get("ema")
        if not isinstance(ema, dict) or "shadow_params" not in ema:
            raise ValueError(f"{path} has no EMA shadow parameters; pass use_ema=False to load the model weights")
        shadow = list(ema["shadow_params"])
    check_noise_levels(ckpt["model"], cfg, where=str(path))
    score_model, sde = build_from_config(cfg)
    net = score_model.net
    net.load_state_dict(convert_state_dict(net, ckpt["model"], shadow, where=str(path)), strict=True)
    net.eval()
    return OfficialModel(
        score_model=score_model.eval(),
        sde=sde,
        net=net,
        config=cfg,
        step=int(ckpt.get("step", 0)),
        centered=bool(cfg["data"]["centered"]),
        data_shape=net.data_shape,
        use_ema=use_ema,
    )
