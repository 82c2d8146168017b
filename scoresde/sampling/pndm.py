"""``pndm``: pseudo numerical methods (Liu et al., ICLR 2022) in exponential-integrator coordinates.

In ``y = x / alpha`` and ``sigma_hat = sigma / alpha`` the probability-flow ODE is ``dy / d sigma_hat = eps_hat``;
PNDM's "transfer" (the exact step with ``eps_hat`` frozen) is the Euler step there. Variant ``f`` (F-PNDM) makes
3 pseudo Runge–Kutta-4 steps (4 model calls each: classical RK4 on that ODE, Eq. 13 of the paper) and then 4-step
pseudo linear multistep (PLMS) steps of one call; variant ``s`` (S-PNDM) one pseudo improved-Euler step (2 calls)
then 2-step PLMS. The multistep weights are the variable-step Adams–Bashforth weights of the actual
``sigma_hat`` spacing (PNDM's ``(55, -59, 37, -9) / 24`` on a grid uniform in ``sigma_hat``), computed once per
grid; each PLMS step is then ``x_{i+1} = (alpha_{i+1} / alpha_i) x_i + sum_j w_j eps_{i-j}``.
"""

from __future__ import annotations

import numpy as np
import torch

from scoresde.sampling.base import (
    GridCoords,
    GridOption,
    GridSampler,
    ModelViews,
    StepCallback,
    grid_conversions,
    progress_iter,
    scaled_sum,
    start_grid,
    x0_from_eps,
)
from scoresde.sampling.exponential import (
    LinearSteps,
    Output,
    as_output,
    cached_per_grid,
    check_choice,
    combine,
    materialize,
    model_output,
)
from scoresde.sampling.grids import cached_per_sde
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

VARIANTS = {"f": (4, 3), "s": (2, 1)}  # variant: (multistep order, number of pseudo Runge–Kutta warm-up steps)


def adams_bashforth_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights ``w_j`` with ``int_a^b p(s) ds / (b - a) = sum_j w_j p(nodes[j])`` for the polynomial ``p``
    interpolating at ``nodes`` (``nodes[0] = a`` the newest point): variable-step Adams–Bashforth.

    In the normalised variable ``z = (s - a) / (b - a)`` the weights solve the moment equations
    ``sum_j w_j z_j^k = int_0^1 z^k dz = 1 / (k + 1)`` for ``k < len(nodes)``."""
    z = (np.asarray(nodes, dtype=np.float64) - a) / (b - a)
    moments = 1.0 / np.arange(1, len(z) + 1)
    return np.linalg.solve(np.vander(z, increasing=True).T, moments).tolist()


@cached_per_grid
def pndm_steps(coords: GridCoords, variant: str = "f") -> LinearSteps:
    """Coefficients of the PLMS steps (``weights`` of the warm-up steps are left empty: they are Runge–Kutta)."""
    check_choice("variant", variant, VARIANTS)
    order, warm = VARIANTS[variant]
    sigma_hat, alpha = coords.sigma_hat, coords.alpha
    state_coef, weights = [], []
    for i in range(len(coords) - 1):
        state_coef.append(alpha[i + 1] / alpha[i])
        if i < warm:
            weights.append(())
            continue
        h = sigma_hat[i + 1] - sigma_hat[i]
        w = adams_bashforth_weights([sigma_hat[i - j] for j in range(order)], sigma_hat[i], sigma_hat[i + 1])
        weights.append(tuple(alpha[i + 1] * h * wj for wj in w))
    return LinearSteps("noise", tuple(state_coef), tuple(weights))


@cached_per_sde
def midpoint(sde: LinearSDE, coords: GridCoords, i: int) -> tuple[float, float, float]:
    """Time, ``alpha`` and ``sigma_hat`` halfway in ``sigma_hat`` between grid points ``i`` and ``i + 1``."""
    mid = 0.5 * (coords.sigma_hat[i] + coords.sigma_hat[i + 1])
    t_mid = sde.inverse_lambda(torch.tensor([-np.log(mid)], dtype=torch.float64))
    return float(t_mid), float(sde.marginal_alpha(t_mid)), mid


def pseudo_runge_kutta(
    sde: LinearSDE,
    model: ModelViews,
    x: torch.Tensor,
    eps_hat: Output,
    coords: GridCoords,
    i: int,
    variant: str,
    t_next: torch.Tensor,
) -> torch.Tensor:
    """One warm-up step from grid point ``i`` given ``eps_hat`` there: pseudo RK4 (``f``) or improved Euler (``s``) on
    ``dy / d sigma_hat = eps_hat`` with ``y = x / alpha``. ``y`` is never formed: every stage point and the step are
    one linear combination of ``x`` and the slopes (a score model's rescaling to ``eps_hat`` folded in)."""
    alpha, sigma_hat = coords.alpha, coords.sigma_hat
    h, inv = sigma_hat[i + 1] - sigma_hat[i], 1 / alpha[i]

    def eps_at(offset: float, slope: Output, t: torch.Tensor, a: float, s_hat: float) -> Output:
        """``eps_hat`` at ``x = a (y + offset slope)``."""
        return model_output(model, "eps", scaled_sum(a * inv, x, a * offset * slope[0], slope[1]), t, a, a * s_hat)

    if variant == "s":
        e2 = eps_at(h, eps_hat, t_next, alpha[i + 1], sigma_hat[i + 1])
        slopes = (eps_hat, e2)
        weights = (h / 2, h / 2)  # y + h (e1 + e2) / 2
    else:
        t_mid, a_mid, s_mid = midpoint(sde, coords, i)
        t_mid = torch.full_like(t_next, t_mid)
        e2 = eps_at(0.5 * h, eps_hat, t_mid, a_mid, s_mid)
        e3 = eps_at(0.5 * h, e2, t_mid, a_mid, s_mid)
        e4 = eps_at(h, e3, t_next, alpha[i + 1], sigma_hat[i + 1])
        slopes = (eps_hat, e2, e3, e4)
        weights = (h / 6, h / 3, h / 3, h / 6)  # y + h (e1 + 2 e2 + 2 e3 + e4) / 6
    a_next = alpha[i + 1]
    return combine(x, a_next * inv, [a_next * w for w in weights], slopes)


def sample_pndm(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    variant: str = "f",
    progress: bool | None = None,
) -> torch.Tensor:
    """PNDM from ``x`` at ``grid[0]`` to ``grid[-1]``: warm-up steps of 4 (``f``) or 2 (``s``) calls, then 1."""
    model, coords, times = start_grid(sde, model, x, grid)
    steps = pndm_steps(coords, variant)
    order, warm = VARIANTS[variant]
    own, pq = model.own("eps"), grid_conversions(model, "eps", coords)
    history: list[Output] = []  # eps_hat at the previous grid points, newest first
    for i in progress_iter(range(len(grid) - 1), progress, f"pndm-{variant}"):
        eps_hat = as_output(*pq[i], own(x, times[i]), x)
        history = [eps_hat, *history][:order]
        if callback is not None:
            denoised = x0_from_eps(x, materialize(eps_hat), coords.alpha[i], coords.sigma[i])
            callback({"i": i, "t": coords.times[i], "x": x, "denoised": denoised})
        if i < warm:
            x = pseudo_runge_kutta(sde, model, x, eps_hat, coords, i, variant, times[i + 1])
        else:
            x = combine(x, steps.state_coef[i], steps.weights[i], history)
    return x


class PNDMSampler(GridSampler):
    """``pndm``: pseudo numerical methods (Liu et al., ICLR 2022). ``variant="f"``: 3 pseudo-RK4 steps (4 calls
    each) then 4-step PLMS (1 call); ``variant="s"``: 1 pseudo improved-Euler step (2 calls) then 2-step PLMS."""

    name = "pndm"
    default_steps = 50
    default_grid = "uniform"

    def __init__(
        self,
        *,
        steps: int | None = None,
        variant: str = "f",
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown PNDM variant {variant!r}; choose 'f' (F-PNDM) or 's' (S-PNDM)")
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.variant = variant

    def run(self, sde, model, x, grid, generator, callback):
        return sample_pndm(sde, model, x, grid, generator, callback, variant=self.variant, progress=self.progress)
