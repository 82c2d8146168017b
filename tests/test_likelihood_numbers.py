"""likelihood.py gives the right bits/dim, not just a positive number: models whose density is known in closed form.

An exported MLP whose output layer is zero has score 0 (parameterization ``score``). Under VE the probability-flow
ODE then has zero drift, so the model's density is exactly the prior ``N(0, sigma_max^2 I)``; under VP the drift is
``-beta x / 2`` and the density is ``N(0, r^2 I)`` with ``r = alpha(eps) / alpha(T)`` (the ODE maps ``x`` to
``x / r`` at ``T``, with divergence integral ``D log(1 / r)``). On the digits (17 levels, D = 64) the data are
dequantized uniformly, ``x = lo + (hi - lo) (k + U) / 17``, in the model's range ``[lo, hi]`` (``[-1, 1]`` for
``model.centered=true``, ``[0, 1]`` otherwise), and bits/dim is
``E_U[-log2 N(x; 0, s^2 I)] / D + log2(17) - log2(hi - lo)``; a density uniform on the box would give exactly
``log2(17) = 4.087``. The expectation over U is closed-form per pixel (``E[x^2] = m^2 + w^2 / 12`` for a cell of
width ``w`` and centre ``m``), so the CLI's number is checked to 5 standard errors of its U-average (computed from
the exact per-pixel variance of ``x^2``) plus float32 rounding: a wrong data range moves it by about a bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from scoresde.checkpoint import load_safetensors
from scoresde.data import load_dataset
from tests.reference_schedules import vp

LEVELS, D = 17, 64
N_EVAL = 48

MLP_ON_DIGITS = [
    "data=digits",
    "model=mlp",
    "model.net.hidden=16",
    "model.net.depth=1",
    "model.net.embed_dim=8",
    "model.parameterization=score",
    "trainer.steps=1",
    "trainer.ckpt_every=1",
    "trainer.batch_size=32",
    "trainer.sample_n=0",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.num_threads=1",
    "trainer.export=true",
]


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory) -> Path:
    """One step of training on the digits, exported; every variant below rewrites this export."""
    import train as script
    from tests.test_train_cli import compose_cfg

    run = tmp_path_factory.mktemp("mlp_digits")
    script.train(compose_cfg(*MLP_ON_DIGITS), run)
    return run / "ema.safetensors"


def _zero_score_export(src: Path, dst: Path, sde: dict, centered: bool) -> Path:
    """The export with its output layer zeroed (score 0), its SDE and data range replaced in the stored config."""
    tensors, meta = load_safetensors(src)
    zeroed = [k for k in tensors if k.startswith("net.output.")]
    assert sorted(zeroed) == ["net.output.bias", "net.output.weight"], sorted(tensors)
    for k in zeroed:
        tensors[k] = torch.zeros_like(tensors[k])
    cfg = OmegaConf.create(meta["config"])
    cfg.sde = sde
    cfg.model.centered = centered
    meta["config"] = OmegaConf.to_yaml(cfg)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _expected_bpd(levels_k: torch.Tensor, s: float, lo: float, hi: float) -> tuple[float, float]:
    """Mean over the examples of ``E_U[bits/dim]`` for the density ``N(0, s^2 I)``, and the standard error of the
    CLI's U-average (one dequantization per example)."""
    w = (hi - lo) / LEVELS
    a = lo + w * levels_k  # left edge of each pixel's cell
    m1 = lambda p: ((a + w) ** (p + 1) - a ** (p + 1)) / ((p + 1) * w)  # noqa: E731  E[x^p], x ~ U[a, a + w]
    ex2, ex4 = m1(2), m1(4)
    per_example = (0.5 * D * math.log(2 * math.pi * s**2) + ex2.sum(1) / (2 * s**2)) / (D * math.log(2))
    offset = math.log2(LEVELS) - math.log2(hi - lo)
    var_example = ((ex4 - ex2**2).sum(1) / (2 * s**2) ** 2) / (D * math.log(2)) ** 2
    n = levels_k.shape[0]
    return float(per_example.mean()) + offset, float(var_example.sum().sqrt()) / n


def _test_levels() -> torch.Tensor:
    ds = load_dataset("digits", image_size=8, test_fraction=0.2)  # conf/data/digits.yaml for an MLP
    assert ds.levels == LEVELS and ds.data_shape == (1, 8, 8)
    x = ds.test[:N_EVAL].reshape(N_EVAL, D).double()
    k = torch.round(x * (LEVELS - 1))
    assert torch.equal(k, x * (LEVELS - 1))  # digits are stored as k / 16
    return k


def _run(tmp_path: Path, ckpt: Path, *extra: str) -> dict:
    from tests.test_likelihood_cli import run_likelihood

    return run_likelihood(tmp_path / "out", f"ckpt={ckpt}", f"n={N_EVAL}", f"batch_size={N_EVAL}", *extra)


@pytest.mark.parametrize("centered", [True, False], ids=["range[-1,1]", "range[0,1]"])
def test_ve_zero_score_is_its_prior(trained_export, tmp_path, centered):
    """VE (sigma_max = 1): the model is N(0, I) exactly (zero drift: the ODE solver and the divergence estimator are
    exact). 48 test digits, one dequantization each: measured 4.8852 bits/dim on [-1, 1] (closed form 4.8853, standard
    error 0.0007) and 5.5766 on [0, 1] (5.5766, 0.0002)."""
    sde = {"_target_": "scoresde.sde.VESDE", "sigma_min": 0.01, "sigma_max": 1.0, "N": 1000}
    ckpt = _zero_score_export(trained_export, tmp_path / "ve.safetensors", sde, centered)
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    res = _run(tmp_path, ckpt)
    assert res["metric"] == "bits/dim" and res["levels"] == LEVELS and res["data_range"] == [lo, hi]
    expected, se = _expected_bpd(_test_levels(), 1.0, lo, hi)
    assert res["mean"] == pytest.approx(expected, abs=5 * se + 1e-4), (res["mean"], expected, se)


def test_vp_zero_score_is_a_known_gaussian(trained_export, tmp_path):
    """VP: the ODE really integrates (drift -beta x / 2, divergence -64 beta / 2) from eps = 1e-5 to 1; the model is
    N(0, r^2 I) with r = alpha(1e-5) / alpha(1) = 152.2. float64 solve at rtol = atol = 1e-7: measured 11.662773,
    4e-8 from the closed form."""
    sde = {"_target_": "scoresde.sde.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "N": 1000}
    ckpt = _zero_score_export(trained_export, tmp_path / "vp.safetensors", sde, True)
    r = vp(1e-5).alpha / vp(1.0).alpha
    res = _run(tmp_path, ckpt, "eps=1e-5", "float64=true", "rtol=1e-7", "atol=1e-7")
    assert res["data_range"] == [-1.0, 1.0]
    expected, se = _expected_bpd(_test_levels(), r, -1.0, 1.0)
    assert res["mean"] == pytest.approx(expected, abs=5 * se + 1e-4), (res["mean"], expected, se)
