"""DSM losses checked at the exact score of analytic Gaussian mixtures.

At the exact score ``s*`` of ``p_t`` the loss is irreducible: ``E || sigma s* + z ||^2 = D - sigma^2 E_{p_t} ||s*||^2``
(expand the square; ``E[z | x_t] = -sigma s*(x_t)``), and its derivative in any direction ``h`` of the score,
``2 E[(sigma s* + z) . sigma h]``, is zero in expectation. Monte Carlo tolerances are stated in standard errors
(``Z`` below) of the sample at hand; every draw is seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import shared_path
from scipy import integrate
from torch import nn

from scoresde.data import GaussianMixture, random_mixture
from scoresde.losses import DSMLoss, LossDraws, ddpm_loss, edm_loss, get_loss, smld_loss
from scoresde.score import ScoreModel
from scoresde.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

Z = 5.0  # allowed deviation in standard errors (two-sided p ~ 6e-7 per check)


class ExactNet(nn.Module):
    """A 'network' returning the exact score of ``mix`` (time label = t), optionally perturbed by ``delta * h``."""

    def __init__(self, mix: GaussianMixture, sde, delta: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.mix, self.sde, self.delta, self.scale = mix, sde, delta, scale

    def forward(self, x, label):
        return self.scale * self.mix.score(x, label, self.sde) + self.delta * torch.sin(x)


def exact_model(mix, sde, **kw) -> ScoreModel:
    return ScoreModel(ExactNet(mix, sde, **kw), sde, parameterization="score", time_input="t")


def _fixed_t_draws(n, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, d), generator=g, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    return LossDraws(tt, z, torch.ones_like(tt))


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_irreducible_value_at_exact_score(sde, t):
    mix = random_mixture(2, n_components=3, seed=1)
    loss = DSMLoss(sde, reduce_mean=False)
    n = 40_000
    x0 = mix.sample(n, generator=torch.Generator().manual_seed(0))
    per = loss.per_example(exact_model(mix, sde), x0, _fixed_t_draws(n, 2, t, seed=1))
    # Irreducible value from an independent sample of p_t: 0.5 * (D - sigma^2 E||s*||^2)  (half-sum reduction).
    xt = mix.sample_marginal(n, t, sde, generator=torch.Generator().manual_seed(2))
    sigma = float(sde.marginal_std(torch.tensor([t], dtype=torch.float64)))
    fisher = mix.score(xt, torch.full((n,), t, dtype=torch.float64), sde).square().sum(1)
    expected = 0.5 * (2 - sigma**2 * fisher.mean())
    se = math.sqrt(per.var() / n + (0.5 * sigma**2) ** 2 * fisher.var() / n)
    assert abs(per.mean() - expected) < Z * se, (float(per.mean()), float(expected), se)


def test_irreducible_value_uniform_t_closed_form(sde):
    """One isotropic Gaussian N(mu, s0^2 I): E||s*||^2 = D / (alpha^2 s0^2 + sigma^2), integrated over t ~ U(eps, T)."""
    s0 = 0.7
    mix = GaussianMixture([1.0], [[0.5, -1.0, 2.0]], s0**2)
    loss = DSMLoss(sde, reduce_mean=True)

    def irreducible(t):
        tt = torch.tensor([t], dtype=torch.float64)
        a2, s2 = float(sde.marginal_alpha(tt)) ** 2, float(sde.marginal_std(tt)) ** 2
        return a2 * s0**2 / (a2 * s0**2 + s2)  # (D - sigma^2 * D / (a^2 s0^2 + sigma^2)) / D

    expected = integrate.quad(irreducible, loss.eps, sde.T, limit=200, points=[1e-3, 1e-2])[0] / (sde.T - loss.eps)
    n = 100_000
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(n, generator=g)
    draws = loss.draw(x0.shape, generator=g, dtype=torch.float64)
    per = loss.per_example(exact_model(mix, sde), x0, draws)
    se = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - expected) < Z * se
    assert torch.allclose(loss(exact_model(mix, sde), x0, draws=draws), per.mean())


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_gradient_vanishes_at_exact_score(sde, weighting):
    """d loss / d delta at delta = 0 for score s* + delta sin(x): zero in expectation (quadratic: exact central FD)."""
    mix = random_mixture(2, n_components=3, seed=4)
    loss = DSMLoss(sde, weighting=weighting, eps=1e-3)
    n = 20_000
    g = torch.Generator().manual_seed(5)
    x0 = mix.sample(n, generator=g)
    draws = loss.draw(x0.shape, generator=g, dtype=torch.float64)
    h = 1e-3

    def fd(scale=1.0, direction="sin"):
        """Per-example central difference along the score perturbation ``sin(x)`` or ``s*`` itself."""
        kw = (lambda d: {"delta": d, "scale": scale}) if direction == "sin" else (lambda d: {"scale": scale + d})
        up = loss.per_example(exact_model(mix, sde, **kw(h)), x0, draws)
        down = loss.per_example(exact_model(mix, sde, **kw(-h)), x0, draws)
        return (up - down) / (2 * h)

    for direction in ("sin", "score"):
        grad = fd(direction=direction)
        assert abs(float(grad.mean())) < Z * float(grad.std()) / math.sqrt(n), direction
    # Away from the optimum the same estimator sees a clearly non-zero gradient.
    wrong = fd(scale=0.5, direction="score")
    assert float(wrong.mean()) < -Z * float(wrong.std()) / math.sqrt(n)


def test_likelihood_weighting_and_importance_weight(sde):
    """g^2 / sigma^2 = -2 d lambda / dt, and the importance weight times q(t) (T - eps) equals it."""
    loss = DSMLoss(sde, weighting="likelihood", importance_sampling=True)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (dlam,) = torch.autograd.grad(sde.marginal_lambda(t).sum(), t)
    t = t.detach()
    ratio = sde.diffusion_sq(t) / sde.marginal_std(t) ** 2
    torch.testing.assert_close(ratio, -2 * dlam, rtol=1e-6, atol=0)
    ends = torch.tensor([loss.eps, sde.T], dtype=torch.float64)
    lam = sde.marginal_lambda(ends)
    q = -dlam / (lam[0] - lam[1])  # density of the importance-sampled t
    _, w = loss.sample_time(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(w[0] * q * (sde.T - loss.eps), ratio, rtol=1e-6, atol=0)


def test_importance_sampled_times_follow_q(sde):
    """Kolmogorov–Smirnov: t ~ q has CDF (lambda(eps) - lambda(t)) / (lambda(eps) - lambda(T)); n = 20000."""
    loss = DSMLoss(sde, weighting="likelihood", importance_sampling=True)
    n = 20_000
    t, _ = loss.sample_time(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert t.min() >= loss.eps and t.max() <= sde.T
    t, _ = torch.sort(t)
    lam = sde.marginal_lambda(torch.tensor([loss.eps, sde.T], dtype=torch.float64))
    cdf = (lam[0] - sde.marginal_lambda(t)) / (lam[0] - lam[1])
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float((cdf - emp).abs().max())
    assert ks < 1.95 / math.sqrt(n)  # 0.1% critical value


def test_importance_sampling_is_unbiased():
    """Same expectation as uniform t for a wrong model (scale 0.7 of the exact score); n = 200000 each."""
    sde = VPSDE()
    mix = GaussianMixture([1.0], [[0.3, -0.2]], 0.5**2)
    model = exact_model(mix, sde, scale=0.7)
    n = 200_000
    x0 = mix.sample(n, generator=torch.Generator().manual_seed(0))
    means, ses = [], []
    for i, importance in enumerate([False, True]):
        loss = DSMLoss(sde, weighting="likelihood", importance_sampling=importance, eps=1e-3)
        per = loss.per_example(model, x0, loss.draw(x0.shape, torch.Generator().manual_seed(10 + i), None, x0.dtype))
        means.append(float(per.mean()))
        ses.append(float(per.std()) / math.sqrt(n))
    assert abs(means[0] - means[1]) < Z * math.hypot(*ses)
    assert ses[1] < ses[0]  # the point of importance sampling


def test_reductions_and_discrete_grid():
    sde = VESDE(N=10)
    mix = random_mixture(4, seed=0)
    x0 = mix.sample(64, generator=torch.Generator().manual_seed(0))
    model = exact_model(mix, sde, scale=0.5)
    draws = DSMLoss(sde).draw(x0.shape, torch.Generator().manual_seed(1), dtype=x0.dtype)
    mean = DSMLoss(sde, reduce_mean=True).per_example(model, x0, draws)
    half_sum = DSMLoss(sde, reduce_mean=False).per_example(model, x0, draws)
    torch.testing.assert_close(half_sum, 0.5 * 4 * mean)
    for loss in (ddpm_loss(sde), smld_loss(sde), get_loss("ddpm", sde)):
        t, w = loss.sample_time(1000, torch.Generator().manual_seed(2), dtype=torch.float64)
        k = torch.round(t * 10)
        torch.testing.assert_close(t, k / 10)
        assert set(k.long().tolist()) == set(range(1, 11))
        assert (w == 1).all()


def test_eps_parameterization_matches_score_form():
    """For eps-nets the loss uses eps_hat directly; it equals ||sigma s + z||^2 with s = -eps_hat / sigma."""
    sde = SubVPSDE()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)

        def forward(self, x, label):
            return self.lin(x) * (1 + label[:, None])

    model = ScoreModel(Net(), sde, parameterization="eps").double()
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss = DSMLoss(sde)
    draws = loss.draw(x.shape, torch.Generator().manual_seed(0), dtype=x.dtype)
    mean, std = sde.marginal_prob(x, draws.t)
    xt = mean + std[:, None] * draws.z
    ref = (model(xt, draws.t) * std[:, None] + draws.z).square().mean(1)
    torch.testing.assert_close(loss.per_example(model, x, draws), ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "name, factory", [("vp", VPSDE), ("subvp", SubVPSDE), ("ve", lambda: VESDE(sigma_min=0.01, sigma_max=50.0))]
)
def test_draws_follow_reference_order(name, factory):
    """Reference fixtures: after torch.manual_seed(123) the loss draws t = rand * (1 - eps) + eps, then z."""
    folder = {"vp": "vp_ddpmpp_continuous", "subvp": "subvp_ddpmpp_continuous", "ve": "ve_ncsnpp_continuous"}[name]
    path = shared_path("fixtures", "official_score_sde", folder, "io.pt")
    io = torch.load(path, weights_only=True)
    sde = factory()
    loss = DSMLoss(sde, eps=float(io["loss_eps"]), reduce_mean=bool(io["reduce_mean"]))
    torch.manual_seed(int(io["loss_seed"]))
    draws = loss.draw(io["x"].shape, dtype=torch.float32)
    assert torch.equal(draws.t, io["loss_t"])
    assert torch.equal(draws.z, io["loss_z"])
    mean, std = sde.marginal_prob(io["x"], draws.t)
    xt = mean + std[:, None, None, None] * draws.z
    torch.testing.assert_close(xt, io["loss_perturbed_x"], rtol=1e-5, atol=1e-5)


def test_bad_options():
    sde = VPSDE()
    with pytest.raises(ValueError, match="weighting"):
        DSMLoss(sde, weighting="nope")
    with pytest.raises(ValueError, match="importance_sampling"):
        DSMLoss(sde, importance_sampling=True)
    with pytest.raises(ValueError, match="eps"):
        DSMLoss(sde, eps=0.0)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("nope", sde)
    with pytest.raises(ValueError, match="bad option"):
        get_loss("ddpm", sde, foo=1)


@pytest.mark.parametrize("folder", ["vp_ddpmpp_continuous", "subvp_ddpmpp_continuous", "ve_ncsnpp_continuous"])
@pytest.mark.parametrize("use_ema", [False, True])
def test_loss_equals_reference_on_its_checkpoint(folder, use_ema):
    """The reference's DSM loss on its own fixture checkpoint (NCSN++ / DDPM++ loaded into our net), same seed."""
    from scoresde.nets.official import load_official_checkpoint

    root = shared_path("fixtures", "official_score_sde", folder)
    shared_path("fixtures", "official_score_sde", folder, "checkpoint.pth")
    io = torch.load(root / "io.pt", weights_only=True)
    model = load_official_checkpoint(root / "checkpoint.pth", root / "config.json", use_ema=use_ema)
    loss = DSMLoss(model.sde, eps=float(io["loss_eps"]), reduce_mean=bool(io["reduce_mean"]))
    torch.manual_seed(int(io["loss_seed"]))
    draws = loss.draw(io["x"].shape, dtype=torch.float32)
    with torch.no_grad():
        per = loss.per_example(model.score_model, io["x"], draws)
    tag = "ema" if use_ema else "model"
    # README of the fixtures: outputs agree to ~1e-6 relative across thread counts
    torch.testing.assert_close(per, io[f"loss_per_example_{tag}"], rtol=2e-5, atol=0)
    torch.testing.assert_close(per.mean(), io[f"loss_{tag}"], rtol=2e-5, atol=0)


# ------------------------------------------------------------------------------------------------------ EDM loss
EDM_SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}


class ExactDenoiserNet(nn.Module):
    """The exact mixture denoiser behind the ``edm`` parameterization: ``F = (x0* - c_skip y) / c_out`` (written
    without cancellation), the EDM SDE's noise label ``ln(s) / 4``; ``delta`` adds ``delta * sin(input)``."""

    def __init__(self, mix, sde, sigma_data, delta=0.0):
        super().__init__()
        self.mix, self.sde, self.sd, self.delta = mix, sde, sigma_data, delta

    def forward(self, inp, label):
        t = self.sde.inverse_lambda(-4 * label)
        alpha, sigma = self.sde.marginal_alpha(t)[:, None], self.sde.marginal_std(t)[:, None]
        s, r2 = sigma / alpha, (sigma / alpha) ** 2 + self.sd**2
        x = inp * alpha * r2.sqrt()  # c_in = 1 / (alpha sqrt(s^2 + sd^2))
        eps = -sigma * self.mix.score(x, t, self.sde)
        return (s * x / (alpha * r2) - eps) * r2.sqrt() / self.sd + self.delta * torch.sin(inp)


def exact_edm_model(mix, sde, sigma_data, delta=0.0) -> ScoreModel:
    return ScoreModel(ExactDenoiserNet(mix, sde, sigma_data, delta), sde, "edm", "edm", sigma_data=sigma_data)


@pytest.mark.parametrize("name", sorted(EDM_SDES))
def test_edm_loss_irreducible_value_at_exact_denoiser(name):
    """E[lambda(s) |x0* - x0|^2] over the log-normal noise levels equals E_t[w(t) (1 - sigma^2 E|s*|^2 / D)], the
    latter from an independent sample of p_t at the same t (n = 40000, Z standard errors of the difference)."""
    sde = EDM_SDES[name]()
    mix, sd = random_mixture(2, n_components=3, seed=1), 1.3
    loss = edm_loss(sde, sigma_data=sd)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(n, generator=g)
    draws = loss.draw(x0.shape, generator=g, dtype=torch.float64)
    per = loss.per_example(exact_edm_model(mix, sde, sd), x0, draws)
    alpha, sigma = sde.marginal_alpha(draws.t)[:, None], sde.marginal_std(draws.t)[:, None]
    xt = alpha * mix.sample(n, generator=g) + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    fisher = mix.score(xt, draws.t, sde).square().sum(1)
    irreducible = loss.time_weight(draws.t) * (1 - sigma[:, 0] ** 2 * fisher / 2)
    diff = per - irreducible
    assert abs(float(diff.mean())) < Z * float(diff.std()) / math.sqrt(n)
    # the irreducible part is a real, non-zero floor: a wrong denoiser scores clearly above it
    worse = loss.per_example(exact_edm_model(mix, sde, sd, delta=0.3), x0, draws)
    assert float((worse - per).mean()) > Z * float((worse - per).std()) / math.sqrt(n)


@pytest.mark.parametrize("name", sorted(EDM_SDES))
def test_edm_loss_gradient_vanishes_at_exact_denoiser(name):
    """d loss / d delta at delta = 0 for F* + delta sin(input): zero in expectation (quadratic: exact central FD)."""
    sde = EDM_SDES[name]()
    mix, sd = random_mixture(2, n_components=3, seed=4), 0.8
    loss = edm_loss(sde, sigma_data=sd)
    n, h = 20_000, 1e-3
    g = torch.Generator().manual_seed(5)
    x0 = mix.sample(n, generator=g)
    draws = loss.draw(x0.shape, generator=g, dtype=torch.float64)
    up = loss.per_example(exact_edm_model(mix, sde, sd, h), x0, draws)
    down = loss.per_example(exact_edm_model(mix, sde, sd, -h), x0, draws)
    grad = (up - down) / (2 * h)
    assert abs(float(grad.mean())) < Z * float(grad.std()) / math.sqrt(n)


def test_edm_weighting_is_unit_weight_on_the_network_target():
    """With the edm parameterization lambda(s) c_out^2 = 1: the per-example EDM loss is mean (F - F_target)^2 with
    F_target = (x0 - c_skip y) / c_out (Karras et al. 2022, Eq. 8), and equals lambda(s) mean |x0_hat - x0|^2."""
    sde, sd = VPSDE(), 0.6

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, label):
            return self.lin(x) * (1 + label[:, None])

    torch.manual_seed(0)
    model = ScoreModel(Net(), sde, "edm", "edm", sigma_data=sd).double()
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = edm_loss(sde, sigma_data=sd)
    draws = loss.draw(x0.shape, torch.Generator().manual_seed(2), dtype=x0.dtype)
    alpha, sigma = sde.marginal_alpha(draws.t)[:, None], sde.marginal_std(draws.t)[:, None]
    xt = alpha * x0 + sigma * draws.z
    s = sigma / alpha
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    target = (x0 - c_skip * xt / alpha) / c_out
    got = loss.per_example(model, x0, draws)
    torch.testing.assert_close(got, (model.raw(xt, draws.t) - target).square().mean(1), rtol=1e-9, atol=0)
    lam = (s[:, 0] ** 2 + sd**2) / (s[:, 0] * sd) ** 2
    torch.testing.assert_close(got, lam * (model.x0_hat(xt, draws.t) - x0).square().mean(1), rtol=1e-9, atol=0)


def test_v_loss_is_edm_weighting_with_unit_sigma_data():
    """On VP, |v - v_hat|^2 = (1 + s^2) |eps - eps_hat|^2 (Salimans & Ho 2022): ``weighting='edm'``, sigma_data = 1."""
    sde = VPSDE()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, label):
            return self.lin(x) * label[:, None]

    torch.manual_seed(0)
    model = ScoreModel(Net(), sde, "v", "t").double()
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = DSMLoss(sde, weighting="edm", sigma_data=1.0)
    draws = loss.draw(x0.shape, torch.Generator().manual_seed(2), dtype=x0.dtype)
    alpha, sigma = sde.marginal_alpha(draws.t)[:, None], sde.marginal_std(draws.t)[:, None]
    v = alpha * draws.z - sigma * x0
    xt = alpha * x0 + sigma * draws.z
    torch.testing.assert_close(loss.per_example(model, x0, draws), (model.raw(xt, draws.t) - v).square().mean(1))


@pytest.mark.parametrize("name", sorted(EDM_SDES))
def test_lognormal_noise_levels(name):
    """ln(sigma / alpha) of the drawn t follows N(p_mean, p_std^2) truncated to the SDE's [s(eps), s(T)]
    (Kolmogorov-Smirnov against the truncated normal CDF, n = 20000, 0.1% critical value)."""
    sde = EDM_SDES[name]()
    loss = edm_loss(sde, sigma_data=0.5, p_mean=-0.4, p_std=1.6)
    n = 20_000
    t, w = loss.sample_time(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.all(w == 1) and t.min() >= loss.eps and t.max() <= sde.T
    log_s = torch.sort(-sde.marginal_lambda(t))[0]
    ends = -sde.marginal_lambda(torch.tensor([loss.eps, sde.T], dtype=torch.float64))
    normal = scipy.stats.norm(-0.4, 1.6)
    lo, hi = normal.cdf(ends.numpy())
    cdf = (normal.cdf(log_s.numpy()) - lo) / (hi - lo)
    emp = np.arange(1, n + 1) / n
    assert np.abs(cdf - emp).max() < 1.95 / math.sqrt(n)


def test_edm_loss_options():
    sde = EDMSDE()
    with pytest.raises(ValueError, match="sigma_data"):
        edm_loss(sde)
    with pytest.raises(ValueError, match="sigma_data"):
        get_loss("edm", sde, sigma_data=0.0)
    with pytest.raises(ValueError, match="p_std"):
        get_loss("edm", sde, sigma_data=0.5, p_std=0.0)
    loss = get_loss("edm", sde, sigma_data=0.5)
    assert (loss.weighting, loss.time_sampling, loss.p_mean, loss.p_std) == ("edm", "lognormal", -1.2, 1.2)
