"""Likelihood accuracy and cost on analytic Gaussian mixtures: torchdiffeq solvers vs SciPy RK45, exact vs Hutchinson.

With the exact mixture score the probability-flow ODE's log-likelihood has a closed form,
``log p_eps(x) + log prior(z) - log p_T(z)`` (``z`` from a float64 solve at rtol = atol = 1e-10), so every solver
and tolerance is scored by its mean absolute error in nats, its number of score evaluations (NFE) and wall time.

* torchdiffeq (``scoresde.likelihood.log_likelihood``): dopri5 and bosh3 at each tolerance, rk4 at fixed step counts.
* SciPy ``solve_ivp(method="RK45")`` on the same vector field (``ProbabilityFlowDivergence``) with a numpy round trip
  per evaluation, as the reference code does (there: GPU -> CPU -> GPU). Both Dormand–Prince 5(4); the time ratio is
  reported at equal accuracy (SciPy's time interpolated, log-log, at dopri5's error).
* Hutchinson (Gaussian, Rademacher) vs exact divergence: spread of the estimate per sample, bias, and cost.
* The ODE's coordinates (``time_variable``): each adaptive method in ``t`` (the reference's and our former default),
  in ``angle`` (the default: ``atan(sigma / alpha)`` with the state ``x / sqrt(alpha^2 + sigma^2)``) and dopri5 in
  ``lambda = log(alpha / sigma)`` (state ``x / alpha``): the NFE ratio to dopri5 in ``t`` at equal accuracy
  (interpolated log-log in the error). Plain method names in the tables are in ``t``.

Everything in float64 with the exact divergence unless stated. Prints markdown tables and writes PNG plots into
``benchmarks/results/``::

    python benchmarks/bench_likelihood.py                 # default: VP and VE, D = 2 and 16 (~2 min on 2 CPU cores)
    python benchmarks/bench_likelihood.py --sdes vp,subvp,ve                   # + sub-VP (~3.5 min)
    python benchmarks/bench_likelihood.py --sdes vp,subvp,ve --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from scoresde.data import random_mixture
from scoresde.likelihood import ProbabilityFlowDivergence, draw_probe, log_likelihood
from scoresde.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vp_cosine": CosineVPSDE, "edm": EDMSDE}
EPS = 1e-5
F64 = torch.float64


@dataclass
class Row:
    sde: str
    dim: int
    solver: str
    setting: str  # tolerance or number of steps
    error: float  # mean |logp - exact| in nats
    nfe: int
    seconds: float


def scipy_rk45(sde, score_fn, x, rtol, atol, divergence="exact", generator=None):
    """The reference's path: SciPy RK45 on the joint state, a numpy round trip per evaluation."""
    probe = draw_probe(divergence, x.shape, generator, device=x.device, dtype=x.dtype)
    field = ProbabilityFlowDivergence(sde, score_fn, x.shape, EPS, divergence, x.dtype, probe)
    b, d = x.shape[0], x[0].numel()

    def fun(t, y):
        state = torch.from_numpy(y).to(x.device, x.dtype).reshape(b, d + 1)
        dx, ddiv = field.evaluate(t, state[:, :d])
        return torch.cat([dx, ddiv[:, None]], dim=1).cpu().numpy().reshape(-1)

    y0 = torch.cat([x.reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], 1).cpu().numpy()
    sol = solve_ivp(fun, (EPS, sde.T), y0.reshape(-1), rtol=rtol, atol=atol, method="RK45")
    end = torch.from_numpy(sol.y[:, -1]).to(x.device).reshape(b, d + 1)
    z = end[:, :d].reshape(x.shape)
    return sde.prior_logp(z) + end[:, d], field.nfe


def reference_logp(mix, sde, x):
    """``log p_eps(x) + log prior(z) - log p_T(z)`` with ``z`` from a tight solve."""
    ref = log_likelihood(sde, mix.score_fn(sde), x, eps=EPS, rtol=1e-10, atol=1e-10, divergence="exact")
    return mix.log_prob(x, EPS, sde) + sde.prior_logp(ref.z) - mix.log_prob(ref.z, sde.T, sde)


REPEATS = 1


def timed(fn, repeats: int | None = None):
    """Result of ``fn()`` and its best wall time over ``repeats`` runs (the machine may be shared)."""
    best = math.inf
    for _ in range(repeats or REPEATS):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def accuracy_rows(name, dim, args, device) -> list[Row]:
    sde = SDES[name]()
    mix = random_mixture(dim, n_components=4, seed=dim)
    x = mix.sample(args.batch, torch.Generator().manual_seed(0)).to(device)
    score = mix.score_fn(sde)
    exact = reference_logp(mix, sde, x)
    rows = []

    def err(logp):
        return float((logp - exact).abs().mean())

    for method in args.methods:
        for variable in args.time_variables:
            if variable == "lambda" and method != "dopri5":
                continue
            label = method if variable == "t" else f"{method} ({variable})"
            for tol in args.tols:
                if method == "bosh3" and tol < args.bosh3_min_tol:
                    continue
                res, sec = timed(
                    lambda: log_likelihood(sde, score, x, EPS, tol, tol, method, "exact", time_variable=variable)  # noqa: B023
                )
                rows.append(Row(name, dim, label, f"{tol:.0e}", err(res.logp), res.nfe, sec))
    for steps in args.rk4_steps:
        opts = {"step_size": (sde.T - EPS) / steps}
        kw = dict(method="rk4", divergence="exact", options=opts, time_variable="t")  # step sizes in t
        res, sec = timed(lambda: log_likelihood(sde, score, x, EPS, **kw))  # noqa: B023
        rows.append(Row(name, dim, "rk4", f"{steps} steps", err(res.logp), res.nfe, sec))
    for tol in args.tols:
        (logp, nfe), sec = timed(lambda: scipy_rk45(sde, score, x, tol, tol))  # noqa: B023
        rows.append(Row(name, dim, "scipy_RK45", f"{tol:.0e}", err(logp), nfe, sec))
    return rows


def speedup_at_equal_accuracy(rows: list[Row]) -> list[tuple[str, float, float, float]]:
    """For each dopri5 point: SciPy RK45's time interpolated (log-log in error) at the same error, and the ratio."""
    out = []
    ours = [r for r in rows if r.solver == "dopri5"]
    ref = sorted((r for r in rows if r.solver == "scipy_RK45"), key=lambda r: r.error)
    if len(ref) < 2:
        return out
    le = np.log([r.error for r in ref])
    lt = np.log([r.seconds for r in ref])
    for r in ours:
        e = math.log(r.error)
        if le[0] <= e <= le[-1]:
            t_ref = math.exp(float(np.interp(e, le, lt)))
            out.append((r.setting, r.error, t_ref, t_ref / r.seconds))
    return out


def nfe_ratio_at_equal_accuracy(rows: list[Row], solver: str, baseline: str = "dopri5") -> list[tuple[float, float]]:
    """For each point of ``solver``: (its error, its NFE / the baseline's NFE interpolated log-log at that error)."""
    ref = sorted((r for r in rows if r.solver == baseline), key=lambda r: r.error)
    le, ln = np.log([r.error for r in ref]), np.log([r.nfe for r in ref])
    out = []
    for r in rows:
        if r.solver == solver and le[0] <= math.log(r.error) <= le[-1]:
            out.append((r.error, r.nfe / math.exp(float(np.interp(math.log(r.error), le, ln)))))
    return out


def hutchinson_rows(name, dim, args, device, variable: str) -> list[dict]:
    """Per-sample spread of the Hutchinson estimate over ``args.probes`` independent probes, and its bias, in the
    coordinates ``variable`` (the probe lives in the state's space: ``x`` in ``t``, ``x / m`` in ``angle``)."""
    sde = SDES[name]()
    mix = random_mixture(dim, n_components=4, seed=dim)
    x = mix.sample(args.hutch_batch, torch.Generator().manual_seed(1)).to(device)
    score = mix.score_fn(sde)
    tol = args.hutch_tol
    kw = dict(time_variable=variable)
    exact, sec_exact = timed(lambda: log_likelihood(sde, score, x, EPS, tol, tol, divergence="exact", **kw))
    out = [dict(sde=name, dim=dim, variable=variable, divergence="exact", std=0.0, bias=0.0, stderr=0.0,
                nfe=exact.nfe, sec=sec_exact)]  # fmt: skip
    for div in ("hutchinson_gaussian", "hutchinson_rademacher"):
        ests, secs, nfes = [], [], []
        for k in range(args.probes):
            gen = torch.Generator().manual_seed(100 + k)
            res, sec = timed(
                lambda: log_likelihood(sde, score, x, EPS, tol, tol, divergence=div, generator=gen, **kw),  # noqa: B023
                repeats=1,
            )
            ests.append(res.logp)
            secs.append(sec)
            nfes.append(res.nfe)
        errs = torch.stack(ests) - exact.logp  # (probes, B)
        n = errs.numel()
        out.append(
            dict(
                sde=name,
                dim=dim,
                variable=variable,
                divergence=div,
                std=float(errs.std(dim=0).mean()),
                bias=float(errs.mean()),
                stderr=float(errs.std() / math.sqrt(n)),
                nfe=int(np.mean(nfes)),
                sec=float(np.mean(secs)),
            )
        )
    return out


def print_tables(rows, speed, hutch, args):
    print(f"\n## Accuracy and cost (batch {args.batch}, float64, exact divergence, eps = {EPS:g}, best of {REPEATS})\n")
    print("| SDE | D | solver | tol / steps | mean abs error (nats) | NFE | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.sde} | {r.dim} | {r.solver} | {r.setting} | {r.error:.2e} | {r.nfe} | {r.seconds:.3f} |")
    print("\n## torchdiffeq dopri5 vs SciPy RK45 at equal accuracy\n")
    print("| SDE | D | dopri5 tol | error (nats) | dopri5 (s) | SciPy RK45 at same error (s) | SciPy / ours |")
    print("|---|---|---|---|---|---|---|")
    for (name, dim), items in speed.items():
        ours = {r.setting: r.seconds for r in rows if (r.sde, r.dim, r.solver) == (name, dim, "dopri5")}
        for setting, error, t_ref, ratio in items:
            print(f"| {name} | {dim} | {setting} | {error:.2e} | {ours[setting]:.3f} | {t_ref:.3f} | {ratio:.2f}x |")
    ratios = [item[3] for items in speed.values() for item in items]
    if ratios:
        print(f"\nmedian SciPy / ours at equal accuracy: {np.median(ratios):.2f}x over {len(ratios)} points")
    print("\n## Coordinates: NFE / NFE of dopri5 in t at equal accuracy (log-log interpolation)\n")
    print("| SDE | D | solver | error (nats) | NFE ratio |")
    print("|---|---|---|---|---|")
    for name, dim in sorted({(r.sde, r.dim) for r in rows}):
        sel = [r for r in rows if (r.sde, r.dim) == (name, dim)]
        for solver in sorted({r.solver for r in sel if "(" in r.solver or r.solver == "dopri8"}):
            for error, ratio in nfe_ratio_at_equal_accuracy(sel, solver):
                print(f"| {name} | {dim} | {solver} | {error:.2e} | {ratio:.2f} |")
    setting = f"batch {args.hutch_batch}, {args.probes} probes, tol {args.hutch_tol:g}"
    print(f"\n## Hutchinson vs exact divergence ({setting})\n")
    print("| SDE | D | coordinates | divergence | per-sample std (nats) | mean error ± s.e. (nats) | NFE | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for h in hutch:
        print(
            f"| {h['sde']} | {h['dim']} | {h['variable']} | {h['divergence']} | {h['std']:.3f} "
            f"| {h['bias']:+.4f} ± {h['stderr']:.4f} | {h['nfe']} | {h['sec']:.3f} |"
        )


def plot(rows, configs, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(configs), 2, figsize=(10, 3.2 * len(configs)), squeeze=False)
    styles = {"dopri5": "o-", "dopri5 (angle)": "v-", "dopri5 (lambda)": "d-", "bosh3": "s-", "rk4": "^-"}
    styles["scipy_RK45"] = "x--"
    for i, (name, dim) in enumerate(configs):
        for solver, style in styles.items():
            sel = [r for r in rows if (r.sde, r.dim, r.solver) == (name, dim, solver)]
            if not sel:
                continue
            err = [max(r.error, 1e-12) for r in sel]
            axes[i, 0].loglog([r.nfe for r in sel], err, style, label=solver)
            axes[i, 1].loglog([r.seconds for r in sel], err, style, label=solver)
        axes[i, 0].set_ylabel(f"{name}, D={dim}\nmean |logp error| (nats)")
        axes[i, 0].set_xlabel("NFE")
        axes[i, 1].set_xlabel("wall time (s)")
        axes[i, 0].legend(fontsize=8)
    fig.suptitle("Probability-flow ODE log-likelihood on Gaussian mixtures (exact divergence, float64)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sdes", default="vp,ve", help="comma-separated from " + ",".join(SDES))
    p.add_argument("--dims", default="2,16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timing: best of this many runs")
    p.add_argument("--tols", default="1e-3,1e-4,1e-5,1e-6,1e-7")
    p.add_argument("--methods", default="dopri5,bosh3", help="adaptive torchdiffeq methods")
    p.add_argument("--time-variables", default="t,angle,lambda", help="coordinates (lambda: dopri5 only)")
    p.add_argument("--bosh3-min-tol", type=float, default=1e-6, help="skip bosh3 below this tolerance (slow)")
    p.add_argument("--rk4-steps", default="10,30,100")
    p.add_argument("--hutch-batch", type=int, default=64)
    p.add_argument("--probes", type=int, default=8, help="independent Hutchinson probes per sample")
    p.add_argument("--hutch-tol", type=float, default=1e-5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small tensors: 1 is fastest)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    args.tols = [float(v) for v in args.tols.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    args.time_variables = [v for v in args.time_variables.split(",") if v]
    if "t" not in args.time_variables:
        raise SystemExit("--time-variables must include t: the ratios are to dopri5 in t")
    args.rk4_steps = [int(v) for v in args.rk4_steps.split(",") if v]
    torch.set_num_threads(args.threads)
    global REPEATS
    REPEATS = args.repeats
    device = torch.device(args.device)
    configs = [(name, int(d)) for name in args.sdes.split(",") for d in args.dims.split(",")]
    for name, _ in configs:
        if name not in SDES:
            raise SystemExit(f"unknown SDE '{name}'; choose from {', '.join(SDES)}")

    start = time.perf_counter()
    log_likelihood(VPSDE(), random_mixture(2, 2).score_fn(VPSDE()), torch.zeros(2, 2, dtype=F64))  # warm-up
    rows, speed, hutch = [], {}, []
    for name, dim in configs:
        new = accuracy_rows(name, dim, args, device)
        rows += new
        speed[(name, dim)] = speedup_at_equal_accuracy(new)
        hutch += [h for v in args.time_variables if v != "lambda" for h in hutchinson_rows(name, dim, args, device, v)]
    print_tables(rows, speed, hutch, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, configs, out / "likelihood_accuracy.png")
    print(f"\nplot: {out / 'likelihood_accuracy.png'}; total {time.perf_counter() - start:.0f} s on {device}")


if __name__ == "__main__":
    main()
