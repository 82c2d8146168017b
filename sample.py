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
from scoresde.classifier import load_classifier
from scoresde.data import to_model_range
from scoresde.generate import GenerateResult, generate, sample_seed, save_samples
from scoresde.guidance import cfg_score_fn, classifier_guidance, num_classes_of
from scoresde.sampling import sampler_from_config
from scoresde.sampling.inverse import colorize, inpaint


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


def guided_score(model, label: int | None, guidance, loaded: Loaded | None = None) -> Any:
    """The model, or for ``label=k`` its class-``k`` score: classifier-free guidance of ``guidance.scale`` for a
    class-conditional model (``guidance.kind=cfg``), or classifier guidance with the noise-conditional classifier
    ``guidance.classifier`` (``guidance.kind=classifier``, trained by ``train_classifier.py``)."""
    kind = "cfg" if guidance is None else guidance.get("kind", "cfg")
    scale = 0.0 if guidance is None else float(guidance.get("scale", 0.0))
    if kind not in ("cfg", "classifier"):
        raise ValueError(f"unknown guidance.kind={kind!r}; choose cfg or classifier")
    if label is None:
        if scale != 0:
            raise ValueError("guidance.scale needs a class: set label=<class index>")
        return model
    if kind == "classifier":
        path = guidance.get("classifier")
        if not path:
            raise ValueError("guidance.kind=classifier needs guidance.classifier=<classifier.safetensors> "
                             "(train one with train_classifier.py)")  # fmt: skip
        net, meta = load_classifier(path, loaded.sde if loaded is not None else None)
        if loaded is not None and json.loads(meta["centered"]) != loaded.centered:
            raise ValueError(f"classifier {path!r} was trained on data scaled differently (centered) from the model")
        n = int(meta["num_classes"])
        if not 0 <= int(label) < n:
            raise ValueError(f"label={label} is not a class of the classifier (0 .. {n - 1})")
        device = next(model.parameters()).device
        return classifier_guidance(model, net.to(device), int(label), scale)
    n = num_classes_of(model)
    if not 0 <= int(label) < n:
        raise ValueError(f"label={label} is not a class of this model (0 .. {n - 1})")
    return cfg_score_fn(model, int(label), scale)


def _load_array(path: str, what: str):
    import numpy as np

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}={path!r} does not exist")
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{what}={path!r} is not a readable .npy/.npz array file: {err}") from None
    if hasattr(a, "files"):  # .npz: its only array, or arr_0
        keys = list(a.files)
        a = a["arr_0"] if "arr_0" in keys else a[keys[0]] if len(keys) == 1 else None
        if a is None:
            raise ValueError(f"{what}={path!r} holds several arrays {keys}; save the images as arr_0")
    return torch.from_numpy(a.copy())


def _as_images01(a: torch.Tensor, what: str, channels: int) -> torch.Tensor:
    """Images as float (N, C, H, W) in [0, 1]: uint8 or float input, channels first or last."""
    x = a.float() / 255 if a.dtype == torch.uint8 else a.float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1] != channels and x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} images must be (N, {channels}, H, W) or (N, H, W, {channels}); got {tuple(a.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{what} images must lie in [0, 1] (or be uint8); got [{x.min():.3g}, {x.max():.3g}]")
    return x


def solve_inverse(cfg: DictConfig, loaded: Loaded, score_fn, device: str) -> GenerateResult:
    """Inpainting (``mask=``, ``known=``) or colorization (``gray=``) with the PC sampler's options."""
    sampler_cfg = OmegaConf.to_container(cfg.sampler, resolve=True)
    if sampler_cfg.get("name") != "pc":
        raise ValueError("inpainting / colorization run predictor-corrector sampling: use sampler=pc")
    opts = {k: sampler_cfg[k] for k in ("predictor", "corrector", "snr", "n_steps", "steps", "eps", "denoise")}
    if loaded.to_unit is None:
        raise ValueError("mask= / gray= need an image model")
    channels, size = loaded.data_shape[0], tuple(loaded.data_shape[1:])
    first, n = int(cfg.first), int(cfg.n)
    if cfg.get("gray") is not None:
        images = _as_images01(_load_array(cfg.gray, "gray"), "gray", 1)
    else:
        if cfg.get("known") is None:
            raise ValueError("mask= needs known=<images whose masked pixels are kept>")
        images = _as_images01(_load_array(cfg.known, "known"), "known", channels)
    images = images[first : first + n]
    if len(images) == 0 or tuple(images.shape[2:]) != size:
        raise ValueError(f"need images {size} at indices {first}..{first + n - 1}; got {len(images)} of "
                         f"{tuple(images.shape[2:])}")  # fmt: skip
    seeds = [sample_seed(int(cfg.seed), k) for k in range(first, first + len(images))]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    known = to_model_range(images, loaded.centered).to(device)
    with torch.no_grad():
        if cfg.get("gray") is not None:
            res = colorize(loaded.sde, score_fn, known, channels=channels, generator=gens, **opts)
        else:
            mask = _load_array(cfg.mask, "mask").float()
            res = inpaint(loaded.sde, score_fn, known, mask.to(device), generator=gens, **opts)
    import numpy as np

    return GenerateResult(res.samples.cpu(), np.array(seeds, dtype=np.uint64), res.nfe)


def sample(cfg: DictConfig, out_dir: str | Path) -> dict[str, Path]:
    """Plain entry point: load, sample, write; returns the written paths."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(cfg.ckpt, cfg.official_config, cfg.use_ema)
    model = loaded.score_model.to(device).eval()
    sampler = sampler_from_config(OmegaConf.to_container(cfg.sampler, resolve=True))
    score_fn = guided_score(model, cfg.get("label"), cfg.get("guidance"), loaded)
    if cfg.get("mask") is not None or cfg.get("gray") is not None:
        res = solve_inverse(cfg, loaded, score_fn, device)
    else:
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
