"""Typed configs from untyped data: a mapping, a YAML text or a Hydra config becomes a dataclass instance, strictly.

Every job of the toolkit (training, sampling, likelihood, the noisy classifier) takes one dataclass of plain
fields; :func:`parse` is the one door through which configs written by hand, composed by Hydra or stored inside a
checkpoint enter. Unknown keys and values of the wrong type are refused with the full key named; YAML from files is
read by a safe YAML loader (data only) and may not hold interpolations (``${...}``), since a stored config is
already resolved and a file must not make us read the environment or call resolvers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from scoresde.registry import ConfigError

T = TypeVar("T")


def _refuse_interpolations(node: Any, key: str = "") -> None:
    if isinstance(node, str) and "${" in node:
        raise ConfigError(f"{key or 'config'}={node!r}: interpolations are not allowed in a stored config")
    if isinstance(node, Mapping):
        for k, v in node.items():
            _refuse_interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _refuse_interpolations(v, f"{key}[{i}]")


def load_yaml(text: str, what: str = "config") -> dict:
    """A YAML mapping as plain data (OmegaConf's safe YAML loader: no tags, no objects; ``2e-4`` is a float),
    interpolations refused."""
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.create(text)
    except Exception as err:  # yaml / omegaconf parse errors
        raise ConfigError(f"{what} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{what} is not a mapping of keys to values")
    data = OmegaConf.to_container(node, resolve=False)
    _refuse_interpolations(data)
    return data


def parse(cls: type[T], data: Any, what: str = "config") -> T:
    """``data`` (a dataclass instance, a mapping, a Hydra ``DictConfig`` or a YAML text) as a ``cls`` instance.

    Keys ``cls`` does not have and values that do not convert to a field's type raise :class:`ConfigError` naming
    the full key. A Hydra config is resolved first (its interpolations are the user's own); text is data only.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(data, cls):
        return data
    if isinstance(data, str):
        data = load_yaml(data, what)
    elif isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
        data.pop("hydra", None)
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), dict(data))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        raise ConfigError(f"invalid {what}{f' at {key}' if key else ''}: {first}") from None


def to_dict(config: Any) -> dict:
    """A dataclass config as nested plain data (for YAML / JSON records)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    """A dataclass config as YAML text (``yaml.safe_dump``; keys in field order)."""
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


def require(condition: bool, key: str, value: Any, need: str) -> None:
    """Raise :class:`ConfigError` ``"key=value: need"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r}: {need}")


__all__ = ["ConfigError", "load_yaml", "parse", "require", "to_dict", "to_yaml"]
