"""Trained digits model: sample quality (digits Fréchet distance) vs NFE per sampler, fitted grids, bits/dim.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py --run outputs/main [--n 359] [--device cuda]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py --train /tmp/digits_run [--train-overrides "..."]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py --run outputs/main --bpd-only   # bits/dim table alone

``--train DIR`` first trains the main job's recipe (``python train.py trainer=digits``, plus ``--train-overrides``)
into ``DIR`` (skipped when ``DIR`` already holds a finished run), so the table can be rerun on a changed recipe.
The reference value is the converged probability-flow ODE (dopri5, rtol = atol = 1e-5); each sampler's NFE counts
its final denoising step. Fitted grids (UniPC) are fitted on 256 prior draws and cached in the run directory.
Bits/dim of 64 test images in the ``angle`` and ``t`` coordinates, each tolerance scored against a float64 solve at
1e-7 with the same dequantization and probes. Prints markdown tables and writes benchmarks/results/digits_quality.png
(``--bpd-only``: digits_bpd.png).
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from scoresde.data import from_model_range
from scoresde.digits_metrics import classifier_scores, digits_split, frechet_digits_distance
from scoresde.generate import generate
from scoresde.likelihood import dataset_bits_per_dim
from scoresde.sampling import fit_or_load_grid, get_sampler

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"

SAMPLERS = {
    "unipc (defaults: logistic)": ("unipc", {}),
    "unipc on logsnr": ("unipc", {"grid": "logsnr"}),
    "dpm_solver++ 3 (defaults: logistic)": ("dpm_solver", {}),
    "dpm_solver++ 3 on logsnr": ("dpm_solver", {"grid": "logsnr"}),
    "dpm_solver++ 2 (logistic)": ("dpm_solver", {"order": 2}),
    "heun": ("heun", {}),
    "pndm": ("pndm", {}),
    "ddim": ("ddim", {}),
    "euler_maruyama": ("euler_maruyama", {}),
}


def train(run_dir: Path, overrides: str) -> None:
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        print(f"(using the run in {run_dir})")
        return
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer=digits", f"hydra.run.dir={run_dir}",
           "trainer.progress=false", *shlex.split(overrides)]  # fmt: skip
    print("training:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"(trained in {time.perf_counter() - start:.0f} s)")


def load(run: Path):
    """``(model, sde, data_shape, centered)`` of a run (``scoresde.load_model``)."""
    from scoresde import load_model

    loaded = load_model(run)
    return loaded.model, loaded.sde, tuple(loaded.data_shape), bool(loaded.centered)


def quality(model, sde, shape, centered, sampler, n, device, seeds: int = 5):
    """``(nfe, mean Fréchet, its sd, mean confidence)`` over ``seeds`` draws of ``n`` samples (seeds 1, 2, ...: the
    same prior draws for every sampler, so rows compare pairwise; one draw's Fréchet scatters by 3-7 at n = 359)."""
    fds, confs = [], []
    for seed in range(1, seeds + 1):
        res = generate(model, sde, shape, n, sampler, seed=seed, batch_size=512, device=device)
        images = from_model_range(res.samples, centered)
        fds.append(frechet_digits_distance(images))
        confs.append(classifier_scores(images).confidence)
    sd = statistics.stdev(fds) if len(fds) > 1 else 0.0
    return res.nfe, statistics.mean(fds), sd, statistics.mean(confs)


def real_floor(n: int, seeds: int) -> tuple[float, float]:
    """Fréchet distance of ``n`` real training images to the test split: mean and sd over ``seeds`` random subsets."""
    train = digits_split().train_images
    fds = [frechet_digits_distance(train[torch.randperm(len(train), generator=torch.Generator().manual_seed(s))[:n]])
           for s in range(1, seeds + 1)]  # fmt: skip
    return statistics.mean(fds), statistics.stdev(fds) if len(fds) > 1 else 0.0


def sampling_tables(model, sde, shape, centered, run: Path, args) -> tuple[dict, float]:
    """The Fréchet-distance tables (samplers by step count, fitted grids); ``(curves, converged ODE's Fréchet)``."""
    steps_list = [int(s) for s in args.steps.split(",")]

    t0 = time.perf_counter()
    ode = get_sampler("ode", rtol=1e-5, atol=1e-5)
    k = args.seeds
    nfe_ode, fd_ode, sd_ode, conf_ode = quality(model, sde, shape, centered, ode, args.n, args.device, k)
    fd_real, sd_real = real_floor(args.n, k)
    print(f"\n### Digits samples vs NFE ({args.n} samples, {k} draws each; Fréchet distance² to the test split)\n")
    print(
        f"Converged ODE (dopri5, tol 1e-5): {fd_ode:.1f} ± {sd_ode:.1f} at {nfe_ode} NFE (confidence "
        f"{conf_ode:.2f}); real training images vs test: {fd_real:.1f} ± {sd_real:.1f}.\n"
        "Cells: NFE: mean Fréchet distance over the draws (mean classifier confidence).\n"
    )
    print("| sampler | " + " | ".join(f"steps {s}" for s in steps_list) + " |")
    print("|---|" + "---|" * len(steps_list))
    curves = {}
    for label, (name, opts) in SAMPLERS.items():
        if label not in args.samplers.split(","):
            continue
        cells, pts = [], []
        for steps in steps_list:
            if name == "pndm" and steps < 4 or name == "heun" and steps > 25:
                cells.append("")
                continue
            nfe, fd, _, conf = quality(model, sde, shape, centered, get_sampler(name, steps=steps, **opts), args.n,
                                       args.device, k)  # fmt: skip
            cells.append(f"{nfe}: {fd:.1f} ({conf:.2f})")
            pts.append((nfe, fd))
        curves[label] = pts
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    fit_steps = [int(s) for s in args.fit_steps.split(",") if s]
    if fit_steps:
        print(f"\n### UniPC on fitted grids ({args.fit_n} fit draws, seed 0; the fit's own model calls apart)\n")
        print("| steps | NFE | default grid | fitted grid | + model times | fit NFE (grid / + times) | fit (s) "
              "| best within 1.3x of the ODE's |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        pts, told_pts = [], []
        cache = run if run.is_dir() else run.parent
        for steps in fit_steps:
            sampler = get_sampler("unipc", steps=steps)
            fits, took = [], []
            for with_times in (False, True):
                start = time.perf_counter()
                fits.append(
                    fit_or_load_grid(
                        cache,
                        sde,
                        model,
                        sampler,
                        shape,
                        seed=0,
                        device=args.device,
                        n=args.fit_n,
                        max_evals=args.fit_evals,
                        fit_model_times=with_times,
                    )
                )
                took.append("cached" if fits[-1].cached else f"{time.perf_counter() - start:.0f}")
            nfe, fd_default, _, _ = quality(model, sde, shape, centered, sampler, args.n, args.device, k)
            _, fd_fit, _, _ = quality(model, sde, shape, centered, sampler.with_grid(fits[0].grid), args.n,
                                      args.device, k)  # fmt: skip
            told = fits[1]
            fd_told = None
            if told.model_times is not None:
                _, fd_told, _, _ = quality(model, sde, shape, centered, sampler.with_grid(told.grid, told.model_times),
                                           args.n, args.device, k)  # fmt: skip
                told_pts.append((nfe, fd_told))
            best = min(fd_fit, fd_told if fd_told is not None else fd_fit)
            cell = "not kept" if fd_told is None else f"{fd_told:.1f}"
            ok = "yes" if best <= 1.3 * fd_ode else "no"
            print(f"| {steps} | {nfe} | {fd_default:.1f} | {fd_fit:.1f} | {cell} | {fits[0].fit_nfe} / "
                  f"{told.fit_nfe} | {took[0]} / {took[1]} | {ok} |", flush=True)  # fmt: skip
            pts.append((nfe, fd_fit))
        if told_pts:
            curves["unipc, fitted grid + model times"] = told_pts
        curves["unipc, fitted grid"] = pts
    print(f"\n(sampling table: {time.perf_counter() - t0:.0f} s)")

    return curves, fd_ode


def bits_per_dim_table(model, sde, shape, centered, real, args) -> list[tuple]:
    """Bits/dim of ``--bpd-n`` test images in the ``angle`` and ``t`` coordinates at each tolerance, with the mean
    per-image error against a float64 solve in ``t`` at ``--bpd-ref-tol`` (the same dequantization and probes:
    every call draws them from a generator seeded 0). Rows ``(variable, tol, bits/dim, s.e., error, NFE, wall)``."""
    print(f"\n### Bits/dim of the digits test split ({args.bpd_n} images, 17 levels, 1 dequantization, "
          "Rademacher)\n")  # fmt: skip
    test = real.test_images[: args.bpd_n]
    if shape[-1] != test.shape[-1]:
        test = torch.nn.functional.interpolate(test, size=shape[-2:], mode="nearest")
    data_range = (-1.0, 1.0) if centered else (0.0, 1.0)

    def bpd(**options):
        start = time.perf_counter()
        r = dataset_bits_per_dim(sde, model, [test], bits=math.log2(17), data_range=data_range, repeats=1,
                                 generator=torch.Generator().manual_seed(0), device=args.device,
                                 divergence="hutchinson_rademacher", **options)  # fmt: skip
        return r, time.perf_counter() - start

    ref = None
    if args.bpd_ref_tol:
        ref, wall = bpd(rtol=args.bpd_ref_tol, atol=args.bpd_ref_tol, dtype=torch.float64, time_variable="t")
        print(f"Reference: float64, t, rtol = atol = {args.bpd_ref_tol:g}: {ref.mean:.5f} at {ref.nfe} NFE "
              f"({wall:.0f} s). Error: mean over images of |bits/dim - reference|.\n")  # fmt: skip
    print("| time variable | rtol = atol | bits/dim | ± s.e. | error | NFE per batch | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for time_variable in ("angle", "t"):
        for tol in (float(s) for s in args.tols.split(",")):
            r, wall = bpd(rtol=tol, atol=tol, time_variable=time_variable)
            err = float((r.per_sample - ref.per_sample).abs().mean()) if ref is not None else float("nan")
            rows.append((time_variable, tol, r.mean, r.stderr, err, r.nfe, wall))
            print(f"| {time_variable} | {tol:g} | {r.mean:.4f} | {r.stderr:.4f} | {err:.1e} | {r.nfe} | {wall:.1f} |",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="run directory, checkpoint or ema.safetensors")
    ap.add_argument("--train", default=None, help="train the main-job recipe into this directory first")
    ap.add_argument("--train-overrides", default="", help="extra train.py overrides, e.g. 'loss.name=edm'")
    ap.add_argument("--n", type=int, default=359, help="samples per point (the digits test split has 359)")
    ap.add_argument("--steps", default="4,5,6,8,10,15,20,50")
    ap.add_argument("--seeds", type=int, default=5, help="draws of --n samples per cell (mean ± sd)")
    ap.add_argument("--fit-steps", default="4,5,6", help="step counts for fitted UniPC grids ('' to skip)")
    ap.add_argument("--fit-n", type=int, default=256, help="prior draws for each fit")
    ap.add_argument("--fit-evals", type=int, default=None, help="sampler runs per fit (default: 150 per free time)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS), help="labels of the samplers to run, comma-separated")
    ap.add_argument("--bpd-n", type=int, default=64, help="test images for bits/dim (0 to skip)")
    ap.add_argument("--tols", default="1e-2,1e-3,1e-4,1e-5")
    ap.add_argument("--bpd-ref-tol", type=float, default=1e-7, help="tolerance of the float64 reference (0: none)")
    ap.add_argument("--bpd-only", action="store_true", help="only the bits/dim table (no sampling)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    unknown = [label for label in args.samplers.split(",") if label not in SAMPLERS]
    if unknown:
        ap.error(f"--samplers: unknown label(s) {unknown}; choose from {list(SAMPLERS)}")
    if args.train:
        train(Path(args.train).resolve(), args.train_overrides)
    run = Path(args.run or args.train or "outputs/main")
    model, sde, shape, centered = load(run)
    model = model.to(args.device)
    real = digits_split()
    curves, fd_ode = ({}, None) if args.bpd_only else sampling_tables(model, sde, shape, centered, run, args)
    bpd_rows = bits_per_dim_table(model, sde, shape, centered, real, args) if args.bpd_n else []

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, pts in curves.items():
        a.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
    if fd_ode is not None:
        a.axhline(fd_ode, color="k", lw=0.5, ls="--", label="converged ODE")
        a.axhline(1.3 * fd_ode, color="k", lw=0.5, ls=":", label="1.3x converged")
    a.set(xlabel="NFE", ylabel="digits Fréchet distance²", title="trained digits model: quality vs NFE")
    if curves:
        a.legend(fontsize=6)
    for tv in ("angle", "t"):
        rows = [r for r in bpd_rows if r[0] == tv]
        b.loglog([r[5] for r in rows], [r[4] for r in rows], "o-", label=f"coordinates {tv}")
    b.set(xlabel="NFE per batch", ylabel="mean |bits/dim - float64 reference|", title="bits/dim error vs NFE")
    b.legend(fontsize=7)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    name = "digits_bpd.png" if args.bpd_only else "digits_quality.png"
    fig.savefig(OUT / name, dpi=110)
    print(f"\nwrote {OUT / name}")


if __name__ == "__main__":
    main()
