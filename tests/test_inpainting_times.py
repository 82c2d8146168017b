"""Inpainting replaces the known part at the time the state has reached (the step's end), not the step's start.

On a Gaussian whose known and unknown blocks are independent, the exact conditional law of the known block at time
``t`` given the measurement ``y`` is the forward-noised measurement ``N(alpha_t y, sigma_t^2 I)``. So every time the
sampler asks for the score at ``(x, t)``, the known block of ``x`` must have exactly that law. The reference code
(``controllable_generation.py``) replaces after its predictor step ``t -> t - dt`` with the noise level of ``t``: the
score at ``t - dt`` then sees a known block noised for ``t``, too noisy by ``sigma_t / sigma_{t - dt}`` (with 5 steps
on VE a factor 5.5 in std; on VP 1.5 at t = 0.2). The test records the known block at every score call of a few-step
run (N = 4000 samples, 2 known coordinates: n = 8000 standardised residuals per call) and checks the residuals
``(x_known - alpha_t y) / sigma_t``: mean within 5 / sqrt(n) = 0.056 of 0, variance within 5 sqrt(2 / n) = 7.9% of 1.
The unknown block never depends on the known one here, so the samples' unknown block cannot show the difference:
the score's inputs can.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.data import GaussianMixture
from scoresde.sampling.inverse import inpaint
from scoresde.sde import VESDE, VPSDE
from tests.reference_schedules import SCHEDULES

N = 4000
F64 = torch.float64


def _problem():
    cov = torch.zeros(4, 4, dtype=F64)
    cov[:2, :2] = torch.tensor([[0.5, 0.2], [0.2, 0.4]], dtype=F64)
    cov[2:, 2:] = torch.tensor([[0.3, -0.1], [-0.1, 0.6]], dtype=F64)
    mu = torch.tensor([0.3, -0.2, 0.7, 1.5], dtype=F64)
    gauss = GaussianMixture([1.0], mu[None], cov[None])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    y = torch.tensor([1.1, -0.7], dtype=F64)
    known = torch.zeros(N, 4, dtype=F64)
    known[:, :2] = y
    return gauss, mask, known, y


@pytest.mark.parametrize("corrector", ["none", "langevin"])
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_score_sees_known_part_noised_for_its_own_time(name, corrector):
    """5 steps (with and without a Langevin corrector, whose replacement is at the corrector's own time): at each
    of the 6 (or 11) score calls, the final Tweedie call included, the known block has the law of the measurement
    noised to that call's time."""
    sde = VPSDE() if name == "vp" else VESDE()
    sched = SCHEDULES[name]
    gauss, mask, known, y = _problem()
    score = gauss.score_fn(sde)
    seen: list[tuple[float, torch.Tensor]] = []

    def recording(x, t):
        assert torch.all(t == t[0])
        seen.append((float(t[0]), x[:, :2].clone()))
        return score(x, t)

    predictor = "euler_maruyama" if name == "vp" else "reverse_diffusion"
    res = inpaint(sde, recording, known, mask, predictor=predictor, corrector=corrector, snr=0.16, steps=5,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(res.samples[:, :2], known[:, :2])
    assert len(seen) == res.nfe == (6 if corrector == "none" else 11)
    times = sorted({round(t, 12) for t, _ in seen}, reverse=True)
    assert len(times) == 6 and times[0] == 1.0
    n = 2 * N
    for t, xk in seen:
        c = sched(t)
        z = (xk - c.alpha * y) / c.sigma
        assert abs(float(z.mean())) < 5 / math.sqrt(n), (t, float(z.mean()))
        assert float(z.var()) == pytest.approx(1.0, rel=5 * math.sqrt(2 / n)), (t, float(z.var()))


def test_same_generator_same_samples_and_options_take_effect():
    """The replacement noise comes from the caller's generator (same seed, same samples, whatever the global RNG
    did in between), and a non-default ``snr`` changes the corrector's steps."""
    gauss, mask, known, _ = _problem()
    sde = VESDE()
    score = gauss.score_fn(sde)

    def run(snr: float) -> torch.Tensor:
        return inpaint(sde, score, known[:64], mask, corrector="langevin", snr=snr, steps=3,
                       generator=torch.Generator().manual_seed(0)).samples  # fmt: skip

    a = run(0.5)
    torch.randn(100)  # the global RNG moves; the samples must not
    assert torch.equal(a, run(0.5))
    assert not torch.allclose(a[:, 2:], run(0.16)[:, 2:])


def test_x_init_is_the_starting_point():
    """``x_init`` replaces the prior draw: the first score call sees it (unknown block; the known block is replaced),
    in the batch's dtype; a wrong shape is refused naming both shapes."""
    gauss, mask, known, _ = _problem()
    sde = VPSDE()
    x_init = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    first = []

    def recording(x, t):
        if not first:
            first.append(x.clone())
        return gauss.score(x, t, sde)

    inpaint(sde, recording, known[:8], mask, predictor="euler_maruyama", corrector="none", steps=2,
            generator=torch.Generator().manual_seed(0), x_init=x_init)  # fmt: skip
    assert first[0].dtype == F64 and torch.equal(first[0][:, 2:], x_init[:, 2:].double())
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 4\), expected \(8, 4\)"):
        inpaint(sde, recording, known[:8], mask, steps=2, x_init=torch.zeros(3, 4))


def test_nothing_known_is_pc_sampling_in_distribution():
    """With an all-zero mask the replacement sampler is plain PC sampling (Euler–Maruyama + annealed Langevin with
    the step's alpha_{t|s}^2, Song et al. 2021 Alg. 5): on the diagonal Gaussian of tests/test_sampler_steps.py its
    sampled moments from a fixed x_T match the closed form of the written-out chain (VP, N = 20000: mean within
    5 sqrt(V / N), variance within 5 sqrt(2 / N) = 3.5%). 3 steps and snr 1 make the corrector matter: with
    alpha_{t|s}^3 in place of alpha_{t|s}^2 the closed-form variance moves from 4.36 to 6.64."""
    from tests.test_sampler_steps import GAUSS, X_T, _moments, em_step, pc_chain

    n, steps = 20000, 3
    sde = VPSDE()
    score = GAUSS.score_fn(sde)
    mean, var = _moments(lambda nm, s, x, d: pc_chain(em_step, nm, s, x, steps, d, 1.0, 1, True), "vp", score)
    x_init = X_T[None].expand(n, 2).clone()
    res = inpaint(sde, score, torch.zeros(n, 2, dtype=F64), torch.zeros(2, dtype=F64), predictor="euler_maruyama",
                  corrector="annealed_langevin", snr=1.0, n_steps=1, steps=steps, denoise=False,
                  generator=torch.Generator().manual_seed(0), x_init=x_init)  # fmt: skip
    got = res.samples
    assert ((got.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), (got.mean(0), mean)
    assert ((got.var(0) / var - 1).abs() < 5 * math.sqrt(2 / n)).all(), (got.var(0), var)
