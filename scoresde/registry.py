"""What a configuration may build: an allowlist of classes by name (a checkpoint is data, CONTRACT "Loading").

Configs name their objects the way Hydra does (``{_target_: scoresde.sde.VPSDE, beta_min: 0.1}``), but nothing
here imports a module or calls a function a config names: a ``_target_`` must be one of the names in
:data:`ALLOWED` (our SDEs, networks and schedules, and the torch optimizers / learning-rate schedulers we support).
:func:`check` walks the whole tree first (every ``_target_`` allowed, every keyword accepted by its signature), so a
config that names anything else is refused with an error naming the key and the value before a single object is
built. Code that the *user* runs may :func:`register` more classes (e.g. a network of their own); a loaded file
cannot.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from scoresde.nets import MLP, DiT, NCSNpp
from scoresde.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE


class ConfigError(ValueError):
    """A configuration names something that may not be built, or gives it arguments it does not take."""


def _allowed() -> dict[str, Callable[..., Any]]:
    from scoresde.training.config import LinearWarmup, WarmupCosine

    sched = torch.optim.lr_scheduler
    table: dict[str, Callable[..., Any]] = {
        # forward SDEs
        "scoresde.sde.VPSDE": VPSDE,
        "scoresde.sde.SubVPSDE": SubVPSDE,
        "scoresde.sde.VESDE": VESDE,
        "scoresde.sde.CosineVPSDE": CosineVPSDE,
        "scoresde.sde.EDMSDE": EDMSDE,
        # score networks
        "scoresde.nets.NCSNpp": NCSNpp,
        "scoresde.nets.MLP": MLP,
        "scoresde.nets.DiT": DiT,
        # learning-rate schedules of our own
        "scoresde.training.LinearWarmup": LinearWarmup,
        "scoresde.training.WarmupCosine": WarmupCosine,
    }
    for name in ("Adam", "AdamW", "SGD", "RAdam", "NAdam", "Adamax", "RMSprop"):
        table[f"torch.optim.{name}"] = getattr(torch.optim, name)
    for name in ("LambdaLR", "LinearLR", "ConstantLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR"):
        table[f"torch.optim.lr_scheduler.{name}"] = getattr(sched, name)
    return table


ALLOWED: dict[str, Callable[..., Any]] = {}
_HYDRA_KEYS = ("_target_", "_partial_")
_REFUSED_KEYS = ("_args_", "_recursive_", "_convert_")


def allowed() -> dict[str, Callable[..., Any]]:
    """The allowlist (built on first use, so that this module imports without the training package)."""
    if not ALLOWED:
        ALLOWED.update(_allowed())
    return ALLOWED


def register(name: str, obj: Callable[..., Any]) -> None:
    """Allow configs to build ``obj`` under ``name`` (for the user's own classes; call it from code, not config)."""
    if not isinstance(name, str) or not name or not callable(obj):
        raise TypeError("register(name, obj) needs a non-empty name and a class or function")
    allowed()[name] = obj


def _where(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def check(node: Any, key: str = "", extra: Mapping[str, Any] | None = None) -> None:
    """Refuse, with the key and value named, any ``_target_`` outside the allowlist or keyword it does not take.

    ``extra`` names keywords the caller adds at build time (e.g. ``data_shape`` for networks). Nothing is
    imported, built or called.
    """
    if isinstance(node, Mapping):
        for bad in _REFUSED_KEYS:
            if bad in node:
                raise ConfigError(f"{_where(key, bad)} is not supported in scoresde configs")
        if "_target_" in node:
            target = node["_target_"]
            table = allowed()
            if not isinstance(target, str) or target not in table:
                raise ConfigError(
                    f"{_where(key, '_target_')}={target!r} is not something scoresde builds; allowed: "
                    f"{', '.join(sorted(table))} (code can add more with scoresde.registry.register)"
                )
            partial = node.get("_partial_", False)
            if not isinstance(partial, bool):
                raise ConfigError(f"{_where(key, '_partial_')}={partial!r} must be true or false")
            kwargs = [k for k in node if k not in _HYDRA_KEYS] + list(extra or {})
            _check_signature(table[target], kwargs, f"{_where(key, '_target_')}={target!r}")
        for k, v in node.items():
            if k not in _HYDRA_KEYS:
                check(v, _where(key, str(k)))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            check(v, f"{key}[{i}]")


def _check_signature(fn: Callable[..., Any], kwargs: list[str], what: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params or params[k].kind is inspect.Parameter.POSITIONAL_ONLY]
    if unknown:
        raise ConfigError(f"{what} takes no argument(s) {unknown}; it takes {[p for p in params if p != 'self']}")


def build(node: Any, key: str = "", **extra: Any) -> Any:
    """Build the objects a config node describes, after :func:`check` accepted the whole node.

    A mapping with ``_target_`` becomes ``cls(**kwargs)`` (``functools.partial`` with ``_partial_: true``), nested
    nodes first; other mappings and lists are built element by element; plain values are returned as they are.
    ``extra`` keywords go to the top-level target only.
    """
    check(node, key, extra)
    return _build(node, key, extra)


def _build(node: Any, key: str, extra: Mapping[str, Any] | None = None) -> Any:
    if isinstance(node, Mapping):
        values = {k: _build(v, _where(key, str(k))) for k, v in node.items() if k not in _HYDRA_KEYS}
        if "_target_" not in node:
            return values
        fn = allowed()[node["_target_"]]
        values.update(extra or {})
        if node.get("_partial_", False):
            return functools.partial(fn, **values)
        try:
            return fn(**values)
        except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: torch's, e.g. a negative layer size
            raise ConfigError(f"cannot build {key or 'config'} ({node['_target_']}): {err}") from None
    if isinstance(node, (list, tuple)):
        return [_build(v, f"{key}[{i}]") for i, v in enumerate(node)]
    return node


__all__ = ["ALLOWED", "ConfigError", "allowed", "build", "check", "register"]
