"""``unipc``: the unified predictor-corrector UniPC (Zhao et al., NeurIPS 2023), multistep, orders 1-3.

In ``lambda`` with ``h = lambda_{i+1} - lambda_i``, ``hh = -h`` (data prediction) or ``h`` (noise prediction) and
the history ratios ``r_k = (lambda_{i-k} - lambda_i) / h`` (``r_p = 1`` for the new point), UniP-p (Alg. 2-3 of the
paper, B(h) form) is

    x_{i+1} = a_i x_i - c_{i+1} (expm1(hh) m_i + B(h) sum_k rho_k D_k),     D_k = (m_{i-k} - m_i) / r_k,

with ``a_i = sigma_{i+1} / sigma_i``, ``c = alpha`` (data) or ``a_i = alpha_{i+1} / alpha_i``, ``c = sigma`` (noise),
``B(h) = hh`` (``bh1``) or ``expm1(hh)`` (``bh2``), and ``rho`` solving ``R rho = g`` for the Vandermonde rows
``R_j = r^(j-1)`` and ``g_j = j! h phi_{j+1}(hh) / B(h)`` (``h phi_1 = expm1(hh)``, ``h phi_{k+1} = h phi_k / hh -
1/k!``). UniC-p does the same with the output at the predicted point (``D = m_{i+1} - m_i``, ``r = 1``) and
raises the order by one at no extra model call: the corrected point replaces the predicted one, while the
output stays the one at the predicted point (Zhao et al. 2023, Sec. 3.2). The last step has no corrector (it would
need one more model call). As in the reference implementation, ``rho = 1/2`` for the order-2 predictor and the
order-1 corrector.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scoresde.sampling.base import GridCoords, GridOption, GridSampler, StepCallback, start_grid
from scoresde.sampling.dpm_solver import step_orders
from scoresde.sampling.exponential import (
    PREDICTIONS,
    LinearSteps,
    basis,
    cached_per_grid,
    check_choice,
    run_linear_steps,
)
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

VARIANTS = ("bh1", "bh2")
#: From this many steps on, the automatic order is 3, below it 2 (measured on the exact VP mixtures, ``logistic``
#: grid: order 2 is 1.2-2.2x more accurate at 8-12 steps, order 3 1.6-2.5x at 15-40; on the trained digits model,
#: ``logsnr``: order 2 better at 8-10 steps (Fréchet 34-36 vs 45-46), equal at 15).
ORDER_3_FROM_STEPS = 15


def automatic_order(steps: int) -> int:
    return 3 if steps >= ORDER_3_FROM_STEPS else 2


def unipc_rhs(hh: float, order: int, variant: str) -> tuple[np.ndarray, float]:
    """``g_j = j! h phi_{j+1}(hh) / B(h)`` for ``j = 1 .. order`` and ``B(h)``."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi = math.expm1(hh) / hh - 1  # h phi_2 / h: the series starts at the second phi function
    factorial, rhs = 1, []
    for j in range(1, order + 1):
        rhs.append(h_phi * factorial / b_h)
        factorial *= j + 1
        h_phi = h_phi / hh - 1 / factorial
    return np.array(rhs), b_h


def unipc_weights(
    lam: tuple[float, ...], i: int, order: int, variant: str, prediction: str, corrector: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weights of one UniP step (on ``m_i, m_{i-1}, ...``) and of its UniC correction (on ``m_{i+1}, m_i, ...``),
    both without the state term ``a_i x_i``, divided by ``c_{i+1}``."""
    h = lam[i + 1] - lam[i]
    hh = -h if prediction == "data" else h
    ratios = np.array([(lam[i - k] - lam[i]) / h for k in range(1, order)] + [1.0])
    rhs, b_h = unipc_rhs(hh, order, variant)
    vander = np.vstack([ratios**j for j in range(order)])
    m = basis(order + 1)  # m[0] the new point's output (corrector only), m[1 + k] the output at point i - k
    diffs = [(m[1 + k] - m[1]) / ratios[k - 1] for k in range(1, order)]
    base = -math.expm1(hh) * m[1]
    if order == 1:
        predictor = base
    else:
        rho_p = np.array([0.5]) if order == 2 else np.linalg.solve(vander[:-1, :-1], rhs[:-1])
        predictor = base - b_h * sum(r * d for r, d in zip(rho_p, diffs, strict=True))
    if not corrector:
        return predictor[1:], None
    rho_c = np.array([0.5]) if order == 1 else np.linalg.solve(vander, rhs)
    correction = sum((r * d for r, d in zip(rho_c[:-1], diffs, strict=True)), np.zeros(order + 1))
    corrected = base - b_h * (correction + rho_c[-1] * (m[0] - m[1]))
    return predictor[1:], corrected


@cached_per_grid
def unipc_steps(
    coords: GridCoords,
    order: int | None = None,
    variant: str = "bh2",
    prediction: str = "data",
    unic: bool = True,
    lower_order_final: bool | None = None,
) -> LinearSteps:
    """The per-step coefficients of multistep UniPC on the grid of ``coords``; UniC on every step but the last.
    ``order=None``: :func:`automatic_order` of the number of steps."""
    order = automatic_order(len(coords) - 1) if order is None else order
    check_choice("order", order, (1, 2, 3))
    check_choice("variant", variant, VARIANTS)
    check_choice("prediction", prediction, PREDICTIONS)
    lam, alpha, sigma = coords.lam, coords.alpha, coords.sigma
    n = len(coords) - 1
    state_coef, weights, corrector = [], [], []
    for i, p in enumerate(step_orders(lam, order, lower_order_final)):
        use_c = unic and i < n - 1
        w_p, w_c = unipc_weights(lam, i, p, variant, prediction, use_c)
        if prediction == "data":
            scale = alpha[i + 1]
            state_coef.append(sigma[i + 1] / sigma[i])
        else:
            scale = sigma[i + 1]
            state_coef.append(alpha[i + 1] / alpha[i])
        weights.append(tuple(float(v) for v in scale * w_p))
        corrector.append(tuple(float(v) for v in scale * w_c) if w_c is not None else None)
    return LinearSteps(prediction, tuple(state_coef), tuple(weights), tuple(corrector) if unic else None)


def sample_unipc(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    order: int | None = None,
    variant: str = "bh2",
    prediction: str = "data",
    unic: bool = True,
    lower_order_final: bool | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Multistep UniPC from ``x`` at ``grid[0]`` to ``grid[-1]``: one model call per step."""
    model, coords, times = start_grid(sde, model, x, grid)
    steps = unipc_steps(coords, order, variant, prediction, unic, lower_order_final)
    return run_linear_steps(model, x, coords, times, steps, callback, progress, "unipc")


class UniPCSampler(GridSampler):
    """``unipc``: UniPC (Zhao et al. 2023) with predictor order ``order`` (1-3; ``None``: 2 below 15 steps, else 3),
    ``variant`` ``bh1`` / ``bh2``, ``prediction`` ``data`` (x0) or ``noise`` (eps), and the UniC corrector
    (``unic``, on by default: order + 1 at no extra model call), on the ``logistic`` grid by default (on exact
    mixture scores 3-8x more accurate than ``logsnr`` at 8-20 steps, benchmarks/bench_samplers.py; on the main
    job's EDM-preconditioned digits model better at every step count from 4 to 20, Fréchet 11.9 vs 27.2 at 5
    steps, 11.3 vs 13.5 at 10, converged ODE 11.4, benchmarks/bench_digits.py; an earlier eps-prediction model
    preferred ``logsnr``). ``lower_order_final``: as ``dpm_solver``'s."""

    name = "unipc"
    default_steps = 20
    default_grid = "logistic"

    def __init__(
        self,
        *,
        steps: int | None = None,
        order: int | None = None,
        variant: str = "bh2",
        prediction: str = "data",
        unic: bool = True,
        lower_order_final: bool | None = None,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_choice("UniPC order", order, (None, 1, 2, 3))
        check_choice("UniPC variant", variant, VARIANTS)
        check_choice("UniPC prediction", prediction, PREDICTIONS)
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.order, self.variant, self.prediction = order, variant, prediction
        self.unic, self.lower_order_final = bool(unic), lower_order_final

    def run(self, sde, model, x, grid, generator, callback):
        return sample_unipc(sde, model, x, grid, generator, callback, order=self.order, variant=self.variant,
                            prediction=self.prediction, unic=self.unic, lower_order_final=self.lower_order_final,
                            progress=self.progress)  # fmt: skip
