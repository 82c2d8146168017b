"""Correctors: Langevin MCMC steps at a fixed time ``t`` (Song et al. 2021, Alg. 4 and 5).

Pure functions ``(sde, score, x, t, alpha_ts_sq, snr, n_steps, generator) -> (x, x_mean)``. ``alpha_ts_sq`` (a
float or ``(B,)``) is ``alpha_{t|s}^2 = (alpha_t / alpha_s)^2`` of the step the predictor takes next (DDPM's
``1 - beta_i`` for VP, 1 for VE; the reference's ``alpha``), computed by the caller from the SDE, so the
correctors work on every SDE (the reference's crashes on sub-VP). As in the reference code, the norms in
``langevin``'s step-size rule are averaged over the batch (per-sample norms blow up in low dimension, where
``||score||`` can be near 0); ``annealed_langevin`` is per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoresde.sde import LinearSDE, ScoreFn
from scoresde.utils import Generator, batch_broadcast, randn

Corrector = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _mean_norm(v: torch.Tensor) -> torch.Tensor:
    """The per-sample norm of ``v``, averaged over the batch (a 0-d tensor; one norm over every axis but the first)."""
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim))).mean()


def _add_product(x: torch.Tensor, c: float | torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x + c u v`` in one fused operation where ``c`` is a number (two where it is a tensor)."""
    return torch.addcmul(x, u * c, v) if isinstance(c, torch.Tensor) else torch.addcmul(x, u, v, value=c)


def _langevin_steps(
    score: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    n_steps: int,
    generator: Generator,
    level: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    step_coef: float | torch.Tensor,
    std_coef: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_steps`` of ``x <- x + step * score + sqrt(2 step) z`` with ``step = step_coef q^2`` (the paper's
    ``epsilon``) and ``sqrt(2 step) = std_coef q``, where ``q = level(score, z)`` is 0-d or ``(B,)``."""
    if isinstance(step_coef, torch.Tensor):
        step_coef, std_coef = batch_broadcast(step_coef, x), batch_broadcast(std_coef, x)
    x_mean = x
    for _ in range(n_steps):
        grad = score(x, t)
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        q = batch_broadcast(level(grad, noise), x)
        x_mean = _add_product(x, step_coef, q.square(), grad)
        x = _add_product(x_mean, std_coef, q, noise)
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

    def level(grad: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _mean_norm(noise).div_(_mean_norm(grad).clamp_min_(1e-30))

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
