"""Probability-flow ODE samplers (Song et al. 2021, Eq. 13) through adapters to torchdiffeq and SciPy.

``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` integrated from ``T`` down to ``eps``. The adapters flatten the batch,
clamp the solver's time to ``[eps, T]`` (adaptive solvers probe slightly outside the interval) and count score
calls; torchdiffeq keeps the state on the device, SciPy is the float64 CPU reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.integrate
import torch
from torchdiffeq import odeint

from scoresde.sampling.base import CountingScore, Sampler, tweedie_denoise
from scoresde.sampling.grids import time_grid
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def flow_field(
    sde: LinearSDE, score: Callable, shape: tuple[int, ...], eps: float, T: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow drift as a function of ``(t, flat_x)`` for a solver; time clamped to ``[eps, T]``."""
    reverse = sde.reverse(score, probability_flow=True)

    def field(t: torch.Tensor, x_flat: torch.Tensor) -> torch.Tensor:
        x = x_flat.reshape(shape)
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp(eps, T).expand(shape[0])
        return reverse.sde(x, tt)[0].reshape(x_flat.shape)

    return field


class ODESampler(Sampler):
    """``ode``: the probability-flow ODE through ``torchdiffeq.odeint``.

    Adaptive methods (``dopri5`` default, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) use ``rtol``/
    ``atol``; fixed-grid ones (``euler``, ``midpoint``, ``rk4``, ...) take ``steps`` on the time ``grid``.
    """

    name = "ode"

    def __init__(
        self,
        *,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int | None = None,
        grid: str = "uniform",
        eps: float = 1e-3,
        denoise: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if method not in ADAPTIVE + FIXED:
            raise ValueError(f"unknown torchdiffeq method {method!r}; choose one of {ADAPTIVE + FIXED}")
        if method in FIXED and steps is None:
            steps = 100
        self.method, self.rtol, self.atol, self.steps, self.grid = method, rtol, atol, steps, grid
        self.eps, self.denoise, self.dtype = eps, denoise, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        field = flow_field(sde, score, tuple(x.shape), self.eps, sde.T)
        span = torch.tensor([sde.T, self.eps], dtype=x.dtype, device=x.device)
        # Adaptive solvers step exactly onto eps rather than interpolating their last step (more accurate).
        options: dict = {"step_t": span[1:]} if self.method in ADAPTIVE else {}
        if self.method in FIXED:
            grid = time_grid(sde, self.steps, self.eps, self.grid, device=x.device, dtype=x.dtype)
            options["grid_constructor"] = lambda *_: grid
        x_eps = odeint(field, x.reshape(-1), span, rtol=self.rtol, atol=self.atol, method=self.method,
                       options=options)[-1].reshape(x.shape)  # fmt: skip
        return tweedie_denoise(sde, score, x_eps, self.eps) if self.denoise else x_eps


class ScipyODESampler(Sampler):
    """``ode_scipy``: the probability-flow ODE through ``scipy.integrate.solve_ivp`` in float64 on the CPU.

    The reference's method (RK45 with ``rtol = atol = 1e-5``); a CPU round trip per evaluation, so it is the slow,
    precise baseline (``DOP853`` with tight tolerances gives reference solutions in the tests).
    """

    name = "ode_scipy"

    def __init__(
        self,
        *,
        method: str = "RK45",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        eps: float = 1e-3,
        denoise: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if method not in SCIPY_METHODS:
            raise ValueError(f"unknown scipy method {method!r}; choose one of {SCIPY_METHODS}")
        self.method, self.rtol, self.atol, self.eps, self.denoise, self.dtype = method, rtol, atol, eps, denoise, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        field = flow_field(sde, score, tuple(x.shape), self.eps, sde.T)

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            y_t = torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
            return field(torch.tensor(t), y_t).double().cpu().numpy()

        y0 = x.reshape(-1).double().cpu().numpy()
        sol = scipy.integrate.solve_ivp(fun, (sde.T, self.eps), y0, method=self.method, rtol=self.rtol,
                                        atol=self.atol)  # fmt: skip
        if not sol.success:
            raise RuntimeError(f"scipy {self.method} failed: {sol.message}")
        x_eps = torch.from_numpy(sol.y[:, -1]).to(device=x.device, dtype=x.dtype).reshape(x.shape)
        return tweedie_denoise(sde, score, x_eps, self.eps) if self.denoise else x_eps
