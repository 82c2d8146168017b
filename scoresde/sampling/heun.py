"""``heun``: EDM's second-order sampler (Karras et al., NeurIPS 2022, Alg. 2) for any linear SDE.

In ``y = x / alpha`` and ``sigma_hat = sigma / alpha`` the probability-flow ODE is ``dy / d sigma_hat = eps_hat``
(EDM's ``dx / d sigma = (x - D(x)) / sigma`` with ``x`` scaled by ``1 / alpha``). Each step is Heun's method in
``sigma_hat`` (2 model calls). With ``s_churn > 0``, before the step noise raises ``sigma_hat`` from ``s_i`` to
``s_i (1 + gamma)``, ``gamma = min(s_churn / n, sqrt(2) - 1)`` for ``s_i`` in ``[s_tmin, s_tmax]``, by adding
``sqrt(hat_s^2 - s_i^2) s_noise z`` to ``y`` (Alg. 2, lines 4-6).
"""

from __future__ import annotations

import math

import torch

from scoresde.sampling.base import (
    GridOption,
    GridSampler,
    StepCallback,
    add_noise,
    add_scaled,
    grid_conversions,
    linear_combination,
    progress_iter,
    scale,
    scaled_sum,
    start_grid,
)
from scoresde.sde import LinearSDE
from scoresde.utils import Generator


def time_of_sigma_hat(sde: LinearSDE, sigma_hat: float) -> float:
    """The time at which ``sigma / alpha = sigma_hat``."""
    return float(sde.inverse_lambda(torch.tensor([-math.log(sigma_hat)], dtype=torch.float64)))


def sample_heun(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    progress: bool | None = None,
) -> torch.Tensor:
    """EDM's Heun sampler from ``x`` at ``grid[0]`` to ``grid[-1]``: two model calls per step."""
    model, coords, times = start_grid(sde, model, x, grid)
    sigma_hat, alpha = coords.sigma_hat, coords.alpha
    n = len(grid) - 1
    # Each slope eps_hat = p x + q own is linear in the state and the model's own output: (p, q) at every grid time
    # once per grid, folded into the steps.
    own_fn = model.own("eps")
    pq = grid_conversions(model, "eps", coords)
    y = scale(x, 1 / alpha[0])
    for i in progress_iter(range(n), progress, "heun"):
        s_cur, t_cur, a_cur = sigma_hat[i], times[i], alpha[i]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        if gamma > 0:  # churn: raise the noise level by fresh noise
            s_raised = min(s_cur * (1 + gamma), sigma_hat[0])
            y = add_noise(y, math.sqrt(max(s_raised**2 - s_cur**2, 0.0)) * s_noise, generator)
            t_raised = time_of_sigma_hat(sde, s_raised)
            s_cur, t_cur = s_raised, torch.full_like(times[i], t_raised)
            a_cur = float(sde.marginal_alpha(torch.tensor([t_raised], dtype=torch.float64)))
        p, q = model.fold("eps", 0.0, 1.0, a_cur, a_cur * s_cur) if gamma > 0 else pq[i]
        x_cur = scale(y, a_cur)
        own = own_fn(x_cur, t_cur)
        c = p * a_cur  # slope = c y + q own
        if callback is not None:
            slope = scaled_sum(c, y, q, own)
            callback({"i": i, "t": float(t_cur[0]), "x": x_cur, "denoised": add_scaled(y, -s_cur, slope)})
        h = sigma_hat[i + 1] - s_cur
        y_euler = scaled_sum(1 + h * c, y, h * q, own)
        a_end = alpha[i + 1]
        p_end, q_end = pq[i + 1]
        own_end = own_fn(scale(y_euler, a_end), times[i + 1])
        # trapezoid: y + h/2 (slope + slope_end), slope_end = p_end a_end y_euler + q_end own_end
        y = linear_combination(((1 + 0.5 * h * c, y), (0.5 * h * q, own), (0.5 * h * p_end * a_end, y_euler),
                                (0.5 * h * q_end, own_end)))  # fmt: skip
    return scale(y, alpha[-1])


class HeunSampler(GridSampler):
    """``heun``: EDM's deterministic 2nd-order sampler (Karras et al. 2022, Alg. 2) in ``sigma_hat``, on the
    ``edm`` grid by default; ``s_churn > 0`` adds its stochastic churn (``s_tmin``, ``s_tmax``, ``s_noise``)."""

    name = "heun"
    default_steps = 18
    default_grid = "edm"

    def __init__(
        self,
        *,
        steps: int | None = None,
        grid: GridOption = None,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not s_churn >= 0:
            raise ValueError(f"s_churn must be >= 0, got {s_churn}")
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.rho, self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = rho, s_churn, s_tmin, s_tmax, s_noise

    def run(self, sde, model, x, grid, generator, callback):
        return sample_heun(sde, model, x, grid, generator, callback, s_churn=self.s_churn, s_tmin=self.s_tmin,
                           s_tmax=self.s_tmax, s_noise=self.s_noise, progress=self.progress)  # fmt: skip
