"""``dpm_solver``: multistep DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al. 2022b), orders 1-3.

In ``lambda = log(alpha / sigma)`` with step ``h = lambda_{i+1} - lambda_i`` and the backward differences of the
model outputs on the (possibly non-uniform) grid, ``r_k = (lambda_{i-k} - lambda_{i-k-1}) / h``:

* data prediction (``dpmsolver++``, outputs ``x0_hat``): ``phi_1 = expm1(-h)``,
  ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} phi_1 m_i + ...``;
* noise prediction (``dpmsolver``, outputs ``eps_hat``): ``phi_1 = expm1(h)``,
  ``x_{i+1} = (alpha_{i+1} / alpha_i) x_i - sigma_{i+1} phi_1 m_i + ...``;

order 2 adds ``-1/2 c phi_1 D_1`` (2M, Lu et al. 2022b Alg. 2) and order 3 ``+-c phi_2 D_1 - 2 c phi_3 D_2``, where
``D_1 ~ h m'`` and ``D_2 ~ h^2 m'' / 2`` are the divided differences and ``phi_2 = phi_1 / h +- 1``,
``phi_3 = phi_2 / h - 1/2`` (``c`` is ``alpha_{i+1}`` or ``sigma_{i+1}``). The factor 2 on ``D_2`` makes the
method truly third order (without it the step is second order in ``h``; measured in tests/test_sampling_local.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scoresde.sampling.base import GridCoords, GridOption, GridSampler, StepCallback, start_grid
from scoresde.sampling.exponential import (
    LinearSteps,
    basis,
    cached_per_grid,
    check_choice,
    run_linear_steps,
)
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

ALGORITHMS = {"dpmsolver++": "data", "dpmsolver": "noise"}


def lower_order_final_applies(lam: tuple[float, ...], setting: bool | None) -> bool:
    """Whether the last steps drop to lower orders (the last to 1, the one before to 2): ``True`` / ``False`` as
    set; ``None`` (automatic) when the grid's last step in ``lambda`` is more than 10% longer than the one before.

    Extrapolating the output polynomial over a step much longer than its history overshoots (the data prediction
    saturates as the noise vanishes). Measured (benchmarks/bench_samplers.py): on the ``logistic`` grid, whose steps
    lengthen towards the data, lowering cuts the error of UniPC-3 at 20 steps 20x; on ``logsnr`` (equal steps) it
    changes nothing from 8 steps on and costs 2x at 6-10 steps for order 3.
    """
    if setting is not None:
        return bool(setting)
    return len(lam) > 2 and (lam[-1] - lam[-2]) > 1.1 * (lam[-2] - lam[-3])


def step_orders(lam: tuple[float, ...], order: int, lower_order_final: bool | None) -> list[int]:
    """The order of each step on the grid with these ``lambda`` values: ``i + 1`` while the history fills, and
    ``steps - i`` at the end when the final steps are lowered."""
    steps = len(lam) - 1
    lower = lower_order_final_applies(lam, lower_order_final)
    return [min(order, i + 1, steps - i) if lower else min(order, i + 1) for i in range(steps)]


@cached_per_grid
def dpm_solver_steps(
    coords: GridCoords, order: int = 3, algorithm: str = "dpmsolver++", lower_order_final: bool | None = None
) -> LinearSteps:
    """The per-step coefficients of multistep DPM-Solver(++) on the grid of ``coords``."""
    check_choice("order", order, (1, 2, 3))
    check_choice("algorithm", algorithm, ALGORITHMS)
    data = ALGORITHMS[algorithm] == "data"
    lam, alpha, sigma = coords.lam, coords.alpha, coords.sigma
    state_coef, weights = [], []
    for i, p in enumerate(step_orders(lam, order, lower_order_final)):
        h = lam[i + 1] - lam[i]
        m = basis(3)  # m[k] stands for the output at grid point i - k
        if data:
            c, sign, phi1 = alpha[i + 1], 1.0, math.expm1(-h)
            state_coef.append(sigma[i + 1] / sigma[i])
        else:
            c, sign, phi1 = sigma[i + 1], -1.0, math.expm1(h)
            state_coef.append(alpha[i + 1] / alpha[i])
        phi2 = phi1 / h + sign
        w = -c * phi1 * m[0]
        if p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            w = w - 0.5 * c * phi1 * (m[0] - m[1]) / r0
        elif p == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # ~ h m'(lambda_i)
            d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 m''(lambda_i) / 2
            phi3 = phi2 / h - 0.5
            w = w + sign * c * phi2 * d1 - 2 * c * phi3 * d2
        weights.append(tuple(float(v) for v in np.trim_zeros(w, "b")) or (0.0,))
    return LinearSteps(ALGORITHMS[algorithm], tuple(state_coef), tuple(weights))


def sample_dpm_solver(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    order: int = 3,
    algorithm: str = "dpmsolver++",
    lower_order_final: bool | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver(++) from ``x`` at ``grid[0]`` to ``grid[-1]``: one model call per step."""
    model, coords, times = start_grid(sde, model, x, grid)
    steps = dpm_solver_steps(coords, order, algorithm, lower_order_final)
    return run_linear_steps(model, x, coords, times, steps, callback, progress, f"dpm_solver-{order}")


class DPMSolverSampler(GridSampler):
    """``dpm_solver``: multistep DPM-Solver++ (``algorithm="dpmsolver++"``, data prediction, default) or DPM-Solver
    (``"dpmsolver"``, noise prediction), ``order`` 1-3; one model call per step. The first steps use lower orders
    (no history yet); ``lower_order_final`` lowers the last ones too (``None``: where the grid's last step is the
    longest, see :func:`lower_order_final_applies`). On the ``logistic`` grid by default: on exact mixture scores it
    is 3-10x more accurate than ``logsnr`` at 5-6 steps and within ~25% of it (either way) at 8-20 (``logsnr``
    pulls ahead from 25 steps, below 5e-3), benchmarks/bench_samplers.py; on the main job's digits model it reaches
    the converged ODE's Fréchet distance at 20 steps (14.3 vs 14.3, ``logsnr`` 15.1, benchmarks/bench_training.py;
    11.5 vs 11.4, ``logsnr`` 12.3 on bench_digits.py's draws) and is better at 5, 8, 10 and 15 steps too, though
    not at 4 and 6 (benchmarks/bench_digits.py)."""

    name = "dpm_solver"
    default_steps = 20
    default_grid = "logistic"

    def __init__(
        self,
        *,
        steps: int | None = None,
        order: int = 3,
        algorithm: str = "dpmsolver++",
        lower_order_final: bool | None = None,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_choice("DPM-Solver order", order, (1, 2, 3))
        check_choice("DPM-Solver algorithm", algorithm, ALGORITHMS)
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.order, self.algorithm, self.lower_order_final = order, algorithm, lower_order_final

    def run(self, sde, model, x, grid, generator, callback):
        return sample_dpm_solver(sde, model, x, grid, generator, callback, order=self.order, algorithm=self.algorithm,
                                 lower_order_final=self.lower_order_final, progress=self.progress)  # fmt: skip
