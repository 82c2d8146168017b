"""Forward SDEs against exact solutions: marginals, moment ODEs, transitions, prior, reverse, discretization."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
import torchsde
from conftest import SDE_FACTORIES

from scoresde.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, DiscreteVPSDE, LinearReverseSDE, ReverseSDE, SubVPSDE

mpmath.mp.dps = 40

# Every generic test below also runs on the EDM SDE (Karras et al. 2022): sigma(t) = t, alpha = 1, T = 80.
ALL_SDES = {**SDE_FACTORIES, "edm": EDMSDE}


@pytest.fixture(params=sorted(ALL_SDES))
def sde(request):
    return ALL_SDES[request.param]()


def exact_std(sde, t: float) -> float:
    """sigma(t) from the closed forms, evaluated with 40 significant digits."""
    t = mpmath.mpf(t)
    if isinstance(sde, EDMSDE):
        return float(t)
    if isinstance(sde, VESDE):
        return float(sde.sigma_min * (mpmath.mpf(sde.sigma_max) / sde.sigma_min) ** t)
    if isinstance(sde, CosineVPSDE):
        a0 = mpmath.mpf(sde.s) / (1 + sde.s) * mpmath.pi / 2
        if t <= sde.t_clip:
            a = (t + sde.s) / (1 + sde.s) * mpmath.pi / 2
            abar = mpmath.cos(a) ** 2 / mpmath.cos(a0) ** 2
        else:
            ac = (mpmath.mpf(sde.t_clip) + sde.s) / (1 + sde.s) * mpmath.pi / 2
            abar = mpmath.cos(ac) ** 2 / mpmath.cos(a0) ** 2 * mpmath.exp(-sde.beta_max * (t - sde.t_clip))
        return float(mpmath.sqrt(1 - abar))
    m = -(t**2) * (mpmath.mpf(sde.beta_max) - sde.beta_min) / 4 - t * mpmath.mpf(sde.beta_min) / 2
    one_minus = 1 - mpmath.exp(2 * m)
    return float(one_minus if isinstance(sde, SubVPSDE) else mpmath.sqrt(one_minus))


TIMES = np.concatenate([np.logspace(-5, 0, 41), [0.3, 0.97, 0.99]])


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_marginal_std_precision(sde, dtype, rtol):
    """sigma(t) relative error < 1e-5 in float32 and < 1e-9 in float64 over [1e-5, 1] (t = 1e-5 included)."""
    t = torch.tensor(TIMES, dtype=dtype)
    got = sde.marginal_std(t).double().numpy()
    ref = np.array([exact_std(sde, float(tt)) for tt in t.double()])
    rel = np.abs(got / ref - 1)
    assert rel.max() < rtol, f"max rel error {rel.max():.2e} at t={TIMES[rel.argmax()]:.2e}"


def test_reference_float32_std_is_off_but_ours_is_not():
    """The reference's 1 - exp(2m) in float32 is 0.6% (VP) / 1.2% (sub-VP) off at t = 1e-5; ours is not."""
    t = torch.tensor([1e-5])
    for sde, naive_err in [(VPSDE(), 6e-3), (SubVPSDE(), 1.2e-2)]:
        m = sde.marginal_log_mean_coeff(t)
        naive = 1 - torch.exp(2 * m)
        naive = naive if isinstance(sde, SubVPSDE) else naive.sqrt()
        exact = exact_std(sde, 1e-5)
        assert abs(float(naive) / exact - 1) > 0.5 * naive_err
        assert abs(float(sde.marginal_std(t)) / exact - 1) < 1e-6


def test_moment_odes(sde):
    """d alpha/dt = f(t) alpha and d sigma^2/dt = 2 f(t) sigma^2 + g(t)^2 (central differences, float64).

    This ties ``sde()`` to ``marginal_prob()``: the mean and variance of x_t | x_0 solve these ODEs exactly.
    Truncation error of the central difference is O(h^2) = 1e-12, rounding O(eps / h) = 2e-10: rtol 1e-6.
    """
    h = 1e-6
    ts = torch.tensor([0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99], dtype=torch.float64)
    x = torch.ones(len(ts), 1, dtype=torch.float64)

    def moments(t):
        mean, std = sde.marginal_prob(x, t)
        return mean[:, 0], std**2

    (m_p, v_p), (m_m, v_m) = moments(ts + h), moments(ts - h)
    dm, dv = (m_p - m_m) / (2 * h), (v_p - v_m) / (2 * h)
    mean, std = moments(ts)
    drift, diffusion = sde.sde(x, ts)
    f = drift[:, 0]  # f(t) * 1
    torch.testing.assert_close(dm, f * mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dv, 2 * f * std + diffusion**2, rtol=1e-6, atol=1e-9)


def test_transition_variance_matches_integral(sde):
    """Var(x_t | x_s) = int_s^t (alpha_t / alpha_u)^2 g(u)^2 du (quadrature), for the stable closed forms."""
    pairs = [(0.0, 1e-4), (0.1, 0.1 + 1e-6), (0.2, 0.5), (0.5, 0.51), (0.0, 1.0), (0.9, 1.0)]
    for s, t in pairs:
        tt, ss = torch.tensor([t], dtype=torch.float64), torch.tensor([s], dtype=torch.float64)
        log_a_t = float(sde.marginal_log_mean_coeff(tt))

        def integrand(u, log_a_t=log_a_t):
            uu = torch.tensor([u], dtype=torch.float64)
            return math.exp(2 * (log_a_t - float(sde.marginal_log_mean_coeff(uu)))) * float(sde.diffusion_sq(uu))

        ref, _ = scipy.integrate.quad(integrand, s, t, epsabs=0, epsrel=1e-12, limit=200)
        got = float(sde.transition_var(tt, ss))
        assert got == pytest.approx(ref, rel=1e-8), (s, t)


def test_marginals_match_forward_simulation(sde):
    """x_t | x_0 from torchsde's Euler–Maruyama (dt = 1e-3) matches marginal_prob's mean and std.

    n = 20000 paths: mean tolerance 5 sd / sqrt(n), std tolerance 5 sqrt(1 / 2n) relative, plus the O(dt)
    bias of Euler–Maruyama (<= 2e-3 relative here).
    """
    n, x0 = 20000, 1.5
    gen = torch.Generator().manual_seed(0)
    std0 = float(sde.marginal_std(torch.zeros(1, dtype=torch.float64)))
    y0 = x0 + std0 * torch.randn(n, 1, generator=gen, dtype=torch.float64)  # p_{00}: sigma(0) = sigma_min for VE

    class Forward(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return sde.sde(y, t.expand(y.shape[0]))[0]

        def g(self, t, y):
            return sde.sde(y, t.expand(y.shape[0]))[1][:, None].expand_as(y)

    ts = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(n, 1), dtype=torch.float64, entropy=1)
    ys = torchsde.sdeint(Forward(), y0, ts, method="euler", dt=1e-3, bm=bm)
    for i in (1, 2):
        t = ts[i : i + 1].expand(1)
        mean, std = sde.marginal_prob(torch.full((1, 1), x0, dtype=torch.float64), t)
        emp = ys[i, :, 0]
        sd = float(std)
        assert abs(float(emp.mean()) - float(mean)) < 5 * sd / math.sqrt(n) + 2e-3 * abs(float(mean))
        assert float(emp.std()) / sd == pytest.approx(1.0, abs=5 * math.sqrt(0.5 / n) + 2e-3)


@pytest.mark.parametrize("shape", [(7, 2), (3, 3, 4, 4), (5,)])
def test_prior_logp_matches_scipy(sde, shape):
    z = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = scipy.stats.norm(0, sde.prior_std).logpdf(z.numpy()).reshape(shape[0], -1).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), ref, rtol=1e-12)


def test_prior_sampling_moments(sde):
    """n = 100000 draws: std within 5 sqrt(1 / 2n) relative of prior_std."""
    z = sde.prior_sampling((100000, 1), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(z.std()) / sde.prior_std == pytest.approx(1.0, abs=5 * math.sqrt(0.5 / 1e5))
    assert abs(float(z.mean())) < 5 * sde.prior_std / math.sqrt(1e5)


def test_prior_sampling_reproducible_and_per_sample_generators(sde):
    a = sde.prior_sampling((4, 3), generator=torch.Generator().manual_seed(5))
    b = sde.prior_sampling((4, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    gens = [torch.Generator().manual_seed(100 + k) for k in range(4)]
    full = sde.prior_sampling((4, 3), generator=gens)
    gens2 = [torch.Generator().manual_seed(100 + k) for k in range(2, 4)]
    part = sde.prior_sampling((2, 3), generator=gens2)
    assert torch.equal(full[2:], part)  # sample k does not depend on the batch
    with pytest.raises(ValueError, match="generators"):
        sde.prior_sampling((3, 3), generator=gens)


def test_reverse_drifts(sde):
    """Reverse SDE drift f - g^2 s with diffusion g; probability-flow ODE drift f - g^2 s / 2, no diffusion."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(6, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)

    def score_fn(x, t):
        return -x * w + t[:, None, None]

    f, g = sde.sde(x, t)
    s = score_fn(x, t)
    rev = sde.reverse(score_fn)
    drift, diff = rev.sde(x, t)
    torch.testing.assert_close(drift, f - g[:, None, None] ** 2 * s)
    torch.testing.assert_close(diff, g)
    ode = sde.reverse(score_fn, probability_flow=True)
    drift, diff = ode.sde(x, t)
    torch.testing.assert_close(drift, f - 0.5 * g[:, None, None] ** 2 * s)
    assert torch.all(diff == 0)
    # The discretized reverse step uses the forward discretization's (f, G).
    fd, G = sde.discretize(x, t, 0.01)
    rf, rG = rev.discretize(x, t, 0.01)
    torch.testing.assert_close(rf, fd - G[:, None, None] ** 2 * s)
    torch.testing.assert_close(rG, G)
    rf, rG = ode.discretize(x, t, 0.01)
    torch.testing.assert_close(rf, fd - 0.5 * G[:, None, None] ** 2 * s)
    assert torch.all(rG == 0)
    assert rev.T == sde.T and rev.N == sde.N
    torch.testing.assert_close(rev.marginal_prob(x, t)[1], sde.marginal_prob(x, t)[1])


@pytest.mark.parametrize("probability_flow", [False, True])
@pytest.mark.parametrize("kind", ["discrete_vp", *sorted(ALL_SDES)])
def test_linear_reverse_equals_generic_route(kind, probability_flow):
    """LinearSDE.reverse (drift f(t) x - w g(t)^2 score with f, g^2 evaluated once per time) equals the generic
    ReverseSDE route (drift and diffusion of ``sde.sde``) to float64 round-off, at per-sample times and at a scalar
    time (a number or a 0-d tensor: the score still sees a (B,) time), for the reverse SDE and the PF-ODE."""
    sde = DiscreteVPSDE.from_betas(torch.linspace(1e-4, 0.02, 1000)) if kind == "discrete_vp" else ALL_SDES[kind]()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 2, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    seen = []

    def score_fn(x, t):
        seen.append(tuple(t.shape))
        return -x * w.to(x.dtype) / (1 + t[:, None, None]) + t[:, None, None]

    # times across (0, T], the cosine schedule's clipped end (t > 0.98) included
    per_sample = sde.T * torch.tensor([1e-5, 1e-3, 0.1, 0.5, 0.97, 0.99, 1.0], dtype=torch.float64)
    fast, generic = sde.reverse(score_fn, probability_flow), ReverseSDE(sde, score_fn, probability_flow)
    assert isinstance(fast, LinearReverseSDE)
    for t in (per_sample, 0.3 * sde.T, torch.tensor(0.995 * sde.T, dtype=torch.float64)):
        drift, diffusion = fast.sde(x, t)
        ref_drift, ref_diffusion = generic.sde(x, t)
        scale = float(ref_drift.abs().max())
        torch.testing.assert_close(drift, ref_drift, rtol=1e-12, atol=1e-13 * scale)
        torch.testing.assert_close(diffusion, ref_diffusion, rtol=1e-13, atol=0)
        assert diffusion.shape == (7,) and diffusion.is_contiguous()
        torch.testing.assert_close(fast.drift(x, t), drift, rtol=0, atol=0)
        torch.testing.assert_close(generic.drift(x, t), ref_drift, rtol=0, atol=0)
    assert set(seen) == {(7,)}
    with pytest.raises(ValueError, match="time must be a scalar or have shape"):
        fast.sde(x, torch.full((3,), 0.5, dtype=torch.float64))
    # float32 in, float32 out
    drift32, diffusion32 = fast.sde(x.float(), 0.5 * sde.T)
    assert drift32.dtype == diffusion32.dtype == torch.float32


def test_discretize_tends_to_euler_maruyama(sde):
    """(f, G^2) of one discrete step divided by dt tend to (drift, g^2) at rate O(dt)."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    drift, g = sde.sde(x, t)
    errs = []
    for dt in (1e-2, 5e-3, 2.5e-3, 1.25e-3):
        f, G = sde.discretize(x, t, dt)
        err_f = ((f / dt - drift).abs() / (drift.abs() + 1e-12)).max()
        err_g = ((G**2 / dt - g**2).abs() / g**2).max()
        errs.append(float(max(err_f, err_g)))
    assert errs[-1] < 0.05
    rates = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    assert all(1.7 < r < 2.3 for r in rates), rates  # first order: halving dt halves the error


def test_discretize_is_exact_transition(sde):
    """x + f + G z ~ law of x_t | x_s (s = t - dt): mean alpha_{t|s} x, var sigma_t^2 - alpha_{t|s}^2 sigma_s^2."""
    t = torch.tensor([0.3, 1.0, 0.05], dtype=torch.float64)
    dt = torch.tensor([0.1, 0.5, 0.2], dtype=torch.float64)  # large and per-sample steps
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    f, G = sde.discretize(x, t, dt)
    s = (t - dt).clamp_min(0)
    a_ts = sde.marginal_alpha(t) / sde.marginal_alpha(s)
    torch.testing.assert_close((x + f)[:, 0], a_ts * x[:, 0])
    var = sde.marginal_std(t) ** 2 - a_ts**2 * sde.marginal_std(s) ** 2
    torch.testing.assert_close(G**2, var)


@pytest.mark.parametrize("n_steps", [1, 2, 5, 10, 20])
def test_discretize_few_steps_finite(sde, n_steps):
    """Coarse uniform grids (the reference's DDPM discretization gives NaN for N <= 20) stay finite."""
    sde.N = n_steps
    t = torch.linspace(1.0, 1.0 / n_steps, n_steps)
    x = torch.ones(n_steps, 3)
    f, G = sde.discretize(x, t)
    assert torch.isfinite(f).all() and torch.isfinite(G).all() and (G > 0).all()
    rev_f, rev_G = sde.reverse(lambda x, t: -x).discretize(x, t)
    assert torch.isfinite(rev_f).all() and torch.isfinite(rev_G).all()


def test_discretize_agrees_with_reference_ddpm_and_smld():
    """For N -> inf our steps match the reference's DDPM betas / SMLD sigmas at the same grid index."""
    prev = None
    for N in (100, 1000, 10000):
        vp, ve = VPSDE(N=N), VESDE(N=N)
        i = torch.tensor([N // 4, N // 2, N - 1])
        t = i.double() / (N - 1)
        x = torch.ones(3, 1, dtype=torch.float64)
        # Reference DDPM: f = sqrt(1 - beta_i) x - x, G = sqrt(beta_i).
        beta_ref = torch.linspace(vp.beta_min / N, vp.beta_max / N, N, dtype=torch.float64)[i]
        f, G = vp.discretize(x, t)
        err_vp = float(((G**2 - beta_ref) / beta_ref).abs().max())
        torch.testing.assert_close(f[:, 0], torch.sqrt(1 - G**2) - 1)
        # Reference SMLD: G = sqrt(sigma_i^2 - sigma_{i-1}^2).
        sig = ve.sigma_min * (ve.sigma_max / ve.sigma_min) ** (torch.arange(N, dtype=torch.float64) / (N - 1))
        g_ref = torch.sqrt(sig[i] ** 2 - sig[i - 1] ** 2)
        _, G = ve.discretize(x, t)
        err_ve = float(((G - g_ref) / g_ref).abs().max())
        if prev is not None:
            assert err_vp < prev[0] / 5 and err_ve < prev[1] / 5
        prev = (err_vp, err_ve)
    assert prev[0] < 2e-3 and prev[1] < 2e-3


def test_lambda_inverse_roundtrip(sde):
    t = torch.tensor(np.concatenate([np.logspace(-5, 0, 30), np.linspace(0.01, 1, 30)]), dtype=torch.float64)
    lam = sde.marginal_lambda(t)
    assert (lam[1:30] < lam[:29]).all()  # decreasing in t
    torch.testing.assert_close(sde.inverse_lambda(lam), t, rtol=1e-9, atol=1e-12)
    # lambda = log(alpha / sigma) from the members themselves
    torch.testing.assert_close(lam, torch.log(sde.marginal_alpha(t) / sde.marginal_std(t)))
    t32 = t.float()
    torch.testing.assert_close(sde.inverse_lambda(sde.marginal_lambda(t32)), t32, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 2), (4, 3, 8, 8), (4, 5, 2, 2, 2)])
def test_shapes_dtypes_devices(sde, shape, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    t = torch.rand(shape[0], dtype=dtype, device=device)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f, G = sde.discretize(x, t)
    z = sde.prior_sampling(shape, device=device, dtype=dtype)
    logp = sde.prior_logp(z)
    for out, want in [
        (drift, shape),
        (mean, shape),
        (f, shape),
        (z, shape),
        (diffusion, shape[:1]),
        (std, shape[:1]),
        (G, shape[:1]),
        (logp, shape[:1]),
    ]:
        assert out.shape == want and out.dtype == dtype and out.device.type == device.type
    # a scalar time broadcasts over the batch
    assert sde.marginal_prob(x, 0.5)[1].shape == shape[:1]


def test_bad_time_shape_raises(sde):
    with pytest.raises(ValueError, match="shape"):
        sde.marginal_prob(torch.zeros(4, 2), torch.zeros(3))


@pytest.mark.parametrize(
    "ctor",
    [
        lambda: VPSDE(beta_min=2.0, beta_max=1.0),
        lambda: VESDE(sigma_min=1.0, sigma_max=0.5),
        lambda: VPSDE(N=0),
        lambda: CosineVPSDE(s=-1.0),
    ],
)
def test_bad_parameters_raise(ctor):
    with pytest.raises(ValueError):
        ctor()


def test_cosine_schedule_matches_nichol_dhariwal():
    """alpha^2 = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2) below the clip; beta continuous and <= beta_max."""
    sde = CosineVPSDE()
    t = torch.linspace(0, sde.t_clip, 50, dtype=torch.float64)
    f = lambda u: torch.cos((u + sde.s) / (1 + sde.s) * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(sde.marginal_alpha(t) ** 2, f(t) / f(torch.zeros(1, dtype=torch.float64)))
    tt = torch.linspace(0, 1, 1001, dtype=torch.float64)
    beta = sde.beta(tt)
    assert beta.max() <= sde.beta_max and torch.isfinite(beta).all()
    assert (beta[1:] >= beta[:-1]).all()
    assert float(sde.marginal_alpha(torch.ones(1))) < 0.02


@pytest.mark.parametrize("name,cls", [("vp", VPSDE), ("subvp", SubVPSDE), ("ve", VESDE), ("vp_cosine", CosineVPSDE)])
def test_hydra_configs_instantiate(name, cls):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sde={name}"])
    sde = instantiate(cfg.sde)
    assert type(sde) is cls and sde.N == 1000


@pytest.mark.cuda
def test_cuda_matches_cpu(sde):
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64)
    for fn in (sde.sde, sde.marginal_prob, sde.discretize):
        for a, b in zip(fn(x, t), fn(x.cuda(), t.cuda()), strict=True):
            assert b.is_cuda
            torch.testing.assert_close(a, b.cpu())
    g = torch.Generator().manual_seed(0)
    z = sde.prior_sampling((2, 3), generator=g, device="cuda")
    assert z.is_cuda and torch.equal(z.cpu(), sde.prior_sampling((2, 3), torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------------------------------- EDM SDE


def test_edm_closed_forms():
    """x_t = x_0 + t z: alpha = 1, sigma = t, f = 0, g^2 = d sigma^2 / dt = 2 t, lambda = -log t, T = 80,
    final time 0.002, prior N(0, 80^2 I), Var(x_t | x_s) = t^2 - s^2 (Karras et al. 2022, Eq. 6 and Table 1)."""
    sde = EDMSDE()
    assert sde.T == 80.0 and sde.eps == 0.002 and sde.prior_std == 80.0
    t = torch.tensor([0.002, 0.1, 1.0, 7.5, 80.0], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, std = sde.marginal_prob(x, t)
    assert torch.equal(mean, x) and torch.equal(std, t)
    drift, g = sde.sde(x, t)
    assert torch.all(drift == 0)
    torch.testing.assert_close(g, torch.sqrt(2 * t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.marginal_lambda(t), -torch.log(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.inverse_lambda(-torch.log(t)), t, rtol=1e-15, atol=0)
    s = t * 0.999999
    torch.testing.assert_close(sde.transition_var(t, s), t**2 - s**2, rtol=1e-9, atol=0)
    z = torch.randn(4, 2, dtype=torch.float64)
    ref = scipy.stats.norm(0, 80.0).logpdf(z.numpy()).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), ref, rtol=1e-12)


def test_edm_probability_flow_is_karras_eq_1():
    """Reverse SDE drift -2 t s, probability-flow drift -t s (= -sigma' sigma grad log p, Karras et al. Eq. 1); with the
    exact mixture score the PF-ODE moves exact p_t samples to exact p_s samples (n = 4000, sliced W2 within 2x of
    the two-sample floor, dopri5 from t = 5 to s = 0.5)."""
    from scoresde.data import random_mixture
    from scoresde.metrics import sliced_wasserstein

    sde = EDMSDE()
    mix = random_mixture(2, seed=2)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 80.0], dtype=torch.float64)
    score = mix.score(x, t, sde)
    drift, diff = sde.reverse(mix.score_fn(sde), probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift, -t[:, None] * score)
    assert torch.all(diff == 0)
    drift, diff = sde.reverse(mix.score_fn(sde)).sde(x, t)
    torch.testing.assert_close(drift, -2 * t[:, None] * score)
    import torchdiffeq

    n, g = 4000, torch.Generator().manual_seed(3)
    xt = mix.sample_marginal(n, 5.0, sde, generator=g)
    ode = sde.reverse(mix.score_fn(sde), probability_flow=True)
    xs = torchdiffeq.odeint(
        lambda u, y: ode.sde(y, u.expand(n))[0], xt, torch.tensor([5.0, 0.5], dtype=torch.float64), rtol=1e-7, atol=1e-7
    )[-1]
    ref_a, ref_b = (mix.sample_marginal(n, 0.5, sde, generator=g) for _ in range(2))
    floor = sliced_wasserstein(ref_a, ref_b)
    assert sliced_wasserstein(xs, ref_a) < 2 * floor


def test_edm_default_sampler_is_karras_heun():
    """``EDMSDE.default_sampler``: EDM's Alg. 2 (17 Heun steps on the rho = 7 grid to 0.002, then the Euler step to 0):
    35 NFE. With the exact mixture score it follows the accurate probability-flow ODE solution from the same prior
    draws (n = 500): RMSE 0.034 of the data std measured (bound 0.06), and 4.3x closer with twice the steps (2nd order;
    bound 2.5x)."""
    from scoresde.data import random_mixture
    from scoresde.sampling import get_sampler, sampler_from_config

    sde = EDMSDE()
    mix = random_mixture(2, seed=5)
    x_init = sde.prior_sampling((500, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = get_sampler("ode", rtol=1e-9, atol=1e-9, eps=sde.eps)(sde, mix.score_fn(sde), (500, 2), x_init=x_init)
    std = float(mix.covariance().trace().div(2).sqrt())
    errs = []
    for steps in (17, 34):
        sampler = sampler_from_config(dict(sde.default_sampler, steps=steps))
        res = sampler(sde, mix.score_fn(sde), (500, 2), x_init=x_init)
        assert res.nfe == 2 * steps + 1
        errs.append(float((res.samples - ref.samples).square().sum(1).mean().sqrt()) / std)
    assert errs[0] < 0.06 and errs[0] / errs[1] > 2.5, errs
    for cls in (VPSDE, SubVPSDE, VESDE, CosineVPSDE):
        assert cls.default_sampler == {"name": "pc"}  # the predictor-corrector sampler with the SDE's pc_defaults


def test_edm_config_builds_through_the_registry():
    from omegaconf import OmegaConf

    from scoresde.registry import build

    conf = Path(__file__).resolve().parents[1] / "conf" / "sde" / "edm.yaml"
    sde = build(OmegaConf.to_container(OmegaConf.load(conf)), "sde")
    assert type(sde) is EDMSDE and (sde.sigma_min, sde.sigma_max, sde.N) == (0.002, 80.0, 1000)
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSDE(sigma_min=1.0, sigma_max=0.5)


def test_perturb_draws_the_forward_marginal(sde):
    """``perturb(x0, t, z)`` is ``alpha_t x0 + sigma_t z`` per sample (images, one time per sample), and with
    ``x0 ~`` a mixture and ``z ~ N(0, I)`` its draws have the exact marginal's mean and covariance: n = 40000 draws
    in 2-D, tolerance 5 standard errors (mean: sqrt(var / n); covariance entries: sqrt(2 / n) var)."""
    from scoresde.data import random_mixture

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    alpha, sigma = sde.marginal_alpha(t), sde.marginal_std(t)
    for b in range(3):
        expected = alpha[b] * x0[b] + sigma[b] * z[b]
        torch.testing.assert_close(sde.perturb(x0, t, z)[b], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sde.perturb(x0, 0.5, z), sde.perturb(x0, torch.full((3,), 0.5, dtype=torch.float64), z))

    mix = random_mixture(dim=2, n_components=3, seed=1)
    n = 40000
    draws = sde.perturb(mix.sample(n, generator=gen), 0.4, torch.randn(n, 2, generator=gen, dtype=torch.float64))
    exact = mix.marginal(sde, 0.4)
    var = exact.covariance().diagonal().max()
    assert float((draws.mean(0) - exact.mean()).abs().max()) < 5 * float((var / n) ** 0.5)
    assert float((torch.cov(draws.T) - exact.covariance()).abs().max()) < 5 * float(var) * math.sqrt(2 / n)


def test_linear_reverse_hands_the_schedule_one_dimensional_times():
    """Schedules are written for 1-D times (LinearSDE's docstring): the fast reverse drift evaluates them once at a
    scalar time as a ``(1,)`` tensor, and at per-sample times as ``(B,)``; never as a 0-d tensor."""
    shapes = []

    class Recording(VPSDE):
        def drift_coef(self, t):
            shapes.append(tuple(t.shape))
            return super().drift_coef(t)

    reverse = Recording().reverse(lambda x, t: -x, probability_flow=True)
    x = torch.randn(5, 2, dtype=torch.float64)
    for t, shape in ((0.4, (1,)), (torch.tensor(0.4, dtype=torch.float64), (1,)), (torch.full((5,), 0.4), (5,))):
        shapes.clear()
        reverse.drift(x, t)
        assert shapes == [shape]
