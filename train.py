"""Train a score model: ``python train.py sde=vp model=ncsnpp data=digits trainer.steps=...``.

A thin Hydra wrapper: :func:`train` validates the composed config against the typed schema
(:class:`scoresde.training.TrainConfig`), instantiates the ``_target_`` nodes (SDE, network, optimizer,
scheduler) and calls the plain library loop :func:`scoresde.training.fit`. Everything goes to the Hydra run
directory; a run directory that already holds a checkpoint is resumed. Under ``torchrun`` every rank runs this
script; rank 0's run directory is used by all.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoresde.checkpoint import CheckpointError, load_checkpoint, load_safetensors, load_state_strict
from scoresde.distributed import env_rank
from scoresde.score import ScoreModel
from scoresde.training import Setup, TrainConfig, TrainResult, fit
from scoresde.training.trainer import build_score_model

# The typed schema under every composed config: Hydra refuses unknown keys and wrong types at composition.
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


class ConfigError(ValueError):
    """The composed config does not fit the schema or cannot be instantiated."""


def validate(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` (without the ``hydra`` node) into the typed schema: unknown keys and wrong types are refused."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
    except OmegaConfBaseException as err:
        full_key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        where = f" (at {full_key})" if full_key else ""
        raise ConfigError(f"invalid training config{where}: {first}") from None


def _build(node, what: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # Hydra wraps the real error; keep its message
        raise ConfigError(f"cannot build {what} from the config: {err}") from None


def build_setup(cfg: DictConfig) -> Setup:
    """SDE, network factory, optimizer / scheduler factories from a validated config."""
    if cfg.model.net is None or cfg.optim.optimizer is None:
        raise ConfigError("the config needs model.net and optim.optimizer (pick model=... and optim=...)")
    sde = _build(cfg.sde, "sde")
    optimizer = _build(cfg.optim.optimizer, "optim.optimizer")
    scheduler = _build(cfg.optim.scheduler, "optim.scheduler") if cfg.optim.scheduler is not None else None
    return Setup(
        sde=sde,
        make_net=lambda shape: _build(cfg.model.net, "model.net", data_shape=list(shape)),
        make_optimizer=optimizer,
        make_scheduler=scheduler,
        config_yaml=OmegaConf.to_yaml(cfg),
    )


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> TrainResult:
    """Plain entry point: validate ``cfg``, build the objects and train in ``run_dir`` (default: Hydra's)."""
    if run_dir is None:
        run_dir = HydraConfig.get().runtime.output_dir
    cfg = validate(cfg)
    return fit(cfg, build_setup(cfg), run_dir)


def load_trained(path: str | Path, use_ema: bool = True) -> tuple[ScoreModel, Any, DictConfig]:
    """``(score_model, sde, cfg)`` of a trained run: a run directory, a checkpoint file or an exported
    ``ema.safetensors``. The network is rebuilt from the config stored inside and loaded strictly (EMA weights by
    default); the model is in eval mode on the CPU."""
    p = Path(path)
    if p.suffix == ".safetensors":
        state, meta = load_safetensors(p)
        if "config" not in meta or "data_shape" not in meta:
            raise CheckpointError(f"{str(p)!r} was not exported by scoresde (no config / data_shape metadata)")
        stored, shape, source = meta["config"], json.loads(meta["data_shape"]), str(p)
    else:
        ckpt = load_checkpoint(p)
        stored, shape, source = ckpt.get("config", ""), ckpt.get("data_shape"), ckpt["path"]
        if use_ema:
            state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "_extra_state"}
        else:
            state = ckpt["model"]
    if not stored or shape is None:
        raise CheckpointError(f"{source!r} holds no config / data shape to rebuild the model from")
    cfg = validate(OmegaConf.create(stored))
    setup = build_setup(cfg)
    model = build_score_model(cfg, setup, tuple(shape))
    load_state_strict(model, state, source, "EMA model" if use_ema else "model")
    model.data_shape = tuple(shape)  # the shape of one sample, for samplers
    return model.eval(), setup.sde, cfg


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    train(cfg)


def _quiet_secondary_rank() -> None:
    """Ranks > 0 under torchrun: no Hydra outputs of their own (rank 0's run directory is broadcast)."""
    if env_rank() > 0:
        scratch = tempfile.mkdtemp(prefix="scoresde-rank")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [
            f"hydra.run.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]


if __name__ == "__main__":
    _quiet_secondary_rank()
    main()
