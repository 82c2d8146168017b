"""Train a score model: ``python train.py sde=vp model=ncsnpp data=digits trainer.steps=...``.

A thin Hydra wrapper around :func:`scoresde.training.train`: the composed config is checked against the typed schema
(:class:`scoresde.training.TrainConfig`; unknown keys and wrong types are refused at composition), the objects it
names are built from an allowlist and the run goes into the Hydra run directory (resumed if it holds a checkpoint).
Exit codes: 0 done, 1 a clear error (printed as one line), 128 + signal when stopped early (143 for SIGTERM).
Under ``torchrun`` every rank runs this script; rank 0's run directory is used by all.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.distributed import env_rank
from scoresde.errors import report_errors
from scoresde.training import TrainConfig, train

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        result = train(cfg, HydraConfig.get().runtime.output_dir)
    sys.exit(result.exit_code)


def _quiet_secondary_rank() -> None:
    """Ranks > 0 under torchrun: no Hydra outputs of their own (rank 0's run directory is broadcast)."""
    if env_rank() > 0:
        scratch = tempfile.mkdtemp(prefix="scoresde-rank")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra/hydra_logging=disabled"]


if __name__ == "__main__":
    _quiet_secondary_rank()
    main()
