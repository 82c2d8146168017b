"""Samplers on exact problems: distribution, NFE, robustness, reproducibility, shapes, configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scoresde.data import GaussianMixture, eight_gaussians_mixture, random_mixture
from scoresde.metrics import sliced_wasserstein
from scoresde.sampling import SAMPLERS, get_sampler, sampler_from_config
from scoresde.sampling.base import CountingScore
from scoresde.sampling.predictors import ancestral
from scoresde.sde import VESDE, VPSDE

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
REQUIRED = ["euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode", "ode_scipy", "sdeint", "pndm"]
ALL = sorted(SAMPLERS)
N = 2000  # samples per distribution test


def test_registry_and_errors():
    for name in REQUIRED + ["ddim", "heun", "dpm_solver", "unipc"]:
        assert name in SAMPLERS
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        get_sampler("nope")
    with pytest.raises(ValueError, match=r"no option\(s\) \['corrector'\]"):
        get_sampler("euler_maruyama", corrector="langevin")
    with pytest.raises(ValueError, match="predictor"):
        get_sampler("pc", predictor="heun")
    with pytest.raises(ValueError, match="corrector"):
        get_sampler("pc", corrector="hmc")
    with pytest.raises(ValueError, match="torchdiffeq method"):
        get_sampler("ode", method="rk45")
    with pytest.raises(ValueError, match="time grid"):
        get_sampler("ddim", grid="cosine")(VPSDE(), lambda x, t: -x, (2, 2))
    with pytest.raises(ValueError, match="x_init"):
        get_sampler("ddim")(VPSDE(), lambda x, t: -x, (2, 2), x_init=torch.zeros(3, 2))


@pytest.fixture(scope="module")
def ring():
    """The 8-Gaussians mixture, its null two-sample level at N samples, and a reference sample."""
    mix = eight_gaussians_mixture()
    null = [
        sliced_wasserstein(
            mix.sample(N, torch.Generator().manual_seed(100 + k)), mix.sample(N, torch.Generator().manual_seed(200 + k))
        )
        for k in range(10)
    ]
    return mix, float(np.mean(null)), float(np.std(null)), mix.sample(N, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ALL)
def test_default_settings_match_data(sde, name, ring):
    """Every sampler at its defaults, exact score, N = 2000 samples of the 8-Gaussians ring:

    * sliced Wasserstein to a data sample below the null level (same statistic between two data samples,
      10 replicates) + 4 null standard deviations;
    * mode weights (1/8 each) within 5 binomial standard errors sqrt(p (1 - p) / N) = 0.037;
    * within-mode variance (pooled over the modes, per coordinate) within 5 standard errors sqrt(2 / n) of the
      true variance plus 5% for the eps = 1e-3 / discretization bias; each mode's alone within 5 sqrt(2 / n_k) + 5%.
    """
    mix, null_mean, null_sd, ref = ring
    res = get_sampler(name)(sde, mix.score_fn(sde), (N, 2), generator=torch.Generator().manual_seed(0))
    x = res.samples.double()
    assert torch.isfinite(x).all()
    assert sliced_wasserstein(x, ref) < null_mean + 4 * null_sd
    labels = mix.responsibilities(x).argmax(1)
    freq = torch.bincount(labels, minlength=8).double() / N
    assert (freq - 1 / 8).abs().max() < 5 * math.sqrt(1 / 8 * 7 / 8 / N)
    var_true = float(mix.covs[0, 0, 0])
    resid = x - mix.means[labels]
    pooled = float((resid**2).mean())
    assert pooled == pytest.approx(var_true, rel=5 * math.sqrt(2 / (2 * N)) + 0.05)
    for k in range(8):
        rk = resid[labels == k]
        var = float((rk**2).mean())
        assert var == pytest.approx(var_true, rel=5 * math.sqrt(2 / (2 * len(rk))) + 0.05), (k, var, var_true)


def _options_for_nfe():
    return [
        ("euler_maruyama", {"steps": 7}),
        ("euler_maruyama", {"steps": 7, "denoise": False, "probability_flow": True}),
        ("reverse_diffusion", {"steps": 7}),
        ("ancestral", {"steps": 7, "denoise": False}),
        ("pc", {"steps": 5, "n_steps": 3, "predictor": "ancestral", "corrector": "langevin"}),
        ("pc", {"steps": 5, "predictor": "none", "corrector": "annealed_langevin", "n_steps": 2}),
        ("pc", {"steps": 5, "corrector": "none"}),
        ("ode", {}),
        ("ode", {"method": "rk4", "steps": 6}),
        ("ode", {"method": "bosh3", "rtol": 1e-3, "atol": 1e-3, "denoise": False}),
        ("ode_scipy", {}),
        ("sdeint", {"steps": 9}),
        ("sdeint", {"steps": 9, "method": "srk"}),
        ("pndm", {"steps": 8}),
        ("pndm", {"steps": 8, "variant": "s", "denoise": False}),
        ("ddim", {"steps": 8, "eta": 0.5}),
        ("heun", {"steps": 6, "s_churn": 2.0}),
        ("dpm_solver", {"steps": 6, "order": 3}),
        ("dpm_solver", {"steps": 6, "order": 1, "algorithm": "dpmsolver", "denoise": False}),
        ("unipc", {"steps": 6}),
        ("unipc", {"steps": 6, "order": 2, "variant": "bh1", "prediction": "noise", "unic": False}),
        ("ode", {"method": "euler", "grid": [1.0, 0.5, 0.1, 1e-3]}),
    ]


@pytest.mark.parametrize("name,options", _options_for_nfe())
def test_nfe_is_exact(name, options):
    """The reported NFE equals the calls an independent wrapper counts (each call on the whole batch)."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    calls = []

    def score_fn(x, t):
        assert x.shape[0] == 16 and t.shape == (16,)
        calls.append(1)
        return mix.score(x, t, sde)

    res = get_sampler(name, **options)(sde, score_fn, (16, 2), generator=torch.Generator().manual_seed(0))
    assert res.nfe == len(calls) > 0


def test_nfe_formulas_for_fixed_step_samplers():
    """The counted NFE agrees with the algorithms' costs (steps, corrector steps, warm starts, denoising)."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    run = lambda name, **o: get_sampler(name, **o)(sde, mix.score_fn(sde), (4, 2)).nfe  # noqa: E731
    assert run("euler_maruyama", steps=10) == 11
    assert run("pc", steps=10, predictor="reverse_diffusion", corrector="langevin", n_steps=2) == 10 * 3 + 1
    assert run("pc", steps=10, corrector="none", denoise=False) == 10  # reference reports N * (n_steps + 1)
    assert run("pndm", steps=10, denoise=False) == 3 * 4 + 7
    assert run("pndm", steps=10, variant="s", denoise=False) == 2 + 9
    assert run("heun", steps=10) == 2 * 10 + 1
    assert run("dpm_solver", steps=10, order=3) == 11
    assert run("unipc", steps=10, order=3) == 11  # UniC reuses the next step's call; none after the last step
    assert run("unipc", steps=10, unic=False, denoise=False) == 10
    assert run("ddim", steps=10, denoise=False) == 10
    assert run("sdeint", steps=10) == 11
    # PNDM's pseudo Runge-Kutta warm-up (4 calls a step) takes the first min(steps, 3) steps
    assert [run("pndm", steps=k, denoise=False) for k in (1, 2, 3, 4)] == [4, 8, 12, 13]


@pytest.mark.parametrize("grid", ["quadratic", "edm", "logsnr", "logistic"])
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_sdeint_takes_one_step_per_interval_of_any_grid(grid, method):
    """One score call per grid interval on non-uniform grids too: the solver's step is the longest interval in
    float64 (in float32 it rounded below it on half the grids, adding a ~1e-8 step and a call)."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    for steps in (3, 6, 10, 20):
        sampler = get_sampler("sdeint", steps=steps, grid=grid, method=method, denoise=False)
        assert sampler(sde, mix.score_fn(sde), (2, 2), generator=torch.Generator().manual_seed(0)).nfe == steps


@pytest.mark.parametrize("name", ALL)
def test_ten_steps_finite_on_every_sde(sde, name):
    """At 10 steps every sampler stays finite on every SDE (the reference's VP samplers return NaN there)."""
    options = {} if name in ("ode", "ode_scipy") else {"steps": 10}
    if name in ("ode", "ode_scipy"):
        options = {"rtol": 1e-2, "atol": 1e-2}
    mix = eight_gaussians_mixture()
    res = get_sampler(name, **options)(sde, mix.score_fn(sde), (256, 2), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(res.samples).all()
    assert float(res.samples.std()) < 5  # and not wildly off (the data std is 2)


@pytest.mark.parametrize("name", ALL)
def test_bad_starting_points_and_wrong_shaped_outputs_are_named(name):
    """A NaN or integer ``x_init`` is refused before any model call; a model whose output does not have ``x``'s
    shape (``(B, 1)`` for ``(B, 3)`` would broadcast into wrong samples) at its first call."""
    sde, calls = VPSDE(), []
    sampler = get_sampler(name, **({} if name.startswith("ode") else {"steps": 3}))

    def counted(x, t):
        calls.append(1)
        return -x

    for bad, match in ((torch.full((4, 3), float("nan")), "NaN"), (torch.ones(4, 3, dtype=torch.long), "floating")):
        with pytest.raises(ValueError, match=match):
            sampler(sde, counted, (4, 3), x_init=bad)
    assert not calls
    with pytest.raises(ValueError, match=r"output has shape \(4, 1\), expected x's \(4, 3\)"):
        sampler(sde, lambda x, t: -x[:, :1], (4, 3), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ALL)
def test_same_generator_same_samples(name):
    mix, sde = eight_gaussians_mixture(), VESDE(sigma_max=10)
    sampler = get_sampler(name, **({} if name.startswith("ode") else {"steps": 12}))
    a = sampler(sde, mix.score_fn(sde), (8, 2), generator=torch.Generator().manual_seed(7)).samples
    b = sampler(sde, mix.score_fn(sde), (8, 2), generator=torch.Generator().manual_seed(7)).samples
    assert torch.equal(a, b)


# Adaptive ODE solvers share one step size across the batch, and the reference's Langevin rule averages norms over
# the batch (pc's default corrector on VE): those are excluded from per-sample invariance.
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("ode", "ode_scipy")])
def test_per_sample_generators_make_samples_batch_invariant(name):
    mix, sde = eight_gaussians_mixture(), VPSDE()
    options = {"steps": 12}
    if name == "pc":
        options.update(predictor="ancestral", corrector="annealed_langevin")
    sampler = get_sampler(name, **options)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = sampler(sde, mix.score_fn(sde), (6, 2), generator=gens(range(6))).samples
    part = sampler(sde, mix.score_fn(sde), (2, 2), generator=gens([3, 4])).samples
    torch.testing.assert_close(full[3:5], part, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_image_shaped_problem(name):
    """A 16-D mixture as (B, 1, 4, 4) images: every sampler returns that shape with the right moments.

    N = 1000 samples; overall per-pixel mean within 0.15 (data std ~0.6-1.2, so > 4 standard errors) and total
    variance within 15%.
    """
    mix = random_mixture(16, n_components=3, seed=5, event_shape=(1, 4, 4))
    sde = VPSDE()
    options = {"steps": 100} if name not in ("ode", "ode_scipy", "dpm_solver", "unipc", "heun", "ddim", "pndm") else {}
    res = get_sampler(name, **options)(
        sde, mix.score_fn(sde), (1000, 1, 4, 4), generator=torch.Generator().manual_seed(0)
    )
    x = res.samples.double()
    assert x.shape == (1000, 1, 4, 4) and torch.isfinite(x).all()
    flat = x.reshape(1000, 16)
    assert (flat.mean(0) - mix.mean()).abs().max() < 0.15
    assert float(flat.var(0).sum()) == pytest.approx(float(torch.trace(mix.covariance())), rel=0.15)


def test_x_init_and_device_dtype():
    mix, sde = eight_gaussians_mixture(), VPSDE()
    x_init = torch.randn(5, 2, dtype=torch.float64)
    res = get_sampler("dpm_solver", steps=5)(sde, mix.score_fn(sde), (5, 2), x_init=x_init)
    assert res.samples.dtype == torch.float64
    res = get_sampler("ddim", steps=5, dtype=torch.float64)(sde, mix.score_fn(sde), (5, 2))
    assert res.samples.dtype == torch.float64


def test_ancestral_step_is_ddpm_for_vp_and_smld_for_ve():
    """The general posterior step reduces to DDPM's (x + beta s) / sqrt(1 - beta) and SMLD's x + (s_t^2 - s_s^2) s."""
    x = torch.randn(4, 3, dtype=torch.float64)
    t, s = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.49, dtype=torch.float64)

    def score(x, t):
        return -x

    vp = VPSDE()
    beta = 1 - (vp.marginal_alpha(t) / vp.marginal_alpha(s)) ** 2
    _, mean = ancestral(vp, score, x, t, s)
    torch.testing.assert_close(mean, (x - beta[:, None] * x) / torch.sqrt(1 - beta)[:, None])
    ve = VESDE()
    _, mean = ancestral(ve, score, x, t, s)
    d = ve.marginal_std(t) ** 2 - ve.marginal_std(s) ** 2
    torch.testing.assert_close(mean, x - d[:, None] * x)
    # noise std of the SMLD step: sqrt(s_s^2 (s_t^2 - s_s^2) / s_t^2)
    gen = torch.Generator().manual_seed(0)
    xs, mean = ancestral(
        ve, score, torch.zeros(20000, 1, dtype=torch.float64), t[:1].expand(20000), s[:1].expand(20000), gen
    )
    std = torch.sqrt(ve.marginal_std(s[:1]) ** 2 * d[:1] / ve.marginal_std(t[:1]) ** 2)
    assert float(xs.std()) == pytest.approx(float(std), rel=5 * math.sqrt(0.5 / 20000))


@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin"])
def test_correctors_leave_p_t_invariant(sde, corrector):
    """Langevin MCMC with the exact score of p_t keeps exact p_t samples distributed as p_t (200 steps at fixed t).

    1-D two-component mixture, N = 4000: mean and variance within 5 standard errors + the O(step) bias of
    unadjusted Langevin (10% of the variance).
    """
    mix = GaussianMixture([0.4, 0.6], [[-1.0], [1.5]], [0.2, 0.3])
    t, n = 0.1, 4000
    x = mix.sample_marginal(n, t, sde, generator=torch.Generator().manual_seed(0))
    pt = mix.marginal(sde, t)
    tt = torch.full((n,), t, dtype=torch.float64)
    from scoresde.sampling.correctors import CORRECTORS

    score = mix.score_fn(sde)
    x, _ = CORRECTORS[corrector](sde, score, x, tt, torch.ones(n, dtype=torch.float64), 0.16, 200,
                                 torch.Generator().manual_seed(1))  # fmt: skip
    var = float(pt.covariance()[0, 0])
    assert abs(float(x.mean()) - float(pt.mean()[0])) < 5 * math.sqrt(var / n)
    assert float(x.var()) == pytest.approx(var, rel=0.1 + 5 * math.sqrt(2 / n))


def test_sampler_configs_match_options():
    """Every conf/sampler/<name>.yaml exists, names every option of its sampler, and builds it."""
    for name, cls in SAMPLERS.items():
        path = CONF / f"{name}.yaml"
        assert path.exists(), f"missing {path}"
        cfg = yaml.safe_load(path.read_text())
        assert cfg["name"] == name
        missing = set(cls.option_names()) - set(cfg) - {"progress", "dtype"}
        assert not missing, f"{path} lacks options {missing}"
        assert isinstance(sampler_from_config(cfg), cls)
    with pytest.raises(ValueError, match="name"):
        sampler_from_config({"steps": 3})


def test_counting_score_expands_scalar_time():
    score = CountingScore(lambda x, t: t[:, None] * x)
    out = score(torch.ones(3, 2), torch.tensor(0.5))
    assert score.nfe == 1 and torch.equal(out, torch.full((3, 2), 0.5))
