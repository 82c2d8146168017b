"""Trained digits model: sample quality (digits Fréchet distance) vs NFE per sampler, and bits/dim vs tolerance.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py --run outputs/main [--n 359] [--device cuda]

Needs a trained run (the main job: `make run`). Prints markdown tables and writes
benchmarks/results/digits_quality.png.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from scoresde.data import from_model_range
from scoresde.digits_metrics import classifier_scores, digits_split, frechet_digits_distance
from scoresde.generate import generate
from scoresde.likelihood import dataset_bits_per_dim
from scoresde.sampling import get_sampler

OUT = Path(__file__).resolve().parent / "results"

SAMPLERS = {
    "dpm_solver-3": ("dpm_solver", {"order": 3}),
    "dpm_solver-2": ("dpm_solver", {"order": 2}),
    "heun": ("heun", {}),
    "pndm": ("pndm", {}),
    "ddim": ("ddim", {}),
    "euler_maruyama": ("euler_maruyama", {}),
    "ancestral": ("ancestral", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="outputs/main", help="run directory, checkpoint or ema.safetensors")
    ap.add_argument("--n", type=int, default=359, help="samples per point (the digits test split has 359)")
    ap.add_argument("--steps", default="5,10,20,50,100")
    ap.add_argument("--bpd-n", type=int, default=64, help="test images for bits/dim")
    ap.add_argument("--tols", default="1e-2,1e-3,1e-4,1e-5")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from scoresde import load_model

    loaded = load_model(args.run)
    model, sde, cfg = loaded.model, loaded.sde, loaded.config
    model = model.to(args.device)
    shape = tuple(model.data_shape)
    centered = bool(cfg.model.centered)
    steps_list = [int(s) for s in args.steps.split(",")]

    print(f"\n### Digits samples vs NFE ({args.n} samples each; Fréchet distance² to the test split)\n")
    print("| sampler | " + " | ".join(f"steps {s}" for s in steps_list) + " |")
    print("|---|" + "---|" * len(steps_list))
    curves = {}
    for label, (name, opts) in SAMPLERS.items():
        cells, pts = [], []
        for steps in steps_list:
            sampler = get_sampler(name, steps=steps, **opts)
            res = generate(model, sde, shape, args.n, sampler, seed=0, batch_size=512, device=args.device)
            images = from_model_range(res.samples, centered)
            fd = frechet_digits_distance(images)
            conf = classifier_scores(images).confidence
            cells.append(f"NFE {res.nfe}: {fd:.1f} ({conf:.2f})")
            pts.append((res.nfe, fd))
        curves[label] = pts
        print(f"| {label} | " + " | ".join(cells) + " |")
    real = digits_split()
    print(f"\n(reference: real training images vs test {frechet_digits_distance(real.train_images[: args.n]):.1f}; "
          "in parentheses the classifier's mean confidence)")  # fmt: skip

    print(f"\n### Bits/dim of the digits test split ({args.bpd_n} images, 17 levels, 1 dequantization, Rademacher)\n")
    print("| rtol = atol | bits/dim | ± s.e. | NFE per batch | wall (s) |\n|---|---|---|---|---|")
    test = real.test_images[: args.bpd_n]
    if shape[-1] != test.shape[-1]:
        test = torch.nn.functional.interpolate(test, size=shape[-2:], mode="nearest")
    data_range = (-1.0, 1.0) if centered else (0.0, 1.0)
    bpd_rows = []
    for tol in (float(s) for s in args.tols.split(",")):
        t0 = time.perf_counter()
        r = dataset_bits_per_dim(sde, model, [test], bits=math.log2(17), data_range=data_range, repeats=1,
                                 generator=torch.Generator().manual_seed(0), device=args.device, rtol=tol, atol=tol,
                                 divergence="hutchinson_rademacher")  # fmt: skip
        wall = time.perf_counter() - t0
        bpd_rows.append((tol, r.mean, r.stderr, r.nfe, wall))
        print(f"| {tol:g} | {r.mean:.4f} | {r.stderr:.4f} | {r.nfe} | {wall:.1f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, pts in curves.items():
        a.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
    a.set(xlabel="NFE", ylabel="digits Fréchet distance²", title="trained digits model: quality vs NFE")
    a.legend(fontsize=7)
    b.semilogx([r[3] for r in bpd_rows], [r[1] for r in bpd_rows], "o-")
    b.set(xlabel="NFE", ylabel="bits/dim", title="bits/dim vs ODE tolerance")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "digits_quality.png", dpi=110)
    print(f"\nwrote {OUT / 'digits_quality.png'}")


if __name__ == "__main__":
    main()
