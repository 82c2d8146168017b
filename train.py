"""Train a score model: ``python train.py sde=vp model=ncsnpp data=digits trainer.steps=...``.

A thin Hydra wrapper around :func:`scoresde.training.train`: the composed config is checked against the typed schema
(:class:`scoresde.training.TrainConfig`; unknown keys and wrong types are refused at composition), the objects it
names are built from an allowlist and the run goes into the Hydra run directory (resumed if it holds a checkpoint).
Exit codes: 0 done, 1 a clear error (printed as one line), 128 + signal when stopped early (143 for SIGTERM).
Under ``torchrun`` every rank runs this script; rank 0's run directory is used by all.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.distributed import secondary_rank_argv
from scoresde.errors import report_errors
from scoresde.training import TrainConfig, train

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        result = train(cfg, HydraConfig.get().runtime.output_dir)
    sys.exit(result.exit_code)


if __name__ == "__main__":
    sys.argv += secondary_rank_argv()  # under torchrun, rank 0's run directory is the one used
    main()
