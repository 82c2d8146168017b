"""DiscreteVPSDE: the VP SDE through a discrete DDPM schedule, against its definition and the SDE battery.

Definition checked: timestep k at t_k = (k + 1) / N; log alpha^2 linear in t between the knots (0, 0) and
(t_k, log abar_k); sigma^2 = 1 - alpha^2; beta(t) = -d log alpha^2 / dt. Everything is float64 unless stated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from scoresde.data import random_mixture
from scoresde.likelihood import log_likelihood
from scoresde.sde import VPSDE, DiscreteVPSDE

N = 1000
LINEAR = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)  # DDPM's betas (Ho et al. 2020)


def cosine_betas(n: int) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (s = 0.008), betas clipped at 0.999."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)


SCHEDULES = {"linear": LINEAR, "cosine": cosine_betas(N), "short": torch.linspace(0.05, 0.3, 10, dtype=torch.float64)}


@pytest.fixture(params=sorted(SCHEDULES))
def dsde(request):
    sde = DiscreteVPSDE.from_betas(SCHEDULES[request.param])
    sde.source_betas = SCHEDULES[request.param]
    return sde


def test_exact_at_training_timesteps(dsde):
    """alpha(t_k)^2 = abar_k for every k (to float64 rounding), alpha(0) = 1, t_{N-1} = T."""
    n = dsde.num_timesteps
    k = torch.arange(n)
    t = dsde.time_of_timestep(k)
    torch.testing.assert_close(dsde.marginal_alpha(t) ** 2, dsde.alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(dsde.marginal_std(t) ** 2, 1 - dsde.alphas_cumprod, rtol=1e-10, atol=0)
    assert float(dsde.time_of_timestep(n - 1)) == dsde.T == 1.0
    zero = torch.zeros(1, dtype=torch.float64)
    assert float(dsde.marginal_alpha(zero)) == 1.0 and float(dsde.marginal_std(zero)) == 0.0
    torch.testing.assert_close(dsde.timestep_of_time(t), k.double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(dsde.discrete_betas, dsde.source_betas, rtol=1e-11, atol=0)  # log1p / expm1 trip


def test_log_linear_between_timesteps(dsde):
    """Inside segment k (t in [k/N, (k+1)/N]), log alpha^2 is the linear interpolant of its two knots."""
    n = dsde.num_timesteps
    knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(dsde.alphas_cumprod)])
    for frac in (0.1, 0.5, 0.9):
        t = (torch.arange(n, dtype=torch.float64) + frac) / n
        want = (1 - frac) * knots[:-1] + frac * knots[1:]
        torch.testing.assert_close(2 * dsde.marginal_log_mean_coeff(t), want, rtol=1e-12, atol=1e-15)
    # the rate is the timestep's beta, constant on the segment: -N log(1 - beta_k)
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    torch.testing.assert_close(dsde.beta(mid), -n * torch.log1p(-dsde.discrete_betas), rtol=1e-12, atol=0)


def test_moment_odes(dsde):
    """d alpha/dt = f alpha, d sigma^2/dt = 2 f sigma^2 + g^2, by central differences inside segments, where
    log alpha is linear with slope c = -beta / 2 (|c| <= 3.5e3 for the clipped cosine tail). With h = 1e-4 / N:
    truncation (c h)^2 / 6 <= 2e-8, rounding 1e-16 / (h |c|) <= 2e-8 relative; rtol 1e-6."""
    n = dsde.num_timesteps
    ts = (torch.tensor([0, 1, n // 3, n // 2, n - 2, n - 1], dtype=torch.float64) + 0.37) / n
    h = 1e-4 / n
    x = torch.ones(len(ts), 1, dtype=torch.float64)

    def moments(t):
        mean, std = dsde.marginal_prob(x, t)
        return mean[:, 0], std**2

    (m_p, v_p), (m_m, v_m) = moments(ts + h), moments(ts - h)
    dm, dv = (m_p - m_m) / (2 * h), (v_p - v_m) / (2 * h)
    mean, var = moments(ts)
    drift, diffusion = dsde.sde(x, ts)
    torch.testing.assert_close(dm, drift[:, 0] * mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dv, 2 * drift[:, 0] * var + diffusion**2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("s,t", [(0.0, 1e-4), (0.1003, 0.1003 + 1e-6), (0.2, 0.2105), (0.5, 0.5005), (0.9, 0.95)])
def test_transition_variance_matches_integral(s, t):
    """Var(x_t | x_s) = int_s^t (alpha_t / alpha_u)^2 g(u)^2 du (quadrature, breakpoints at the knots)."""
    dsde = DiscreteVPSDE.from_betas(LINEAR)
    tt, ss = torch.tensor([t], dtype=torch.float64), torch.tensor([s], dtype=torch.float64)
    log_a_t = float(dsde.marginal_log_mean_coeff(tt))

    def integrand(u):
        uu = torch.tensor([u], dtype=torch.float64)
        return math.exp(2 * (log_a_t - float(dsde.marginal_log_mean_coeff(uu)))) * float(dsde.diffusion_sq(uu))

    knots = [k / N for k in range(math.ceil(s * N), math.floor(t * N) + 1) if s < k / N < t]
    ref, _ = scipy.integrate.quad(integrand, s, t, points=knots or None, epsabs=0, epsrel=1e-12, limit=500)
    assert float(dsde.transition_var(tt, ss)) == pytest.approx(ref, rel=1e-8)


def test_one_step_discretization_is_ddpm():
    """From t_{k-1} to t_k (dt = T / N): x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z, DDPM's forward step."""
    dsde = DiscreteVPSDE.from_betas(LINEAR)
    k = torch.tensor([1, 2, 500, 999])
    t = dsde.time_of_timestep(k)
    x = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    f, G = dsde.discretize(x, t)
    torch.testing.assert_close(x + f, torch.sqrt(1 - LINEAR[k])[:, None] * x, rtol=1e-12, atol=0)
    torch.testing.assert_close(G**2, LINEAR[k], rtol=1e-10, atol=0)
    f0, G0 = dsde.discretize(x[:1], dsde.time_of_timestep(torch.tensor([0])))  # from clean data at t = 0
    torch.testing.assert_close(G0**2, LINEAR[:1], rtol=1e-10, atol=0)


def test_discretize_is_exact_transition(dsde):
    t = torch.tensor([0.3, 1.0, 0.05], dtype=torch.float64)
    dt = torch.tensor([0.1, 0.5, 0.2], dtype=torch.float64)
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    f, G = dsde.discretize(x, t, dt)
    s = (t - dt).clamp_min(0)
    a_ts = dsde.marginal_alpha(t) / dsde.marginal_alpha(s)
    torch.testing.assert_close((x + f)[:, 0], a_ts * x[:, 0])
    torch.testing.assert_close(G**2, dsde.marginal_std(t) ** 2 - a_ts**2 * dsde.marginal_std(s) ** 2)


def test_lambda_inverse_roundtrip(dsde):
    t = torch.tensor(np.concatenate([np.logspace(-5, 0, 30), np.linspace(0.01, 1, 30)]), dtype=torch.float64)
    lam = dsde.marginal_lambda(t)
    assert (lam[1:30] < lam[:29]).all()
    torch.testing.assert_close(dsde.inverse_lambda(lam), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lam, torch.log(dsde.marginal_alpha(t) / dsde.marginal_std(t)))
    t32 = t.float()
    torch.testing.assert_close(dsde.inverse_lambda(dsde.marginal_lambda(t32)), t32, rtol=1e-4, atol=1e-6)


def test_tends_to_the_continuous_vp_sde():
    """The reference's DDPM betas beta_min / N .. beta_max / N on N steps approach VPSDE(beta_min, beta_max) at
    rate O(1/N): sum_{i<=k} -log(1 - beta_i) is a Riemann sum of int_0^t beta(s) ds."""
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    vp = VPSDE()
    errs = []
    for n in (100, 1000, 10000):
        d = DiscreteVPSDE.from_betas(torch.linspace(0.1 / n, 20 / n, n, dtype=torch.float64))
        errs.append(float((d.marginal_std(t) - vp.marginal_std(t)).abs().max()))
    assert errs[2] < 2e-4 and errs[0] / errs[1] > 8 and errs[1] / errs[2] > 8, errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_shapes(dtype):
    dsde = DiscreteVPSDE.from_betas(LINEAR)
    x = torch.randn(5, 3, 4, 4, dtype=dtype)
    t = torch.rand(5, dtype=dtype)
    drift, g = dsde.sde(x, t)
    mean, std = dsde.marginal_prob(x, t)
    f, G = dsde.discretize(x, t)
    for out, shape in ((drift, x.shape), (mean, x.shape), (f, x.shape), (g, (5,)), (std, (5,)), (G, (5,))):
        assert out.shape == shape and out.dtype == dtype
    assert dsde.inverse_lambda(dsde.marginal_lambda(t)).dtype == dtype


@pytest.mark.parametrize(
    "abar,match",
    [
        ([0.9, 0.95], "decrease"),
        ([0.9, 0.0], r"\(0, 1\)"),
        ([1.0, 0.5], r"\(0, 1\)"),
        ([[0.9, 0.5]], "1-D"),
        ([], "1-D"),
    ],
)
def test_bad_schedules_raise(abar, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVPSDE(torch.tensor(abar, dtype=torch.float64))
    with pytest.raises(ValueError, match="betas"):
        DiscreteVPSDE.from_betas([0.1, 1.0])


def test_likelihood_of_a_mixture():
    """The exact PF-ODE likelihood on the discrete SDE with the exact mixture score recovers log p_eps(x).

    The prior N(0, I) is not exactly p_T, so the identity is logp = log p_eps(x) + prior_logp(z) - log p_T(z).
    16 points in 2-D, exact divergence, rtol = atol = 1e-5. beta(t) is piecewise constant, so the adaptive solver
    crosses ~1000 jumps of the vector field: measured error 3e-3 nats (1.6e-4 on the continuous VPSDE) and 176 NFE
    (80 on the VPSDE); asserted below 1e-2.
    """
    dsde = DiscreteVPSDE.from_betas(LINEAR)
    mix = random_mixture(2, 3, seed=0)
    x = mix.sample(16, generator=torch.Generator().manual_seed(0))
    res = log_likelihood(dsde, mix.score_fn(dsde), x, eps=1e-5, divergence="exact")
    T = torch.full((16,), dsde.T, dtype=torch.float64)
    expected = mix.log_prob(x, torch.full((16,), 1e-5, dtype=torch.float64), dsde)
    got = res.logp - (res.prior_logp - mix.log_prob(res.z, T, dsde))
    assert float((got - expected).abs().max()) < 1e-2
