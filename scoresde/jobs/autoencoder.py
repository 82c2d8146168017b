"""The job of ``train_autoencoder.py``: the latent autoencoder of latent diffusion (:mod:`scoresde.latent`), trained on
an image dataset and written as ``autoencoder.safetensors`` + ``autoencoder.json`` (held-out reconstruction error, the
trivial baseline's, the latent shape and scale).

The output directory is locked for the run (one job per directory), and nothing in it is replaced unless training
finished.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from scoresde.schema import ConfigError, require
from scoresde.training.config import DataConfig


@dataclass
class AutoencoderConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="mnist"))
    latent_channels: int = 4
    channels: list[int] = field(default_factory=lambda: [16, 32])  # one stride-2 level each: f = 2 ** len(channels)
    kl_weight: float = 1e-3
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-3
    seed: int = 0
    num_threads: int | None = 1
    out: str | None = None


def check(cfg: AutoencoderConfig) -> None:
    """Refuse nonsense before anything is loaded, trained or written."""
    for key in ("steps", "batch_size", "latent_channels"):
        value = getattr(cfg, key)
        require(value >= 1, key, value, "must be >= 1")
    require(cfg.lr > 0, "lr", cfg.lr, "must be > 0")
    require(cfg.kl_weight >= 0, "kl_weight", cfg.kl_weight, "must be >= 0 (0: a plain autoencoder)")
    require(1 <= len(cfg.channels) <= 6 and all(c >= 1 for c in cfg.channels), "channels", cfg.channels,
            "must list 1-6 positive widths (one stride-2 level each)")  # fmt: skip
    require(cfg.num_threads is None or cfg.num_threads >= 1, "num_threads", cfg.num_threads, "must be >= 1 or null")


def run(cfg: AutoencoderConfig, out_dir: str | Path) -> dict:
    """Train, save, return the summary (also written to ``autoencoder.json``)."""
    from scoresde.data import load_dataset
    from scoresde.latent import save_autoencoder, train_autoencoder
    from scoresde.rundir import RunDirLock

    check(cfg)
    out = Path(out_dir)
    with RunDirLock(out, "autoencoder output directory"):
        ds = load_dataset(**asdict(cfg.data))
        if not ds.is_image:
            raise ConfigError(f"data {ds.name!r} holds points, not images; the autoencoder needs images (data=mnist)")
        f = 2 ** len(cfg.channels)
        h, w = ds.data_shape[1:]
        require(h % f == 0 and w % f == 0, "channels", cfg.channels,
                f"{len(cfg.channels)} levels need an image size divisible by {f}, the data are {h}x{w}")  # fmt: skip
        threads = torch.get_num_threads()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            res = train_autoencoder(
                ds.train, ds.test, latent_channels=cfg.latent_channels, channels=tuple(cfg.channels),
                kl_weight=cfg.kl_weight, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                log=lambda step, loss: print(f"[scoresde] autoencoder step {step}: loss {loss:.4f}", flush=True),
            )  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        path = save_autoencoder(res.model, out / "autoencoder.safetensors")
        m = res.model
        summary = {
            "autoencoder": str(path),
            "data": ds.name,
            "data_shape": list(m.data_shape),
            "latent_shape": list(m.latent_shape),
            "latent_shift": float(m.shift),
            "latent_scale": float(m.scale),
            "test_reconstruction_mse": res.test_mse,
            "mean_image_baseline_mse": res.baseline_mse,
            "final_loss": res.losses[-1],
            "config": asdict(cfg),
        }
        (out / "autoencoder.json").write_text(json.dumps(summary, indent=2))
    msg = f"latents {tuple(m.latent_shape)}, scale {float(m.scale):.4g}; held-out reconstruction MSE {res.test_mse:.5f}"
    print(f"[scoresde] autoencoder -> {path}; {msg} (mean-image baseline {res.baseline_mse:.5f})", flush=True)
    return summary


__all__ = ["AutoencoderConfig", "check", "run"]
