"""Analytic Gaussian mixtures: exact scores, marginal densities and sampling; the toy datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from scoresde.data import GaussianMixture, eight_gaussians_mixture, random_mixture, ring_mixture, sample_toy
from scoresde.data.toy import TOY_DATASETS


@pytest.fixture
def mix3d():
    return random_mixture(3, n_components=4, seed=1)


def test_log_prob_matches_scipy_at_every_time(sde, mix3d):
    """log p_t = logsumexp_k(log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)) with scipy's MVN."""
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for t in (0.0, 1e-3, 0.3, 1.0):
        tt = torch.full((5,), t, dtype=torch.float64)
        alpha, sigma = float(sde.marginal_alpha(tt[:1])), float(sde.marginal_std(tt[:1]))
        comps = [
            math.log(w) + scipy.stats.multivariate_normal(alpha * mu, alpha**2 * cov + sigma**2 * np.eye(3)).logpdf(x)
            for w, mu, cov in zip(mix3d.weights.tolist(), mix3d.means.numpy(), mix3d.covs.numpy(), strict=True)
        ]
        ref = scipy.special.logsumexp(np.stack(comps), axis=0)
        np.testing.assert_allclose(mix3d.log_prob(x, tt, sde).numpy(), ref, rtol=1e-10)
    ref0 = scipy.special.logsumexp(
        [
            math.log(w) + scipy.stats.multivariate_normal(mu, c).logpdf(x)
            for w, mu, c in zip(mix3d.weights.tolist(), mix3d.means.numpy(), mix3d.covs.numpy(), strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(mix3d.log_prob(x).numpy(), ref0, rtol=1e-10)


def test_score_is_gradient_of_log_prob(sde, mix3d):
    """score(x, t) equals autograd of log p_t(x), per-sample times, float64."""
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(16, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64).clamp_min(1e-4)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix3d.log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(mix3d.score(x.detach(), t, sde), grad, rtol=1e-9, atol=1e-9)


def test_marginal_matches_noised_samples(sde):
    """Draw x_0, noise it with marginal_prob: mean and covariance match the analytic marginal mixture.

    n = 200000 samples in 2-D; tolerance 5 standard errors of each moment estimate.
    """
    mix = random_mixture(2, n_components=3, seed=4)
    n, t = 200000, 0.4
    xt = mix.sample_marginal(n, t, sde, generator=torch.Generator().manual_seed(2))
    pt = mix.marginal(sde, t)
    cov = pt.covariance()
    se_mean = torch.sqrt(torch.diag(cov) / n)
    assert ((xt.mean(0) - pt.mean()).abs() < 5 * se_mean).all()
    emp_cov = torch.cov(xt.T)
    se_cov = torch.sqrt((torch.diag(cov)[:, None] * torch.diag(cov)[None] + cov**2) / n) * 2  # heavy tails: x2
    assert ((emp_cov - cov).abs() < 5 * se_cov).all()


def test_marginal_density_ks_1d(sde):
    """1-D mixture: noised samples pass a KS test against the analytic marginal CDF (n = 20000, alpha = 1e-3)."""
    mix = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [0.1, 0.5])
    n, t = 20000, 0.2
    xt = mix.sample_marginal(n, t, sde, generator=torch.Generator().manual_seed(3))[:, 0].numpy()
    pt = mix.marginal(sde, t)

    def cdf(v):
        return sum(
            w * scipy.stats.norm(mu[0], math.sqrt(c[0, 0])).cdf(v)
            for w, mu, c in zip(pt.weights.tolist(), pt.means.numpy(), pt.covs.numpy(), strict=True)
        )

    assert scipy.stats.kstest(xt, cdf).pvalue > 1e-3


def test_log_prob_normalised_2d(sde):
    """p_t integrates to 1 (trapezoid on a grid wide enough for the marginal, 400^2 points)."""
    mix = eight_gaussians_mixture()
    for t in (0.0, 0.5):
        pt = mix.marginal(sde, t)
        half = float(pt.means.abs().max() + 7 * pt.covs.diagonal(dim1=1, dim2=2).max().sqrt())
        g = torch.linspace(-half, half, 400, dtype=torch.float64)
        xx, yy = torch.meshgrid(g, g, indexing="ij")
        dens = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1), t, sde).exp().reshape(400, 400)
        total = torch.trapezoid(torch.trapezoid(dens, g, dim=1), g)
        assert float(total) == pytest.approx(1.0, abs=1e-4)


def test_sample_moments_and_labels():
    """n = 100000 exact samples: mean, covariance and component frequencies within 5 standard errors."""
    mix = random_mixture(4, n_components=3, seed=7)
    n = 100000
    x, labels = mix.sample(n, generator=torch.Generator().manual_seed(0), return_labels=True)
    cov = mix.covariance()
    assert ((x.mean(0) - mix.mean()).abs() < 5 * torch.sqrt(torch.diag(cov) / n)).all()
    assert ((torch.cov(x.T) - cov).abs() < 0.05 * cov.abs().max()).all()
    freq = torch.bincount(labels, minlength=3).double() / n
    w = mix.weights
    assert ((freq - w).abs() < 5 * torch.sqrt(w * (1 - w) / n)).all()
    for k in range(3):  # per-component covariance
        xk = x[labels == k]
        assert (torch.cov(xk.T) - mix.covs[k]).abs().max() < 0.05 * mix.covs[k].abs().max()


def test_denoiser_single_gaussian_closed_form(sde):
    """K = 1: E[x_0 | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)."""
    mix = random_mixture(3, n_components=1, seed=2)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.3, dtype=torch.float64)
    a, s = sde.marginal_alpha(t[:1]), sde.marginal_std(t[:1])
    mu, cov = mix.means[0], mix.covs[0]
    gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(3, dtype=torch.float64))
    ref = mu + (x - a * mu) @ gain.T
    torch.testing.assert_close(mix.denoiser(x, t, sde), ref)


def test_image_shaped_mixture(sde):
    """A 16-D mixture used as (B, 1, 4, 4) images: score shaped like x, equal to the flat computation."""
    mix = random_mixture(16, n_components=3, seed=3, event_shape=(1, 4, 4))
    x = mix.sample(6, generator=torch.Generator().manual_seed(1))
    assert x.shape == (6, 1, 4, 4)
    t = torch.full((6,), 0.2, dtype=torch.float64)
    s_img = mix.score_fn(sde)(x, t)
    assert s_img.shape == x.shape
    torch.testing.assert_close(s_img.reshape(6, 16), mix.score(x.reshape(6, 16), t, sde))
    with pytest.raises(ValueError, match="shape"):
        mix.score(torch.zeros(2, 3, 4, 4, dtype=torch.float64), t[:2], sde)


def test_float32_and_devices(device):
    mix = random_mixture(2, seed=0)
    from scoresde.sde import VPSDE

    x = torch.randn(5, 2, device=device)
    s = mix.score(x, torch.full((5,), 0.5, device=device), VPSDE())
    assert s.dtype == torch.float32 and s.device.type == device.type
    ref = mix.score(x.double().cpu(), torch.full((5,), 0.5, dtype=torch.float64), VPSDE())
    torch.testing.assert_close(s.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_bad_mixture_parameters():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([-1.0], [[0.0]])


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_datasets(name):
    a = sample_toy(name, 5000, torch.Generator().manual_seed(0))
    b = sample_toy(name, 5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and torch.isfinite(a).all() and torch.equal(a, b)
    assert 0.5 < float(a.std(0).min()) and float(a.abs().max()) < 10


def test_toy_dataset_statistics():
    """Eight Gaussians: mean 0, per-axis variance r^2 / 2 + s^2; checkerboard uniform on half of [-4, 4]^2."""
    n = 40000
    x = sample_toy("eight_gaussians", n, torch.Generator().manual_seed(1)).double()
    mix = eight_gaussians_mixture()
    r2, s2 = float((mix.means[0] ** 2).sum()), float(mix.covs[0, 0, 0])
    assert float(x.var(0).mean()) == pytest.approx(r2 / 2 + s2, rel=0.03)
    c = sample_toy("checkerboard", n, torch.Generator().manual_seed(1))
    cells = (torch.floor(c[:, 0] / 2) + torch.floor(c[:, 1] / 2)) % 2
    assert cells.unique().numel() == 1 and c.abs().max() <= 4  # only the dark squares
    with pytest.raises(ValueError, match="unknown toy dataset"):
        sample_toy("spirals3", 10)
    assert ring_mixture(4).n_components == 4
