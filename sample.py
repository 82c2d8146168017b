"""Sample from a trained score model: ``python sample.py sampler=pc ckpt=PATH n=64 seed=0``.

A thin Hydra wrapper around :func:`scoresde.jobs.sample.run` (schema :class:`scoresde.jobs.sample.SampleConfig`):
loads a run directory, checkpoint, ``ema.safetensors`` or reference ``checkpoint_*.pth`` with
:func:`scoresde.load_model`, builds the sampler of ``conf/sampler/<name>.yaml`` and writes ``samples.npz``,
``samples.png`` and ``sample.json`` into the output directory.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.distributed import secondary_rank_argv
from scoresde.errors import report_errors
from scoresde.jobs.sample import SampleConfig, run
from scoresde.schema import parse

ConfigStore.instance().store(name="sample_schema", node=SampleConfig)


@hydra.main(config_path="conf", config_name="sample", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        config = parse(SampleConfig, cfg, "sample config")
        run(config, config.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv += secondary_rank_argv()  # under torchrun, rank 0 writes
    main()
