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
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).mean()


def _langevin_steps(
    score: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    n_steps: int,
    generator: Generator,
    step_size: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_steps`` of ``x <- x + step * score + sqrt(2 step) z`` with ``step = step_size(score, z)`` (``(B,)``; the
    paper's ``epsilon``)."""
    x_mean = x
    for _ in range(n_steps):
        grad = score(x, t)
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        step = step_size(grad, noise)
        x_mean = x + batch_broadcast(step, x) * grad
        x = x_mean + batch_broadcast(torch.sqrt(2 * step), x) * noise
    return x, x_mean


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

    def step_size(grad: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return 2 * alpha_ts_sq * (snr * _mean_norm(noise) / _mean_norm(grad).clamp_min(1e-30)) ** 2

    return _langevin_steps(score, x, t, n_steps, generator, step_size)


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
    step = 2 * alpha_ts_sq * (snr * sde.marginal_std(t)) ** 2
    return _langevin_steps(score, x, t, n_steps, generator, lambda grad, noise: step)


CORRECTORS: dict[str, Corrector | None] = {"langevin": langevin, "annealed_langevin": annealed_langevin, "none": None}
