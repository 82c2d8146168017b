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
    sampler: Any = field(default_factory=lambda: {"name": "auto"})  # {name: ..., **options}; auto: the SDE's own
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
    fit_grid: bool = False  # fit the sampler's time grid to this model (cached in the model's directory)
    fit_points: int = 256  # prior draws the fit matches (seeded by `seed`)
    fit_max_evals: int | None = None  # cap on the fit's objective evaluations (null: the optimizer's default)
    fit_model_times: bool = False  # with fit_grid: also fit the time the model is told at each grid time
    low_res: str | None = None  # super-resolution runs (task=superres): the low-resolution images, sample k <- image k
    low_res_aug: float = 0.0  # noise-conditioning augmentation level of low_res at sampling (Ho et al. 2022, 4.4)
    cuda_graph: bool = False  # replay the sampler's loop as one CUDA graph per batch shape (plain sampling, CUDA)


def check(cfg: SampleConfig) -> None:
    """Refuse values that would otherwise fail late or silently mean something else."""
    require(cfg.n >= 1, "n", cfg.n, "the number of samples must be >= 1")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be >= 1")
    require(cfg.first >= 0, "first", cfg.first, "must be >= 0")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    require(cfg.label is None or cfg.label >= 0, "label", cfg.label, "must be a class index >= 0")
    require(isinstance(cfg.sampler, (dict, str)), "sampler", cfg.sampler, "a sampler name or {name: ..., ...}")
    require(cfg.mask is None or cfg.known is not None, "mask", cfg.mask, "needs known=<images whose masked pixels are "
            "kept>")  # fmt: skip
    require(cfg.known is None or cfg.mask is not None, "known", cfg.known, "needs mask=<1 where known>")
    require(cfg.gray is None or cfg.mask is None, "gray", cfg.gray, "colorization and inpainting are separate runs")
    inverse = cfg.mask is not None or cfg.gray is not None
    require(not inverse or cfg.label is None, "label", cfg.label, "guidance is not combined with inpainting here")
    require(cfg.fit_points >= 2, "fit_points", cfg.fit_points, "must be >= 2 (half of them check the fit)")
    require(cfg.fit_max_evals is None or cfg.fit_max_evals >= 1, "fit_max_evals", cfg.fit_max_evals, "must be >= 1")
    require(not (cfg.fit_grid and inverse), "fit_grid", cfg.fit_grid, "grids are fitted for plain sampling")
    require(cfg.fit_grid or not cfg.fit_model_times, "fit_model_times", cfg.fit_model_times, "needs fit_grid=true")
    require(0 <= cfg.low_res_aug < 1, "low_res_aug", cfg.low_res_aug, "must lie in [0, 1)")
    require(cfg.low_res is None or not (inverse or cfg.fit_grid), "low_res", cfg.low_res,
            "super-resolution is not combined with mask= / gray= / fit_grid=true")  # fmt: skip
    require(not (cfg.cuda_graph and (inverse or cfg.low_res is not None)), "cuda_graph", cfg.cuda_graph,
            "graphs replay plain sampling, not mask= / gray= / low_res=")  # fmt: skip
    require(not cfg.cuda_graph or cfg.device == "auto" or cfg.device.startswith("cuda"), "cuda_graph",
            cfg.cuda_graph, f"needs a CUDA device, not device={cfg.device}")  # fmt: skip


def build_sampler(node: Any):
    """The sampler of a ``{name: ..., **options}`` node; an unknown name or option raises before any work. An option
    set to null that the sampler does not have is dropped (null means "the default", and it has none: a preset's
    ``trainer.sampler.steps=null`` then fits the adaptive ``ode_scipy`` too)."""
    from scoresde.sampling import SAMPLERS, sampler_from_config

    if isinstance(node, dict) and node.get("name") in SAMPLERS:
        known = set(SAMPLERS[node["name"]].option_names())
        node = {k: v for k, v in node.items() if k == "name" or v is not None or k in known}
    try:
        return sampler_from_config(node)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sampler: {err}") from None


def resolve_sampler_node(node: Any, sde, inverse: bool = False) -> dict | None:
    """``{name: auto, **options}`` becomes the SDE's own ``default_sampler`` (EDM's Heun for ``sde=edm``, the
    predictor-corrector sampler otherwise; always ``pc`` for inverse problems) with the options laid over it;
    ``None`` while that needs the model's SDE and ``sde`` is not known yet."""
    node = {"name": node} if isinstance(node, str) else dict(node)
    if node.get("name") != "auto":
        return node
    if not inverse and sde is None:
        return None
    options = {k: v for k, v in node.items() if k != "name"}
    base = {"name": "pc"} if inverse else dict(sde.default_sampler)
    return {**base, **options}


def _check_sampler(cfg: SampleConfig, sampler, inverse: bool) -> None:
    if inverse and sampler.name != "pc":
        raise ConfigError("inpainting / colorization run predictor-corrector sampling: use sampler=pc")
    if cfg.fit_grid:
        from scoresde.sampling import GridSampler
        from scoresde.sampling.fitted_grids import is_deterministic

        per_sde = None in (getattr(sampler, "predictor", ""), getattr(sampler, "corrector", ""))  # fit_grid decides
        if not (isinstance(sampler, GridSampler) and (per_sde or is_deterministic(sampler))):
            raise ConfigError(f"fit_grid=true needs a deterministic fixed-step sampler, not {sampler!r}")
    if cfg.cuda_graph:
        from scoresde.sampling.graphs import GraphedSampler

        try:
            GraphedSampler(sampler)
        except TypeError as err:
            raise ConfigError(f"cuda_graph=true: {err}") from None


def run(cfg: SampleConfig, out_dir: str | Path) -> dict[str, Path] | None:
    """Load, sample, write ``samples.npz`` / ``samples.png`` / ``sample.json`` into ``out_dir``; returns the paths.

    Under ``torchrun --nproc_per_node=K`` the batches are shared out over the processes and rank 0 writes the same
    files as one process would (other ranks return ``None``).
    """
    from scoresde.distributed import cleanup, init_distributed

    check(cfg)
    inverse = cfg.mask is not None or cfg.gray is not None
    node = resolve_sampler_node(cfg.sampler, None, inverse)  # None: auto, built once the model's SDE is known
    sampler = None if node is None else build_sampler(node)
    if sampler is not None:
        _check_sampler(cfg, sampler, inverse)
    dist = init_distributed(cfg.device)
    try:
        require(not cfg.cuda_graph or dist.device.type == "cuda", "cuda_graph", cfg.cuda_graph,
                f"needs a CUDA device; device={cfg.device} resolved to {dist.device}")  # fmt: skip
        return _run(cfg, node, sampler, out_dir, dist)
    finally:
        cleanup(dist)


def _run(cfg: SampleConfig, node: dict | None, sampler, out_dir: str | Path, dist) -> dict[str, Path] | None:
    from scoresde.generate import generate, save_samples
    from scoresde.guidance import guided_score
    from scoresde.loading import load_model

    loaded = load_model(cfg.ckpt, use_ema=cfg.use_ema, official_config=cfg.official_config)
    if sampler is None:  # sampler=auto: the loaded model's SDE names it
        node = resolve_sampler_node(cfg.sampler, loaded.sde)
        sampler = build_sampler(node)
        _check_sampler(cfg, sampler, False)
    model = loaded.model.to(dist.device).eval()
    low = low_res_inputs(cfg, loaded)  # super-resolution: checked before any sampling
    g = cfg.guidance
    _check_label(cfg, model)
    score_fn = guided_score(model, cfg.label, g.kind, g.scale, g.classifier, loaded.sde, loaded.centered,
                            loaded.data_shape)  # fmt: skip
    fitted = None
    if cfg.fit_grid:
        sampler, fitted = _fitted(cfg, loaded, score_fn, sampler, dist)
    if low is not None:
        res = generate_superres(cfg, loaded, model, low, sampler, dist)
    elif cfg.mask is not None or cfg.gray is not None:
        res = solve_inverse(cfg, loaded, score_fn, sampler, dist.device, dist)
    else:
        res = generate(score_fn, loaded.sde, loaded.data_shape, cfg.n, sampler, seed=cfg.seed, first=cfg.first,
                       batch_size=cfg.batch_size, device=dist.device, progress=cfg.progress, dist=dist,
                       cuda_graph=cfg.cuda_graph)  # fmt: skip
    if res is None:  # not rank 0
        return None
    paths = save_samples(out_dir, res, loaded.to_unit)  # latent runs: decoded images
    if loaded.is_latent:  # the latents as sampled, beside the decoded images
        paths["latents"] = Path(out_dir) / "latents.npz"
        np.savez(paths["latents"], arr_0=res.samples.float().numpy(), seeds=res.seeds)
    info = {**to_dict(cfg), "sampler": node, "nfe_per_sample": res.nfe, "processes": dist.world_size}
    if fitted is not None:
        info["fitted_grid"] = fitted
    (Path(out_dir) / "sample.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"[scoresde] {cfg.n} samples ({res.nfe} score evaluations each) -> {', '.join(map(str, paths.values()))}")
    return paths


def _check_label(cfg: SampleConfig, model) -> None:
    """``label=`` with classifier-free guidance needs a class-conditional model; said in command-line terms (the
    library's message names its arguments)."""
    from scoresde.guidance import num_classes_of

    if cfg.label is None or cfg.guidance.kind != "cfg":
        return
    try:
        num_classes_of(model)
    except ValueError:
        raise ConfigError(f"label={cfg.label}: the model {cfg.ckpt!r} is unconditional (not class-conditional); "
                          "label= needs a class-conditional run (trained with +model.net.num_classes=K, e.g. "
                          "loss.label_dropout=0.2 for guidance.scale > 0) or classifier guidance: "
                          "guidance.kind=classifier guidance.classifier=<classifier.safetensors from "
                          "train_classifier.py>") from None  # fmt: skip


def _fitted(cfg: SampleConfig, loaded, score_fn, sampler, dist):
    """The sampler on its grid fitted to this model (``optimize_grid``), fitted once and cached beside the model; rank
    0 fits, the other ranks receive the times. Returns the sampler and what ``sample.json`` records of the fit."""
    from scoresde.distributed import broadcast_object
    from scoresde.sampling import fit_or_load_grid

    record = None
    if dist.is_main:
        where = Path(loaded.source)
        cache = where if where.is_dir() else where.parent
        cache = cache.parent if cache.name == "checkpoints" else cache
        fit = fit_or_load_grid(cache, loaded.sde, score_fn, sampler, loaded.data_shape, seed=cfg.seed,
                               device=dist.device, n=cfg.fit_points, max_evals=cfg.fit_max_evals,
                               fit_model_times=cfg.fit_model_times)  # fmt: skip
        told = None if fit.model_times is None else [float(t) for t in fit.model_times]
        record = {"times": [float(t) for t in fit.grid], "model_times": told, "fit_nfe": fit.fit_nfe,
                  "cached": fit.cached, "cache_dir": str(cache)}  # fmt: skip
        how = "loaded from the cache in" if fit.cached else f"fitted ({fit.fit_nfe} score evaluations, cached in"
        what = "" if told is None else " and model times"
        print(f"[scoresde] time grid{what} of {len(fit.grid) - 1} steps {how} {cache}{'' if fit.cached else ')'}",
              flush=True)  # fmt: skip
        if cfg.fit_model_times and told is None:
            print("[scoresde] fitted model times did not beat the grid alone on held-out draws: not used", flush=True)
    record = broadcast_object(record, dist)
    told = record["model_times"]
    grid = torch.tensor(record["times"], dtype=torch.float64)
    return sampler.with_grid(grid, None if told is None else torch.tensor(told, dtype=torch.float64)), record


def low_res_inputs(cfg: SampleConfig, loaded) -> torch.Tensor | None:
    """The ``low_res`` images of a super-resolution model in its range, ``(n, *low_res_shape)`` for samples ``first ..
    first + n - 1`` (``None`` for other models); a missing, unreadable or wrong-shaped file is refused, naming it."""
    from scoresde.data import to_model_range
    from scoresde.io import as_images01, read_array

    shape = loaded.low_res_shape
    if shape is None:
        require(cfg.low_res is None, "low_res", cfg.low_res, "only super-resolution runs (task=superres) take it")
        return None
    size = f"{shape[1]}x{shape[2]}"
    if cfg.low_res is None:
        raise ConfigError(f"low_res: {loaded.source!r} is a super-resolution model; give low_res=<.npz of {size} "
                          "images>, e.g. the samples.npz of a base model's sample.py run")  # fmt: skip
    try:
        images = as_images01(read_array(cfg.low_res, "low_res"), "low_res", shape[0])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"low_res: {err}") from None
    last = cfg.first + cfg.n
    if len(images) < last or tuple(images.shape[1:]) != shape:
        raise ConfigError(f"low_res={cfg.low_res!r}: need {size} images (shape {shape}) at indices {cfg.first}.."
                          f"{last - 1}; the file holds {len(images)} of shape {tuple(images.shape[1:])}")  # fmt: skip
    return to_model_range(images[cfg.first : last], loaded.centered)


def generate_superres(cfg: SampleConfig, loaded, model, low: torch.Tensor, sampler, dist):
    """Sample ``k`` conditioned on ``low[k - first]`` through :func:`scoresde.conditioning.conditioned`, with any
    sampler (and guidance); seeded like sample ``k`` of an unconditional run, the augmentation noise of
    ``low_res_aug > 0`` from its own stream. Batches shared over the ranks like :func:`scoresde.generate.generate`."""
    from scoresde.conditioning import conditioned
    from scoresde.generate import GenerateResult, run_batches, sample_seed
    from scoresde.guidance import guided_score
    from scoresde.utils import derived_seed

    g, device = cfg.guidance, dist.device
    seeds = [sample_seed(cfg.seed, k) for k in range(cfg.first, cfg.first + cfg.n)]

    def batch(start: int, stop: int) -> tuple[torch.Tensor, int]:
        gens = [torch.Generator().manual_seed(s) for s in seeds[start:stop]]
        aug_gens = [torch.Generator().manual_seed(derived_seed(s, 1)) for s in seeds[start:stop]]
        cond = model.net.sampling_conditioning(low[start:stop].to(device), cfg.low_res_aug, aug_gens)
        score_fn = guided_score(conditioned(model, **cond), cfg.label, g.kind, g.scale, g.classifier, loaded.sde,
                                loaded.centered, loaded.data_shape)  # fmt: skip
        with torch.no_grad():
            res = sampler(loaded.sde, score_fn, (stop - start, *loaded.data_shape), generator=gens, device=device)
        return res.samples, res.nfe

    done = run_batches(cfg.n, cfg.batch_size, batch, dist, cfg.progress)
    return None if done is None else GenerateResult(done[0], np.array(seeds, dtype=np.uint64), done[1])


def solve_inverse(cfg: SampleConfig, loaded, score_fn, sampler, device, dist=None):
    """Inpainting (``mask=``, ``known=``) or colorization (``gray=``) with the PC sampler's options; sample ``k``
    conditions on image ``k`` of the file and is seeded like sample ``k`` of an unconditional run. Batches of
    ``batch_size``, shared out over the ranks of ``dist`` like :func:`scoresde.generate.generate`."""
    from scoresde.data import to_model_range
    from scoresde.generate import GenerateResult, run_batches, sample_seed
    from scoresde.io import as_images01, as_mask, read_array
    from scoresde.sampling.inverse import colorize, inpaint

    if not loaded.is_image:
        raise ConfigError("mask= / gray= need an image model")
    channels, size = loaded.data_shape[0], tuple(loaded.data_shape[1:])
    what = "gray" if cfg.gray is not None else "known"
    images = as_images01(read_array(getattr(cfg, what), what), what, 1 if what == "gray" else channels)
    mask, per_image = None, False
    if cfg.mask is not None:
        mask, per_image = as_mask(read_array(cfg.mask, "mask"), f"mask={cfg.mask!r}", loaded.data_shape)
    last = cfg.first + cfg.n
    if len(images) < last or tuple(images.shape[2:]) != size:
        raise ConfigError(f"{what}: need images {size} at indices {cfg.first}..{last - 1}; the file holds "
                          f"{len(images)} of {tuple(images.shape[2:])}")  # fmt: skip
    if per_image and len(mask) < last:
        raise ConfigError(f"mask={cfg.mask!r}: {len(mask)} per-image masks for images up to {last - 1}")
    known = to_model_range(images[cfg.first : last], loaded.centered)
    opts = {k: v for k, v in vars(sampler).items() if k in ("predictor", "corrector", "snr", "n_steps", "steps",
                                                            "eps", "grid", "denoise")}  # fmt: skip
    seeds = [sample_seed(cfg.seed, k) for k in range(cfg.first, last)]

    def batch(start: int, stop: int) -> tuple[torch.Tensor, int]:
        gens = [torch.Generator().manual_seed(s) for s in seeds[start:stop]]
        x = known[start:stop].to(device)
        with torch.no_grad():
            if cfg.gray is not None:
                res = colorize(loaded.sde, score_fn, x, channels=channels, generator=gens, **opts)
            else:
                m = mask[cfg.first + start : cfg.first + stop] if per_image else mask
                res = inpaint(loaded.sde, score_fn, x, m.to(device), generator=gens, **opts)
        return res.samples, res.nfe

    done = run_batches(cfg.n, cfg.batch_size, batch, dist, cfg.progress)
    return None if done is None else GenerateResult(done[0], np.array(seeds, dtype=np.uint64), done[1])


__all__ = [
    "GuidanceConfig",
    "SampleConfig",
    "build_sampler",
    "check",
    "generate_superres",
    "low_res_inputs",
    "run",
    "solve_inverse",
]
