"""Train the autoencoder of latent diffusion: ``python train_autoencoder.py data=mnist``.

A thin Hydra wrapper around :func:`scoresde.jobs.autoencoder.run` (schema
:class:`scoresde.jobs.autoencoder.AutoencoderConfig`); writes ``autoencoder.safetensors`` and ``autoencoder.json``
(held-out reconstruction error) into the output directory, which is locked while the job runs.
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.errors import report_errors
from scoresde.jobs.autoencoder import AutoencoderConfig, run
from scoresde.schema import parse

ConfigStore.instance().store(name="autoencoder_schema", node=AutoencoderConfig)


@hydra.main(config_path="conf", config_name="autoencoder", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        config = parse(AutoencoderConfig, cfg, "autoencoder config")
        run(config, config.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
