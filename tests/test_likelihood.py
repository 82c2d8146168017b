"""Probability-flow ODE likelihood and bits/dim against exact answers.

Oracle: with the exact score of a Gaussian mixture the probability-flow ODE maps the exact marginal ``p_eps`` onto
the exact ``p_T``, so ``logp(x) - log p_eps(x) = log prior(z) - log p_T(z)`` holds exactly for every ``x``; only
the ODE solver's error remains (float64, tight tolerances).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torchdiffeq

from scoresde.data import GaussianMixture, random_mixture
from scoresde.likelihood import (
    DIVERGENCES,
    ProbabilityFlowDivergence,
    bits_per_dim,
    dataset_bits_per_dim,
    dequantization_offset,
    draw_probe,
    log_likelihood,
    uniform_dequantize,
)
from scoresde.nets import MLP
from scoresde.score import ScoreModel
from scoresde.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

F64 = torch.float64
EPS = 1e-5
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vp_cosine": CosineVPSDE}


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny (B <= 256, D <= 16): thread hand-offs dominate, and on a shared 2-core machine two
    threads made this file 10-20x slower (4 min vs 15 s measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exact_logp(mix: GaussianMixture, sde, x: torch.Tensor, z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``log p_eps(x) + log prior(z) - log p_T(z)``: what the model's logp must equal with the exact score."""
    return mix.log_prob(x, eps, sde) + sde.prior_logp(z) - mix.log_prob(z, sde.T, sde)


# --- exactness on analytic mixtures --------------------------------------------------------------------------
@pytest.mark.parametrize("time_variable", ["angle", "t"])
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_divergence_matches_mixture_density(name, dim, time_variable):
    sde = SDES[name]()
    mix = random_mixture(dim, n_components=3, seed=dim)
    x = mix.sample(8, _gen(0))
    res = log_likelihood(sde, mix.score_fn(sde), x, eps=EPS, rtol=1e-7, atol=1e-7, divergence="exact",
                         time_variable=time_variable)  # fmt: skip
    err = (res.logp - _exact_logp(mix, sde, x, res.z)).abs()
    # measured errors ~1e-7..1e-5 at rtol = atol = 1e-7; the brief allows 1e-3 nats on average
    assert err.mean() < 1e-3, err
    assert err.max() < 1e-2, err
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp)
    assert res.logp.dtype == F64 and res.z.shape == x.shape
    # The prior-mismatch term is not negligible at this tolerance, so the test sees it.
    assert (sde.prior_logp(res.z) - mix.log_prob(res.z, sde.T, sde)).abs().mean() > 1e-3


@pytest.mark.parametrize("view", ["x0_hat", "eps_hat"])
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_a_model_offering_only_x0_hat_or_eps_hat_gives_the_score_functions_logp(name, view):
    """A denoiser or noise predictor without a score view is converted through the SDE (x0_hat = (x + sigma^2 s) /
    alpha, eps_hat = -sigma s): the same log-likelihood as the exact score to round-off, and the exact density."""
    sde = SDES[name]()
    mix = random_mixture(3, n_components=2, seed=0)
    score = mix.score_fn(sde)

    class OneView:
        def x0_hat(self, x, t):
            return mix.denoiser(x, t, sde)

        def eps_hat(self, x, t):
            return -sde.marginal_std(t)[:, None] * score(x, t)

    model = OneView()
    setattr(OneView, "eps_hat" if view == "x0_hat" else "x0_hat", None)  # the model has only `view`
    x = mix.sample(4, _gen(0)).double()
    ref = log_likelihood(sde, score, x, divergence="exact", rtol=1e-8, atol=1e-8)
    res = log_likelihood(sde, model, x, divergence="exact", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.logp, ref.logp, rtol=0, atol=1e-9)
    assert (res.logp - _exact_logp(mix, sde, x, res.z)).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_lambda_time_variable_matches_mixture_density(name):
    """In ``lambda`` with the state ``x / alpha`` (and the ``D log alpha`` terms at both ends) the exact-divergence
    log-likelihood matches the exact mixture density as in ``t`` (16-D, 8 points, rtol = atol = 1e-7: measured
    errors ~1e-6 nats), and a plain score function is called once per solver evaluation."""
    sde = SDES[name]()
    mix = random_mixture(16, n_components=3, seed=16)
    x = mix.sample(8, _gen(0))
    res = log_likelihood(sde, mix.score_fn(sde), x, eps=EPS, rtol=1e-7, atol=1e-7, divergence="exact",
                         time_variable="lambda")  # fmt: skip
    err = (res.logp - _exact_logp(mix, sde, x, res.z)).abs()
    assert err.mean() < 1e-4, err
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp)
    ref = log_likelihood(sde, mix.score_fn(sde), x, eps=EPS, rtol=1e-9, atol=1e-9, divergence="exact")
    torch.testing.assert_close(res.z, ref.z, rtol=1e-4, atol=1e-4)
    calls = []
    opts = dict(rtol=1e-3, atol=1e-3, divergence="exact", time_variable="lambda")
    log_likelihood(sde, lambda x, t: calls.append(1) or mix.score(x, t, sde), x, **opts)
    assert len(calls) == log_likelihood(sde, mix.score_fn(sde), x, **opts).nfe
    with pytest.raises(ValueError, match="time_variable"):
        log_likelihood(sde, mix.score_fn(sde), x, time_variable="sigma")


ALL_SDES = {**SDES, "edm": EDMSDE}


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_angle_field_vanishes_for_gaussian_data_of_std_sigma_data(name):
    """For data ``N(0, c^2 I)`` the angle coordinates' field ``-tan(theta) (y + m s)`` and its divergence
    ``-tan(theta) (D + m^2 div s)`` are zero at every angle (``s = -x / m^2`` exactly): the property the
    coordinates are built on. In ``t`` the same field is not zero."""
    sde, c, dim = ALL_SDES[name](), 0.7, 3
    gauss = GaussianMixture([1.0], torch.zeros(1, dim, dtype=F64), c**2)
    x = torch.randn(5, dim, generator=_gen(0), dtype=F64)
    eps = 1e-3 if name == "edm" else EPS
    angle = ProbabilityFlowDivergence(sde, gauss.score_fn(sde), x.shape, eps, "exact", F64, time_variable="angle",
                                      sigma_data=c)  # fmt: skip
    lo, hi = angle.tau_range
    for theta in torch.linspace(lo, hi, 7, dtype=F64):
        drift, div = angle.evaluate(theta, x)
        torch.testing.assert_close(drift, torch.zeros_like(x), rtol=0, atol=1e-9)
        torch.testing.assert_close(div, torch.zeros(5, dtype=F64), rtol=0, atol=1e-9)
    plain = ProbabilityFlowDivergence(sde, gauss.score_fn(sde), x.shape, eps, "exact", F64)
    assert plain.evaluate(torch.tensor(0.5 * sde.T, dtype=F64), x)[1].abs().min() > 1e-2


def test_angle_on_edm_sde_matches_mixture_density():
    sde = EDMSDE()
    mix = random_mixture(16, n_components=3, seed=16)
    x = mix.sample(8, _gen(0))
    res = log_likelihood(sde, mix.score_fn(sde), x, eps=2e-3, rtol=1e-7, atol=1e-7, divergence="exact")
    assert (res.logp - _exact_logp(mix, sde, x, res.z, eps=2e-3)).abs().mean() < 1e-4


def test_sigma_data_changes_the_cost_not_the_answer():
    """Any ``sigma_data`` > 0 defines valid coordinates: the log-likelihoods agree to the solver's error (VE,
    16-D, rtol = atol = 1e-8: measured differences ~1e-7 nats); a bad value is refused before any score call."""
    sde = VESDE()
    mix = random_mixture(16, n_components=3, seed=16)
    x = mix.sample(8, _gen(0))
    kw = dict(eps=EPS, rtol=1e-8, atol=1e-8, divergence="exact")
    ref = log_likelihood(sde, mix.score_fn(sde), x, time_variable="t", **kw).logp
    for c in (0.2, 1.0, 5.0):
        res = log_likelihood(sde, mix.score_fn(sde), x, sigma_data=c, **kw)
        torch.testing.assert_close(res.logp, ref, rtol=0, atol=1e-5)
    # Rademacher probes have |v|^2 = D, so the Hutchinson estimate is the same for every sigma_data too (a Gaussian
    # probe's is unbiased for each, with its own noise: it sees the identity part of the field's Jacobian).
    kw = dict(eps=EPS, rtol=1e-8, atol=1e-8, divergence="hutchinson_rademacher")
    est = [log_likelihood(sde, mix.score_fn(sde), x, sigma_data=c, generator=_gen(4), **kw).logp for c in (0.2, 5.0)]
    torch.testing.assert_close(est[0], est[1], rtol=0, atol=1e-5)
    calls = []
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True, torch.ones(2)):
        with pytest.raises(ValueError, match="sigma_data"):
            log_likelihood(sde, lambda x, t: calls.append(1) or mix.score(x, t, sde), x, sigma_data=bad)
    assert not calls
    for good in (np.float32(0.5), torch.tensor(0.5)):  # any real number
        log_likelihood(sde, mix.score_fn(sde), x, sigma_data=good, rtol=1e-2, atol=1e-2, divergence="exact")


def test_angle_takes_fewer_evaluations_than_t_at_equal_accuracy():
    """The reason ``angle`` is the default (benchmarks/bench_likelihood.py): on VE (16-D mixture, 32 points,
    exact divergence) dopri5 in ``angle`` at rtol = atol = 1e-5 has at most the error of dopri5 in ``t`` at
    the same tolerance with at most 0.7x its NFE (the issue's target; measured 1.0e-4 nats / 68 vs 2.5e-4 / 134,
    0.51x)."""
    sde = VESDE()
    mix = random_mixture(16, n_components=4, seed=16)
    x = mix.sample(32, _gen(0))
    kw = dict(eps=EPS, rtol=1e-5, atol=1e-5, divergence="exact")
    t, angle = (log_likelihood(sde, mix.score_fn(sde), x, time_variable=v, **kw) for v in ("t", "angle"))
    err_t, err_angle = ((r.logp - _exact_logp(mix, sde, x, r.z)).abs().mean() for r in (t, angle))
    assert err_angle <= err_t and angle.nfe <= 0.7 * t.nfe, (err_angle, angle.nfe, err_t, t.nfe)


def test_angle_clamps_its_variable_to_the_solve_range():
    """Past ``theta(T)`` ``tan`` would head for its pole (and change sign past pi / 2); the field clamps the angle
    like it clamps ``t``, so a probe beyond the end sees the field at the end."""
    sde = VESDE()
    mix = random_mixture(2, 2, seed=0)
    x = mix.sample(4, _gen(0))
    field = ProbabilityFlowDivergence(sde, mix.score_fn(sde), x.shape, EPS, "exact", F64, time_variable="angle")
    lo, hi = field.tau_range
    for outside, edge in ((hi + 0.1, hi), (math.pi, hi), (lo - 0.01, lo)):
        a, b = field.evaluate(torch.tensor(outside, dtype=F64), x), field.evaluate(torch.tensor(edge, dtype=F64), x)
        assert torch.isfinite(a[0]).all()
        torch.testing.assert_close(a, b)


def test_time_valued_options_need_an_explicit_time_variable():
    """``step_size`` / ``first_step`` / ``step_t`` / ... are values of the ODE's variable: with the default (angle,
    formerly t) they would silently change meaning, so they are refused unless ``time_variable`` is named."""
    sde = VESDE()
    mix = random_mixture(2, 2, seed=0)
    x = mix.sample(4, _gen(0))
    for options in ({"step_size": 0.01}, {"first_step": 1e-3}, {"step_t": torch.tensor([0.5])}):
        method = "rk4" if "step_size" in options else "dopri5"
        with pytest.raises(ValueError, match="time_variable"):
            log_likelihood(sde, mix.score_fn(sde), x, method=method, options=options, divergence="exact")
        log_likelihood(sde, mix.score_fn(sde), x, method=method, options=options, divergence="exact",
                       time_variable="t", rtol=1e-3, atol=1e-3)  # fmt: skip
    log_likelihood(sde, mix.score_fn(sde), x, options={"step_t": None}, rtol=1e-3, atol=1e-3)  # no time value


class _OpaqueSDE:
    """An SDE seen only through the generic interface (reverse drift, T, prior): no Gaussian marginal to use."""

    def __init__(self, sde):
        self._sde, self.T = sde, sde.T

    def reverse(self, score_fn, probability_flow=False):
        return self._sde.reverse(score_fn, probability_flow=probability_flow)

    def prior_logp(self, z):
        return self._sde.prior_logp(z)


def test_an_sde_without_gaussian_marginal_defaults_to_t():
    """The default coordinates need ``alpha``, ``sigma`` and ``lambda``'s inverse; an SDE without them is integrated
    in its own time with its reverse drift (same density as its linear twin), and asking it for ``angle`` is
    refused by name."""
    sde = VPSDE()
    mix = random_mixture(16, n_components=3, seed=16)
    x = mix.sample(8, _gen(0))
    kw = dict(eps=EPS, rtol=1e-7, atol=1e-7, divergence="exact")
    opaque = log_likelihood(_OpaqueSDE(sde), mix.score_fn(sde), x, **kw)
    torch.testing.assert_close(opaque.logp, _exact_logp(mix, sde, x, opaque.z), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="time_variable='t'"):
        log_likelihood(_OpaqueSDE(sde), mix.score_fn(sde), x, time_variable="angle", **kw)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_angle_in_float32(name):
    """A float32 solve in ``angle`` (the time reaches the field in float32) matches the exact mixture density to
    what float32 allows (rtol = atol = 1e-5, 16-D, 8 points: measured 9e-5 (VP) and 5e-5 (VE) nats); a
    ``sigma_data`` that puts theta(T) within a few float32 steps of pi/2 is refused before any work, and allowed in
    float64."""
    sde = SDES[name]()
    mix = random_mixture(16, n_components=3, seed=16)
    x = mix.sample(8, _gen(0)).float()
    res = log_likelihood(sde, mix.score_fn(sde), x, rtol=1e-5, atol=1e-5, divergence="exact")
    assert res.logp.dtype == torch.float32
    assert (res.logp.double() - _exact_logp(mix, sde, x.double(), res.z.double())).abs().mean() < 1e-3
    calls = []
    with pytest.raises(ValueError, match="sigma_data"):
        log_likelihood(sde, lambda x, t: calls.append(1) or mix.score(x, t, sde), x, sigma_data=1e-8)
    assert not calls
    log_likelihood(sde, mix.score_fn(sde), x[:2], sigma_data=1e-8, dtype=F64, rtol=1e-2, atol=1e-2)


def test_image_shaped_input_equals_flat():
    sde = VPSDE()
    flat = random_mixture(16, 3, seed=3)
    img = GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(1, 4, 4))
    x = flat.sample(4, _gen(1))
    kw = dict(rtol=1e-7, atol=1e-7, divergence="hutchinson_gaussian")
    a = log_likelihood(sde, flat.score_fn(sde), x, generator=_gen(2), **kw)
    b = log_likelihood(sde, img.score_fn(sde), x.reshape(4, 1, 4, 4), generator=_gen(2), **kw)
    torch.testing.assert_close(a.logp, b.logp)
    assert b.z.shape == (4, 1, 4, 4) and a.nfe == b.nfe


def test_exact_divergence_chunking_and_network_jacobian():
    """Exact divergence of a network's drift equals the trace of its autograd Jacobian, for any chunk size."""
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLP(data_shape=(3,), hidden=32, depth=2, embed_dim=16), sde).double()
    x = torch.randn(5, 3, dtype=F64)
    t = torch.tensor(0.3, dtype=F64)
    traces = []
    for chunk in (1, 2, None):
        field = ProbabilityFlowDivergence(sde, model, x.shape, EPS, "exact", F64, exact_chunk=chunk)
        traces.append(field.evaluate(t, x)[1])
    drift = sde.reverse(model, probability_flow=True).sde
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: drift(v[None], t.expand(1))[0][0], x[i])  # noqa: B023
        torch.testing.assert_close(traces[0][i], torch.trace(jac))
    torch.testing.assert_close(traces[1], traces[0])
    torch.testing.assert_close(traces[2], traces[0])


class _NumpyBackward(torch.autograd.Function):
    """Identity whose backward leaves torch (no vmap rule), as some custom kernels do."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(grad.detach().numpy().copy())


def test_exact_divergence_falls_back_without_vmap_rule():
    sde = VPSDE()
    mix = random_mixture(3, 2, seed=0)
    x = mix.sample(4, _gen(0))
    t = torch.tensor(0.3, dtype=F64)
    field = ProbabilityFlowDivergence(sde, lambda v, s: mix.score(_NumpyBackward.apply(v), s, sde), x.shape, EPS,
                                      "exact", F64)  # fmt: skip
    with pytest.warns(UserWarning, match="one backward pass per dimension"):
        div = field.evaluate(t, x)[1]
    reference = ProbabilityFlowDivergence(sde, mix.score_fn(sde), x.shape, EPS, "exact", F64).evaluate(t, x)[1]
    torch.testing.assert_close(div, reference)
    assert field.exact_chunk == 1


# --- Hutchinson–Skilling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("divergence", ["hutchinson_gaussian", "hutchinson_rademacher"])
@pytest.mark.parametrize("dim", [2, 16])
def test_hutchinson_is_unbiased(divergence, dim):
    """n = 256 samples, one probe each: mean error vs the exact log-density within 4 standard errors."""
    sde = VPSDE()
    mix = random_mixture(dim, n_components=3, seed=10 + dim)
    x = mix.sample(256, _gen(3))
    res = log_likelihood(sde, mix.score_fn(sde), x, rtol=1e-6, atol=1e-6, divergence=divergence, generator=_gen(4))
    err = res.logp - _exact_logp(mix, sde, x, res.z)
    stderr = err.std() / math.sqrt(len(err))
    assert err.std() > 1e-3  # the estimator really is random
    assert err.mean().abs() < 4 * stderr + 1e-4, (err.mean(), stderr)


def test_probes_have_identity_covariance():
    v = draw_probe("hutchinson_rademacher", (4000, 3), _gen(0), dtype=F64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    g = draw_probe("hutchinson_gaussian", (4000, 3), _gen(0), dtype=F64)
    for p in (v, g):  # E[v v^T] = I; entries of the sample mean have std ~ sqrt(2 / 4000) = 0.022
        torch.testing.assert_close(p.T @ p / len(p), torch.eye(3, dtype=F64), atol=0.1, rtol=0)
    assert draw_probe("exact", (2, 3)) is None


def test_generator_reproducible_and_per_sample():
    sde = VPSDE()
    mix = random_mixture(2, 3, seed=0)
    x = mix.sample(4, _gen(0))
    fn = mix.score_fn(sde)
    a = log_likelihood(sde, fn, x, generator=_gen(7))
    b = log_likelihood(sde, fn, x, generator=_gen(7))
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)
    # One generator per sample: sample k's probe does not depend on the batch it is in.
    full = log_likelihood(sde, fn, x, generator=[_gen(k) for k in range(4)], rtol=1e-8, atol=1e-8)
    part = log_likelihood(sde, fn, x[2:], generator=[_gen(k) for k in range(2, 4)], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(full.logp[2:], part.logp, atol=1e-5, rtol=0)


# --- solver plumbing -----------------------------------------------------------------------------------------
def test_time_is_clamped_so_a_score_undefined_past_T_integrates():
    """Regression: dopri5 evaluates past T; a learned score with log-time features gave 'underflow in dt'."""
    sde = VPSDE()
    mix = random_mixture(2, 3, seed=0)
    times = []

    def fragile_score(x, t):
        times.append(t.detach().clone())
        bad = (t < EPS) | (t > sde.T)
        return torch.where(bad[:, None], torch.full_like(x, float("nan")), mix.score(x, t, sde))

    x = mix.sample(8, _gen(0))
    # step_t=None: torchdiffeq's plain behaviour of stepping past T and interpolating back
    opts = {"step_t": None}
    res = log_likelihood(sde, fragile_score, x, eps=EPS, rtol=1e-6, atol=1e-6, divergence="exact", options=opts)
    assert torch.isfinite(res.logp).all()
    ts = torch.cat(times)
    assert ts.min() >= EPS and ts.max() <= sde.T
    assert (res.logp - _exact_logp(mix, sde, x, res.z)).abs().mean() < 1e-3

    # The same field without the clamp fails in torchdiffeq: the hazard is real.
    field = ProbabilityFlowDivergence(sde, fragile_score, x.shape, EPS, "exact", F64)
    field.T = math.inf
    state = (x.clone(), torch.zeros(8, dtype=F64))
    with pytest.raises(AssertionError, match="underflow"):
        torchdiffeq.odeint(field, state, torch.tensor([EPS, sde.T], dtype=F64), rtol=1e-6, atol=1e-6)


def test_nfe_counts_score_calls_and_fixed_grid_method():
    sde = VESDE()
    mix = random_mixture(2, 2, seed=1)
    calls = []

    def score(x, t):
        calls.append(1)
        return mix.score(x, t, sde)

    x = mix.sample(4, _gen(0))
    opts = {"step_size": 0.01}  # in t
    res = log_likelihood(sde, score, x, method="rk4", options=opts, divergence="exact", time_variable="t")
    assert res.nfe == len(calls) == 4 * 100  # rk4: four stages per step, 100 steps (t0 = eps shortens the first)
    assert (res.logp - _exact_logp(mix, sde, x, res.z)).abs().mean() < 1e-2


def test_network_under_no_grad_float32_model_float64_solver():
    torch.manual_seed(0)
    sde = SubVPSDE()
    model = ScoreModel(MLP(data_shape=(1, 2, 2), hidden=32, depth=2, embed_dim=16), sde)
    x = torch.randn(6, 1, 2, 2)
    with torch.no_grad():
        r32 = log_likelihood(sde, model, x, divergence="exact")
        r64 = log_likelihood(sde, model, x, divergence="exact", dtype=F64, rtol=1e-7, atol=1e-7)
    assert r32.logp.dtype == torch.float32 and r64.logp.dtype == F64
    assert not r32.logp.requires_grad and not r32.z.requires_grad
    assert r32.logp.device == x.device
    torch.testing.assert_close(r32.logp.double(), r64.logp, atol=1e-2, rtol=1e-4)  # float32 solver error
    # The model's parameters got no gradients: only input vector-Jacobian products are taken.
    assert all(p.grad is None for p in model.parameters())


def test_dataparallel_wrapper_is_unwrapped_and_nested_one_rejected():
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLP(data_shape=(2,), hidden=16, depth=1, embed_dim=8), sde)
    wrapper = torch.nn.DataParallel(model)  # moves the model to cuda:0 when a GPU is present
    x = torch.randn(3, 2).to(next(model.parameters()).device)
    plain = log_likelihood(sde, model, x, generator=_gen(0))
    wrapped = log_likelihood(sde, wrapper, x, generator=_gen(0))
    torch.testing.assert_close(plain.logp, wrapped.logp)
    nested = ScoreModel(torch.nn.DataParallel(model.net), sde)
    with pytest.raises(ValueError, match="unwrapped"):
        log_likelihood(sde, nested, x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(divergence="hutchinson"), "unknown divergence"),
        (dict(method="rk4"), "step_size"),
        (dict(eps=0.0), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(rtol=-1.0), "rtol"),
        (dict(atol=0.0), "atol"),
        (dict(rtol=float("nan")), "rtol"),
    ],
)
def test_bad_arguments(kwargs, match):
    sde = VPSDE()
    mix = random_mixture(2, 2, seed=0)
    with pytest.raises(ValueError, match=match):
        log_likelihood(sde, mix.score_fn(sde), mix.sample(2), **kwargs)


def test_bad_data():
    sde = VPSDE()
    fn = random_mixture(2, 2, seed=0).score_fn(sde)
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(sde, fn, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="floating"):
        log_likelihood(sde, fn, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"output has shape \(2, 1\)"):  # would broadcast into a wrong logp
        log_likelihood(sde, lambda x, t: fn(x, t)[:, :1], torch.zeros(2, 2), divergence="exact")
    assert set(DIVERGENCES) == {"hutchinson_gaussian", "hutchinson_rademacher", "exact"}


# --- bits/dim ------------------------------------------------------------------------------------------------
def test_offset_is_the_reference_hack_for_8_bits():
    # Reference: bpd = -logp / (D ln 2) + 7 - inverse_scaler(-1); inverse_scaler is (x + 1) / 2 for centered
    # data (-> 0) and the identity for [0, 1] data (-> -1).
    assert dequantization_offset(8, (-1.0, 1.0)) == 7 - (-1.0 + 1) / 2
    assert dequantization_offset(8, (0.0, 1.0)) == 7 - (-1.0)
    assert dequantization_offset(5, (0.0, 4.0)) == 3
    with pytest.raises(ValueError, match="data_range"):
        dequantization_offset(8, (1.0, 1.0))
    with pytest.raises(ValueError, match="bits"):
        dequantization_offset(0)


@pytest.mark.parametrize("bits, data_range", [(8, (-1.0, 1.0)), (8, (0.0, 1.0)), (3, (-2.0, 5.0))])
def test_uniform_model_costs_exactly_b_bits(bits, data_range):
    """A density uniform on [lo, hi]^D gives every cell probability 2^(-bD): exactly ``bits`` bits/dim."""
    d = 12
    lo, hi = data_range
    logp = torch.full((5,), -d * math.log(hi - lo), dtype=F64)
    torch.testing.assert_close(bits_per_dim(logp, d, bits, data_range), torch.full((5,), float(bits), dtype=F64))


def test_uniform_dequantize_cells_and_inputs():
    k = torch.randint(0, 256, (64, 3, 2, 2), generator=_gen(0))
    x = uniform_dequantize(k, 8, (-1.0, 1.0), _gen(1), dtype=F64)
    assert x.shape == k.shape and x.dtype == F64
    cell = torch.floor((x + 1) / 2 * 256)
    torch.testing.assert_close(cell, k.to(F64), rtol=0, atol=0)
    y = uniform_dequantize(k.to(torch.float32) / 255, 8, (-1.0, 1.0), _gen(1), dtype=F64)
    torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="integer data"):
        uniform_dequantize(torch.tensor([[256]]), 8)
    with pytest.raises(ValueError, match="quantized"):
        uniform_dequantize(torch.tensor([[0.5]]), 8)


def test_dataset_bits_per_dim_matches_closed_form():
    """VP with Gaussian data N(0, s^2 I) and its exact score: p_t = N(0, v_t I), v_t = alpha^2 s^2 + sigma^2, and
    the flow is the scaling z = x sqrt(v_T / v_eps), so the model density is exactly N(0, v_eps / v_T I).

    For x uniform in a cell [a, a + w) per coordinate, E[x^2] = a^2 + a w + w^2 / 3, which gives each sample's
    expected bits/dim in closed form; n = 64 samples x K = 4 repeats, z-test at 4 standard errors.
    """
    sde = VPSDE()
    s2, bits, (lo, hi), d = 0.3, 3, (-1.0, 1.0), 2
    mix = GaussianMixture([1.0], [[0.0] * d], s2)
    t = torch.tensor([EPS, sde.T], dtype=F64)
    v = sde.marginal_alpha(t) ** 2 * s2 + sde.marginal_std(t) ** 2
    v_model = float(v[0] / v[1])
    levels = torch.randint(0, 2**bits, (64, d), generator=_gen(0))
    loader = [levels[i : i + 16] for i in range(0, 64, 16)]
    out = dataset_bits_per_dim(
        sde, mix.score_fn(sde), loader, bits, (lo, hi), repeats=4, generator=_gen(1), data_dtype=F64, rtol=1e-8,
        atol=1e-8, divergence="hutchinson_rademacher",
    )  # fmt: skip
    w = (hi - lo) / 2**bits
    a = lo + w * levels.to(F64)
    ex2 = (a**2 + a * w + w**2 / 3).sum(1)
    nll = 0.5 * d * math.log(2 * math.pi * v_model) + ex2 / (2 * v_model)
    expected = nll / (d * math.log(2)) + bits - math.log2(hi - lo)
    diff = out.per_sample - expected
    assert out.n == 64 and out.repeats == 4 and out.nfe > 0
    assert diff.mean().abs() < 4 * diff.std() / 8, (diff.mean(), diff.std())
    assert abs(out.mean - float(expected.mean())) < 4 * out.stderr + 1e-9
    torch.testing.assert_close(torch.tensor(out.stderr, dtype=F64), out.per_sample.std() / 8)


def test_dataset_bits_per_dim_accepts_float_levels_and_labelled_batches():
    """Loader batches ``(k / (2^b - 1), label)`` give the same numbers as integer levels with the same seed."""
    sde = VPSDE()
    mix = GaussianMixture([1.0], [[0.0, 0.0]], 0.3)
    levels = torch.randint(0, 16, (6, 2), generator=_gen(0))
    kw = dict(bits=4, data_range=(-1.0, 1.0), repeats=2, data_dtype=F64, divergence="exact")
    a = dataset_bits_per_dim(sde, mix.score_fn(sde), [levels], generator=_gen(1), **kw)
    b = dataset_bits_per_dim(sde, mix.score_fn(sde), [(levels.float() / 15, None)], generator=_gen(1), **kw)
    torch.testing.assert_close(a.per_sample, b.per_sample)
    assert a.n == 6 and a.per_sample.shape == (6,)
    with pytest.raises(ValueError, match="repeats"):
        dataset_bits_per_dim(sde, mix.score_fn(sde), [levels], repeats=0)
    with pytest.raises(ValueError, match="no data"):
        dataset_bits_per_dim(sde, mix.score_fn(sde), [])


def test_runs_on_device_of_x(device):
    sde = VESDE()
    mix = random_mixture(2, 2, seed=0)
    x = mix.sample(4, _gen(0))
    ref = log_likelihood(sde, mix.score_fn(sde), x, generator=_gen(1), rtol=1e-7, atol=1e-7)
    res = log_likelihood(sde, mix.score_fn(sde), x.to(device), generator=_gen(1), rtol=1e-7, atol=1e-7)
    assert res.logp.device.type == device.type and res.z.device.type == device.type
    torch.testing.assert_close(res.logp.cpu(), ref.logp, atol=1e-4, rtol=0)


class _WithBuffer(torch.nn.Module):
    """A score model holding a buffer (as the reference NCSN++ holds ``sigmas``): DDP broadcasts buffers on every
    forward, a collective that deadlocks when ranks make different numbers of calls."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x, t):
        return self.model(x, t) * self.scale


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same weights on every rank
        sde = VPSDE()
        model = _WithBuffer(ScoreModel(MLP((2,), hidden=16, depth=1, embed_dim=8), sde))
        model = torch.nn.parallel.DistributedDataParallel(model)
        x = torch.randn(3 + 5 * rank, 2, generator=_gen(rank))  # different data and batch: different NFE per rank
        res = log_likelihood(sde, model, x, rtol=1e-4 * (1 + 9 * rank), atol=1e-4, generator=_gen(10 + rank))
        torch.save({"nfe": res.nfe, "logp": res.logp}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_with_different_nfe_do_not_hang(tmp_path):
    """Two gloo ranks, a DDP-wrapped model with a buffer, different batches and tolerances: both finish.

    Measured: without unwrapping, the rank with more score calls dies in the buffer broadcast of DDP's forward
    ("Connection closed by peer") once the other has finished; in a longer job it waits forever.
    """
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("log_likelihood under DDP did not finish in 90 s (hang)")
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert out[0]["nfe"] != out[1]["nfe"]
    assert all(torch.isfinite(o["logp"]).all() for o in out)


def test_levels_that_are_not_a_power_of_two():
    """Digits have 17 levels (0..16): bits = log2(17). A density uniform on [lo, hi]^D gives exactly log2(17)
    bits/dim, dequantized values fill the 17 cells of [lo, hi], and a bits value that is no log2 of an integer is
    refused."""
    d = 64
    logp = torch.full((3,), -d * math.log(2.0), dtype=torch.float64)  # uniform density on [-1, 1]^64
    bpd = bits_per_dim(logp, d, bits=math.log2(17), data_range=(-1.0, 1.0))
    torch.testing.assert_close(bpd, torch.full((3,), math.log2(17), dtype=torch.float64))
    k = torch.arange(17, dtype=torch.float64).repeat(50)
    x = uniform_dequantize((k / 16)[:, None], bits=math.log2(17), data_range=(0.0, 1.0), generator=_gen(1),
                           dtype=torch.float64)  # fmt: skip
    cell = torch.floor(x[:, 0] * 17)
    assert torch.equal(cell, k)
    with pytest.raises(ValueError, match="log2 of an integer"):
        bits_per_dim(logp, d, bits=1.5)
