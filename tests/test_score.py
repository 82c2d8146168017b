"""ScoreModel: every parameterization recovers the exact score of an analytic mixture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scoresde.data import random_mixture
from scoresde.nets import MLP
from scoresde.score import ScoreModel


class OracleNet(nn.Module):
    """A 'network' that outputs the exact score, eps or x0 of a mixture, reading t back from its label."""

    def __init__(self, mix, sde, kind, time_input, time_scale):
        super().__init__()
        self.mix, self.sde, self.kind, self.time_input, self.time_scale = mix, sde, kind, time_input, time_scale

    def forward(self, x, label):
        if self.time_input == "t":
            t = label / self.time_scale
        else:  # a sigma label; VE only (alpha = 1, so lambda = -log sigma)
            t = self.sde.inverse_lambda(-label.log())
        score = self.mix.score(x, t, self.sde)
        if self.kind == "score":
            return score
        if self.kind == "eps":
            return -self.sde.marginal_std(t)[:, None] * score
        return self.mix.denoiser(x, t, self.sde)


@pytest.mark.parametrize("kind", ["score", "eps", "x0"])
def test_parameterizations_recover_exact_score(sde, kind):
    mix = random_mixture(3, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(8, generator=gen, dtype=torch.float64).clamp_min(1e-3)
    model = ScoreModel(OracleNet(mix, sde, kind, "t", 999.0), sde, kind, "t", 999.0)
    exact = mix.score(x, t, sde)
    torch.testing.assert_close(model(x, t), exact)
    torch.testing.assert_close(model.predict_x0(x, t), mix.denoiser(x, t, sde))
    torch.testing.assert_close(model.predict_eps(x, t), -sde.marginal_std(t)[:, None] * exact)


def test_sigma_label_for_ve():
    from scoresde.sde import VESDE

    sde = VESDE()
    mix = random_mixture(2, seed=1)
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64)
    model = ScoreModel(OracleNet(mix, sde, "score", "sigma", 1.0), sde, "score", "sigma")
    torch.testing.assert_close(model.noise_label(t), sde.marginal_std(t))
    torch.testing.assert_close(model(x, t), mix.score(x, t, sde))


def test_bad_options_and_shapes():
    from scoresde.sde import VPSDE

    with pytest.raises(ValueError, match="parameterization"):
        ScoreModel(MLP((2,)), VPSDE(), "v")
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(MLP((2,)), VPSDE(), "eps", "noise")
    with pytest.raises(ValueError, match="shape"):
        MLP((2,))(torch.zeros(3, 4), torch.zeros(3))


def test_mlp_image_shapes_and_zero_init():
    net = MLP((1, 4, 4), hidden=32, depth=2)
    x = torch.randn(3, 1, 4, 4)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output layer
