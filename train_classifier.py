"""Train a noise-conditional classifier for classifier guidance: ``python train_classifier.py sde=vp data=digits``.

A thin Hydra wrapper around :func:`scoresde.jobs.classifier.run` (schema
:class:`scoresde.jobs.classifier.ClassifierConfig`); writes ``classifier.safetensors`` and ``classifier.json`` (noisy
test accuracy at a few times) into the output directory, which is locked while the job runs.
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scoresde.errors import report_errors
from scoresde.jobs.classifier import ClassifierConfig, run
from scoresde.schema import parse

ConfigStore.instance().store(name="classifier_schema", node=ClassifierConfig)


@hydra.main(config_path="conf", config_name="classifier", version_base=None)
def main(cfg: DictConfig) -> None:
    with report_errors():
        config = parse(ClassifierConfig, cfg, "classifier config")
        run(config, config.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
