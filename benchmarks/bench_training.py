"""Training recipes side by side: sample quality under the fast deterministic samplers and the learned score's error.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--part 2d digits] [--recipes ...] [--steps 3000]

Each recipe is a set of ``train.py`` overrides on top of the defaults (the run is composed from conf/train.yaml
exactly as the command line does, and trained with ``trainer.num_threads=1``):

* 2-D: ``model=mlp`` on a ``.npz`` of 20,000 exact draws of a Gaussian mixture (``eight_gaussians_mixture``, std
  2.0, and ``random_mixture(2, 5, seed=3, spread=3)``), ``--steps`` steps (3000). Samples (n = 4000, one seed) from
  ``ode`` (dopri5, rtol = atol = 1e-5), ``heun`` (EDM grid), ``dpm_solver`` (20 steps) and ``euler_maruyama``
  (500 steps on the EDM grid, the control) are scored against the exact mixture: sliced W2 (256 directions)
  against 4000 fresh exact draws, as a multiple of the two-sample floor (mean over 5 pairs of exact samples), and
  the mean log-density of the samples minus the exact ``E log p`` (200,000 draws). The learned EMA model's
  relative score error ``sqrt(E|s - s*|^2 / E|s*|^2)`` under ``p_t`` at 24 noise levels ``s = sigma / alpha``
  goes to a plot.
* digits: the main job (``python train.py trainer=digits`` + the recipe's overrides, its 2800 steps unless
  ``--digits-steps``); 359 samples per sampler scored by the digits Fréchet distance to the test split, mean and sd over
  ``--digits-seeds`` (5) independent draws of the 359 samples (one draw's value scatters by a standard deviation
  of 3-7 at this size); the same statistic for 359 random real training images is the floor.

Equal steps are equal wall time here: the recipes differ only in a few per-sample coefficients; the table prints
each run's measured training time. Prints markdown tables; writes benchmarks/results/training_score_error.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"

from scoresde import load_model  # noqa: E402
from scoresde.data import GaussianMixture, random_mixture  # noqa: E402
from scoresde.data.toy import eight_gaussians_mixture  # noqa: E402
from scoresde.metrics import sliced_wasserstein  # noqa: E402
from scoresde.sampling import get_sampler  # noqa: E402

RECIPES: dict[str, list[str]] = {
    "default": [],
    "reference VP DSM": ["sde=vp", "model.parameterization=eps", "model.time_input=t", "loss.name=dsm"],
    "EDM": ["sde=edm", "model.parameterization=edm", "model.time_input=edm", "loss.name=edm"],
    "EDM precond on VP": ["sde=vp", "model.parameterization=edm", "loss.name=edm"],
    "v-prediction (VP)": [
        "sde=vp",
        "model.parameterization=v",
        "model.time_input=t",
        "loss.name=dsm",
        "loss.weighting=edm",  # (1 + s^2) |eps - eps_hat|^2 = |v - v_hat|^2 on VP: the v-loss
        "model.sigma_data=1.0",
    ],
}
SAMPLERS_2D = {
    "ode": ("ode", {}),
    "heun": ("heun", {}),
    "dpm_solver": ("dpm_solver", {"steps": 20}),
    "euler_maruyama": ("euler_maruyama", {"steps": 500, "grid": "edm"}),
}
SAMPLERS_DIGITS = {
    "dpm_solver": ("dpm_solver", {"steps": 20}),
    "heun": ("heun", {}),
    "ode": ("ode", {"rtol": 1e-3, "atol": 1e-3}),
    "euler_maruyama": ("euler_maruyama", {"steps": 500}),
}


def mixtures() -> dict[str, GaussianMixture]:
    return {"8 Gaussians": eight_gaussians_mixture(), "random mixture": random_mixture(2, 5, seed=3, spread=3.0)}


# ------------------------------------------------------------------------------------------------------ training
@contextlib.contextmanager
def workdir(keep: str | None):
    """A temporary folder, or (``--keep DIR``) a new folder under DIR that stays for inspection."""
    if keep is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield tmp
    else:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield tempfile.mkdtemp(dir=keep)


def train_run(overrides: list[str], run_dir: Path) -> tuple[object, object, float]:
    """Train with ``train.py``'s composition and return ``(EMA score model, sde, seconds)``."""
    from hydra import compose, initialize_config_dir

    import train as script

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=[*overrides, "trainer.num_threads=1", "trainer.progress=false"])
    t0 = time.perf_counter()
    script.train(cfg, run_dir)
    seconds = time.perf_counter() - t0
    loaded = load_model(run_dir)
    return loaded.model, loaded.sde, seconds


def final_time(sde) -> float:
    return float(getattr(sde, "eps", 1e-3))


def sample(model, sde, name: str, options: dict, shape, seed: int = 1):
    opts = dict(options, eps=final_time(sde))
    sampler = get_sampler(name, **opts)
    torch.set_num_threads(1)
    with torch.no_grad():
        res = sampler(sde, model, shape, generator=torch.Generator().manual_seed(seed))
    return res.samples.double(), res.nfe


# ------------------------------------------------------------------------------------------------------ 2-D
def floor_and_entropy(mix: GaussianMixture, n: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(100)
    pairs = [sliced_wasserstein(mix.sample(n, generator=g), mix.sample(n, generator=g)) for _ in range(5)]
    big = mix.sample(200_000, generator=g)
    return float(np.mean(pairs)), float(mix.log_prob(big).mean())


@torch.no_grad()
def score_error_curve(model, sde, mix: GaussianMixture, levels: np.ndarray, n: int = 4000) -> list[float]:
    """Relative score error under p_t at noise levels s = sigma / alpha (times from the SDE's inverse lambda)."""
    errs = []
    g = torch.Generator().manual_seed(7)
    for s in levels:
        t = float(sde.inverse_lambda(torch.tensor([-math.log(s)], dtype=torch.float64)))
        x = mix.sample_marginal(n, t, sde, generator=g, dtype=torch.float64).float()
        tt = torch.full((n,), t)
        exact = mix.score(x.double(), tt.double(), sde)
        got = model(x, tt).double()
        errs.append(float(((got - exact).square().sum(1).mean() / exact.square().sum(1).mean()).sqrt()))
    return errs


def run_2d(args, recipes: list[str]) -> dict:
    results = {}
    levels = np.exp(np.linspace(math.log(2e-3), math.log(80.0), 24))
    with workdir(args.keep) as tmp:
        for mname, mix in mixtures().items():
            if args.mixtures and mname not in args.mixtures:
                continue
            data = mix.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
            path = Path(tmp) / f"{mname.replace(' ', '_')}.npz"
            np.savez(path, x=data.numpy())
            floor, ent = floor_and_entropy(mix, args.n)
            g = torch.Generator().manual_seed(11)
            ref = mix.sample(args.n, generator=g)
            print(f"\n{mname}: data std {float(data.std()):.3f}, sliced-W2 floor {floor:.4f}, E log p {ent:.4f}")
            for recipe in recipes:
                over = ["model=mlp", "data=npz", f"data.path={path}", f"trainer.steps={args.steps}"]
                over += ["trainer.sample_n=0", *RECIPES[recipe], *args.extra]
                run = Path(tmp) / f"{mname}-{recipe}".replace(" ", "_")
                model, sde, secs = train_run(over, run)
                row = {"train_s": secs, "samplers": {}, "sigma_data": model.sigma_data}
                for sname, (sampler, opts) in SAMPLERS_2D.items():
                    if args.samplers and sname not in args.samplers:
                        continue
                    x, nfe = sample(model, sde, sampler, opts, (args.n, 2))
                    ok = torch.isfinite(x).all(1)
                    sw = sliced_wasserstein(x[ok], ref) / floor
                    bias = float(mix.log_prob(x[ok]).mean()) - ent
                    row["samplers"][sname] = {"nfe": nfe, "sw2_x_floor": sw, "logp_bias": bias}
                    print(f"  {recipe:22s} {sname:15s} NFE {nfe:4d}  SW2 {sw:6.2f}x floor  logp bias {bias:+.3f}")
                row["score_error"] = score_error_curve(model, sde, mix, levels)
                results[f"{mname}|{recipe}"] = row
    results["levels"] = levels.tolist()
    return results


# ------------------------------------------------------------------------------------------------------ digits
def real_data_floor(n: int, seeds: int) -> tuple[float, float]:
    """Fréchet distance of ``n`` random training images to the test split: mean and sd over ``seeds`` draws."""
    from scoresde.data.digits import digits_split
    from scoresde.digits_metrics import frechet_digits_distance

    train = digits_split().train_images.float()
    g = torch.Generator().manual_seed(0)
    fds = [frechet_digits_distance(train[torch.randperm(len(train), generator=g)[:n]]) for _ in range(seeds)]
    return float(np.mean(fds)), float(np.std(fds, ddof=1)) if seeds > 1 else 0.0


def run_digits(args, recipes: list[str]) -> dict:
    from scoresde.data import from_model_range
    from scoresde.digits_metrics import frechet_digits_distance

    floor = real_data_floor(args.digits_n, max(args.digits_seeds, 2))
    print(f"  digits real training images vs test, n = {args.digits_n}: Fréchet {floor[0]:.2f} (sd {floor[1]:.2f})")
    results = {"real data": {"frechet": floor[0], "sd": floor[1]}}
    with workdir(args.keep) as tmp:
        for recipe in recipes:
            steps = [] if args.digits_steps is None else [f"trainer.steps={args.digits_steps}"]
            over = ["trainer=digits", *steps, "trainer.sample_n=0", *RECIPES[recipe], *args.extra]
            model, sde, secs = train_run(over, Path(tmp) / recipe.replace(" ", "_"))
            row = {"train_s": secs, "samplers": {}, "sigma_data": model.sigma_data}
            for sname, (sampler, opts) in SAMPLERS_DIGITS.items():
                if args.samplers and sname not in args.samplers:
                    continue
                fds = []
                for seed in range(1, args.digits_seeds + 1):
                    x, nfe = sample(model, sde, sampler, opts, (args.digits_n, *model.data_shape), seed=seed)
                    fds.append(frechet_digits_distance(from_model_range(x.float(), True)))
                fd, sd = float(np.mean(fds)), float(np.std(fds, ddof=1)) if len(fds) > 1 else 0.0
                row["samplers"][sname] = {"nfe": nfe, "frechet": fd, "sd": sd, "draws": fds}
                print(f"  digits {recipe:22s} {sname:15s} NFE {nfe:4d}  Fréchet {fd:6.2f} (sd {sd:.2f} over "
                      f"{len(fds)} draws)  ({secs:.0f} s training)")  # fmt: skip
            results[recipe] = row
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    names = sorted({k.split("|")[0] for k in results if "|" in k})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, mname in zip(axes[0], names, strict=True):
        for key, row in results.items():
            if key.startswith(mname + "|"):
                ax.loglog(levels, row["score_error"], marker=".", label=key.split("|")[1])
        ax.set_xlabel("noise level sigma / alpha")
        ax.set_ylabel("relative score error (EMA model)")
        ax.set_title(mname)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def print_tables(res2d: dict, resdig: dict) -> None:
    if res2d:
        print("\n| data | recipe | train s | " + " | ".join(SAMPLERS_2D) + " |")
        print("|---|---|---|" + "---|" * len(SAMPLERS_2D))
        for key, row in res2d.items():
            if "|" not in key:
                continue
            cells = [f"{v['sw2_x_floor']:.2f}x / {v['logp_bias']:+.3f}" for v in row["samplers"].values()]
            print(f"| {key.replace('|', ' | ')} | {row['train_s']:.0f} | " + " | ".join(cells) + " |")
    if resdig:
        rows = {k: v for k, v in resdig.items() if "samplers" in v}
        names = list(next(iter(rows.values()))["samplers"]) if rows else []
        print("\n| digits recipe | train s | " + " | ".join(f"{k} (NFE)" for k in names) + " |")
        print("|---|---|" + "---|" * len(names))
        for recipe, row in rows.items():
            cells = [f"{v['frechet']:.1f} ± {v['sd']:.1f} ({v['nfe']})" for v in row["samplers"].values()]
            print(f"| {recipe} | {row['train_s']:.0f} | " + " | ".join(cells) + " |")
        real = resdig["real data"]
        print(f"| real training images | - | {real['frechet']:.1f} ± {real['sd']:.1f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", default=["2d", "digits"], choices=["2d", "digits"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--mixtures", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=3000, help="2-D training steps")
    ap.add_argument("--digits-steps", type=int, default=None, help="digits training steps (default: the main job's)")
    ap.add_argument("--n", type=int, default=4000, help="2-D samples per sampler")
    ap.add_argument("--digits-n", type=int, default=359)
    ap.add_argument("--digits-seeds", type=int, default=5, help="sample draws per digits cell (mean and sd)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    ap.add_argument("--samplers", nargs="*", default=None, help="only these samplers (default: all)")
    ap.add_argument("--keep", default=None, help="keep the runs in a new folder under this directory")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    res2d = run_2d(args, args.recipes) if "2d" in args.part else {}
    resdig = run_digits(args, args.recipes) if "digits" in args.part else {}
    print_tables(res2d, resdig)
    if res2d:
        plot(res2d, OUT / "training_score_error.png")
        print(f"\nwrote {OUT / 'training_score_error.png'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"2d": res2d, "digits": resdig}, indent=1))


if __name__ == "__main__":
    main()
