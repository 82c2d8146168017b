"""``sigma_data`` for a run that needs it (EDM preconditioning or loss) and whose config leaves it ``null``.

It is estimated once from the training data, as the model sees them, and written into the config (and into the
config text the run stores in its checkpoints and exports), so a loaded model is rebuilt with the same value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scoresde.score import estimate_sigma_data

MAX_EXAMPLES = 10_000  # evenly spaced examples: the estimate's relative standard error is then below 1%


def needs_sigma_data(cfg) -> bool:
    """Whether the model's parameterization or the loss uses ``sigma_data``."""
    loss = cfg.loss
    return cfg.model.parameterization == "edm" or loss.name == "edm" or (loss.name == "dsm" and loss.weighting == "edm")


def fill_sigma_data(
    cfg, setup: Any, train: torch.Tensor, to_model: Callable[[torch.Tensor], torch.Tensor]
) -> float | None:
    """Set ``cfg.model.sigma_data`` (and ``setup.config_yaml``) from the training examples ``train`` mapped by
    ``to_model`` to the model's range, if the run needs it and the config gives none; returns the value used."""
    if not needs_sigma_data(cfg):
        return cfg.model.sigma_data
    if cfg.model.sigma_data is not None:
        return float(cfg.model.sigma_data)
    stride = max(1, train.shape[0] // MAX_EXAMPLES)
    value = estimate_sigma_data(to_model(train[::stride][:MAX_EXAMPLES]))
    cfg.model.sigma_data = value
    if getattr(setup, "config_yaml", ""):
        setup.config_yaml = _with_sigma_data(setup.config_yaml, value)
    return value


def _with_sigma_data(config_yaml: str, value: float) -> str:
    """The stored config text with ``model.sigma_data`` set (PyYAML, which ships with Hydra's OmegaConf)."""
    import yaml

    tree = yaml.safe_load(config_yaml) or {}
    tree.setdefault("model", {})["sigma_data"] = float(value)
    return yaml.safe_dump(tree, sort_keys=False)
