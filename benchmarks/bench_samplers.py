"""Sampler benchmark: quality vs NFE on exact mixtures, lower_order_final, fitted grids, and loop overhead.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_samplers.py [--quick] [--parts quality,lof,fit,stochastic,overhead]

Problems (the peer benchmark's, ../shared/peers): VP SDE, the 2-D 8-Gaussians ring and ``random_mixture(16, 4,
seed=7)``; 512 start points ``x_T ~ N(0, I)`` (float64, seed 2024) integrated from ``T = 1`` to ``1e-3`` without
the final denoising step. Reference: SciPy DOP853 at rtol = atol = 1e-11 from the same points. Error: RMSE over the
best 99% of trajectories, per dimension, divided by the std of the reference end points (the peers' metric).

1. ``quality``: error vs NFE of the deterministic samplers; the fewest NFE reaching 1e-2 and 1e-3.
2. ``lof``: ``lower_order_final`` off / on / automatic for UniPC and DPM-Solver on the logsnr and logistic grids.
3. ``fit``: grids fitted (:func:`scoresde.sampling.fit_grid`) on 512 other prior draws, scored on the benchmark's;
   then with the model times fitted too (``fit_model_times=True``).
4. ``stochastic``: sliced Wasserstein distance to data vs NFE (null level: two data samples).
5. ``overhead``: sampler time / (NFE x one bare call), interleaved, median of 15, with the exact score on 512 points
   (a cheap call; ``--overhead-points 1024`` for one about twice as costly) and a 0.5 M-parameter MLP on 4096
   points; wall and process CPU time, the wall ratio against the sampler's own calls replayed bare (same views,
   same recorded inputs), and the sampler's wall time outside the model's calls per NFE (the model timed inside
   the run).
Prints markdown tables; writes benchmarks/results/samplers_quality.png.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from scoresde.data import eight_gaussians_mixture, random_mixture
from scoresde.metrics import sliced_wasserstein
from scoresde.nets import MLP
from scoresde.sampling import fit_grid, get_sampler
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

OUT = Path(__file__).resolve().parent / "results"
EPS = 1e-3
F64 = torch.float64

DETERMINISTIC = {
    "unipc (defaults: logistic, auto order)": ("unipc", {}),
    "unipc auto order, logsnr": ("unipc", {"grid": "logsnr"}),
    "unipc order 2, logistic": ("unipc", {"order": 2, "grid": "logistic"}),
    "unipc order 3, logistic": ("unipc", {"order": 3, "grid": "logistic"}),
    "unipc order 3, logsnr (= diffusers bh2 o3 exponential)": ("unipc", {"order": 3, "grid": "logsnr"}),
    "unipc order 3, noise pred., logsnr": ("unipc", {"order": 3, "prediction": "noise", "grid": "logsnr"}),
    "dpm_solver++ 3 (defaults: logistic)": ("dpm_solver", {}),
    "dpm_solver++ 3, logsnr": ("dpm_solver", {"grid": "logsnr"}),
    "dpm_solver++ 2, logsnr": ("dpm_solver", {"order": 2, "grid": "logsnr"}),
    "dpm_solver++ 2, logistic": ("dpm_solver", {"order": 2, "grid": "logistic"}),
    "heun (EDM)": ("heun", {}),
    "pndm (F)": ("pndm", {}),
    "pndm (S)": ("pndm", {"variant": "s"}),
    "ddim": ("ddim", {}),
    "euler (PF-ODE), logsnr": ("euler_maruyama", {"probability_flow": True, "grid": "logsnr"}),
    "ode rk4, logsnr": ("ode", {"method": "rk4", "grid": "logsnr"}),
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


class Problem:
    """One exact PF-ODE problem: the score, 512 start points and their reference end points."""

    def __init__(self, kind: str, n: int = 512, seed: int = 2024):
        self.kind, self.sde = kind, VPSDE()
        self.mix = eight_gaussians_mixture() if kind == "ring" else random_mixture(16, n_components=4, seed=7)
        self.score = self.mix.score_fn(self.sde)
        self.dim = self.mix.dim
        self.x0 = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.ref = self.solve(self.x0)

    def solve(self, x0: torch.Tensor) -> torch.Tensor:
        reference = get_sampler("ode_scipy", method="DOP853", rtol=1e-11, atol=1e-11, eps=EPS, denoise=False)
        return reference(self.sde, self.score, x0.shape, x_init=x0).samples

    def error(self, samples: torch.Tensor) -> float:
        """Trimmed relative RMSE: best 99% of trajectories, per dimension, / std of the reference end points."""
        sq = (samples - self.ref).pow(2).sum(1).sort().values[: int(0.99 * len(samples))]
        return float((sq.mean() / self.dim).sqrt() / self.ref.std())

    def run(self, sampler) -> tuple[int, float]:
        res = sampler(self.sde, self.score, self.x0.shape, x_init=self.x0)
        return res.nfe, self.error(res.samples)


def fewest(points, target):
    ok = [nfe for nfe, err in points if err <= target]
    return min(ok) if ok else None


def sweep(problem: Problem, steps_list, tols) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for label, (name, opts) in DETERMINISTIC.items():
        per_step = 2 if name == "heun" else 4 if opts.get("method") == "rk4" else 1
        warm_up = {"f": 9, "s": 1}.get(opts.get("variant", "f"), 0) if name == "pndm" else 0  # extra calls
        pts = []
        for nfe in steps_list:
            steps = (nfe - warm_up) // per_step
            if steps < 1 or (name == "pndm" and warm_up == 9 and steps < 4):
                continue
            pts.append(problem.run(get_sampler(name, steps=steps, eps=EPS, denoise=False, **opts)))
        curves[label] = pts
    for label, (name, opts) in ADAPTIVE.items():
        curves[label] = [problem.run(get_sampler(name, rtol=tol, atol=tol, eps=EPS, denoise=False, **opts))
                         for tol in tols]  # fmt: skip
    return curves


def print_quality(problem: Problem, curves, steps_list) -> None:
    print(f"\n### VP, {problem.kind} (D = {problem.dim}): error vs NFE (no final denoising)\n")
    print("| sampler | fewest NFE <= 1e-2 | fewest NFE <= 1e-3 | " + " | ".join(f"{n}" for n in steps_list) + " |")
    print("|---|---|---|" + "---|" * len(steps_list))
    for label, pts in curves.items():
        by_nfe = dict(pts)
        cells = " | ".join(f"{by_nfe[n]:.1e}" if n in by_nfe else "" for n in steps_list)
        if label in ADAPTIVE:
            cells = " ".join(f"{n}:{e:.0e}" for n, e in pts) + " |" * (len(steps_list) - 1)
        print(f"| {label} | {fewest(pts, 1e-2)} | {fewest(pts, 1e-3)} | {cells} |")


def lower_order_final_table(problem: Problem, steps_list) -> None:
    print(f"\n### lower_order_final, VP, {problem.kind}: error at each NFE (off / on / automatic)\n")
    print("| sampler, grid | setting | " + " | ".join(str(n) for n in steps_list) + " |")
    print("|---|---|" + "---|" * len(steps_list))
    for name, order in (("unipc", 2), ("unipc", 3), ("dpm_solver", 3)):
        for grid in ("logsnr", "logistic"):
            for setting in (False, True, None):
                cells = []
                for n in steps_list:
                    opts = dict(steps=n, order=order, grid=grid, lower_order_final=setting, eps=EPS, denoise=False)
                    cells.append(f"{problem.run(get_sampler(name, **opts))[1]:.1e}")
                label = {False: "off", True: "on", None: "auto"}[setting]
                print(f"| {name} {order}, {grid} | {label} | " + " | ".join(cells) + " |")


def fit_table(problem: Problem, steps_list) -> None:
    print(f"\n### Fitted grids, VP, {problem.kind}: UniPC (auto order), logistic grid vs fitted (512 fit draws)\n")
    print("| steps = NFE | logistic grid | fitted grid | + model times | fit NFE (grid / + times) | fit time (s) |")
    print("|---|---|---|---|---|---|")
    x_fit = torch.randn(512, problem.dim, generator=torch.Generator().manual_seed(11), dtype=F64)
    for steps in steps_list:
        sampler = get_sampler("unipc", steps=steps, eps=EPS, denoise=False, grid="logistic")
        start = time.perf_counter()
        fit = fit_grid(problem.sde, problem.score, sampler, x_fit)
        middle = time.perf_counter()
        both = fit_grid(problem.sde, problem.score, sampler, x_fit, fit_model_times=True)
        seconds = (middle - start, time.perf_counter() - middle)
        _, err_default = problem.run(sampler)
        _, err_fit = problem.run(sampler.with_grid(fit.grid))
        told = "not kept"
        if both.model_times is not None:
            told = f"{problem.run(sampler.with_grid(both.grid, both.model_times))[1]:.1e}"
        print(
            f"| {steps} | {err_default:.1e} | {err_fit:.1e} | {told} | {fit.fit_nfe} / {both.fit_nfe} "
            f"| {seconds[0]:.0f} / {seconds[1]:.0f} |"
        )
        model_times = both.model_times if both.model_times is not None else both.grid
        print(
            f"|   | times: {', '.join(f'{t:.3g}' for t in both.grid.tolist())} | model times: "
            f"{', '.join(f'{t:.3g}' for t in model_times.tolist())} | | | |"
        )


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


class TimedModel:
    """A model's views (score call, ``x0_hat`` / ``eps_hat`` where it has them) that add up the time spent in them;
    with ``record`` a list, each call's view and inputs are appended to it (to replay the same calls bare)."""

    def __init__(self, model):
        self.model, self.seconds, self.record = model, 0.0, None
        for name in ("x0_hat", "eps_hat"):
            if hasattr(model, name):
                setattr(self, name, self._timed(getattr(model, name)))
        self._call = self._timed(model)

    def _timed(self, fn):
        def timed(x, t):
            if self.record is not None:
                self.record.append((timed, x.clone(), t.clone()))
            start = time.perf_counter()
            out = fn(x, t)
            self.seconds += time.perf_counter() - start
            return out

        return timed

    def __call__(self, x, t):
        return self._call(x, t)


def overhead(
    kind: str, reps: int = 15, nfe_target: int = 20, points: int | None = None
) -> tuple[float, list[tuple[str, int, float, float, float, float]]]:
    """Sampler time / (the same number of bare calls), interleaved A B C A B C, median of ``reps``: wall and CPU time
    against bare calls on one fixed input (B), and wall time against the sampler's own calls replayed bare (C: the
    same views on the same inputs, recorded once), which separates the loop's cost from a score whose cost depends
    on its input; and the sampler's wall time outside the model's calls per NFE (us), the part this library spends.
    Also returns the median bare call (ms). ``points``: the batch (default 512 for the exact score, 4096 for the
    MLP)."""
    torch.manual_seed(0)
    sde = VPSDE()
    if kind == "mlp":
        model = ScoreModel(MLP((2,), hidden=256, depth=3), sde).eval()
        batch = points or 4096
    else:
        mix = eight_gaussians_mixture()
        model = mix.score_fn(sde)
        batch = points or 512
    x = torch.randn(batch, 2)
    t = torch.full((batch,), 0.5)
    timed = TimedModel(model)

    def calls(n: int) -> None:
        for _ in range(n):
            timed(x, t)

    half, quarter = nfe_target // 2, nfe_target // 4
    cases = [("euler_maruyama", {}), ("reverse_diffusion", {}), ("ancestral", {}), ("ddim", {}), ("ddim", {"eta": 1.0}),
             ("pc", {"corrector": "langevin", "snr": 0.16, "steps": half}), ("heun", {"steps": half}),
             ("dpm_solver", {}), ("unipc", {}), ("pndm", {"steps": nfe_target - 9}), ("pndm", {"variant": "s"}),
             ("ode", {"method": "rk4", "steps": quarter}), ("sdeint", {})]  # fmt: skip
    rows, bare = [], []
    with torch.no_grad():
        calls(5)
        for name, opts in cases:
            opts = {"steps": nfe_target, **opts}
            sampler = get_sampler(name, denoise=False, **opts)

            def run(sampler=sampler):
                return sampler(sde, timed, (batch, 2), torch.Generator().manual_seed(0))

            nfe = run().nfe
            timed.record = []
            run()
            replay, timed.record = timed.record, None

            def replayed(replay=replay):
                for view, xr, tr in replay:
                    view(xr, tr)

            ratios_wall, ratios_cpu, ratios_replay, outside = [], [], [], []
            for _ in range(reps):
                timed.seconds = 0.0
                w0, c0 = time.perf_counter(), time.process_time()
                run()
                w1, c1 = time.perf_counter(), time.process_time()
                inside = timed.seconds
                calls(nfe)  # noqa: B023
                w2, c2 = time.perf_counter(), time.process_time()
                replayed()
                w3 = time.perf_counter()
                ratios_wall.append((w1 - w0) / (w2 - w1))
                ratios_replay.append((w1 - w0) / (w3 - w2))
                ratios_cpu.append((c1 - c0) / max(c2 - c1, 1e-9))
                outside.append((w1 - w0 - inside) / nfe * 1e6)
                bare.append((w2 - w1) / nfe * 1e3)
            label = f"{name} {opts}"
            med = statistics.median
            rows.append((label, nfe, med(ratios_wall), med(ratios_cpu), med(ratios_replay), med(outside)))
    return statistics.median(bare), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points (a smoke run)")
    ap.add_argument("--parts", default="quality,lof,fit,stochastic,overhead")
    ap.add_argument("--problems", default="ring,gmm16")
    ap.add_argument("--overhead-models", default="exact,mlp", help="exact (cheap score) and/or mlp")
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions of the overhead timing")
    ap.add_argument("--overhead-points", type=int, default=None, help="batch of the overhead timing (a costlier call)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = set(args.parts.split(","))
    steps_list = [5, 10, 20] if args.quick else [5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 35, 40, 50, 100]
    tols = [1e-2, 1e-4] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    OUT.mkdir(parents=True, exist_ok=True)
    problems = [Problem(kind, n=128 if args.quick else 512) for kind in args.problems.split(",")]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "quality" in parts:
        fig, axes = plt.subplots(1, len(problems), figsize=(8 * len(problems), 5), squeeze=False)
        for ax, problem in zip(axes[0], problems, strict=True):
            curves = sweep(problem, steps_list, tols)
            print_quality(problem, curves, steps_list)
            for label, pts in curves.items():
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, ms=3)
            ax.axhline(1e-2, color="k", lw=0.5, ls="--")
            ax.axhline(1e-3, color="k", lw=0.5, ls=":")
            ax.set(xlabel="NFE", ylabel="trimmed RMSE / data std", title=f"VP, {problem.kind}: error vs NFE")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(OUT / "samplers_quality.png", dpi=110)
        print(f"\nwrote {OUT / 'samplers_quality.png'}")
    if "lof" in parts:
        for problem in problems:
            lower_order_final_table(problem, [5, 6, 8, 10, 15, 20, 30] if not args.quick else [5, 10])
    if "fit" in parts:
        for problem in problems:
            fit_table(problem, [5, 6, 8, 10] if not args.quick else [5])
    if "stochastic" in parts:
        rows, null = quality_stochastic(500 if args.quick else 2000, [10, 20, 50, 100, 200, 500])
        print(f"\n### Stochastic samplers, VP, 8 Gaussians: sliced W2 to data (null level {null:.3f})\n")
        print("| sampler | " + " | ".join(f"pt {i}" for i in range(6)) + " |")
        print("|---|" + "---|" * 6)
        for label, pts in rows.items():
            print(f"| {label} | " + " | ".join(f"{nfe}: {sw:.3f}" for nfe, sw in pts) + " |")
    if "overhead" in parts:
        models = {"exact": "exact mixture score", "mlp": "MLP 0.5 M parameters"}
        for kind in args.overhead_models.split(","):
            bare, rows = overhead(kind, reps=args.reps, points=args.overhead_points)
            batch = args.overhead_points or (4096 if kind == "mlp" else 512)
            print(f"\n### Loop overhead, CPU, 1 thread, {models[kind]}, batch {batch} (bare call {bare:.3f} ms): "
                  f"sampler time / (NFE bare calls), median of {args.reps}\n")  # fmt: skip
            print("| sampler | NFE | wall ratio | CPU-time ratio | wall ratio, own calls replayed | outside the model "
                  "per NFE (us) |")  # fmt: skip
            print("|---|---|---|---|---|---|")
            for label, nfe, wall, cpu, replay, outside in rows:
                print(f"| {label} | {nfe} | {wall:.3f} | {cpu:.3f} | {replay:.3f} | {outside:.0f} |")


if __name__ == "__main__":
    main()
