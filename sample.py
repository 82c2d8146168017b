"""Sample from a trained score model: ``python sample.py sampler=pc ckpt=PATH n=64 seed=0``.

A thin Hydra wrapper around :func:`scoresde.generate.generate`: it loads a scoresde run directory, checkpoint
or ``ema.safetensors`` (through :func:`train.load_trained`) or a reference score_sde_pytorch ``checkpoint_*.pth``
(through :func:`scoresde.nets.load_official_checkpoint`), builds the sampler from ``conf/sampler/<name>.yaml``
and writes ``samples.npz`` and ``samples.png`` into the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from scoresde.checkpoint import CheckpointError
from scoresde.generate import generate, save_samples
from scoresde.guidance import cfg_score_fn, num_classes_of
from scoresde.sampling import sampler_from_config


@dataclass
class Loaded:
    score_model: Any
    sde: Any
    data_shape: tuple[int, ...]
    to_unit: Any  # model space -> [0, 1] for images; None for low-dimensional data
    centered: bool  # images in [-1, 1] (True) or [0, 1] (False) in the model's space
    config: Any = None  # the training config of a scoresde run (None for reference checkpoints)


def _is_official(path: Path) -> bool:
    if path.is_dir() or path.suffix == ".safetensors":
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable files are reported by the loader that owns the format
        return False
    return (
        isinstance(ckpt, dict)
        and {"model", "ema", "optimizer", "step"} <= set(ckpt)
        and isinstance(ckpt.get("ema"), dict)
        and "shadow_params" in ckpt["ema"]
    )


def load_model(ckpt: str | Path, official_config: str | None = None, use_ema: bool = True) -> Loaded:
    """A score model from any checkpoint this toolkit reads (see the module docstring)."""
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt={str(ckpt)!r} does not exist (a run directory, checkpoint or .safetensors)")
    if _is_official(path):
        from scoresde.nets import load_official_checkpoint

        config = official_config
        if config is None:
            beside = path.parent / "config.json"
            if not beside.exists():
                raise CheckpointError(
                    f"{str(path)!r} is a reference score_sde_pytorch checkpoint: name its config with "
                    "official_config=<published name, e.g. ve/cifar10_ncsnpp_continuous> or a config.json path"
                )
            config = str(beside)
        m = load_official_checkpoint(path, config, use_ema=use_ema)
        return Loaded(m.score_model, m.sde, tuple(m.data_shape), m.to_unit_interval, bool(m.centered))
    from scoresde.data import from_model_range
    from train import load_trained

    model, sde, cfg = load_trained(path, use_ema=use_ema)
    shape = tuple(model.data_shape)
    centered = bool(cfg.model.centered)
    to_unit = (lambda x: from_model_range(x, centered)) if len(shape) == 3 else None
    return Loaded(model, sde, shape, to_unit, centered, cfg)


def guided_score(model, label: int | None, guidance) -> Any:
    """The model, or for ``label=k`` its class-``k`` score with classifier-free guidance of ``guidance.scale``."""
    kind = "cfg" if guidance is None else guidance.get("kind", "cfg")
    scale = 0.0 if guidance is None else float(guidance.get("scale", 0.0))
    if kind == "classifier":
        raise ValueError("guidance.kind=classifier needs a noise-conditional classifier, which sample.py cannot load "
                         "yet; use guidance.kind=cfg or scoresde.guidance.classifier_guidance from Python")  # fmt: skip
    if kind != "cfg":
        raise ValueError(f"unknown guidance.kind={kind!r}; choose cfg or classifier")
    if label is None:
        if scale != 0:
            raise ValueError("guidance.scale needs a class: set label=<class index>")
        return model
    n = num_classes_of(model)
    if not 0 <= int(label) < n:
        raise ValueError(f"label={label} is not a class of this model (0 .. {n - 1})")
    return cfg_score_fn(model, int(label), scale)


def sample(cfg: DictConfig, out_dir: str | Path) -> dict[str, Path]:
    """Plain entry point: load, sample, write; returns the written paths."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(cfg.ckpt, cfg.official_config, cfg.use_ema)
    model = loaded.score_model.to(device).eval()
    sampler = sampler_from_config(OmegaConf.to_container(cfg.sampler, resolve=True))
    score_fn = guided_score(model, cfg.get("label"), cfg.get("guidance"))
    res = generate(score_fn, loaded.sde, loaded.data_shape, int(cfg.n), sampler, seed=int(cfg.seed),
                   first=int(cfg.first), batch_size=int(cfg.batch_size), device=device,
                   progress=cfg.progress)  # fmt: skip
    paths = save_samples(out_dir, res, loaded.to_unit)
    info = {"ckpt": str(cfg.ckpt), "n": int(cfg.n), "seed": int(cfg.seed), "first": int(cfg.first),
            "nfe_per_sample": res.nfe, "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
            "label": cfg.get("label"), "guidance": OmegaConf.to_container(cfg.guidance, resolve=True)
            if cfg.get("guidance") is not None else None}  # fmt: skip
    (Path(out_dir) / "sample.json").write_text(json.dumps(info, indent=2))
    print(f"[scoresde] {cfg.n} samples ({res.nfe} score evaluations each) -> {', '.join(map(str, paths.values()))}")
    return paths


@hydra.main(config_path="conf", config_name="sample", version_base=None)
def main(cfg: DictConfig) -> None:
    sample(cfg, cfg.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
