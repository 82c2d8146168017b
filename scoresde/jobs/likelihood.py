"""The likelihood job of ``likelihood.py``: the model's log-likelihood of a data split through the probability-flow
ODE, in bits/dim for quantized data (uniformly dequantized ``repeats`` times, offset ``log2(L / (hi - lo))`` for ``L``
levels and the model's data range, :func:`scoresde.likelihood.bits_per_dim`) and in nats per sample for continuous
data. Writes ``likelihood.json`` and prints a table.

A latent-diffusion run (``latent.autoencoder``) is evaluated on the latents ``z = E(x)`` of the data: the result is
the negative log-likelihood of the latents, ``nll_latent_nats`` per sample and ``bits_per_latent_dim``, which is *not*
a likelihood of the images (it has no decoder term, and the latent scale changes it by ``D log(scale)``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scoresde.generate import sample_seed
from scoresde.likelihood import DIVERGENCES, TIME_VARIABLES
from scoresde.schema import ConfigError, require
from scoresde.training.config import DataConfig

SPLITS = ("test", "train")


@dataclass
class LikelihoodConfig:
    ckpt: str = "???"  # run directory, checkpoint, ema.safetensors or reference checkpoint_*.pth
    official_config: str | None = None
    use_ema: bool = True
    data: DataConfig | None = None  # null: the data the run was trained on
    split: str = "test"
    n: int | None = None  # number of examples (null: the whole split)
    batch_size: int = 64
    repeats: int = 1  # uniform dequantizations per example (quantized data)
    seed: int = 0
    eps: float = 1e-5
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "hutchinson_rademacher"
    time_variable: str = "angle"  # the ODE's coordinates: angle | t | lambda (scoresde.likelihood)
    sigma_data: float = 1.0  # the Gaussian reference's std of the angle coordinates
    float64: bool = False
    device: str = "auto"
    out: str | None = None


def check(cfg: LikelihoodConfig) -> None:
    require(cfg.split in SPLITS, "split", cfg.split, f"choose one of {SPLITS}")
    require(cfg.n is None or cfg.n >= 1, "n", cfg.n, "must be >= 1, or null for the whole split")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be >= 1")
    require(cfg.repeats >= 1, "repeats", cfg.repeats, "must be >= 1")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    require(cfg.divergence in DIVERGENCES, "divergence", cfg.divergence, f"choose one of {DIVERGENCES}")
    require(cfg.time_variable in TIME_VARIABLES, "time_variable", cfg.time_variable, f"choose one of {TIME_VARIABLES}")
    require(math.isfinite(cfg.sigma_data) and cfg.sigma_data > 0, "sigma_data", cfg.sigma_data, "must be > 0")
    require(cfg.rtol > 0 and cfg.atol > 0, "rtol/atol", (cfg.rtol, cfg.atol), "must be > 0")
    require(cfg.eps > 0, "eps", cfg.eps, "must be > 0")


def run(cfg: LikelihoodConfig, out_dir: str | Path) -> dict | None:
    """The result as a dict (also written to ``out_dir/likelihood.json``).

    Example ``k`` is dequantized and probed with its own generator seeded by ``(seed, k)``, and examples are
    evaluated in fixed batches of ``batch_size``; under ``torchrun --nproc_per_node=K`` the batches are shared out over
    the processes and rank 0 writes the same result as one process (other ranks return ``None``).
    """
    from scoresde.distributed import cleanup, init_distributed

    check(cfg)
    dist = init_distributed(cfg.device)
    try:
        return _run(cfg, out_dir, dist)
    finally:
        cleanup(dist)


def _run(cfg: LikelihoodConfig, out_dir: str | Path, dist) -> dict | None:
    from scoresde.data import load_dataset
    from scoresde.distributed import gather_to_main, interleave, my_share
    from scoresde.loading import load_model
    from scoresde.sampling.base import progress_iter

    loaded = load_model(cfg.ckpt, use_ema=cfg.use_ema, official_config=cfg.official_config)
    require(cfg.eps < loaded.sde.T, "eps", cfg.eps, f"must be below the SDE's end time T = {loaded.sde.T}")
    if loaded.task == "superres":
        raise ConfigError(f"{cfg.ckpt!r} is a super-resolution model; likelihood.py evaluates unconditional models")
    if cfg.data is not None:
        data = cfg.data
    elif loaded.kind == "scoresde":
        data = loaded.config.data
    else:
        raise ConfigError(f"a {loaded.kind} model needs its data named: e.g. +data=cifar10 data.path=DIR or +data=npz")
    data_cfg = asdict(data)
    ds = load_dataset(**data_cfg)
    x = ds.test if cfg.split == "test" else ds.train
    x = x[: cfg.n] if cfg.n is not None else x
    levels = ds.levels
    if loaded.is_latent:
        x, levels = _latents(loaded.autoencoder, x), None
    if tuple(x.shape[1:]) != tuple(loaded.data_shape):
        raise ConfigError(f"data samples have shape {tuple(x.shape[1:])}, the model takes {tuple(loaded.data_shape)}")
    model = loaded.model.to(dist.device).eval()
    options = dict(eps=cfg.eps, rtol=cfg.rtol, atol=cfg.atol, method=cfg.method, divergence=cfg.divergence,
                   time_variable=cfg.time_variable, sigma_data=cfg.sigma_data)  # fmt: skip
    if cfg.float64:
        options["dtype"] = torch.float64
    starts = list(range(0, len(x), cfg.batch_size))
    data_range = (-1.0, 1.0) if loaded.centered else (0.0, 1.0)
    start_time = time.perf_counter()
    values, nfe = [], 0
    for start in progress_iter(my_share(starts, dist), None if dist.is_main else False, "likelihood"):
        batch = x[start : start + cfg.batch_size].to(dist.device)
        gens = [torch.Generator().manual_seed(sample_seed(cfg.seed, start + i)) for i in range(len(batch))]
        if levels:
            v, calls = _bits_per_dim(loaded.sde, model, batch, levels, data_range, cfg.repeats, gens, options)
        else:
            v, calls = _nats(loaded.sde, model, batch, gens, options)
        values.append(v)
        nfe += calls
    shares = gather_to_main((values, nfe), dist)
    if shares is None:
        return None
    v = torch.cat(interleave([share for share, _ in shares], len(starts)))
    stderr = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    result = {"metric": "bits/dim" if levels else "nats/sample", "mean": float(v.mean()), "stderr": stderr,
              "n": len(v), "nfe": sum(calls for _, calls in shares)}  # fmt: skip
    if loaded.is_latent:
        result.update(_latent_metrics(v, loaded.data_shape, loaded.config.latent.autoencoder))
    if levels:
        result.update(repeats=cfg.repeats, levels=ds.levels, data_range=list(data_range))
    result.update(wall_s=time.perf_counter() - start_time, ckpt=str(cfg.ckpt), data=data_cfg.get("kind"),
                  split=cfg.split, processes=dist.world_size,
                  solver=options | {"dtype": "float64" if cfg.float64 else "model"})  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "likelihood.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"| data | split | n | {result['metric']} | ± s.e. | NFE | wall (s) |\n|---|---|---|---|---|---|---|")
    print(f"| {result['data']} | {cfg.split} | {result['n']} | {result['mean']:.4f} | {result['stderr']:.4f} | "
          f"{result['nfe']} | {result['wall_s']:.1f} |")  # fmt: skip
    return result


def _latents(autoencoder, images) -> torch.Tensor:
    from scoresde.training.latent import encode_images

    if tuple(images.shape[1:]) != tuple(autoencoder.data_shape):
        raise ConfigError(
            f"the autoencoder encodes images {autoencoder.data_shape}, the data are {tuple(images.shape[1:])}"
        )
    return encode_images(autoencoder, images)


def _latent_metrics(logp: torch.Tensor, latent_shape, autoencoder: str) -> dict:
    """The latent NLL, named as such: ``nll_latent_nats = -log p(z)`` per sample, and per latent dimension in bits."""
    dims = math.prod(latent_shape)
    nll = -logp.double()
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return {"metric": "nll_latent_nats", "mean": float(nll.mean()), "stderr": stderr,
            "bits_per_latent_dim": float(nll.mean()) / (dims * math.log(2)), "latent_shape": list(latent_shape),
            "autoencoder": autoencoder,
            "note": "negative log-likelihood of the autoencoder's latents z = E(x), not of the images"}  # fmt: skip


def _bits_per_dim(sde, model, batch, levels: int, data_range, repeats: int, gens, options) -> tuple[torch.Tensor, int]:
    """Bits/dim of each example of a quantized batch, averaged over ``repeats`` dequantizations."""
    from scoresde.likelihood import dataset_bits_per_dim

    res = dataset_bits_per_dim(sde, model, [batch], bits=math.log2(levels), data_range=data_range, repeats=repeats,
                               generator=gens, progress=False, **options)  # fmt: skip
    return res.per_sample, res.nfe


def _nats(sde, model, batch, gens, options) -> tuple[torch.Tensor, int]:
    """``log p(x)`` in nats of each example of a continuous batch."""
    from scoresde.likelihood import log_likelihood

    r = log_likelihood(sde, model, batch, generator=gens, **options)
    return r.logp.double().cpu(), r.nfe


__all__ = ["LikelihoodConfig", "check", "run"]
