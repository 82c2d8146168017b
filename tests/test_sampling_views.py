"""Model views: samplers ask a model for the prediction they need (x0_hat, eps_hat) and convert a plain score
function otherwise; every call of any view is one NFE; callbacks see every step."""

from __future__ import annotations

import pytest
import torch

from scoresde.data import eight_gaussians_mixture
from scoresde.sampling import ModelViews, get_sampler
from scoresde.sde import VESDE, VPSDE

F64 = torch.float64


class ViewsOnly:
    """A model that offers only ``x0_hat`` and/or ``eps_hat`` (no score call) and counts which view is called."""

    def __init__(self, mix, sde, views=("x0_hat", "eps_hat")):
        self.mix, self.sde, self.calls = mix, sde, {"x0_hat": 0, "eps_hat": 0}
        if "x0_hat" not in views:
            self.x0_hat = None
        if "eps_hat" not in views:
            self.eps_hat = None

    def x0_hat(self, x, t):
        self.calls["x0_hat"] += 1
        return self.mix.denoiser(x, t, self.sde)

    def eps_hat(self, x, t):
        self.calls["eps_hat"] += 1
        alpha, sigma = self.sde.marginal_alpha(t)[:, None], self.sde.marginal_std(t)[:, None]
        return (x - alpha * self.mix.denoiser(x, t, self.sde)) / sigma


# sampler, options, the view its steps use (the final denoising step always asks for x0_hat)
CASES = [
    ("dpm_solver", {"order": 3}, "x0_hat"),
    ("dpm_solver", {"order": 2, "algorithm": "dpmsolver"}, "eps_hat"),
    ("unipc", {}, "x0_hat"),
    ("unipc", {"prediction": "noise"}, "eps_hat"),
    ("ddim", {}, "eps_hat"),
    ("ddim", {"eta": 0.5}, "eps_hat"),
    ("pndm", {}, "eps_hat"),
    ("heun", {}, "eps_hat"),
    ("ancestral", {}, "x0_hat"),
]


@pytest.mark.parametrize("name,options,view", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_samplers_ask_for_the_view_they_need(name, options, view):
    """With a model offering both predictions, each sampler calls only the one its update uses (plus x0_hat once
    for Tweedie's final step); the samples equal those of the plain score function to rounding (float64)."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    model = ViewsOnly(mix, sde)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sampler = get_sampler(name, steps=8, **options)
    res = sampler(sde, model, x.shape, generator=torch.Generator().manual_seed(1), x_init=x)
    other = "eps_hat" if view == "x0_hat" else "x0_hat"
    assert model.calls[view] == res.nfe - (1 if view == "eps_hat" else 0)
    assert model.calls[other] == (1 if view == "eps_hat" else 0)
    ref = sampler(sde, mix.score_fn(sde), x.shape, generator=torch.Generator().manual_seed(1), x_init=x)
    assert ref.nfe == res.nfe
    torch.testing.assert_close(res.samples, ref.samples, rtol=1e-6, atol=1e-6)  # rounding, amplified by the flow


@pytest.mark.parametrize("offered", ["x0_hat", "eps_hat"])
@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "pc", "ode", "sdeint", "heun", "unipc"])
def test_a_model_with_one_view_serves_every_sampler(name, offered):
    """A model offering a single prediction (no score) runs every sampler; the samples equal the plain score's."""
    mix, sde = eight_gaussians_mixture(), VESDE(sigma_max=10.0)
    model = ViewsOnly(mix, sde, views=(offered,))
    x = sde.prior_sampling((16, 2), torch.Generator().manual_seed(0), dtype=F64)
    options = {"rtol": 1e-6, "atol": 1e-6} if name == "ode" else {"steps": 6}
    sampler = get_sampler(name, **options)
    res = sampler(sde, model, x.shape, generator=torch.Generator().manual_seed(2), x_init=x)
    ref = sampler(sde, mix.score_fn(sde), x.shape, generator=torch.Generator().manual_seed(2), x_init=x)
    assert sum(model.calls.values()) == res.nfe == ref.nfe
    torch.testing.assert_close(res.samples, ref.samples, rtol=1e-6, atol=1e-6)


def test_views_convert_a_score_function_exactly():
    """Tweedie: x0_hat = (x + sigma^2 score) / alpha = the mixture's exact posterior mean; eps_hat = -sigma score."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    views = ModelViews(mix.score_fn(sde), sde)
    x = torch.randn(8, 2, dtype=F64)
    t = torch.full((8,), 0.3, dtype=F64)
    torch.testing.assert_close(views.x0(x, t), mix.denoiser(x, t, sde))
    torch.testing.assert_close(views.eps(x, t), -sde.marginal_std(t)[:, None] * mix.score(x, t, sde))
    torch.testing.assert_close(views.score(x, 0.3), mix.score(x, t, sde))
    assert views.nfe == 3
    with pytest.raises(TypeError, match="x0_hat"):
        ModelViews(object(), sde)
    with pytest.raises(ValueError, match="SDE"):
        ModelViews(mix.score_fn(sde)).x0(x, t)


@pytest.mark.parametrize("name", ["ddim", "dpm_solver", "unipc", "pndm", "heun", "pc", "euler_maruyama"])
def test_callback_sees_every_step(name):
    """The callback gets ``i``, ``t`` (the grid time of ``x``), ``x`` and ``denoised`` (``None`` where the sampler
    has no data prediction) once per step, in order. For UniPC, ``denoised`` is the output at the predicted point,
    before UniC corrects ``x``."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    seen = []
    sampler = get_sampler(name, steps=5)
    grid = sampler.time_grid(sde)
    sampler(sde, mix.score_fn(sde), (4, 2), generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert [d["t"] for d in seen] == pytest.approx(grid[:-1].tolist())
    assert all(d["x"].shape == (4, 2) for d in seen)
    if name not in ("pc", "euler_maruyama", "unipc"):
        t = torch.full((4,), seen[2]["t"])
        torch.testing.assert_close(seen[2]["denoised"], mix.denoiser(seen[2]["x"], t, sde), rtol=1e-4, atol=1e-4)


def single_output_case(offered: str):
    """A VP mixture model offering only ``offered`` as views, a batch ``x`` at ``t = 0.3``, that time's ``alpha``,
    ``sigma`` and the exact value of every view there."""
    mix, sde = eight_gaussians_mixture(), VPSDE()
    model = mix.score_fn(sde) if offered == "score" else ViewsOnly(mix, sde, views=(offered,))
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    t = torch.full((8,), 0.3, dtype=F64)
    alpha, sigma = float(sde.marginal_alpha(t[:1])), float(sde.marginal_std(t[:1]))
    score = mix.score(x, t, sde)
    exact = {"score": score, "eps": -sigma * score, "x0": mix.denoiser(x, t, sde)}
    return ModelViews(model, sde), x, t, alpha, sigma, exact


@pytest.mark.parametrize("offered", ["score", "x0_hat", "eps_hat"])
def test_linear_form_of_every_view(offered):
    """``ModelViews.linear(view, ...) = (p, q, own)`` with ``view = p x + q own``: for a model offering one output,
    each view rebuilt from the linear form equals its analytic value (the mixture's score, ``-sigma score``, the
    posterior mean) to float64 round-off, with float or per-sample ``alpha``, ``sigma``; ``p = 0``, ``q = 1`` where
    the model has the view; one NFE per call."""
    views, x, t, alpha, sigma, exact = single_output_case(offered)
    native = {"score": "score", "x0_hat": "x0", "eps_hat": "eps"}[offered]
    for view, value in exact.items():
        for scales in ((alpha, sigma), (None, None)):  # given as floats, or computed from the SDE as (B, 1)
            p, q, own = views.linear(view, x, t, *scales)
            torch.testing.assert_close(p * x + q * own, value, rtol=1e-12, atol=1e-12)
            if view == native:
                assert (p, q) == (0.0, 1.0)
    assert views.nfe == 6


def test_scale_is_bit_identical_to_multiplication():
    """``scale(x, a)`` (0 + a x, the samplers' fast path) equals ``x * a`` bit for bit in float32 and float64."""
    from scoresde.sampling.base import scale

    for dtype in (torch.float32, F64):
        x = torch.randn(1000, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
        for a in (1.3, 0.0123, -7.5, 1 / 3):
            assert torch.equal(scale(x, a), x * a)
        c = torch.rand(1000, 1, dtype=dtype)
        assert torch.equal(scale(x, c), x * c)


def test_add_noise_draws_the_same_noise_as_randn():
    """``add_noise(x, std, g)`` (one ``torch.normal`` call for one generator) equals ``x + std * randn(..., g)`` to
    round-off (1 ulp of ``|x| + std |z|``) and leaves the generator where the draw does: float32 and float64, sizes
    below, at and off the 16-value blocks of the CPU's vectorized sampler; per-sample generators and tensor std take
    the draw-then-add route with the same result."""
    from scoresde.sampling.base import add_noise
    from scoresde.utils import randn

    for dtype in (torch.float32, F64):
        ulp = torch.finfo(dtype).eps
        for shape in ((3,), (4, 4), (512, 2), (1001, 3)):
            x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
            for std in (0.37, 1e-3, 2.5, torch.full((shape[0],) + (1,) * (len(shape) - 1), 0.37, dtype=dtype)):
                g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
                z = randn(shape, generator=g1, dtype=dtype)
                got = add_noise(x, std, g2)
                assert got.dtype == dtype and got.shape == x.shape
                assert float(((got - (x + std * z)).abs() / (x.abs() + (std * z).abs())).max()) <= ulp
                assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))  # same stream after
        gens = [torch.Generator().manual_seed(k) for k in range(4)]
        x = torch.zeros(4, 3, dtype=dtype)
        expected = 0.5 * torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(k), dtype=dtype)
                                      for k in range(4)])  # fmt: skip
        assert torch.equal(add_noise(x, 0.5, gens), expected)


def test_add_noise_keeps_the_gradient_and_the_layout():
    """``d(x + std z) / dx = 1``: a state that needs a gradient gets it through the noise step (``torch.normal``
    would pass 0 to its mean), with the same draw; a channels-last state keeps its layout."""
    from scoresde.sampling.base import add_noise

    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_()
    out = add_noise(x, 0.5, torch.Generator().manual_seed(7))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with torch.no_grad():
        again = add_noise(x, 0.5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.detach(), again, rtol=0, atol=1e-15)
    img = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    noisy = add_noise(img, 0.5, torch.Generator().manual_seed(7))
    assert noisy.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("offered", ["score", "x0_hat", "eps_hat"])
def test_fold_rewrites_a_step_in_the_model_output(offered):
    """``ModelViews.fold(view, a, b, alpha, sigma) = (a', b')`` with ``a x + b view(x, t) = a' x + b' own(x, t)``
    (``own = ModelViews.own(view)``, one NFE per call): every view from every single-output model, to float64
    round-off."""
    views, x, t, alpha, sigma, exact = single_output_case(offered)
    a, b = 0.7, -1.9
    for view, value in exact.items():
        a2, b2 = views.fold(view, a, b, alpha, sigma)
        torch.testing.assert_close(a2 * x + b2 * views.own(view)(x, t), a * x + b * value, rtol=1e-12, atol=1e-12)
    assert views.nfe == len(exact)


@pytest.mark.parametrize("offered", ["score", "x0_hat"])
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_pc_loop_chains_the_single_step_predictors(predictor, offered):
    """The PC loop's steps (coefficients folded into the model's own output once per grid, the draw by
    ``noise_adder``) equal the public one-step predictors (``scoresde.sampling.predictors``, schedule as tensors)
    chained over the same grid with the same generator: float64 round-off, the same NFE, the generator left in the
    same state. VE and VP; a score model and a model offering only ``x0_hat``."""
    from scoresde.sampling import predictors

    mix = eight_gaussians_mixture()
    for sde in (VPSDE(), VESDE(sigma_max=10.0)):
        model = mix.score_fn(sde) if offered == "score" else ViewsOnly(mix, sde, views=(offered,))
        sampler = get_sampler(predictor, steps=6, denoise=False)
        x = sde.prior_sampling((16, 2), torch.Generator().manual_seed(0), dtype=F64)
        g_loop, g_steps = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        res = sampler(sde, model, x.shape, generator=g_loop, x_init=x)
        views, y = ModelViews(model, sde), x
        for t, s in zip(sampler.time_grid(sde)[:-1], sampler.time_grid(sde)[1:], strict=True):
            tt, ss = torch.full((16,), float(t), dtype=F64), torch.full((16,), float(s), dtype=F64)
            y, _ = getattr(predictors, predictor)(sde, views, y, tt, ss, g_steps)
        torch.testing.assert_close(res.samples, y, rtol=1e-10, atol=1e-10)
        assert res.nfe == views.nfe == 6
        assert torch.equal(torch.randn(3, generator=g_loop), torch.randn(3, generator=g_steps))


def test_noise_adder_is_add_noise():
    """``noise_adder(x, g)`` (the loops' draw, its checks made once) gives ``add_noise``'s values and leaves the
    generator in the same state, on the fast path (CPU, no gradient) and where a gradient flows through ``x``."""
    from scoresde.sampling.base import add_noise, noise_adder

    x = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
            add = noise_adder(x, g1)
            for std in (0.3, 1e-3, 2.0):
                assert torch.equal(add(x, std), add_noise(x, std, g2))
            assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))
    xg = x.clone().requires_grad_()
    noise_adder(xg, torch.Generator().manual_seed(7))(xg, 0.5).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))
