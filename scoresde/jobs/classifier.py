"""The job of ``train_classifier.py``: a noise-conditional classifier ``p(y | x_t, t)`` for classifier guidance,
trained under the SDE of ``sde`` on labelled data and written as ``classifier.safetensors`` + ``classifier.json``.

The output directory is locked for the run (one job per directory) and nothing in it is replaced unless training
finished: a trained classifier is never overwritten by a run with nonsense settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scoresde.schema import ConfigError, require
from scoresde.training.config import DataConfig


@dataclass
class ClassifierConfig:
    sde: Any = None  # {_target_: scoresde.sde.VPSDE, ...} (conf/sde), built from the allowlist
    data: DataConfig = field(default_factory=DataConfig)
    centered: bool = True  # data scaled to [-1, 1] (true) or [0, 1]; must match the score model's
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    eps: float = 1e-5
    seed: int = 0
    hidden: int = 256
    depth: int = 3
    out: str | None = None


def check(cfg: ClassifierConfig) -> None:
    for key in ("steps", "batch_size", "hidden", "depth"):
        value = getattr(cfg, key)
        require(value >= 1, key, value, "must be >= 1")
    require(cfg.lr > 0, "lr", cfg.lr, "must be > 0")
    require(isinstance(cfg.sde, dict), "sde", cfg.sde, "must be an SDE config node (pick sde=vp, ...)")


def run(cfg: ClassifierConfig, out_dir: str | Path) -> dict:
    """Train, save, return the summary (also written to ``classifier.json``)."""
    from scoresde import registry
    from scoresde.classifier import save_classifier, train_classifier
    from scoresde.data import load_dataset, to_model_range
    from scoresde.rundir import RunDirLock

    check(cfg)
    registry.check(cfg.sde, "sde")
    sde = registry.build(cfg.sde, "sde")
    require(0 < cfg.eps < sde.T, "eps", cfg.eps, f"must lie in (0, T = {sde.T})")
    out = Path(out_dir)
    with RunDirLock(out, "classifier output directory"):
        ds = load_dataset(**asdict(cfg.data))
        if getattr(ds, "train_labels", None) is None:
            raise ConfigError(f"data {ds.name!r} has no class labels; a classifier needs labelled data (data=digits)")
        x_train = to_model_range(ds.train, cfg.centered) if ds.is_image else ds.train
        x_test = to_model_range(ds.test, cfg.centered) if ds.is_image else ds.test
        num_classes = int(max(ds.train_labels.max(), ds.test_labels.max())) + 1
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(2, threads)))
        try:
            opts = dict(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, eps=cfg.eps, seed=cfg.seed)
            res = train_classifier(sde, x_train, ds.train_labels, num_classes, hidden=cfg.hidden, depth=cfg.depth,
                                   x_test=x_test, y_test=ds.test_labels, **opts)  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        path = save_classifier(res.net, out / "classifier.safetensors", sde, cfg.centered)
        summary = {"classifier": str(path), "num_classes": num_classes, "final_loss": res.losses[-1],
                   "test_accuracy_at_t": {str(k): v for k, v in res.accuracy.items()}}  # fmt: skip
        (out / "classifier.json").write_text(json.dumps(summary, indent=2))
    print(f"[scoresde] classifier -> {path}; noisy test accuracy " +
          ", ".join(f"t={k:g}: {v:.3f}" for k, v in res.accuracy.items()))  # fmt: skip
    return summary


__all__ = ["ClassifierConfig", "check", "run"]
