"""``ddim``: DDIM (Song, Meng & Ermon, ICLR 2021) for any linear SDE, deterministic or with ``eta > 0``.

From ``t`` to ``s < t`` with the noise prediction ``eps_hat`` and ``x0_hat = (x_t - sigma_t eps_hat) / alpha_t``
(Eq. 12 of the paper, in continuous time):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,     c = eta sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2),

where ``sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2`` and ``c`` is ``eta`` times the std of the
ancestral posterior ``q(x_s | x_t, x_0)``. ``eta = 0`` is the exact step of the probability-flow ODE with
``eps_hat`` frozen (first order); ``eta = 1`` is ancestral sampling. Written as
``x_s = a x_t + b eps_hat + c z``, the coefficients depend on the grid only and are computed once.
"""

from __future__ import annotations

import math

import torch

from scoresde.sampling.base import (
    GridCoords,
    GridOption,
    GridSampler,
    StepCallback,
    noise_adder,
    progress_iter,
    scaled_sum,
    start_grid,
    x0_from_eps,
)
from scoresde.sampling.exponential import cached_per_grid
from scoresde.sde import LinearSDE
from scoresde.utils import Generator


@cached_per_grid
def ddim_coefficients(coords: GridCoords, eta: float) -> tuple[tuple[float, float, float], ...]:
    """``(a, b, c)`` of ``x_s = a x_t + b eps_hat + c z`` for every step (``c``: the noise std)."""
    out = []
    for i in range(len(coords) - 1):
        a_t, s_t, a_s, s_s = coords.alpha[i], coords.sigma[i], coords.alpha[i + 1], coords.sigma[i + 1]
        posterior_var = max(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0) * s_s**2 / s_t**2
        noise_std = eta * math.sqrt(posterior_var)
        out.append((a_s / a_t, math.sqrt(max(s_s**2 - noise_std**2, 0.0)) - a_s * s_t / a_t, noise_std))
    return tuple(out)


def sample_ddim(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    eta: float = 0.0,
    progress: bool | None = None,
) -> torch.Tensor:
    """DDIM from ``x`` at ``grid[0]`` to ``grid[-1]``: one model call per step (and one noise draw when ``eta > 0``)."""
    model, coords, times = start_grid(sde, model, x, grid)
    own, noise = model.own("eps"), noise_adder(x, generator)
    # eps_hat = p x + q own (own: the model's output), folded into each step's coefficients once per grid
    steps = [(*model.fold("eps", a, b, coords.alpha[i], coords.sigma[i]), c)
             for i, (a, b, c) in enumerate(ddim_coefficients(coords, eta))]  # fmt: skip
    for i, (state_coef, own_coef, noise_std) in enumerate(progress_iter(steps, progress, "ddim")):
        out = own(x, times[i])
        if callback is not None:
            p, q = model.fold("eps", 0.0, 1.0, coords.alpha[i], coords.sigma[i])
            denoised = x0_from_eps(x, scaled_sum(p, x, q, out), coords.alpha[i], coords.sigma[i])
            callback({"i": i, "t": coords.times[i], "x": x, "denoised": denoised})
        x = scaled_sum(state_coef, x, own_coef, out)
        x = noise(x, noise_std) if eta > 0 else x
    return x


class DDIMSampler(GridSampler):
    """``ddim``: DDIM (Song, Meng & Ermon 2021, Eq. 12); ``eta = 0`` deterministic, ``eta = 1`` ancestral."""

    name = "ddim"
    default_steps = 50
    default_grid = "uniform"

    def __init__(
        self,
        *,
        steps: int | None = None,
        eta: float = 0.0,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.eta = float(eta)

    def run(self, sde, model, x, grid, generator, callback):
        return sample_ddim(sde, model, x, grid, generator, callback, eta=self.eta, progress=self.progress)
