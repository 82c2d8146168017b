"""The preconditioning layer (ScoreModel): with the exact mixture denoiser behind every parameterization, the three
views (score, x0_hat, eps_hat) agree with each other and with the exact score to float64 precision, for every SDE
(VP, sub-VP, VE, cosine and EDM) and every noise label."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde.data import random_mixture
from scoresde.nets import MLP
from scoresde.score import PARAMETERIZATIONS, ScoreModel, estimate_sigma_data, precond_coefficients
from scoresde.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

SDES = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "vp_cosine": CosineVPSDE,
    "edm": EDMSDE,
}
SIGMA_DATA = 0.7


def time_of_label(sde, time_input: str, time_scale: float, label: torch.Tensor) -> torch.Tensor:
    """Invert the noise label back to t (the oracle must know t to give the exact answer)."""
    if time_input == "t":
        return label / time_scale
    assert time_input == "edm"  # label = log(sigma / alpha) / 4 = -lambda / 4
    return sde.inverse_lambda(-4 * label)


class OracleNet(nn.Module):
    """Outputs exactly what ``parameterization`` asks the network to predict for a Gaussian mixture, reading ``t``
    back from the label and ``x`` back from the scaled (and possibly shifted) input."""

    def __init__(self, mix, model_kw: dict, sde):
        super().__init__()
        self.mix, self.kw, self.sde = mix, model_kw, sde

    def forward(self, inp, label):
        kw, sde = self.kw, self.sde
        t = time_of_label(sde, kw["time_input"], kw.get("time_scale", 1.0), label)
        alpha, sigma = sde.marginal_alpha(t)[:, None], sde.marginal_std(t)[:, None]
        if not kw.get("centered", True):
            inp = (inp + 1) / 2
        p = precond_coefficients(
            kw["parameterization"], alpha[:, 0], sigma[:, 0], SIGMA_DATA, kw.get("scale_by_sigma", False)
        )
        x = inp if p.c_in is None else inp / p.c_in[:, None]
        score = self.mix.score(x, t, sde)
        eps = -sigma * score
        x0 = self.mix.denoiser(x, t, sde)
        kind = kw["parameterization"]
        if kind == "score":
            return sigma * score if kw.get("scale_by_sigma") else score
        if kind == "eps":
            return eps
        if kind == "x0":
            return x0
        s = sigma / alpha
        if kind == "edm":  # F = (x0 - c_skip y) / c_out, written without cancellation: x0 - y = -s eps
            r2 = s**2 + SIGMA_DATA**2
            return (s * x / (alpha * r2) - eps) * torch.sqrt(r2) / SIGMA_DATA
        r = torch.sqrt(alpha**2 + sigma**2)  # v = a eps - b x0
        return alpha / r * eps - sigma / r * x0


def times_for(sde, n, gen):
    """Log-uniform noise levels over the SDE's whole range (its small-t end included)."""
    lo = math.log(getattr(sde, "eps", 1e-3))
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp(lo + u * (math.log(sde.T) - lo))


CASES = [
    dict(parameterization="score", time_input="t", time_scale=999.0),
    dict(parameterization="score", time_input="t", scale_by_sigma=True, centered=False),
    dict(parameterization="eps", time_input="t", time_scale=999.0),
    dict(parameterization="x0", time_input="edm"),
    dict(parameterization="v", time_input="t"),
    dict(parameterization="edm", time_input="edm", sigma_data=SIGMA_DATA),
    dict(parameterization="edm", time_input="t", sigma_data=SIGMA_DATA, centered=False),
]


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("kw", CASES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_views_agree_with_exact_mixture(sde_name, kw):
    """x0_hat = E[x0 | x_t], eps_hat = -sigma score, score = grad log p_t: relative error < 1e-12 in float64 at noise
    levels spanning the SDE's range (eps ... T, log-uniform; 64 points)."""
    sde = SDES[sde_name]()
    mix = random_mixture(3, seed=0)
    gen = torch.Generator().manual_seed(1)
    t = times_for(sde, 64, gen)
    x0, z = mix.sample(64, generator=gen), torch.randn(64, 3, generator=gen, dtype=torch.float64)
    x = sde.marginal_alpha(t)[:, None] * x0 + sde.marginal_std(t)[:, None] * z  # typical points of p_t
    model = ScoreModel(OracleNet(mix, kw, sde), sde, **kw)
    exact = mix.score(x, t, sde)
    sigma = sde.marginal_std(t)[:, None]

    def rel(a, b):
        return float((a - b).norm(dim=1).max() / b.norm(dim=1).clamp_min(1e-300).max())

    # An x0-prediction determines eps and the score only up to rounding / s: that parameterization's own conditioning.
    s_min = float((sigma[:, 0] / sde.marginal_alpha(t)).min())
    tol = 1e-13 / s_min if kw["parameterization"] == "x0" else 1e-12
    assert rel(model(x, t), exact) < tol
    assert rel(model.eps_hat(x, t), -sigma * exact) < tol
    assert rel(model.x0_hat(x, t), mix.denoiser(x, t, sde)) < 1e-12
    # The aliases are the same views.
    torch.testing.assert_close(model.predict_eps(x, t), model.eps_hat(x, t), rtol=0, atol=0)
    torch.testing.assert_close(model.predict_x0(x, t), model.x0_hat(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
def test_views_are_one_affine_map_of_the_output(kind):
    """For any network output F the views satisfy x = alpha x0_hat + sigma eps_hat and score = -eps_hat / sigma
    (consistency without an oracle; float64 to 1e-12 relative, VP at t in [1e-3, 1])."""
    sde = VPSDE()
    torch.manual_seed(0)
    net = MLP((3,), hidden=16, depth=1, embed_dim=8, fourier_scale=1.0).double()
    torch.nn.init.normal_(net.output.weight)
    sd = 0.5 if kind == "edm" else None
    model = ScoreModel(net, sde, kind, "t", sigma_data=sd)
    x = torch.randn(32, 3, dtype=torch.float64)
    t = torch.exp(torch.linspace(math.log(1e-3), 0, 32, dtype=torch.float64))
    alpha, sigma = sde.marginal_alpha(t)[:, None], sde.marginal_std(t)[:, None]
    x0, eps, score = model.x0_hat(x, t), model.eps_hat(x, t), model(x, t)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(-eps / sigma, score, rtol=1e-12, atol=1e-12)


def test_edm_preconditioning_is_karras_table_1():
    """EDM SDE (alpha = 1): the network sees c_in x and c_noise = ln(sigma) / 4; D = c_skip x + c_out F."""
    sde, sd = EDMSDE(), 0.5
    seen = {}

    class Probe(nn.Module):
        def forward(self, inp, label):
            seen["inp"], seen["label"] = inp, label
            return torch.full_like(inp, 3.0)

    model = ScoreModel(Probe(), sde, "edm", "edm", sigma_data=sd)
    x = torch.randn(4, 2, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.5, 2.0, 80.0], dtype=torch.float64)
    d = model.x0_hat(x, sigma)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    torch.testing.assert_close(seen["inp"], c_in[:, None] * x, rtol=1e-15, atol=0)
    torch.testing.assert_close(seen["label"], sigma.log() / 4, rtol=1e-15, atol=0)
    torch.testing.assert_close(d, c_skip[:, None] * x + c_out[:, None] * 3.0, rtol=1e-15, atol=1e-15)


def test_v_prediction_on_vp_is_salimans_ho():
    """VP (alpha^2 + sigma^2 = 1): input x itself, v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4)."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
    )
    t = torch.tensor([0.01, 0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    alpha, sigma = sde.marginal_alpha(t)[:, None], sde.marginal_std(t)[:, None]
    v = alpha * eps - sigma * x0
    xt = alpha * x0 + sigma * eps

    class VNet(nn.Module):
        def forward(self, inp, label):
            torch.testing.assert_close(inp, xt, rtol=1e-14, atol=1e-14)
            return v

    model = ScoreModel(VNet(), sde, "v", "t")
    torch.testing.assert_close(model.x0_hat(xt, t), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.eps_hat(xt, t), eps, rtol=1e-12, atol=1e-12)


def test_eps_view_has_no_cancellation_at_small_noise():
    """float32, EDM SDE at sigma = 0.002: eps_hat of an edm model is computed from F directly, not as
    (x - x0_hat) / sigma, whose cancellation would cost ~|x| * 6e-8 / 0.002 = 3e-5 relative."""
    sde, sd = EDMSDE(), 0.5

    class Const(nn.Module):
        def forward(self, inp, label):
            return torch.full_like(inp, 0.25)

    model = ScoreModel(Const(), sde, "edm", "edm", sigma_data=sd)
    x = torch.full((1, 4), 1.0)
    t = torch.tensor([0.002])
    s = 0.002
    exact = s / (s**2 + sd**2) * 1.0 - sd / math.sqrt(s**2 + sd**2) * 0.25
    assert abs(float(model.eps_hat(x, t)[0, 0]) / exact - 1) < 1e-6


def test_estimate_sigma_data():
    """Isotropic N(0, 2^2 I) in 2-D, n = 100000: the estimate is within 5 standard errors (2 / sqrt(4n)) of 2."""
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(100_000, 2, generator=gen, dtype=torch.float64) + torch.tensor(
        [5.0, -3.0], dtype=torch.float64
    )
    assert abs(estimate_sigma_data(x) - 2.0) < 5 * 2.0 / math.sqrt(4 * 100_000)
    # images: per-pixel variances averaged over pixels
    img = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    assert estimate_sigma_data(img) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        estimate_sigma_data(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="standard deviation"):
        estimate_sigma_data(torch.zeros(5, 3))
    # a NaN entry is left out (training then stops on the NaN loss, with its own message)
    bad = torch.tensor([[0.0, 1.0], [2.0, float("nan")], [4.0, 3.0]], dtype=torch.float64)
    assert estimate_sigma_data(bad) == pytest.approx(math.sqrt((8 / 3 + 1) / 2))


def test_bad_options_and_shapes():
    sde = VPSDE()
    with pytest.raises(ValueError, match="parameterization"):
        ScoreModel(MLP((2,)), sde, "nope")
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(MLP((2,)), sde, "eps", "noise")
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(MLP((2,)), sde, "edm")
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(MLP((2,)), sde, "edm", sigma_data=-1.0)
    with pytest.raises(ValueError, match="scale_by_sigma"):
        ScoreModel(MLP((2,)), sde, "eps", scale_by_sigma=True)
    with pytest.raises(ValueError, match="shape"):
        MLP((2,))(torch.zeros(3, 4), torch.zeros(3))


def test_noise_labels():
    sde = VESDE()
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    net = MLP((2,))
    torch.testing.assert_close(ScoreModel(net, sde, "score", "sigma").noise_label(t), sde.marginal_std(t))
    torch.testing.assert_close(ScoreModel(net, sde, "score", "log_sigma").noise_label(t), sde.marginal_std(t).log())
    torch.testing.assert_close(ScoreModel(net, sde, "score", "t", 999.0).noise_label(t), 999 * t)
    torch.testing.assert_close(ScoreModel(net, sde, "score", "edm").noise_label(t), -sde.marginal_lambda(t) / 4)
    scaled = ScoreModel(net, sde, "score", "edm", 250.0)
    torch.testing.assert_close(scaled.noise_label(t), -62.5 * sde.marginal_lambda(t))


def test_with_net_keeps_every_option():
    model = ScoreModel(MLP((2,)), EDMSDE(), "edm", "edm", 1.0, sigma_data=0.3, centered=False)
    other = model.with_net(nn.Identity())
    assert other.options() == model.options() and other.sde is model.sde


def test_mlp_image_shapes_and_zero_init():
    net = MLP((1, 4, 4), hidden=32, depth=2)
    x = torch.randn(3, 1, 4, 4)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output layer
