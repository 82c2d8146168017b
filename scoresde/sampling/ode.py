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

from scoresde.sampling.base import GridOption, GridSampler, ModelViews, Sampler
from scoresde.sampling.grids import check_final_time, final_time, final_time_below_T
from scoresde.sde import LinearSDE

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def flow_field(
    sde: LinearSDE, score: Callable, shape: tuple[int, ...], eps: float, T: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow drift (``sde.reverse(score, probability_flow=True)``, Eq. 13) as a function of
    ``(t, flat_x)`` for a solver; the solver's scalar time clamped to ``[eps, T]``."""
    flow = sde.reverse(score, probability_flow=True)

    def field(t: torch.Tensor, x_flat: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x_flat.dtype, device=x_flat.device).clamp(eps, T)
        return flow.drift(x_flat.reshape(shape), tt).reshape(x_flat.shape)

    return field


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")


class ODESampler(GridSampler):
    """``ode``: the probability-flow ODE through ``torchdiffeq.odeint``.

    Adaptive methods (``dopri5`` default, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) use ``rtol``/
    ``atol``; fixed-grid ones (``euler``, ``midpoint``, ``rk4``, ...) step on the time ``grid`` (``steps``, default
    100, of a named grid, or the times themselves).
    """

    name = "ode"
    default_steps = 100
    default_grid = "uniform"
    capturable = False  # torchdiffeq steps it (adaptive step control reads its error estimate on the host)

    def __init__(
        self,
        *,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int | None = None,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if method not in ADAPTIVE + FIXED:
            raise ValueError(f"unknown torchdiffeq method {method!r}; choose one of {ADAPTIVE + FIXED}")
        check_tolerances(rtol, atol)
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, dtype=dtype)
        if method in ADAPTIVE and (self.steps is not None or isinstance(self.grid, torch.Tensor)):
            raise ValueError(f"adaptive method {method!r} chooses its own steps: give rtol/atol, not steps or grid")
        self.method, self.rtol, self.atol = method, rtol, atol

    def check(self, sde: LinearSDE) -> None:
        if self.method in FIXED:
            super().check(sde)
        else:
            if self.model_times is not None:
                raise ValueError(f"adaptive method {self.method!r} has no grid times to tell the model other times at")
            final_time_below_T(sde, self.eps)

    def sample(self, sde, model, x, generator, callback):
        if self.method in FIXED:
            return super().sample(sde, model, x, generator, callback)
        eps = final_time(sde, self.eps)
        x_eps = self.integrate(sde, model, x, torch.tensor([sde.T, eps], dtype=torch.float64))
        return model.x0(x_eps, eps) if self.denoise else x_eps

    def run(self, sde, model, x, grid, generator, callback):
        return self.integrate(sde, model, x, grid)

    def integrate(self, sde: LinearSDE, model: ModelViews, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        eps = float(grid[-1])
        field = flow_field(sde, model, tuple(x.shape), eps, sde.T)
        span = torch.tensor([sde.T, eps], dtype=x.dtype, device=x.device)
        # Adaptive solvers step exactly onto eps rather than interpolating their last step (more accurate).
        options: dict = {"step_t": span[1:]} if self.method in ADAPTIVE else {}
        if self.method in FIXED:
            fixed = grid.to(device=x.device, dtype=x.dtype)
            options["grid_constructor"] = lambda *_: fixed
        return odeint(field, x.reshape(-1), span, rtol=self.rtol, atol=self.atol, method=self.method,
                      options=options)[-1].reshape(x.shape)  # fmt: skip


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
        eps: float | None = None,
        denoise: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if method not in SCIPY_METHODS:
            raise ValueError(f"unknown scipy method {method!r}; choose one of {SCIPY_METHODS}")
        check_tolerances(rtol, atol)
        self.method, self.rtol, self.atol, self.eps = method, rtol, atol, check_final_time(eps)
        self.denoise, self.dtype = bool(denoise), dtype

    def check(self, sde: LinearSDE) -> None:
        final_time_below_T(sde, self.eps)

    def sample(self, sde, model, x, generator, callback):
        eps = final_time(sde, self.eps)
        field = flow_field(sde, model, tuple(x.shape), eps, sde.T)

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            y_t = torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
            return field(torch.tensor(t), y_t).double().cpu().numpy()

        y0 = x.reshape(-1).double().cpu().numpy()
        sol = scipy.integrate.solve_ivp(fun, (sde.T, eps), y0, method=self.method, rtol=self.rtol, atol=self.atol)
        if not sol.success:
            raise RuntimeError(f"scipy {self.method} failed: {sol.message}")
        x_eps = torch.from_numpy(sol.y[:, -1]).to(device=x.device, dtype=x.dtype).reshape(x.shape)
        return model.x0(x_eps, eps) if self.denoise else x_eps
