"""Correctors: Langevin MCMC steps at a fixed time ``t`` (Song et al. 2021, Alg. 4 and 5).

Pure functions ``(sde, score, x, t, alpha_ts_sq, snr, n_steps, generator) -> (x, x_mean)``. ``alpha_ts_sq`` (a
float or ``(B,)``) is ``alpha_{t|s}^2 = (alpha_t / alpha_s)^2`` of the step the predictor takes next (DDPM's
``1 - beta_i`` for VP, 1 for VE; the reference's ``alpha``), computed by the caller from the SDE, so the
correctors work on every SDE (the reference's crashes on sub-VP). As in the reference code, the norms in
``langevin``'s step-size rule are averaged over the batch (per-sample norms blow up in low dimension, where
``||score||`` can be near 0: on the 2-D ring half the samples of a 1000-step VE run, measured); ``annealed_langevin``
is per sample. So ``langevin`` couples the batch: with per-sample generators a sample still depends on the batch it
is drawn in (the one exception, with the adaptive ODE solvers, to the contract's batch-size invariance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoresde.sampling.base import add_scaled
from scoresde.sde import LinearSDE, ScoreFn
from scoresde.utils import Generator, batch_broadcast, randn

Corrector = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _sample_norms(v: torch.Tensor) -> torch.Tensor:
    """The per-sample norms ``(B,)`` of ``v`` (one norm over every axis but the first; a ``(B, D)`` state as it is)."""
    return torch.linalg.vector_norm(v if v.ndim == 2 else v.reshape(v.shape[0], -1), dim=1)


def norm_ratio(noise: torch.Tensor, grad: torch.Tensor, as_number: bool | None = None) -> float | torch.Tensor:
    """``mean_b ||noise_b|| / mean_b ||grad_b||`` (the denominator clamped away from 0), for any ``(B, ...)`` shape.

    ``as_number`` (default: on the CPU) reads the two sums of per-sample norms out as numbers, so the step's updates
    take numbers (2 tensor operations fewer per step; reading a CPU tensor costs no synchronization); otherwise a
    0-d tensor, which keeps an accelerator's queue free of a host read. Equal to round-off (tested). A score that
    is zero everywhere leaves the rule undefined (an infinite step): as a number that is a ``ValueError``; as a
    tensor, which is never read on the host, the denominator is clamped and the step is meaningless (the
    reference's turns into NaN).
    """
    if as_number if as_number is not None else noise.device.type == "cpu":
        num, den = float(_sample_norms(noise).sum()), float(_sample_norms(grad).sum())
        if den == 0:
            raise ValueError(
                "Langevin corrector: the score is zero for every sample, so the signal-to-noise step size "
                "2 alpha (snr ||z|| / ||score||)^2 is infinite (a model that outputs zeros, e.g. an untrained network "
                "with a zero-initialised output layer?); use corrector='annealed_langevin' or 'none'"
            )
        return num / max(den, 1e-30 * noise.shape[0])
    return _sample_norms(noise).mean().div_(_sample_norms(grad).mean().clamp_min_(1e-30))


def _langevin_steps(
    score: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    n_steps: int,
    generator: Generator,
    level: Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor],
    step_coef: float | torch.Tensor,
    std_coef: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_steps`` of ``x <- x + step * score + sqrt(2 step) z`` with ``step = step_coef q^2`` (the paper's
    ``epsilon``) and ``sqrt(2 step) = std_coef q``, where ``q = level(score, z)`` is a number, 0-d or ``(B,)``."""
    if isinstance(step_coef, torch.Tensor):
        step_coef, std_coef = batch_broadcast(step_coef, x), batch_broadcast(std_coef, x)
    x_mean = x
    for _ in range(n_steps):
        grad = score(x, t)
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        q = level(grad, noise)
        q = batch_broadcast(q, x) if isinstance(q, torch.Tensor) else q
        x_mean = add_scaled(x, step_coef * q * q, grad)
        x = add_scaled(x_mean, std_coef * q, noise)
    return x, x_mean


def _coefficients(alpha_ts_sq: torch.Tensor | float, snr: float) -> tuple:
    """``2 alpha_{t|s}^2 r^2`` and ``2 alpha_{t|s} r``: with ``step = 2 alpha_{t|s}^2 (r q)^2``, ``step`` and
    ``sqrt(2 step)`` are these times ``q^2`` and ``q``."""
    return 2 * alpha_ts_sq * snr**2, 2 * alpha_ts_sq**0.5 * snr


def langevin(
    sde: LinearSDE,
    score: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    alpha_ts_sq: torch.Tensor | float,
    snr: float,
    n_steps: int = 1,
    generator: Generator = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Langevin corrector with the signal-to-noise step rule ``eps = 2 alpha_{t|s}^2 (r ||z|| / ||s||)^2`` (Alg. 4)."""

    def level(grad: torch.Tensor, noise: torch.Tensor) -> float | torch.Tensor:
        return norm_ratio(noise, grad)

    return _langevin_steps(score, x, t, n_steps, generator, level, *_coefficients(alpha_ts_sq, snr))


def annealed_langevin(
    sde: LinearSDE,
    score: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    alpha_ts_sq: torch.Tensor | float,
    snr: float,
    n_steps: int = 1,
    generator: Generator = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019): step ``2 alpha_{t|s}^2 (r sigma_t)^2``."""
    sigma = sde.marginal_std(t)
    return _langevin_steps(score, x, t, n_steps, generator, lambda grad, noise: sigma, *_coefficients(alpha_ts_sq, snr))


CORRECTORS: dict[str, Corrector | None] = {"langevin": langevin, "annealed_langevin": annealed_langevin, "none": None}
