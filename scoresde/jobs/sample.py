"""The sampling job of ``sample.py``: load a model, draw ``n`` samples (guided, or conditioned on an inpainting /
colorization measurement) and write them with :func:`scoresde.generate.save_samples`.

:class:`SampleConfig` is the typed schema of ``conf/sample.yaml`` (Hydra refuses unknown keys and wrong types);
:func:`run` checks every value and builds the sampler before loading anything, so bad input fails before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoresde.schema import ConfigError, require, to_dict
from scoresde.training.build import sampler_node


@dataclass
class GuidanceConfig:
    kind: str = "cfg"  # cfg (classifier-free guidance) | classifier (classifier guidance)
    scale: float = 0.0
    classifier: str | None = None  # kind=classifier: a classifier.safetensors written by train_classifier.py


@dataclass
class SampleConfig:
    ckpt: str = "???"  # run directory, checkpoint, ema.safetensors or reference checkpoint_*.pth
    official_config: str | None = None
    use_ema: bool = True
    sampler: Any = field(default_factory=lambda: {"name": "pc"})  # {name: ..., **options} (conf/sampler)
    n: int = 64
    seed: int = 0
    first: int = 0
    batch_size: int = 256
    device: str = "auto"
    progress: bool | None = None
    out: str | None = None
    label: int | None = None
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    mask: str | None = None
    known: str | None = None
    gray: str | None = None


def check(cfg: SampleConfig) -> None:
    """Refuse values that would otherwise fail late or silently mean something else."""
    require(cfg.n >= 1, "n", cfg.n, "the number of samples must be >= 1")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be >= 1")
    require(cfg.first >= 0, "first", cfg.first, "must be >= 0")
    require(cfg.label is None or cfg.label >= 0, "label", cfg.label, "must be a class index >= 0")
    require(isinstance(cfg.sampler, (dict, str)), "sampler", cfg.sampler, "a sampler name or {name: ..., ...}")
    require(cfg.mask is None or cfg.known is not None, "mask", cfg.mask, "needs known=<images whose masked pixels are "
            "kept>")  # fmt: skip
    require(cfg.known is None or cfg.mask is not None, "known", cfg.known, "needs mask=<1 where known>")
    require(cfg.gray is None or cfg.mask is None, "gray", cfg.gray, "colorization and inpainting are separate runs")
    inverse = cfg.mask is not None or cfg.gray is not None
    require(not inverse or cfg.label is None, "label", cfg.label, "guidance is not combined with inpainting here")


def build_sampler(node: Any):
    """The sampler of a ``{name: ..., **options}`` node; an unknown name or option raises before any work."""
    from scoresde.sampling import sampler_from_config

    try:
        return sampler_from_config(sampler_node(node))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sampler: {err}") from None


def run(cfg: SampleConfig, out_dir: str | Path) -> dict[str, Path]:
    """Load, sample, write ``samples.npz`` / ``samples.png`` / ``sample.json`` into ``out_dir``; returns the paths."""
    from scoresde.distributed import resolve_device
    from scoresde.generate import generate, save_samples
    from scoresde.guidance import guided_score
    from scoresde.loading import load_model

    check(cfg)
    sampler = build_sampler(cfg.sampler)
    device = resolve_device(cfg.device)
    inverse = cfg.mask is not None or cfg.gray is not None
    if inverse and sampler.name != "pc":
        raise ConfigError("inpainting / colorization run predictor-corrector sampling: use sampler=pc")
    loaded = load_model(cfg.ckpt, use_ema=cfg.use_ema, official_config=cfg.official_config)
    model = loaded.model.to(device).eval()
    g = cfg.guidance
    score_fn = guided_score(model, cfg.label, g.kind, g.scale, g.classifier, loaded.sde, loaded.centered)
    if inverse:
        res = solve_inverse(cfg, loaded, score_fn, sampler, device)
    else:
        res = generate(score_fn, loaded.sde, loaded.data_shape, cfg.n, sampler, seed=cfg.seed, first=cfg.first,
                       batch_size=cfg.batch_size, device=device, progress=cfg.progress)  # fmt: skip
    paths = save_samples(out_dir, res, loaded.to_unit)
    info = {**to_dict(cfg), "sampler": sampler_node(cfg.sampler), "nfe_per_sample": res.nfe}
    (Path(out_dir) / "sample.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"[scoresde] {cfg.n} samples ({res.nfe} score evaluations each) -> {', '.join(map(str, paths.values()))}")
    return paths


def solve_inverse(cfg: SampleConfig, loaded, score_fn, sampler, device):
    """Inpainting (``mask=``, ``known=``) or colorization (``gray=``) with the PC sampler's options; sample ``k``
    conditions on image ``k`` of the file and is seeded like sample ``k`` of an unconditional run."""
    from scoresde.data import to_model_range
    from scoresde.generate import GenerateResult, sample_seed
    from scoresde.io import as_images01, as_mask, read_array
    from scoresde.sampling.inverse import colorize, inpaint

    if not loaded.is_image:
        raise ConfigError("mask= / gray= need an image model")
    channels, size = loaded.data_shape[0], tuple(loaded.data_shape[1:])
    if cfg.gray is not None:
        images = as_images01(read_array(cfg.gray, "gray"), "gray", 1)
        what = "gray"
    else:
        images = as_images01(read_array(cfg.known, "known"), "known", channels)
        what = "known"
        mask, per_image = as_mask(read_array(cfg.mask, "mask"), f"mask={cfg.mask!r}", loaded.data_shape)
    if len(images) < cfg.first + cfg.n or tuple(images.shape[2:]) != size:
        raise ConfigError(f"{what}: need images {size} at indices {cfg.first}..{cfg.first + cfg.n - 1}; the file "
                          f"holds {len(images)} of {tuple(images.shape[2:])}")  # fmt: skip
    images = images[cfg.first : cfg.first + cfg.n]
    opts = {k: v for k, v in vars(sampler).items() if k in ("predictor", "corrector", "snr", "n_steps", "steps",
                                                            "eps", "denoise")}  # fmt: skip
    seeds = [sample_seed(cfg.seed, k) for k in range(cfg.first, cfg.first + cfg.n)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    known = to_model_range(images, loaded.centered).to(device)
    with torch.no_grad():
        if cfg.gray is not None:
            res = colorize(loaded.sde, score_fn, known, channels=channels, generator=gens, **opts)
        else:
            if per_image:
                if len(mask) < cfg.first + cfg.n:
                    raise ConfigError(f"mask={cfg.mask!r}: {len(mask)} per-image masks for images up to "
                                      f"{cfg.first + cfg.n - 1}")  # fmt: skip
                mask = mask[cfg.first : cfg.first + cfg.n]
            res = inpaint(loaded.sde, score_fn, known, mask.to(device), generator=gens, **opts)
    return GenerateResult(res.samples.cpu(), np.array(seeds, dtype=np.uint64), res.nfe)


__all__ = ["GuidanceConfig", "SampleConfig", "build_sampler", "check", "run", "solve_inverse"]
