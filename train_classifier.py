"""Train a noise-conditional classifier for classifier guidance: ``python train_classifier.py sde=vp data=digits``.

A thin Hydra wrapper around :func:`scoresde.classifier.train_classifier`; writes ``classifier.safetensors`` and
``classifier.json`` (accuracy on the noisy test split at a few times) into the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scoresde.classifier import save_classifier, train_classifier
from scoresde.data import load_dataset, to_model_range


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Plain entry point: train, save, return the summary."""
    sde = instantiate(cfg.sde)
    ds = load_dataset(**OmegaConf.to_container(cfg.data, resolve=True))
    if getattr(ds, "train_labels", None) is None:
        raise ValueError(f"data {ds.name!r} has no class labels; a classifier needs labelled data (e.g. data=digits)")
    x_train = to_model_range(ds.train, cfg.centered) if ds.is_image else ds.train
    x_test = to_model_range(ds.test, cfg.centered) if ds.is_image else ds.test
    num_classes = int(max(ds.train_labels.max(), ds.test_labels.max())) + 1
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    res = train_classifier(sde, x_train, ds.train_labels, num_classes, steps=cfg.steps, batch_size=cfg.batch_size,
                           lr=cfg.lr, eps=cfg.eps, seed=cfg.seed, hidden=cfg.hidden, depth=cfg.depth,
                           x_test=x_test, y_test=ds.test_labels)  # fmt: skip
    out = Path(out_dir)
    path = save_classifier(res.net, out / "classifier.safetensors", sde, cfg.centered)
    summary = {"classifier": str(path), "num_classes": num_classes, "final_loss": res.losses[-1],
               "test_accuracy_at_t": {str(k): v for k, v in res.accuracy.items()}}  # fmt: skip
    (out / "classifier.json").write_text(json.dumps(summary, indent=2))
    print(f"[scoresde] classifier -> {path}; noisy test accuracy " +
          ", ".join(f"t={k:g}: {v:.3f}" for k, v in res.accuracy.items()))  # fmt: skip
    return summary


@hydra.main(config_path="conf", config_name="classifier", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg, cfg.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
