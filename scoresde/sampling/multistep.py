"""Fast deterministic samplers in exponential-integrator coordinates, for every linear SDE.

With ``x_t = alpha_t x_0 + sigma_t eps``, ``y = x / alpha`` and ``sigma_hat = sigma / alpha = exp(-lambda)`` the
probability-flow ODE reads ``dy / d sigma_hat = eps_hat(x, t)`` with ``eps_hat = -sigma * score`` (DESIGN.md).

* ``ddim``       — Song, Meng & Ermon (2021): the exact step of that ODE with ``eps_hat`` frozen (first order);
  ``eta > 0`` adds DDIM's stochasticity (``eta = 1`` is ancestral sampling).
* ``pndm``       — Liu et al. (ICLR 2022): pseudo Runge–Kutta warm start, then pseudo linear multistep (PLMS)
  steps; variant ``f`` (F-PNDM, 4th order) or ``s`` (S-PNDM, 2nd order). Multistep weights are the Adams–Bashforth
  weights of the actual ``sigma_hat`` spacing (PNDM's 55/-59/37/-9 on a grid uniform in ``sigma_hat``).
* ``heun``       — Karras et al. (2022), Alg. 2: Heun's method in ``sigma_hat`` with optional stochastic churn.
* ``dpm_solver`` — Lu et al. (2022a, 2022b): DPM-Solver (noise prediction) and DPM-Solver++ (data prediction)
  multistep, orders 1-3, in ``lambda``; lower orders at the first and (for few steps) the last steps.

Each sampler is a loop over a time grid (data) with its multistep history local to the call.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scoresde.sampling.base import CountingScore, Sampler, full_time, progress_iter, tweedie_denoise
from scoresde.sampling.grids import time_grid
from scoresde.sde import LinearSDE
from scoresde.utils import Generator, randn


def _scalar(fn, t: torch.Tensor) -> float:
    return float(fn(t.reshape(1).to(torch.float64)))


class _Coords:
    """alpha, sigma, lambda and sigma_hat of an SDE at the grid times, in float64, plus the model views."""

    def __init__(self, sde: LinearSDE, score: CountingScore, grid: torch.Tensor):
        self.sde, self.score = sde, score
        g = grid.to(torch.float64).cpu()
        self.alpha = sde.marginal_alpha(g).tolist()
        self.sigma = sde.marginal_std(g).tolist()
        self.lam = sde.marginal_lambda(g).tolist()
        self.sigma_hat = torch.exp(-sde.marginal_lambda(g)).tolist()

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, sigma: float) -> torch.Tensor:
        """Noise prediction ``-sigma * score``."""
        return -sigma * self.score(x, full_time(t, x))

    def x0(self, x: torch.Tensor, t: torch.Tensor | float, alpha: float, sigma: float) -> torch.Tensor:
        """Data prediction (Tweedie) ``(x + sigma^2 score) / alpha``."""
        return (x + sigma**2 * self.score(x, full_time(t, x))) / alpha

    def time_of_sigma_hat(self, sigma_hat: float, like: torch.Tensor) -> torch.Tensor:
        """The time at which ``sigma / alpha = sigma_hat``."""
        lam = torch.tensor([-math.log(sigma_hat)], dtype=torch.float64)
        return full_time(float(self.sde.inverse_lambda(lam)), like)


class _GridSampler(Sampler):
    """Options shared by the grid-based deterministic samplers."""

    default_steps = 50
    default_grid = "uniform"

    def _grid(self, sde: LinearSDE, x: torch.Tensor) -> torch.Tensor:
        return time_grid(sde, self.steps or self.default_steps, self.eps, self.grid or self.default_grid,
                         rho=getattr(self, "rho", 7.0), device=x.device, dtype=torch.float64)  # fmt: skip

    def _finish(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor) -> torch.Tensor:
        return tweedie_denoise(sde, score, x, self.eps) if self.denoise else x


class DDIMSampler(_GridSampler):
    """``ddim``: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with ``c = eta * std`` of the ancestral
    posterior (Song, Meng & Ermon 2021, Eq. 12); ``eta = 0`` is deterministic."""

    name = "ddim"

    def __init__(
        self,
        *,
        steps: int | None = None,
        eta: float = 0.0,
        grid: str | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.steps, self.eta, self.grid, self.eps, self.denoise = steps, eta, grid, eps, denoise
        self.progress, self.dtype = progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        grid = self._grid(sde, x)
        c = _Coords(sde, score, grid)
        for i in progress_iter(range(len(grid) - 1), self.progress, "ddim"):
            a_t, s_t, a_s, s_s = c.alpha[i], c.sigma[i], c.alpha[i + 1], c.sigma[i + 1]
            eps = c.eps(x, grid[i], s_t)
            x0 = (x - s_t * eps) / a_t
            if self.eta > 0:
                var_ts = s_t**2 - (a_t / a_s) ** 2 * s_s**2
                noise_std = self.eta * math.sqrt(max(var_ts, 0.0) * s_s**2 / s_t**2)
                z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = a_s * x0 + math.sqrt(max(s_s**2 - noise_std**2, 0.0)) * eps + noise_std * z
            else:
                x = a_s * x0 + s_s * eps
        return self._finish(sde, score, x)


def adams_bashforth_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights ``w_j`` with ``int_a^b p(s) ds / (b - a) = sum_j w_j p(nodes[j])`` for the polynomial ``p``
    interpolating at ``nodes`` (``nodes[0] = a`` the newest point): variable-step Adams–Bashforth."""
    n = len(nodes)
    if n == 1:
        return [1.0]
    scale = b - a
    z = [(v - a) / scale for v in nodes]  # normalised nodes: integrate over [0, 1]
    weights = []
    for j in range(n):
        poly = np.polynomial.Polynomial([1.0])
        for k in range(n):
            if k != j:
                poly *= np.polynomial.Polynomial([-z[k], 1.0]) / (z[j] - z[k])
        integ = poly.integ()
        weights.append(float(integ(1.0) - integ(0.0)))
    return weights


class PNDMSampler(_GridSampler):
    """``pndm``: pseudo numerical methods (Liu et al., ICLR 2022). ``variant="f"``: 3 pseudo-RK4 steps (4 calls
    each) then 4-step PLMS (1 call); ``variant="s"``: 1 pseudo improved-Euler step (2 calls) then 2-step PLMS."""

    name = "pndm"

    def __init__(
        self,
        *,
        steps: int | None = None,
        variant: str = "f",
        grid: str | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if variant not in ("f", "s"):
            raise ValueError(f"unknown PNDM variant {variant!r}; choose 'f' (F-PNDM) or 's' (S-PNDM)")
        self.steps, self.variant, self.grid, self.eps, self.denoise = steps, variant, grid, eps, denoise
        self.progress, self.dtype = progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        grid = self._grid(sde, x)
        c = _Coords(sde, score, grid)
        order, warm = (4, 3) if self.variant == "f" else (2, 1)
        sh, al = c.sigma_hat, c.alpha
        y = x / al[0]
        history: list[torch.Tensor] = []  # eps_hat at the previous grid points, newest first

        def eps_at(y_: torch.Tensor, sig_hat: float, t: torch.Tensor | float) -> torch.Tensor:
            alpha = _scalar(sde.marginal_alpha, torch.as_tensor(t).reshape(-1)[:1])
            return c.eps(alpha * y_, t, alpha * sig_hat)

        for i in progress_iter(range(len(grid) - 1), self.progress, f"pndm-{self.variant}"):
            h = sh[i + 1] - sh[i]
            e1 = eps_at(y, sh[i], grid[i])
            if i < warm:  # pseudo Runge–Kutta warm start (transfer = exact step with frozen eps)
                if self.variant == "f":
                    mid = 0.5 * (sh[i] + sh[i + 1])
                    t_mid = c.time_of_sigma_hat(mid, y)
                    e2 = eps_at(y + 0.5 * h * e1, mid, t_mid)
                    e3 = eps_at(y + 0.5 * h * e2, mid, t_mid)
                    e4 = eps_at(y + h * e3, sh[i + 1], grid[i + 1])
                    e_prime = (e1 + 2 * e2 + 2 * e3 + e4) / 6
                else:
                    e2 = eps_at(y + h * e1, sh[i + 1], grid[i + 1])
                    e_prime = (e1 + e2) / 2
            else:  # pseudo linear multistep
                w = adams_bashforth_weights([sh[i - j] for j in range(order)], sh[i], sh[i + 1])
                e_prime = w[0] * e1 + sum(wj * ej for wj, ej in zip(w[1:], history, strict=False))
            history = [e1, *history][: order - 1]
            y = y + h * e_prime
        return self._finish(sde, score, al[-1] * y)


class HeunSampler(_GridSampler):
    """``heun``: EDM's deterministic 2nd-order sampler (Karras et al. 2022, Alg. 2) in ``sigma_hat``, on the
    ``edm`` grid by default; ``s_churn > 0`` adds its stochastic churn (``s_tmin``, ``s_tmax``, ``s_noise``)."""

    name = "heun"
    default_steps = 18
    default_grid = "edm"

    def __init__(
        self,
        *,
        steps: int | None = None,
        grid: str | None = None,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        eps: float = 1e-3,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if s_churn < 0:
            raise ValueError(f"s_churn must be >= 0, got {s_churn}")
        self.steps, self.grid, self.rho, self.eps, self.denoise = steps, grid, rho, eps, denoise
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.progress, self.dtype = progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        grid = self._grid(sde, x)
        c = _Coords(sde, score, grid)
        sh, al = c.sigma_hat, c.alpha
        n = len(grid) - 1
        y = x / al[0]
        for i in progress_iter(range(n), self.progress, "heun"):
            s_cur, t_cur = sh[i], grid[i]
            gamma = min(self.s_churn / n, math.sqrt(2) - 1) if self.s_tmin <= s_cur <= self.s_tmax else 0.0
            if gamma > 0:
                s_hat = min(s_cur * (1 + gamma), sh[0])
                z = randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                y = y + math.sqrt(max(s_hat**2 - s_cur**2, 0.0)) * self.s_noise * z
                s_cur, t_cur = s_hat, c.time_of_sigma_hat(s_hat, y)
            a_cur = _scalar(sde.marginal_alpha, torch.as_tensor(t_cur).reshape(-1)[:1])
            d = c.eps(a_cur * y, t_cur, a_cur * s_cur)
            h = sh[i + 1] - s_cur
            y_next = y + h * d
            d2 = c.eps(al[i + 1] * y_next, grid[i + 1], c.sigma[i + 1])
            y = y + h * 0.5 * (d + d2)
        return self._finish(sde, score, al[-1] * y)


class DPMSolverSampler(_GridSampler):
    """``dpm_solver``: multistep DPM-Solver (``algorithm="dpmsolver"``, noise prediction) or DPM-Solver++
    (``"dpmsolver++"``, data prediction, default), ``order`` 1-3, on the ``logsnr`` grid by default. One score call
    per step; the first steps use lower orders (no history yet) and, with ``lower_order_final`` and fewer than 15
    steps, so do the last ones (stability at few steps)."""

    name = "dpm_solver"
    default_steps = 20
    default_grid = "logsnr"

    def __init__(
        self,
        *,
        steps: int | None = None,
        order: int = 2,
        algorithm: str = "dpmsolver++",
        lower_order_final: bool = True,
        grid: str | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if order not in (1, 2, 3):
            raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
        if algorithm not in ("dpmsolver", "dpmsolver++"):
            raise ValueError(f"unknown DPM-Solver algorithm {algorithm!r}; choose 'dpmsolver' or 'dpmsolver++'")
        self.steps, self.order, self.algorithm, self.lower_order_final = steps, order, algorithm, lower_order_final
        self.grid, self.eps, self.denoise, self.progress, self.dtype = grid, eps, denoise, progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        grid = self._grid(sde, x)
        c = _Coords(sde, score, grid)
        al, sg, lam = c.alpha, c.sigma, c.lam
        n = len(grid) - 1
        data_pred = self.algorithm == "dpmsolver++"
        models: list[torch.Tensor] = []  # model outputs at previous grid points, newest first
        for i in progress_iter(range(n), self.progress, f"dpm_solver-{self.order}"):
            m = c.x0(x, grid[i], al[i], sg[i]) if data_pred else c.eps(x, grid[i], sg[i])
            models = [m, *models][:3]
            order = min(self.order, i + 1)
            if self.lower_order_final and n < 15:
                order = min(order, n - i)
            h = lam[i + 1] - lam[i]
            if data_pred:
                phi1 = math.expm1(-h)
                x = (sg[i + 1] / sg[i]) * x - al[i + 1] * phi1 * m
                coef, sign, phi2 = al[i + 1], 1.0, phi1 / h + 1
            else:
                phi1 = math.expm1(h)
                x = (al[i + 1] / al[i]) * x - sg[i + 1] * phi1 * m
                coef, sign, phi2 = sg[i + 1], -1.0, phi1 / h - 1
            if order == 2:
                r0 = (lam[i] - lam[i - 1]) / h
                x = x - 0.5 * coef * phi1 * (models[0] - models[1]) / r0
            elif order == 3:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d1_0 = (models[0] - models[1]) / r0
                d1_1 = (models[1] - models[2]) / r1
                # d1 ~ h m'(lambda_i) and d2 ~ h^2 m''(lambda_i) / 2 on a non-uniform lambda grid; integrating the
                # quadratic Taylor model against the exponential weight gives the phi_2 and -2 phi_3 weights.
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi3 = phi2 / h - 0.5
                x = x + sign * coef * phi2 * d1 - 2 * coef * phi3 * d2
        return self._finish(sde, score, x)
