"""Sampler benchmark: quality vs NFE on analytic mixtures, and loop overhead on a small network.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_samplers.py [--quick]

1. Deterministic samplers vs the exact probability-flow ODE solution (SciPy DOP853, rtol = atol = 1e-11) from the
   same prior draws, VP SDE, a 2-D and a 16-D mixture: RMSE relative to the data std, against NFE; and the NFE
   each needs to reach RMSE <= 1e-2 (the reference's RK45 ODE sampler: rtol = atol in 1e-2 .. 1e-5).
2. Stochastic samplers: sliced Wasserstein distance to data vs NFE (null level: two data samples).
3. Overhead: wall time of a sampler / (NFE x time of one score call) with a small MLP score network.
Prints markdown tables and writes benchmarks/results/samplers_quality.png.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from scoresde.data import eight_gaussians_mixture, random_mixture
from scoresde.metrics import sliced_wasserstein
from scoresde.nets import MLP
from scoresde.sampling import get_sampler
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

OUT = Path(__file__).resolve().parent / "results"
EPS = 1e-3

DETERMINISTIC = {
    "dpm_solver-3 (++)": ("dpm_solver", {"order": 3}),
    "dpm_solver-2 (++)": ("dpm_solver", {"order": 2}),
    "dpm_solver-2 (noise)": ("dpm_solver", {"order": 2, "algorithm": "dpmsolver"}),
    "heun (EDM)": ("heun", {}),
    "pndm (F)": ("pndm", {}),
    "pndm (S)": ("pndm", {"variant": "s"}),
    "ddim": ("ddim", {}),
    "euler (PF-ODE)": ("euler_maruyama", {"probability_flow": True, "grid": "logsnr"}),
    "ode rk4": ("ode", {"method": "rk4", "grid": "logsnr"}),
}
ADAPTIVE = {"ode dopri5": ("ode", {}), "ode_scipy RK45": ("ode_scipy", {})}
STOCHASTIC = {
    "euler_maruyama": ("euler_maruyama", {}),
    "reverse_diffusion": ("reverse_diffusion", {}),
    "ancestral": ("ancestral", {}),
    "pc (rd + langevin)": ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}),
    "sdeint euler": ("sdeint", {}),
    "ddim eta=1": ("ddim", {"eta": 1.0}),
}


def quality_deterministic(dim: int, n: int, steps_list, tols):
    sde = VPSDE()
    mix = eight_gaussians_mixture() if dim == 2 else random_mixture(dim, n_components=4, seed=0)
    scale = float(torch.sqrt(torch.trace(mix.covariance()) / dim))
    score = mix.score_fn(sde)
    x0 = sde.prior_sampling((n, dim), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = get_sampler("ode_scipy", method="DOP853", rtol=1e-11, atol=1e-11, eps=EPS, denoise=False)(
        sde, score, x0.shape, x_init=x0
    ).samples
    curves = {}
    for label, (name, opts) in DETERMINISTIC.items():
        pts = []
        for steps in steps_list:
            res = get_sampler(name, steps=steps, eps=EPS, denoise=False, **opts)(sde, score, x0.shape, x_init=x0)
            pts.append((res.nfe, float((res.samples - ref).pow(2).mean().sqrt()) / scale))
        curves[label] = pts
    for label, (name, opts) in ADAPTIVE.items():
        pts = []
        for tol in tols:
            res = get_sampler(name, rtol=tol, atol=tol, eps=EPS, denoise=False, **opts)(sde, score, x0.shape, x_init=x0)
            pts.append((res.nfe, float((res.samples - ref).pow(2).mean().sqrt()) / scale))
        curves[label] = pts
    return curves


def nfe_to_reach(pts, target=1e-2):
    ok = [nfe for nfe, err in pts if err <= target]
    return min(ok) if ok else None


def quality_stochastic(n: int, steps_list):
    sde = VPSDE()
    mix = eight_gaussians_mixture()
    data = mix.sample(n, torch.Generator().manual_seed(1))
    null = sliced_wasserstein(mix.sample(n, torch.Generator().manual_seed(2)), data)
    rows = {}
    for label, (name, opts) in STOCHASTIC.items():
        pts = []
        for steps in steps_list:
            res = get_sampler(name, steps=steps, **opts)(
                sde, mix.score_fn(sde), (n, 2), torch.Generator().manual_seed(0)
            )
            pts.append((res.nfe, sliced_wasserstein(res.samples, data)))
        rows[label] = pts
    return rows, null


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _network(kind: str, device: str):
    """A small score network and the sample shape it takes: the MLP (2-D) or a conv preset from conf/model."""
    sde = VPSDE()
    if kind == "mlp":
        return ScoreModel(MLP((2,), hidden=256, depth=3), sde).eval().to(device), (2,)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{kind}.yaml")
    size = int(cfg.image_size)
    channels = 1 if kind.startswith("digits") else 3
    net = instantiate(cfg.net, data_shape=(channels, size, size))
    model = ScoreModel(net, sde, cfg.parameterization, cfg.time_input, cfg.time_scale)
    return model.eval().to(device), (channels, size, size)


def overhead(kind: str = "mlp", batch: int = 4096, steps: int = 50, reps: int = 3, device: str = "cpu"):
    """Sampler wall time / (NFE x one network call), all timed side by side in one run."""
    torch.manual_seed(0)
    sde = VPSDE()
    model, shape = _network(kind, device)

    def score_fn(x, t):
        return model(x, t)

    x = torch.randn(batch, *shape, device=device)
    t = torch.full((batch,), 0.5, device=device)
    with torch.no_grad():
        for _ in range(3):
            score_fn(x, t)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            score_fn(x, t)
        _sync(device)
        call = (time.perf_counter() - t0) / 20
    rows = []
    cases = [
        ("euler_maruyama", {"steps": steps}),
        ("pc", {"steps": steps // 2, "corrector": "langevin"}),
        ("ancestral", {"steps": steps}),
        ("ddim", {"steps": steps}),
        ("heun", {"steps": steps // 2}),
        ("dpm_solver", {"steps": steps, "order": 3}),
        ("pndm", {"steps": steps}),
        ("ode", {"method": "rk4", "steps": steps // 4}),
        ("ode", {"rtol": 1e-3, "atol": 1e-3}),
        ("sdeint", {"steps": steps}),
        ("ode_scipy", {"rtol": 1e-3, "atol": 1e-3}),
    ]
    for name, opts in cases:
        best = math.inf
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            res = get_sampler(name, **opts)(sde, score_fn, (batch, *shape), torch.Generator().manual_seed(0),
                                            device=device)  # fmt: skip
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        rows.append((f"{name} {opts}", res.nfe, best / (res.nfe * call)))
    return call, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points (for a smoke run)")
    ap.add_argument("--device", default="cpu", help="device of the overhead measurement (cpu, cuda)")
    ap.add_argument("--overhead-only", action="store_true", help="skip the quality sweeps")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps_list = [5, 10, 20, 40] if args.quick else [5, 8, 10, 15, 20, 30, 50, 100, 200]
    tols = [1e-2, 1e-3, 1e-5] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    OUT.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.overhead_only:
        report_overhead(args)
        return
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, dim in zip(axes[:2], (2, 16), strict=True):
        curves = quality_deterministic(dim, 512 if not args.quick else 128, steps_list, tols)
        print(f"\n### Deterministic samplers, VP, {dim}-D mixture: RMSE / data std vs the exact PF-ODE solution\n")
        print("| sampler | NFE to RMSE <= 1e-2 | " + " | ".join(f"pt {i}" for i in range(len(steps_list))) + " |")
        print("|---|---|" + "---|" * len(steps_list))
        for label, pts in curves.items():
            cells = " | ".join(f"{nfe}: {err:.1e}" for nfe, err in pts)
            print(f"| {label} | {nfe_to_reach(pts)} | {cells} |")
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, ms=3)
        ax.axhline(1e-2, color="k", lw=0.5, ls="--")
        ax.set(xlabel="NFE", ylabel="RMSE / data std", title=f"VP, {dim}-D mixture: error vs NFE")
        ax.legend(fontsize=7)

    rows, null = quality_stochastic(2000 if not args.quick else 500, [10, 20, 50, 100, 200, 500])
    print(f"\n### Stochastic samplers, VP, 8 Gaussians, N = 2000: sliced W2 to data (null level {null:.3f})\n")
    print("| sampler | " + " | ".join(f"pt {i}" for i in range(6)) + " |")
    print("|---|" + "---|" * 6)
    for label, pts in rows.items():
        print(f"| {label} | " + " | ".join(f"{nfe}: {sw:.3f}" for nfe, sw in pts) + " |")
        axes[2].semilogx([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, ms=3)
    axes[2].axhline(null, color="k", lw=0.5, ls="--", label="null (two data samples)")
    axes[2].set(xlabel="NFE", ylabel="sliced W2 to data", title="VP, 8 Gaussians: stochastic samplers")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "samplers_quality.png", dpi=110)

    report_overhead(args)
    print(f"\nwrote {OUT / 'samplers_quality.png'}")


def report_overhead(args) -> None:
    setups = [("mlp", 4096 if not args.quick else 1024, 50), ("digits_ddpmpp", 64, 20)]
    if args.device.startswith("cuda"):
        setups.append(("ddpmpp", 128, 20))
    for kind, batch, steps in setups:
        call, over = overhead(kind, batch=batch, steps=steps, device=args.device)
        print(f"\n### Loop overhead on {args.device}: {kind}, batch {batch}, one call = {call * 1e3:.2f} ms\n")
        print("| sampler | NFE | wall / (NFE x call) |")
        print("|---|---|---|")
        for label, nfe, ratio in over:
            print(f"| {label} | {nfe} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
