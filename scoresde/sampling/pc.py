"""Predictor–corrector samplers (Song et al. 2021, Alg. 1-3): any predictor x any corrector on a time grid.

``euler_maruyama``, ``reverse_diffusion`` and ``ancestral`` are the predictors alone; ``pc`` combines one with a
corrector (``langevin``, ``annealed_langevin`` or ``none``). Per grid step ``t_i -> t_{i+1}``: the corrector at
``t_i`` (``n_steps`` score calls), then the predictor (one call). A final Tweedie denoising step at ``eps`` adds
one call when ``denoise`` is on.
"""

from __future__ import annotations

import torch

from scoresde.sampling.base import CountingScore, Sampler, full_time, progress_iter, tweedie_denoise
from scoresde.sampling.correctors import CORRECTORS
from scoresde.sampling.grids import time_grid
from scoresde.sampling.predictors import PREDICTORS
from scoresde.sde import LinearSDE
from scoresde.utils import Generator


def pc_sample(
    sde: LinearSDE,
    score: CountingScore,
    x: torch.Tensor,
    grid: torch.Tensor,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps: int,
    generator: Generator,
    probability_flow: bool = False,
    denoise: bool = True,
    progress: bool | None = None,
) -> torch.Tensor:
    """Run the PC loop over ``grid`` (decreasing times) from ``x`` at ``grid[0]``."""
    predict = PREDICTORS[predictor] if predictor != "none" else None
    correct = CORRECTORS[corrector]
    for i in progress_iter(range(len(grid) - 1), progress, f"pc[{predictor}/{corrector}]"):
        t, s = full_time(grid[i], x), full_time(grid[i + 1], x)
        if correct is not None:
            alpha = (sde.marginal_alpha(t) / sde.marginal_alpha(s)) ** 2
            x, x_mean = correct(sde, score, x, t, alpha, snr, n_steps, generator)
        if predict is not None:
            x, x_mean = predict(sde, score, x, t, s, generator, probability_flow=probability_flow)
    return tweedie_denoise(sde, score, x, grid[-1]) if denoise else x


def _check_choice(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(choices)}")


class PCSampler(Sampler):
    """``pc``: predictor–corrector sampling. ``predictor``/``corrector``/``snr`` default to the paper's choice for the
    SDE (``sde.pc_defaults``: VE reverse_diffusion + langevin with snr 0.16; VP/sub-VP euler_maruyama alone).
    ``steps`` defaults to ``sde.N``."""

    name = "pc"

    def __init__(
        self,
        *,
        predictor: str | None = None,
        corrector: str | None = None,
        snr: float | None = None,
        n_steps: int = 1,
        steps: int | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        grid: str = "uniform",
        probability_flow: bool = False,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        if predictor is not None:
            _check_choice("predictor", predictor, [*PREDICTORS, "none"])
        if corrector is not None:
            _check_choice("corrector", corrector, CORRECTORS)
        if int(n_steps) < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        self.predictor, self.corrector, self.snr, self.n_steps = predictor, corrector, snr, int(n_steps)
        self.steps, self.eps, self.denoise, self.grid = steps, eps, denoise, grid
        self.probability_flow, self.progress, self.dtype = probability_flow, progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        defaults = sde.pc_defaults
        grid = time_grid(sde, self.steps or sde.N, self.eps, self.grid, device=x.device, dtype=x.dtype)
        return pc_sample(
            sde,
            score,
            x,
            grid,
            self.predictor or defaults["predictor"],
            self.corrector or defaults["corrector"],
            defaults["snr"] if self.snr is None else self.snr,
            self.n_steps,
            generator,
            self.probability_flow,
            self.denoise,
            self.progress,
        )


class PredictorSampler(Sampler):
    """A predictor alone (no corrector) on a grid of ``steps`` (default ``sde.N``) from ``T`` to ``eps``."""

    predictor = ""

    def __init__(
        self,
        *,
        steps: int | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        grid: str = "uniform",
        probability_flow: bool = False,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.steps, self.eps, self.denoise, self.grid = steps, eps, denoise, grid
        self.probability_flow, self.progress, self.dtype = probability_flow, progress, dtype

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        grid = time_grid(sde, self.steps or sde.N, self.eps, self.grid, device=x.device, dtype=x.dtype)
        return pc_sample(
            sde, score, x, grid, self.predictor, "none", 0.0, 0, generator,
            self.probability_flow, self.denoise, self.progress,
        )  # fmt: skip


class EulerMaruyamaSampler(PredictorSampler):
    """``euler_maruyama``: Euler–Maruyama on the reverse SDE (``probability_flow=True``: Euler on the ODE)."""

    name = predictor = "euler_maruyama"


class ReverseDiffusionSampler(PredictorSampler):
    """``reverse_diffusion``: the reverse of the SDE's discretization (Song et al. 2021, Eq. 46)."""

    name = predictor = "reverse_diffusion"


class AncestralSampler(PredictorSampler):
    """``ancestral``: sampling the Gaussian posterior ``q(x_s | x_t, x0_hat)`` (DDPM / SMLD, any linear SDE)."""

    name = predictor = "ancestral"

    def __init__(
        self,
        *,
        steps: int | None = None,
        eps: float = 1e-3,
        denoise: bool = True,
        grid: str = "uniform",
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(steps=steps, eps=eps, denoise=denoise, grid=grid, progress=progress, dtype=dtype)
