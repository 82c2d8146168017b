"""SDE constructors refuse nonsense before any work, naming the parameter; ``repr`` rebuilds the SDE (it keys caches
and appears in logs). Found by mutation testing: the bounds and the repr keys were unchecked."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VESDE(sigma_min=0.0, sigma_max=50.0), r"0 < sigma_min < sigma_max.*sigma_min=0\.0"),
        (lambda: VESDE(sigma_min=-1.0, sigma_max=50.0), "sigma_min=-1.0"),
        (lambda: VESDE(sigma_min=2.0, sigma_max=2.0), r"sigma_min=2\.0, sigma_max=2\.0"),
        (lambda: VESDE(sigma_min=3.0, sigma_max=2.0), "sigma_max=2.0"),
        (lambda: VPSDE(beta_min=-0.1), r"0 <= beta_min <= beta_max.*beta_min=-0\.1"),
        (lambda: VPSDE(beta_min=2.0, beta_max=1.0), r"beta_min=2\.0, beta_max=1\.0"),
        (lambda: SubVPSDE(beta_min=0.0, beta_max=0.0), r"beta_max must be > 0, got 0\.0"),
        (lambda: VPSDE(N=0), r"N \(number of discretization steps\) must be >= 1, got 0"),
        (lambda: VESDE(N=-3), "got -3"),
        (lambda: CosineVPSDE(s=0.0), r"cosine offset s must be > 0, got 0\.0"),
        (lambda: CosineVPSDE(beta_max=0.01), r"beta_max=0\.01 is below the cosine schedule's beta\(0\)"),
    ],
)
def test_bad_parameters_are_refused_with_their_names(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_boundary_parameters_are_accepted():
    """The edges of the valid ranges: beta_min = 0 (a schedule starting at zero noise rate), beta_min = beta_max (a
    constant rate), N = 1."""
    for sde in (VPSDE(beta_min=0.0, beta_max=5.0), VPSDE(beta_min=5.0, beta_max=5.0), VESDE(N=1)):
        t = torch.tensor([0.5], dtype=torch.float64)
        assert math.isfinite(float(sde.marginal_std(t)))


@pytest.mark.parametrize(
    "sde, text",
    [
        (VPSDE(beta_min=0.2, beta_max=15.0, N=500), "VPSDE(beta_min=0.2, beta_max=15.0, N=500)"),
        (SubVPSDE(), "SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000)"),
        (VESDE(sigma_min=0.02, sigma_max=80.0, N=7), "VESDE(sigma_min=0.02, sigma_max=80.0, N=7)"),
        (CosineVPSDE(s=0.01, N=100, beta_max=50.0), "CosineVPSDE(s=0.01, N=100, beta_max=50.0)"),
    ],
)
def test_repr_names_every_parameter_and_rebuilds_the_sde(sde, text):
    assert repr(sde) == text
    names = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE, "CosineVPSDE": CosineVPSDE}
    again = eval(text, {}, names)  # noqa: S307 - our own repr, a constructor call
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    assert torch.equal(again.marginal_std(t), sde.marginal_std(t)) and again.N == sde.N
