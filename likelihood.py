"""Log-likelihood of a data split under a trained model: ``python likelihood.py ckpt=PATH``.

A thin Hydra wrapper around :func:`scoresde.jobs.likelihood.run` (schema
:class:`scoresde.jobs.likelihood.LikelihoodConfig`): bits/dim for quantized data (images: uint8 256 levels, digits
17), nats per sample for continuous data; prints a table and writes ``likelihood.json``.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.distributed import secondary_rank_argv
from scoresde.errors import report_errors
from scoresde.jobs.likelihood import LikelihoodConfig, run
from scoresde.schema import parse

ConfigStore.instance().store(name="likelihood_schema", node=LikelihoodConfig)


@hydra.main(config_path="conf", config_name="likelihood", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        config = parse(LikelihoodConfig, cfg, "likelihood config")
        run(config, config.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv += secondary_rank_argv()  # under torchrun, rank 0 writes
    main()
