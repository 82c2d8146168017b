"""Log-likelihood of a data split under a trained model: ``python likelihood.py ckpt=PATH``.

A thin Hydra wrapper around :func:`evaluate`. Quantized data (images with ``L`` levels: uint8 images 256,
digits 17) are uniformly dequantized ``repeats`` times and reported in bits/dim with the exact offset
``log2(L / (hi - lo))`` (:func:`scoresde.likelihood.bits_per_dim`); continuous data (2-D toy sets) in nats per
sample. Prints a table and writes ``likelihood.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sample import load_model
from scoresde.data import load_dataset
from scoresde.likelihood import dataset_bits_per_dim, log_likelihood


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Plain entry point: the result as a dict (also written to ``out_dir/likelihood.json``)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    loaded = load_model(cfg.ckpt, cfg.official_config, cfg.use_ema)
    if cfg.data is not None:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    elif loaded.config is not None:
        data_cfg = OmegaConf.to_container(loaded.config.data, resolve=True)
    else:
        raise ValueError("a reference checkpoint needs its data named: e.g. +data=cifar10 data.path=DIR or +data=npz")
    ds = load_dataset(**data_cfg)
    x = ds.test if cfg.split == "test" else ds.train
    if cfg.split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {cfg.split!r}")
    x = x[: cfg.n] if cfg.n else x
    if tuple(x.shape[1:]) != tuple(loaded.data_shape):
        raise ValueError(f"data samples have shape {tuple(x.shape[1:])}, the model takes {tuple(loaded.data_shape)}")
    model = loaded.score_model.to(device).eval()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    options = dict(eps=cfg.eps, rtol=cfg.rtol, atol=cfg.atol, method=cfg.method, divergence=cfg.divergence)
    if cfg.float64:
        options["dtype"] = torch.float64
    batches = [x[i : i + cfg.batch_size] for i in range(0, len(x), cfg.batch_size)]
    start = time.perf_counter()
    if ds.levels:  # quantized: dequantize, bits/dim
        data_range = (-1.0, 1.0) if loaded.centered else (0.0, 1.0)
        res = dataset_bits_per_dim(loaded.sde, model, batches, bits=math.log2(ds.levels), data_range=data_range,
                                   repeats=int(cfg.repeats), generator=gen, device=device, **options)  # fmt: skip
        result = {"metric": "bits/dim", "mean": res.mean, "stderr": res.stderr, "n": res.n, "repeats": res.repeats,
                  "levels": ds.levels, "data_range": list(data_range), "nfe": res.nfe}  # fmt: skip
    else:  # continuous data: nats per sample
        values, nfe = [], 0
        for b in batches:
            r = log_likelihood(loaded.sde, model, b.to(device), generator=gen, **options)
            values.append(r.logp.double().cpu())
            nfe += r.nfe
        v = torch.cat(values)
        stderr = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        result = {"metric": "nats/sample", "mean": float(v.mean()), "stderr": stderr, "n": len(v), "nfe": nfe}
    result.update(wall_s=time.perf_counter() - start, ckpt=str(cfg.ckpt), data=data_cfg.get("kind"), split=cfg.split,
                  solver=options | {"dtype": "float64" if cfg.float64 else "model"})  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "likelihood.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"| data | split | n | {result['metric']} | ± s.e. | NFE | wall (s) |\n|---|---|---|---|---|---|---|")
    print(f"| {result['data']} | {cfg.split} | {result['n']} | {result['mean']:.4f} | {result['stderr']:.4f} | "
          f"{result['nfe']} | {result['wall_s']:.1f} |")  # fmt: skip
    return result


@hydra.main(config_path="conf", config_name="likelihood", version_base=None)
def main(cfg: DictConfig) -> None:
    evaluate(cfg, cfg.out or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
