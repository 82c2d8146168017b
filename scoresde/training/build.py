"""From a training config to objects: the one place a :class:`TrainConfig` is turned into an SDE, a network
factory, optimizer / scheduler factories and the preview sampler.

Only classes on the allowlist of :mod:`scoresde.registry` are built (a config stored inside a checkpoint is data,
never a list of things to call), and the whole config is checked before anything is built, so a bad value fails
before training starts and before anything is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from scoresde import registry
from scoresde.schema import ConfigError, load_yaml, parse, to_yaml
from scoresde.training.config import TrainConfig, check_train_config, migrate_stored_config


def parse_train_config(data: Any, what: str = "training config") -> TrainConfig:
    """A :class:`TrainConfig` from a mapping, a Hydra config, a YAML text (e.g. the one stored in a checkpoint) or a
    ``TrainConfig``: unknown keys, wrong types and out-of-range values are refused with the key named."""
    if isinstance(data, str):
        data = load_yaml(data, what)
    if isinstance(data, dict):  # plain data may come from an older version (a Hydra config is current)
        data = migrate_stored_config(data)
    cfg = parse(TrainConfig, data, what)
    if cfg.loss.name == "auto":  # the loss that matches the parameterization (stored resolved, so resumes agree)
        cfg.loss.name = "edm" if cfg.model.parameterization == "edm" else "dsm"
    check_train_config(cfg)
    return cfg


def build_preview_sampler(node: Any, sde):
    """The sampler of ``trainer.sampler`` (``auto``: ``sde.default_sampler``); an unknown name or option raises
    before training starts."""
    from scoresde.jobs.sample import build_sampler, resolve_sampler_node

    try:
        return build_sampler(resolve_sampler_node(node, sde))
    except ConfigError as err:
        raise ConfigError(f"trainer.{err}") from None


def check_buildable(cfg: TrainConfig) -> None:
    """Every ``_target_`` of the config on the allowlist, every keyword accepted; nothing is built."""
    registry.check(cfg.sde, "sde")
    registry.check(cfg.model.net, "model.net", extra={"data_shape": None})
    registry.check(cfg.optim.optimizer, "optim.optimizer")
    if cfg.optim.scheduler is not None:
        registry.check(cfg.optim.scheduler, "optim.scheduler")


def net_factory(cfg: TrainConfig):
    """``make_net(data_shape)``: ``model.net`` for that shape; with ``task=superres`` a
    :class:`~scoresde.nets.SuperResNet` around ``model.net`` built for ``(2 C + 1, H, W)`` inputs (Ho et al. 2022)."""

    def plain(data_shape):
        return registry.build(cfg.model.net, "model.net", data_shape=list(data_shape))

    if cfg.task != "superres":
        return plain
    from scoresde.nets.superres import SuperResNet

    sr = cfg.superres
    return lambda shape: SuperResNet(plain, sr.factor, data_shape=shape, aug_max=sr.aug_max, upsample=sr.upsample)


def build_setup(cfg: TrainConfig):
    """The SDE, the network / optimizer / scheduler factories and the config text a run stores."""
    from scoresde.training.trainer import Setup

    check_buildable(cfg)
    sde = registry.build(cfg.sde, "sde")
    optimizer = registry.build(cfg.optim.optimizer, "optim.optimizer")
    scheduler = registry.build(cfg.optim.scheduler, "optim.scheduler") if cfg.optim.scheduler is not None else None
    if not callable(optimizer) or (scheduler is not None and not callable(scheduler)):
        raise ConfigError("optim.optimizer and optim.scheduler need _partial_: true (they get the parameters later)")
    return Setup(
        sde=sde,
        make_net=net_factory(cfg),
        make_optimizer=fused_when_open(optimizer),
        make_scheduler=scheduler,
        config_yaml=to_yaml(cfg),
    )


#: Optimizers whose ``fused=True`` step is the same update in one kernel per dtype (torch >= 2.4 on CPU and CUDA).
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def fused_when_open(make: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """``make`` (an optimizer partial), with ``fused=True`` when the config leaves the implementation open.

    Adam's default step on the CPU loops over the parameters in Python: ~12 ms of the main job's ~95 ms step for its
    154 tensors, against ~2 ms fused. Only the implementation changes (same formula, round-off apart); a config that
    names ``fused`` or ``foreach`` keeps its choice, and parameters the fused kernel does not take (an old torch, a
    device without the kernel) keep the default step."""
    partial = isinstance(make, functools.partial)
    if not partial or make.func not in FUSABLE or {"fused", "foreach"} & make.keywords.keys():
        return make

    def make_fused(params) -> torch.optim.Optimizer:
        params = list(params)
        try:
            return make(params, fused=True)
        except (RuntimeError, ValueError):  # "`fused=True` requires all the params to be ... supported devices"
            return make(params)

    return make_fused


__all__ = [
    "build_preview_sampler",
    "build_setup",
    "check_buildable",
    "fused_when_open",
    "net_factory",
    "parse_train_config",
]
