"""Inpainting and colorization by replacement on Gaussians, whose exact conditionals are Gaussian.

For ``x ~ N(mu, S)`` and a linear measurement ``A x = b`` the conditional is ``N(mu + S A^T (A S A^T)^-1 (b - A mu),
S - S A^T (A S A^T)^-1 A S)``. Replacement sampling is exact when the measured and unmeasured orthogonal
coordinates are independent; with correlations it is biased (measured here and bounded honestly).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.data import GaussianMixture, random_mixture
from scoresde.sampling.inverse import OrthogonalMeasurement, colorize, gray_rotation, inpaint
from scoresde.sde import VESDE, VPSDE

N = 4000


def _condition(mu: torch.Tensor, cov: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T)
    return mu + gain @ (b - a @ mu), cov - gain @ a @ cov


def _check(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, bias: float):
    """Sample mean within 5 standard errors + ``bias``; covariance entries within 5 standard errors
    ``sqrt((S_ij^2 + S_ii S_jj) / N)`` + ``bias``."""
    se_m = (cov.diagonal().clamp_min(0) / N).sqrt()
    err = (x.mean(0) - mean).abs()
    assert (err < 5 * se_m + bias).all(), (err, se_m)
    d = cov.diagonal().clamp_min(0)
    se_c = ((cov**2 + torch.outer(d, d)) / N).sqrt()
    err_c = (torch.cov(x.T) - cov).abs()
    assert (err_c < 5 * se_c + bias).all(), (err_c, se_c)


def _inpaint_problem(cov: torch.Tensor, mu: torch.Tensor):
    gauss = GaussianMixture([1.0], mu[None], cov[None])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    y = mu[:2] + torch.tensor([0.8, -0.5], dtype=torch.float64)
    known = torch.zeros(N, 4, dtype=torch.float64)
    known[:, :2] = y
    mean, c = _condition(mu, cov, torch.eye(4, dtype=torch.float64)[:2], y)
    return gauss, mask, known, mean, c


def test_inpainting_is_exact_for_independent_blocks():
    """Known and unknown blocks independent: the conditional is the unknown block's marginal, and replacement
    (VP, Euler–Maruyama, 500 steps, N = 4000) must match its mean and covariance to sampling error + 0.01."""
    full = random_mixture(4, 1, seed=3, min_var=0.1, max_var=1.0).covs[0]
    cov = torch.zeros(4, 4, dtype=torch.float64)
    cov[:2, :2], cov[2:, 2:] = full[:2, :2], full[2:, 2:]
    mu = torch.tensor([0.3, -0.2, 0.7, 1.5], dtype=torch.float64)
    gauss, mask, known, mean, c = _inpaint_problem(cov, mu)
    sde = VPSDE()
    res = inpaint(
        sde, gauss.score_fn(sde), known, mask, predictor="euler_maruyama", corrector="none", steps=500,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert res.nfe == 501
    assert torch.equal(res.samples[:, :2], known[:, :2])
    _check(res.samples[:, 2:], mean[2:], c[2:, 2:], 0.01)


@pytest.fixture(scope="module")
def correlated():
    g = random_mixture(4, 1, seed=3, min_var=0.1, max_var=1.0)  # correlations between blocks up to -0.35
    return _inpaint_problem(g.covs[0], g.means[0])


def test_inpainting_correlated_gaussian_with_corrector(correlated):
    """Correlated Gaussian, VE with the paper's PC (reverse diffusion + Langevin, snr 0.16), 500 steps, N = 4000:
    the Langevin corrector at each time mixes the unknown part given the replaced known part, and the samples match
    the exact conditional to sampling error + 0.02 (measured: mean errors 0.2 and 1.1 standard errors)."""
    gauss, mask, known, mean, c = correlated
    sde = VESDE()
    res = inpaint(sde, gauss.score_fn(sde), known, mask, steps=500, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 1001
    _check(res.samples[:, 2:], mean[2:], c[2:, 2:], 0.02)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_inpainting_bias_without_corrector_is_bounded(correlated, sde):
    """Replacement with a predictor alone is an approximation: on the correlated Gaussian (Euler–Maruyama, 500
    steps, N = 4000) the unknown mean moves from the prior mean towards the exact conditional mean but measurably
    falls short (measured: it covers 50% of the 0.31 shift, errors ~18 standard errors, on VP and VE; with the
    Langevin corrector 84% on VP, 99% on VE). Bound: it covers at least
    30% of the shift, and the covariance stays within sampling error + 0.03 of the exact conditional one."""
    gauss, mask, known, mean, c = correlated
    res = inpaint(
        sde, gauss.score_fn(sde), known, mask, predictor="euler_maruyama", corrector="none", steps=500,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    x = res.samples[:, 2:]
    shift = mean[2:] - gauss.means[0, 2:]
    covered = float(((x.mean(0) - gauss.means[0, 2:]) @ shift) / (shift @ shift))
    assert 0.3 < covered < 1.0 + 5 * math.sqrt(float(c[2:, 2:].diagonal().max()) / N) / float(shift.norm()), covered
    _check(x, x.mean(0), c[2:, 2:], 0.03)


def test_colorization_matches_gaussian_conditional():
    """Colour 1x2 RGB 'images' from their gray level. The Gaussian is independent across the gray coordinate
    (1,1,1)/sqrt(3) and the two colour coordinates of each pixel, so replacement is exact: samples (VP,
    Euler–Maruyama, 500 steps, N = 4000) match the exact conditional given the gray values (mean and covariance of
    all 6 values, singular along the gray directions) to sampling error + 0.01; the output's gray is exact."""
    q = gray_rotation(3)
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(q[0], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
    # covariance in decoupled coordinates: gray of both pixels correlated; colours of both pixels correlated
    zc = random_mixture(6, 1, seed=5, min_var=0.1, max_var=0.6).covs[0]
    # z laid out as (channel, pixel) -> flat index c * 2 + p: the first two entries are the gray coordinates
    zcov = torch.zeros(6, 6, dtype=torch.float64)
    zcov[:2, :2], zcov[2:, 2:] = zc[:2, :2], zc[2:, 2:]
    big_q = torch.kron(q, torch.eye(2, dtype=torch.float64))  # acts on (channel, pixel)-flattened samples
    cov = big_q.T @ zcov @ big_q
    mu = torch.tensor([0.2, -0.3, 0.5, 0.1, -0.4, 0.6], dtype=torch.float64)
    gauss = GaussianMixture([1.0], mu[None], cov[None], event_shape=(3, 1, 2))
    gray_vals = torch.tensor([0.4, -0.1], dtype=torch.float64)
    gray = gray_vals.reshape(1, 1, 1, 2).expand(N, 1, 1, 2)
    a = torch.kron(torch.full((1, 3), 1 / 3, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    mean, c = _condition(mu, cov, a, gray_vals)
    sde = VPSDE()
    res = colorize(
        sde, gauss.score_fn(sde), gray, predictor="euler_maruyama", corrector="none", steps=500,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    x = res.samples
    assert x.shape == (N, 3, 1, 2) and res.nfe == 501
    assert torch.allclose(x.mean(1, keepdim=True), gray, atol=1e-12)
    _check(x.reshape(N, 6), mean, c, 0.01)


def test_measurement_errors():
    with pytest.raises(ValueError, match="orthogonal"):
        OrthogonalMeasurement(torch.ones(2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="gray"):
        colorize(VPSDE(), lambda x, t: -x, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="predictor"):
        inpaint(VPSDE(), lambda x, t: -x, torch.zeros(2, 2), torch.ones(2), predictor="bogus")


def _never_called(x, t):
    raise AssertionError("the model was called before the inputs were checked")


NAN = float("nan")


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.full((3, 2, 2), 0.5), r"must be 0 \(unknown\) or 1 \(known\); found \[0.5\]"),
        (torch.full((3, 2, 2), 2.0), r"must be 0 \(unknown\) or 1 \(known\); found \[2.0\]"),
        (torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]), r"found \[0.0, 0.5, 1.0\]"),
        (torch.full((3, 2, 2), NAN), "12 NaN / infinite"),
        (torch.tensor([[[1.0, float("inf")], [0.0, 1.0]]]), "1 NaN / infinite"),
        (torch.tensor([1.0, 0.0]), r"mask of shape \(2,\) does not fit a batch of shape \(5, 3, 2, 2\)"),
        (torch.ones(3, 2, 1, 2), r"shape \(3, 2, 1, 2\) does not fit"),  # a batch of 3 masks for 5 images
        (torch.ones(2, 2, 2), r"shape \(2, 2, 2\) does not fit"),  # 2 channels for 3
        (torch.ones(5, 3, 2, 2, 1), "does not fit"),
        ("all", "must be a tensor"),
    ],
)
def test_bad_masks_are_refused_before_any_model_call(mask, message):
    """Values other than 0 / 1 change the known pixels, NaN makes NaN samples, and a shape that fits only by torch's
    broadcasting (``(2,)`` against ``(B, 3, 2, 2)`` broadcasts over W) is a mistake: each is a ValueError."""
    known = torch.rand(5, 3, 2, 2)
    with pytest.raises(ValueError, match=message):
        inpaint(VPSDE(), _never_called, known, mask, steps=2)


@pytest.mark.parametrize(
    "shape",
    [(3, 2, 2), (1, 2, 2), (2, 2), (3, 1, 1), (1, 1, 1), (5, 3, 2, 2), (1, 3, 2, 2), (5, 1, 2, 2), (5, 1, 1, 1)],
)
def test_mask_shapes_of_one_sample_or_the_batch_keep_the_known_pixels(shape):
    """A mask shaped like one sample or the batch, any non-batch axis 1 to broadcast: the known pixels come out
    exactly as given (a random 0/1 pattern, bool masks included)."""
    known = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    sde = VPSDE()
    res = inpaint(sde, lambda x, t: -x, known, mask, steps=2, generator=torch.Generator().manual_seed(2))
    m = mask.expand(5, 3, 2, 2)  # (H, W) as (1, H, W): every channel
    assert res.samples.shape == known.shape and torch.isfinite(res.samples).all()
    assert torch.equal(res.samples[m], known[m])


def test_nan_or_integer_measurements_are_refused_before_any_model_call():
    known = torch.rand(4, 3, 2, 2)
    known[0, 0, 0, 0] = NAN
    with pytest.raises(ValueError, match="known holds 1 NaN / infinite values"):
        inpaint(VPSDE(), _never_called, known, torch.ones(3, 2, 2), steps=2)
    known[0, 0, 0, 0] = float("-inf")  # also in an unknown pixel: it would still turn the samples to NaN
    with pytest.raises(ValueError, match="known holds 1 NaN"):
        inpaint(VPSDE(), _never_called, known, torch.zeros(3, 2, 2), steps=2)
    with pytest.raises(ValueError, match="known must be a floating-point tensor, got torch.uint8"):
        inpaint(VPSDE(), _never_called, torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.ones(3, 2, 2), steps=2)
    with pytest.raises(ValueError, match="gray holds 8 NaN / infinite values"):
        colorize(VPSDE(), _never_called, torch.full((2, 1, 2, 2), NAN), steps=2)
    gray = torch.rand(2, 1, 2, 2)
    gray[1, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="gray holds 1 NaN"):
        colorize(VPSDE(), _never_called, gray, steps=2)
    with pytest.raises(ValueError, match="orthogonal"):
        OrthogonalMeasurement(torch.ones(2), 2 * torch.eye(2))
    with pytest.raises(ValueError, match="mask values must be 0"):
        OrthogonalMeasurement(torch.full((2,), 0.5), torch.eye(2))
