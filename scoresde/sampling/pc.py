"""Predictor–corrector samplers (Song et al. 2021, Alg. 1-3): any predictor x any corrector on a time grid.

``euler_maruyama``, ``reverse_diffusion`` and ``ancestral`` are the predictors alone; ``pc`` combines one with a
corrector (``langevin``, ``annealed_langevin`` or ``none``). Per grid step ``t_i -> t_{i+1}``: the corrector at
``t_i`` (``n_steps`` model calls), then the predictor (one call). A final Tweedie denoising step at the final time
adds one call when ``denoise`` is on. :func:`sample_pc` is the one PC loop; inverse problems run it with a
``constrain`` hook (replacement of the known part after every update).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoresde.sampling.base import (
    GridOption,
    GridSampler,
    StepCallback,
    as_views,
    batch_times,
    noise_adder,
    progress_iter,
    scaled_sum,
)
from scoresde.sampling.correctors import CORRECTORS
from scoresde.sampling.predictors import PREDICTORS, STEPS, folded_steps, grid_schedules
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

#: ``constrain(x, t) -> x``, applied after every update to the state at the time ``t`` ``(B,)`` it has reached.
Constraint = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_pc(
    sde: LinearSDE,
    model,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: Generator = None,
    callback: StepCallback | None = None,
    *,
    predictor: str = "euler_maruyama",
    corrector: str = "none",
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    constrain: Constraint | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """The PC loop from ``x`` at ``grid[0]`` to ``grid[-1]`` (no final denoising).

    ``constrain`` (optional) is applied to the starting point, after the corrector at ``t_i`` and after the
    predictor at ``t_{i+1}``: each time with the time the state has reached."""
    check_pc_choices(predictor, corrector, allow_no_predictor=True)
    model = as_views(model, sde)
    correct = CORRECTORS[corrector] if n_steps > 0 else None
    schedules = grid_schedules(sde, grid)  # the SDE's coefficients, once per grid
    times = batch_times(grid, x)
    steps = None
    if predictor in STEPS:  # x_mean = a x + b own(x, t), x = x_mean + std z, with the view's conversion folded in
        view, steps = folded_steps(model, predictor, schedules, probability_flow)
        own, noise = model.own(view), noise_adder(x, generator)
    if constrain is not None:
        x = constrain(x, times[0])
    for i in progress_iter(range(len(grid) - 1), progress, f"pc[{predictor}/{corrector}]"):
        if callback is not None:
            callback({"i": i, "t": float(grid[i]), "x": x, "denoised": None})
        t = times[i]
        if correct is not None:
            alpha_ts_sq = (schedules[i].alpha_t / schedules[i].alpha_s) ** 2
            x, _ = correct(sde, model, x, t, alpha_ts_sq, snr, n_steps, generator)
            if constrain is not None:
                x = constrain(x, t)
        if steps is not None:
            a, b, std = steps[i]
            x = scaled_sum(a, x, b, own(x, t))
            x = noise(x, std) if std is not None else x
            if constrain is not None:
                x = constrain(x, times[i + 1])
    return x


def check_pc_choices(predictor: str, corrector: str, allow_no_predictor: bool = True) -> None:
    predictors = [*PREDICTORS, "none"] if allow_no_predictor else list(PREDICTORS)
    if predictor not in predictors:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {sorted(predictors)}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; choose one of {sorted(CORRECTORS)}")


def pc_settings(sde: LinearSDE, predictor: str | None, corrector: str | None, snr: float | None) -> dict:
    """Predictor, corrector and snr with ``None`` replaced by the paper's choice for the SDE (``sde.pc_defaults``)."""
    defaults = sde.pc_defaults
    return {
        "predictor": predictor or defaults["predictor"],
        "corrector": corrector or defaults["corrector"],
        "snr": defaults["snr"] if snr is None else snr,
    }


class PCSampler(GridSampler):
    """``pc``: predictor–corrector sampling. ``predictor``/``corrector``/``snr`` default to the paper's choice for the
    SDE (``sde.pc_defaults``: VE reverse_diffusion + langevin with snr 0.16; VP/sub-VP euler_maruyama alone).
    ``steps`` defaults to ``sde.N``."""

    name = "pc"
    #: A per-run hook, not an option: inverse problems set it (:func:`~scoresde.sampling.inverse.replacement_sample`).
    constrain: Constraint | None = None

    def __init__(
        self,
        *,
        predictor: str | None = None,
        corrector: str | None = None,
        snr: float | None = None,
        n_steps: int = 1,
        steps: int | None = None,
        eps: float | None = None,
        denoise: bool = True,
        grid: GridOption = None,
        probability_flow: bool = False,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_pc_choices(predictor or "none", corrector or "none")
        if isinstance(n_steps, bool) or not float(n_steps).is_integer() or int(n_steps) < 0:
            raise ValueError(f"n_steps (corrector steps per time) must be an integer >= 0, got {n_steps!r}")
        if snr is not None and not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.predictor, self.corrector, self.snr, self.n_steps = predictor, corrector, snr, int(n_steps)
        self.probability_flow = bool(probability_flow)

    def run(self, sde, model, x, grid, generator, callback):
        settings = pc_settings(sde, self.predictor, self.corrector, self.snr)
        return sample_pc(sde, model, x, grid, generator, callback, **settings, n_steps=self.n_steps,
                         probability_flow=self.probability_flow, constrain=self.constrain,
                         progress=self.progress)  # fmt: skip


class PredictorSampler(GridSampler):
    """A predictor alone (no corrector) on a grid of ``steps`` (default ``sde.N``) from ``T`` to the final time."""

    predictor = ""

    def __init__(
        self,
        *,
        steps: int | None = None,
        eps: float | None = None,
        denoise: bool = True,
        grid: GridOption = None,
        probability_flow: bool = False,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, progress=progress, dtype=dtype)
        self.probability_flow = bool(probability_flow)

    def run(self, sde, model, x, grid, generator, callback):
        return sample_pc(sde, model, x, grid, generator, callback, predictor=self.predictor, corrector="none",
                         probability_flow=self.probability_flow, progress=self.progress)  # fmt: skip


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
        eps: float | None = None,
        denoise: bool = True,
        grid: GridOption = None,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(steps=steps, eps=eps, denoise=denoise, grid=grid, progress=progress, dtype=dtype)
