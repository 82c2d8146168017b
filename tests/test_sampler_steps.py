"""Every stochastic update against the papers' equations, one or two steps with the sampler's own noise reproduced.

The expected values are written here from the papers, with the schedules of ``tests/reference_schedules.py`` (not
``scoresde.sde``): Song et al. (2021) Alg. 1-5 and Eq. 6, 46-48 (Euler–Maruyama on the reverse SDE, reverse
diffusion, ancestral sampling, Langevin correctors with the signal-to-noise step rule and its factor 2), Song & Ermon
(2019) (annealed Langevin), Song, Meng & Ermon (2021) Eq. 12 and 16 (DDIM with eta), Karras et al. (2022) Alg. 2
(Heun with churn). The samplers run through the public API (``get_sampler(...)(sde, score_fn, shape, generator=g,
x_init=x)``) with ``denoise=False`` on uniform grids ``T, ..., eps``; the noise is reproduced with an identically
seeded generator: ``randn`` of the batch shape, in the order the algorithm draws it (each Langevin step's before the
predictor's). The score is the exact score of a 2-component, 2-D Gaussian mixture (nonlinear in ``x``); float64.

A second group checks the sampled variance against a closed form on Gaussian data, where every update is affine in
``(x, z)``: the moments are propagated through the same written-out steps and compared with N = 20000 samples, so a
10% error in any noise scale (about 19% in the variance) is far outside the 5-standard-error band (7%).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from scoresde.data import GaussianMixture, random_mixture
from scoresde.sampling import get_sampler
from tests.conftest import SDE_FACTORIES
from tests.reference_schedules import SCHEDULES, time_of_sigma_hat

F64 = torch.float64
EPS = 1e-3
B, D = 6, 2
MIX = random_mixture(D, n_components=2, seed=7, min_var=0.05, max_var=0.6)
SDES = sorted(SDE_FACTORIES)

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Draw = Callable[[], torch.Tensor]


def _grid(steps: int) -> list[float]:
    return [1.0 + (EPS - 1.0) * i / steps for i in range(steps + 1)]


def _full(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype)


# --- the updates, written from the papers ------------------------------------------------------------------------
def em_step(name: str, score: Score, x, t: float, s: float, draw: Draw):
    """Euler–Maruyama on ``dx = [f x - g^2 score] dt + g dw`` from t down to s (Song et al. 2021, Eq. 6)."""
    c, h = SCHEDULES[name](t), t - s
    drift = c.f * x - c.g2 * score(x, _full(t, x))
    return x - drift * h + math.sqrt(c.g2 * h) * draw()


def _transition(name: str, t: float, s: float) -> tuple[float, float]:
    """``alpha_{t|s}`` and ``v = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` of the exact forward step s -> t."""
    ct, cs = SCHEDULES[name](t), SCHEDULES[name](s)
    a = ct.alpha / cs.alpha
    return a, ct.sigma**2 - a**2 * cs.sigma**2


def reverse_diffusion_step(name: str, score: Score, x, t: float, s: float, draw: Draw):
    """Eq. 46 with the forward step ``x_t = x_s + (a - 1) x_s + sqrt(v) z`` (DDPM for VP, SMLD for VE)."""
    a, v = _transition(name, t, s)
    return x - (a - 1) * x + v * score(x, _full(t, x)) + math.sqrt(v) * draw()


def ancestral_step(name: str, score: Score, x, t: float, s: float, draw: Draw):
    """Eq. 47/48: the posterior mean ``(x + v score) / a`` (DDPM's ``(x + beta s) / sqrt(1 - beta)``) and std
    ``sqrt(v sigma_s^2 / sigma_t^2)`` (DDPM's beta tilde)."""
    a, v = _transition(name, t, s)
    ct, cs = SCHEDULES[name](t), SCHEDULES[name](s)
    return (x + v * score(x, _full(t, x))) / a + math.sqrt(v * cs.sigma**2 / ct.sigma**2) * draw()


def langevin_steps(name: str, score: Score, x, t: float, s: float, draw: Draw, snr: float, n: int, annealed: bool):
    """Alg. 4/5: ``n`` steps ``x += e score + sqrt(2 e) z`` with ``e = 2 a (r ||z|| / ||score||)^2``, norms averaged
    over the batch as the reference does, ``a = alpha_{t|s}^2`` (DDPM's ``1 - beta_i``; 1 for VE). Annealed
    Langevin (Song & Ermon 2019): ``e = 2 a (r sigma_t)^2``."""
    a2 = _transition(name, t, s)[0] ** 2
    sigma_t = SCHEDULES[name](t).sigma
    for _ in range(n):
        g = score(x, _full(t, x))
        z = draw()
        if annealed:
            e = 2 * a2 * (snr * sigma_t) ** 2
        else:
            ratio = z.reshape(len(z), -1).norm(dim=1).mean() / g.reshape(len(g), -1).norm(dim=1).mean()
            e = 2 * a2 * (snr * ratio) ** 2
        x = x + e * g + torch.sqrt(torch.as_tensor(2 * e, dtype=x.dtype)) * z
    return x


def ddim_step(name: str, score: Score, x, t: float, s: float, draw: Draw, eta: float):
    """DDIM Eq. 12 with Eq. 16's ``sigma(eta) = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1})``, in
    general-SDE form ``c = eta sqrt(v sigma_s^2 / sigma_t^2)``: ``x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) e + c z``."""
    ct, cs = SCHEDULES[name](t), SCHEDULES[name](s)
    _, v = _transition(name, t, s)
    e = -ct.sigma * score(x, _full(t, x))
    x0 = (x - ct.sigma * e) / ct.alpha
    c = eta * math.sqrt(v * cs.sigma**2 / ct.sigma**2)
    return cs.alpha * x0 + math.sqrt(cs.sigma**2 - c**2) * e + c * draw()


def heun_churn(name: str, score: Score, x, grid: list[float], draw: Draw, churn: float, tmin: float, tmax: float,
               noise: float):  # fmt: skip
    """EDM Alg. 2 in ``y = x / alpha`` and ``sigma_hat = sigma / alpha`` (the probability-flow ODE
    ``dy / d sigma_hat = eps_hat``): churn ``gamma = min(S_churn / N, sqrt 2 - 1)`` where ``S_tmin <= sigma_hat_i <=
    S_tmax``, ``y += sqrt(s_hat^2 - s_i^2) S_noise z``, then a Heun step from ``s_hat`` to ``s_{i+1}``."""
    sched = SCHEDULES[name]
    sig_hat = [sched(t).sigma / sched(t).alpha for t in grid]
    n = len(grid) - 1

    def eps_hat(y, t: float):  # the noise prediction at x = alpha(t) y
        c = sched(t)
        return -c.sigma * score(c.alpha * y, _full(t, y))

    y = x / sched(grid[0]).alpha
    for i in range(n):
        s_cur, t_cur = sig_hat[i], grid[i]
        gamma = min(churn / n, math.sqrt(2) - 1) if tmin <= s_cur <= tmax else 0.0
        if gamma > 0:
            s_hat = s_cur * (1 + gamma)
            y = y + math.sqrt(s_hat**2 - s_cur**2) * noise * draw()
            s_cur, t_cur = s_hat, time_of_sigma_hat(name, s_hat)
        d = eps_hat(y, t_cur)
        h = sig_hat[i + 1] - s_cur
        d2 = eps_hat(y + h * d, grid[i + 1])
        y = y + h * (d + d2) / 2
    return sched(grid[-1]).alpha * y


def run_chain(step, name: str, score: Score, x, steps: int, draw: Draw, **kw):
    grid = _grid(steps)
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        x = step(name, score, x, t, s, draw, **kw)
    return x


def pc_chain(predictor, name: str, score: Score, x, steps: int, draw: Draw, snr: float, n: int, annealed: bool):
    grid = _grid(steps)
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        x = langevin_steps(name, score, x, t, s, draw, snr, n, annealed)
        if predictor is not None:
            x = predictor(name, score, x, t, s, draw)
    return x


# --- one and two steps with the sampler's own noise --------------------------------------------------------------
def _start(name: str) -> torch.Tensor:
    prior_std = SCHEDULES[name](1.0).sigma if name == "ve" else 1.0
    return torch.randn(B, D, generator=torch.Generator().manual_seed(11), dtype=F64) * prior_std


def _drawer(seed: int) -> Draw:
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(B, D, generator=g, dtype=F64)


def _sample(sampler_name: str, name: str, score: Score, x: torch.Tensor, seed: int, **options) -> torch.Tensor:
    sampler = get_sampler(sampler_name, eps=EPS, denoise=False, **options)
    res = sampler(SDE_FACTORIES[name](), score, tuple(x.shape), generator=torch.Generator().manual_seed(seed),
                  x_init=x.clone())  # fmt: skip
    return res.samples


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Agreement to float64 rounding of the schedules (1e-9 relative to the values' scale); a 1% change in any
    coefficient moves the result by > 1e-4 of its scale."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * scale)


PREDICTORS = {
    "euler_maruyama": em_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("predictor", sorted(PREDICTORS))
@pytest.mark.parametrize("name", SDES)
def test_predictor_steps_with_fixed_noise(name, predictor, steps):
    """Euler–Maruyama, reverse diffusion and ancestral sampling (one noise draw per step) equal Eq. 6 / 46 / 47-48."""
    score = MIX.score_fn(SDE_FACTORIES[name]())
    x = _start(name)
    got = _sample(predictor, name, score, x, seed=5, steps=steps)
    _close(got, run_chain(PREDICTORS[predictor], name, score, x, steps, _drawer(5)))


@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin"])
@pytest.mark.parametrize("name", SDES)
def test_corrector_steps_with_fixed_noise(name, corrector):
    """Two Langevin steps at each of 2 grid times, without a predictor and then with reverse diffusion after them
    (PC, Alg. 1-3): the step size rule with its snr and its factor 2, the corrector's noise drawn before the
    predictor's."""
    score = MIX.score_fn(SDE_FACTORIES[name]())
    x = _start(name)
    annealed = corrector == "annealed_langevin"
    opts = dict(steps=2, corrector=corrector, snr=0.16, n_steps=2)
    got = _sample("pc", name, score, x, seed=6, predictor="none", **opts)
    _close(got, pc_chain(None, name, score, x, 2, _drawer(6), 0.16, 2, annealed))
    got = _sample("pc", name, score, x, seed=6, predictor="reverse_diffusion", **opts)
    _close(got, pc_chain(reverse_diffusion_step, name, score, x, 2, _drawer(6), 0.16, 2, annealed))


@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin"])
def test_correctors_take_a_per_sample_alpha(corrector):
    """The public correctors accept ``alpha_{t|s}^2`` per sample, shape ``(B,)``: after one step, row ``b`` equals a
    call with the number ``alpha_b^2`` on the same batch and noise (Langevin's level, a batch mean at the starting
    point, is the same in both calls)."""
    from scoresde.sampling.correctors import CORRECTORS

    sde = SDE_FACTORIES["vp"]()
    score = MIX.score_fn(sde)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    alpha_sq = torch.tensor([0.99, 0.9, 0.5, 1.0], dtype=torch.float64)
    correct = CORRECTORS[corrector]
    got, got_mean = correct(sde, score, x, t, alpha_sq, 0.16, 1, torch.Generator().manual_seed(2))
    for b in range(4):
        row, row_mean = correct(sde, score, x, t, float(alpha_sq[b]), 0.16, 1, torch.Generator().manual_seed(2))
        torch.testing.assert_close(got[b], row[b], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_mean[b], row_mean[b], rtol=1e-12, atol=1e-12)
    first, _ = correct(sde, score, x, t, float(alpha_sq[0]), 0.16, 1, torch.Generator().manual_seed(2))
    assert not torch.allclose(got[2], first[2])  # row 2 did not use row 0's alpha


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("name", SDES)
def test_ddim_eta_steps_with_fixed_noise(name, eta):
    """DDIM with eta > 0 (one draw per step), 1 and 2 steps, equals Eq. 12 with Eq. 16's noise std."""
    score = MIX.score_fn(SDE_FACTORIES[name]())
    x = _start(name)
    for steps in (1, 2):
        got = _sample("ddim", name, score, x, seed=7, steps=steps, eta=eta, grid="uniform")
        _close(got, run_chain(ddim_step, name, score, x, steps, _drawer(7), eta=eta))


@pytest.mark.parametrize("name", SDES)
def test_heun_churn_steps_with_fixed_noise(name):
    """EDM's stochastic Heun (Alg. 2), 3 uniform steps, churn 0.6 (gamma = 0.2), S_noise 1.007, S_tmax half of the
    starting sigma_hat so that the first step is plain Heun and the other two are churned (one draw each)."""
    sde = SDE_FACTORIES[name]()
    score = MIX.score_fn(sde)
    x = _start(name)
    sched = SCHEDULES[name]
    tmax = 0.5 * sched(1.0).sigma / sched(1.0).alpha
    opts = dict(s_churn=0.6, s_tmin=0.0, s_tmax=tmax, s_noise=1.007)
    got = _sample("heun", name, score, x, seed=8, steps=3, grid="uniform", **opts)
    expected = heun_churn(name, score, x, _grid(3), _drawer(8), 0.6, 0.0, tmax, 1.007)
    _close(got, expected)


@pytest.mark.parametrize("name", SDES)
def test_final_denoising_step_is_tweedie(name):
    """``denoise=True`` ends with ``E[x_0 | x_eps] = (x + sigma^2 score) / alpha`` at eps (Tweedie's formula)."""
    sde = SDE_FACTORIES[name]()
    score = MIX.score_fn(sde)
    x = _start(name)
    sampler = get_sampler("euler_maruyama", steps=1, eps=EPS, denoise=True)
    got = sampler(sde, score, (B, D), generator=torch.Generator().manual_seed(9), x_init=x.clone()).samples
    x_eps = run_chain(em_step, name, score, x, 1, _drawer(9))
    c = SCHEDULES[name](EPS)
    _close(got, (x_eps + c.sigma**2 * score(x_eps, _full(EPS, x_eps))) / c.alpha)


@pytest.mark.parametrize("method", ["euler", "milstein"])
@pytest.mark.parametrize("name", SDES)
def test_sdeint_one_step_drift_and_noise(name, method):
    """torchsde's Euler–Maruyama (and Milstein, identical for noise that does not depend on the state) on the reverse
    SDE, one step of ``h = T - eps`` from ``y``: ``y + h [g^2(T) score(y, T) - f(T) y] + g(T) dW``. The Brownian
    increment comes from torchsde, so the same generator seed is used with two score functions: with score 0 the
    output gives ``dW`` back, with the mixture's score the output must differ by exactly ``h g^2(T) score`` (drift),
    and the recovered ``dW`` (4000 x 2 values) must have mean 0 and variance ``h``: the variance within 5 standard
    errors sqrt(2 / 8000) = 0.079 (relative), so a 10% error in ``g`` (variance off by 19%) fails."""
    sde = SDE_FACTORIES[name]()
    score = MIX.score_fn(sde)
    c, h = SCHEDULES[name](1.0), 1.0 - EPS
    y = torch.randn(4000, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    runs = {}
    for key, fn in (("zero", lambda x, t: torch.zeros_like(x)), ("mix", score)):
        runs[key] = _sample("sdeint", name, fn, y, seed=4, steps=1, method=method)
    dw = (runs["zero"] - y + h * c.f * y) / math.sqrt(c.g2)
    expected = y - h * (c.f * y - c.g2 * score(y, _full(1.0, y))) + math.sqrt(c.g2) * dw
    _close(runs["mix"], expected)
    n = dw.numel()
    assert abs(float(dw.mean())) < 5 * math.sqrt(h / n)
    assert float(dw.var()) == pytest.approx(h, rel=5 * math.sqrt(2 / n))


# --- sampled variance on Gaussian data: closed-form moments ------------------------------------------------------
N = 20000
GAUSS = GaussianMixture([1.0], [[0.5, -1.0]], [[0.3, 1.5]])  # diagonal: two independent 1-D problems
X_T = torch.tensor([0.8, -0.3], dtype=F64)  # every sample starts here: all the output variance is sampled noise


def _moments(chain, name: str, score: Score) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``chain(x, draw)`` when every update is affine in ``(x, z)`` (the Gaussian's score is
    linear): the chain is run on basis inputs, one noise draw at a time switched on."""
    base = X_T[None].clone()
    calls = []

    def counting() -> torch.Tensor:
        calls.append(1)
        return torch.zeros(1, D, dtype=F64)

    mean = chain(name, score, base, counting)
    var = torch.zeros(D, dtype=F64)
    for k in range(len(calls)):
        seen = []

        def unit(k=k, seen=seen) -> torch.Tensor:
            seen.append(1)
            return torch.ones(1, D, dtype=F64) if len(seen) - 1 == k else torch.zeros(1, D, dtype=F64)

        var = var + (chain(name, score, base, unit) - mean)[0] ** 2
    return mean[0], var


STEPS = 8
CHAINS = {  # id: (sampler, the chain written from the papers, sampler options)
    "euler_maruyama": ("euler_maruyama", lambda n, s, x, d: run_chain(em_step, n, s, x, STEPS, d), {}),
    "reverse_diffusion": (
        "reverse_diffusion",
        lambda n, s, x, d: run_chain(reverse_diffusion_step, n, s, x, STEPS, d),
        {},
    ),
    "ancestral": ("ancestral", lambda n, s, x, d: run_chain(ancestral_step, n, s, x, STEPS, d), {}),
    "pc_ancestral_annealed": (
        "pc",
        lambda n, s, x, d: pc_chain(ancestral_step, n, s, x, STEPS, d, 0.16, 1, True),
        {"predictor": "ancestral", "corrector": "annealed_langevin", "snr": 0.16, "n_steps": 1},
    ),
    "annealed_langevin_alone": (
        "pc",
        lambda n, s, x, d: pc_chain(None, n, s, x, STEPS, d, 0.5, 2, True),
        {"predictor": "none", "corrector": "annealed_langevin", "snr": 0.5, "n_steps": 2},
    ),
    "ddim_eta": (
        "ddim",
        lambda n, s, x, d: run_chain(ddim_step, n, s, x, STEPS, d, eta=0.7),
        {"eta": 0.7, "grid": "uniform"},
    ),
    "sdeint_euler": ("sdeint", lambda n, s, x, d: run_chain(em_step, n, s, x, STEPS, d), {"method": "euler"}),
}


@pytest.mark.parametrize("case", sorted(CHAINS))
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_sampled_moments_on_gaussian_data(name, case):
    """N = 20000 chains of 8 steps from one fixed x_T on a diagonal Gaussian (exact, linear score): the sample mean
    within 5 standard errors sqrt(V / N) of the closed-form mean, the sample variance within 5 standard errors
    sqrt(2 / N) = 3.5% (relative) of the closed-form variance, per coordinate. (torchsde's Euler step on the uniform
    grid is Euler–Maruyama's, so ``sdeint`` shares its closed form.)"""
    sde = SDE_FACTORIES[name]()
    score = GAUSS.score_fn(sde)
    sampler_name, chain, opts = CHAINS[case]
    mean, var = _moments(chain, name, score)
    x = X_T[None].expand(N, D).clone()
    got = _sample(sampler_name, name, score, x, seed=21, steps=STEPS, **opts)
    assert ((got.mean(0) - mean).abs() < 5 * (var / N).sqrt()).all(), (got.mean(0), mean)
    assert ((got.var(0) / var - 1).abs() < 5 * math.sqrt(2 / N)).all(), (got.var(0), var)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_heun_churn_sampled_moments_on_gaussian_data(name):
    """Heun with churn on the Gaussian: the same closed-form moments check (N = 20000, 4 uniform steps, the last
    three churned)."""
    sde = SDE_FACTORIES[name]()
    score = GAUSS.score_fn(sde)
    sched = SCHEDULES[name]
    tmax = 0.5 * sched(1.0).sigma / sched(1.0).alpha
    mean, var = _moments(lambda n, s, x, d: heun_churn(n, s, x, _grid(4), d, 1.2, 0.0, tmax, 1.0), name, score)
    x = X_T[None].expand(N, D).clone()
    got = _sample("heun", name, score, x, seed=22, steps=4, grid="uniform", s_churn=1.2, s_tmax=tmax)
    assert ((got.mean(0) - mean).abs() < 5 * (var / N).sqrt()).all(), (got.mean(0), mean)
    assert ((got.var(0) / var - 1).abs() < 5 * math.sqrt(2 / N)).all(), (got.var(0), var)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_sdeint_srk_matches_the_exact_reverse_transition(name):
    """torchsde's stochastic Runge–Kutta against the exact law it approximates: from a fixed x_T, the reverse SDE
    with the exact score of Gaussian data ends in the forward process's conditional ``p(x_eps | x_T)``, Gaussian with
    ``Cov = (1/P + a^2 / v)^-1`` for the prior variance ``P = alpha_eps^2 c + sigma_eps^2`` of x_eps and the transition
    ``x_T = a x_eps + sqrt(v) z``. 50 steps, n = 10000: mean within 5 sqrt(V / n), variance within 5 sqrt(2 / n) = 7%
    + 1% (discretization; measured 0.3% on VP, 1.8% on VE) of the exact values."""
    sde = SDE_FACTORIES[name]()
    score = GAUSS.score_fn(sde)
    a, v = _transition(name, 1.0, EPS)
    ce = SCHEDULES[name](EPS)
    c, mu = GAUSS.covs[0].diagonal(), GAUSS.means[0]
    prior_var, prior_mean = ce.alpha**2 * c + ce.sigma**2, ce.alpha * mu
    var = 1 / (1 / prior_var + a**2 / v)
    mean = var * (prior_mean / prior_var + a * X_T / v)
    n = 10000
    x = X_T[None].expand(n, D).clone()
    got = _sample("sdeint", name, score, x, seed=23, steps=50, method="srk")
    assert ((got.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), (got.mean(0), mean)
    assert ((got.var(0) / var - 1).abs() < 5 * math.sqrt(2 / n) + 0.01).all(), (got.var(0), var)


def test_norm_ratio_as_number_equals_the_tensor_form():
    """The corrector's ``mean ||z|| / mean ||score||`` read out as a number (one stacked reduction, the CPU path)
    equals the 0-d tensor form (the accelerator path) to float64 round-off, on image-shaped input. A score that is
    zero everywhere makes the step infinite: the number form refuses it naming the problem, the tensor form (never
    read on the host) clamps the denominator instead of dividing by zero."""
    from scoresde.sampling.correctors import norm_ratio

    gen = torch.Generator().manual_seed(0)
    z, g = (torch.randn(6, 3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    number, tensor = norm_ratio(z, g, as_number=True), norm_ratio(z, g, as_number=False)
    assert isinstance(number, float) and tensor.ndim == 0
    expected = z.flatten(1).norm(dim=1).mean() / g.flatten(1).norm(dim=1).mean()
    assert number == pytest.approx(float(expected), rel=1e-14) and float(tensor) == pytest.approx(number, rel=1e-14)
    zero = torch.zeros_like(g)
    with pytest.raises(ValueError, match="score is zero for every sample"):
        norm_ratio(z, zero, as_number=True)
    assert math.isfinite(float(norm_ratio(z, zero, as_number=False)))
    with pytest.raises(ValueError, match="score is zero for every sample"):  # a PC run with a zero model, on the CPU
        get_sampler("pc", steps=3, corrector="langevin")(SDE_FACTORIES["ve"](), lambda x, t: 0 * x, (4, 2))
    # 1-D states (B,): per-sample norms are |x_b| in both forms, and a PC run on such a state works
    z1, g1 = z.flatten()[:6], g.flatten()[:6]
    expected = z1.abs().mean() / g1.abs().mean()
    for as_number in (True, False):
        assert float(norm_ratio(z1, g1, as_number=as_number)) == pytest.approx(float(expected), rel=1e-14)
    out = get_sampler("pc", steps=3, corrector="langevin", predictor="reverse_diffusion", denoise=False)(
        SDE_FACTORIES["ve"](), lambda x, t: -x, (5,), torch.Generator().manual_seed(0)
    )
    assert out.samples.shape == (5,) and torch.isfinite(out.samples).all()
