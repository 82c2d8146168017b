"""Decoupled model times: the time a network is told at each grid time, apart from the time the solver steps to.

A fixed-step sampler evaluates its model at the grid times ``t_i``. With model times ``tau_i`` it gets, where it asks
for a view (score, noise or data prediction) at ``(x_i, t_i)``, the model's view at ``(x_i, tau_i)`` instead: the
state stays at ``t_i`` and the solver's coefficients are ``t_i``'s, only the prediction is taken at another noise
level (:meth:`~scoresde.sampling.base.ModelViews.told`). So the meaning of model times does not depend on which
output a network has (a score network and a denoiser of the same model give the same samples). In the spirit of
the decoupled time steps of "learning to discretize" (Tong et al. 2024) and the time-shift sampler (Li et al.,
ICLR 2024): fitted ``tau_i`` correct the solver's truncation error at few steps
(:func:`~scoresde.sampling.fitted_grids.fit_grid` with ``fit_model_times=True``).

Between grid times (Heun's second stage, churn, the corrector of a PC sampler, PNDM's half steps) the shift
``lambda(tau) - lambda(t)`` is interpolated linearly in ``lambda = log(alpha / sigma)`` and held constant outside
the grid, so the map is defined at every time and is the identity when every ``tau_i = t_i``.
"""

from __future__ import annotations

import torch

from scoresde.sde import LinearSDE


def check_model_times(model_times, grid: torch.Tensor, sde: LinearSDE | None = None) -> torch.Tensor:
    """``model_times`` as float64 CPU times, one per time of ``grid`` (a ``ValueError`` naming the problem): finite,
    positive and (given ``sde``) no later than its ``T``."""
    try:
        times = torch.as_tensor(model_times).detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"model_times must be a 1-D sequence of times, got {type(model_times).__name__}") from err
    if times.ndim != 1 or len(times) != len(grid):
        raise ValueError(f"model_times must hold one time per grid time ({len(grid)}), got shape {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()) or not bool((times > 0).all()):
        raise ValueError(f"model_times must be finite and > 0, got {times.tolist()}")
    if sde is not None and float(times.max()) > sde.T * (1 + 1e-12):
        raise ValueError(f"model_times must not exceed the SDE's T = {sde.T}, got {float(times.max())}")
    return times


class ModelTimes:
    """``t -> tau(t)``: the model time at ``t`` for a grid and its model times (module docstring). Called with the
    ``(B,)`` times a sampler evaluates at, on any device; the knots are copied there once per device and dtype, so
    the map itself reads nothing from the host (a CUDA graph can capture it after a warm-up call)."""

    def __init__(self, sde: LinearSDE, grid: torch.Tensor, model_times: torch.Tensor):
        grid = grid.detach().to(device="cpu", dtype=torch.float64)
        model_times = check_model_times(model_times, grid, sde)
        lam = sde.marginal_lambda(grid)
        order = torch.argsort(lam)  # lambda increases from T to the final time
        self.sde, self.grid, self.model_times = sde, grid, model_times
        self._lam, self._shift = lam[order], (sde.marginal_lambda(model_times) - lam)[order]
        self._on: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _knots(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (t.device, t.dtype)
        if key not in self._on:
            self._on[key] = (self._lam.to(t.device, t.dtype), self._shift.to(t.device, t.dtype))
        return self._on[key]

    def shift(self, lam: torch.Tensor) -> torch.Tensor:
        """``lambda(tau) - lambda(t)`` at ``lambda(t) = lam``: linear between the knots, constant outside."""
        knots, shift = self._knots(lam)  # a grid has at least two times
        hi = torch.searchsorted(knots, lam.contiguous()).clamp_(1, len(knots) - 1)
        lo = hi - 1
        w = ((lam - knots[lo]) / (knots[hi] - knots[lo])).clamp_(0, 1)
        return torch.lerp(shift[lo], shift[hi], w)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        lam = self.sde.marginal_lambda(t)
        return self.sde.inverse_lambda(lam + self.shift(lam)).to(t.dtype)

    def __repr__(self) -> str:
        return f"ModelTimes(grid={self.grid.tolist()}, model_times={self.model_times.tolist()})"
