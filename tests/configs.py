"""Compose the command-line configs in a test without running the scripts: the typed schemas the scripts register
with Hydra's ConfigStore are registered here from the library's dataclasses."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from scoresde.jobs.classifier import ClassifierConfig
from scoresde.jobs.likelihood import LikelihoodConfig
from scoresde.jobs.sample import SampleConfig
from scoresde.schema import parse
from scoresde.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"train": TrainConfig, "sample": SampleConfig, "likelihood": LikelihoodConfig, "classifier": ClassifierConfig}


def compose_config(name: str, *overrides: str):
    """The Hydra config ``conf/<name>.yaml`` with ``overrides``, validated by its schema at composition."""
    store = ConfigStore.instance()
    for key, schema in SCHEMAS.items():
        store.store(name=f"{key}_schema", node=schema)
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose(name, overrides=list(overrides))


def typed_config(name: str, *overrides: str):
    """The composed config as its dataclass (what the script hands to the library)."""
    return parse(SCHEMAS[name], compose_config(name, *overrides), f"{name} config")
