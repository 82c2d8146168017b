"""Predictors: one step of the reverse-time SDE from ``t`` down to ``s < t`` (Song et al. 2021, Sec. 4.2, App. E).

Each is a pure function ``(sde, model, x, t, s, generator) -> (x, x_mean)`` with ``t``, ``s`` shaped ``(B,)``;
``x_mean`` is the step without its noise. ``model`` is a score function or a :class:`ModelViews`; the ancestral
step asks it for its data prediction. For a linear SDE every step is ``x_mean = a x + b m(x, t)`` plus ``c z``
with coefficients from the SDE's schedule (``f``, ``g^2``, ``alpha``, ``sigma`` and the transition variance):
:class:`StepSchedule` holds them for one step, as ``(B, 1, ..)`` tensors here or as floats precomputed once per
grid by the PC loop (:func:`grid_schedules`). Each predictor's formula is written once, as its :class:`LinearStep`
``(view, a, b, std)``: the functions here evaluate it on tensors, the PC loop on floats with the model's conversion
to the view folded in once per grid (:func:`folded_steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from scoresde.sampling.base import ModelViews, add_noise, as_views, linear_in_view
from scoresde.sampling.grids import cached_per_sde
from scoresde.sde import LinearSDE, ScoreFn
from scoresde.utils import Generator, batch_broadcast

Predictor = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Scalar = float | torch.Tensor


class StepSchedule(NamedTuple):
    """The schedule of one step ``t -> s``: ``alpha``, ``sigma`` at both ends, the transition variance
    ``sigma_t^2 - alpha_{t|s}^2 sigma_s^2``, and the drift coefficient ``f(t)`` and ``g(t)^2`` of the forward SDE.
    (A named tuple: the PC loop builds one per grid step, and a tuple is the cheapest record to build.)"""

    alpha_t: Scalar
    alpha_s: Scalar
    sigma_t: Scalar
    sigma_s: Scalar
    transition_var: Scalar
    drift_coef: Scalar
    diffusion_sq: Scalar
    dt: Scalar  # s - t < 0


def step_schedule(sde: LinearSDE, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> StepSchedule:
    """The schedule of the step ``t -> s`` (``(B,)`` times) as tensors broadcasting against ``x``."""
    values = (sde.marginal_alpha(t), sde.marginal_alpha(s), sde.marginal_std(t), sde.marginal_std(s),
              sde.transition_var(t, s), sde.drift_coef(t), sde.diffusion_sq(t), s - t)  # fmt: skip
    return StepSchedule(*(batch_broadcast(v, x) for v in values))


def grid_schedules(sde: LinearSDE, grid: torch.Tensor) -> tuple[StepSchedule, ...]:
    """The schedule of every step of ``grid`` as floats, computed with one vectorized call per SDE member (once per
    grid and SDE: see :func:`~scoresde.sampling.grids.cached_per_sde`)."""
    return _grid_schedules(sde, tuple(grid.detach().to(device="cpu", dtype=torch.float64).tolist()))


@cached_per_sde
def _grid_schedules(sde: LinearSDE, times: tuple[float, ...]) -> tuple[StepSchedule, ...]:
    g = torch.tensor(times, dtype=torch.float64)
    t, s = g[:-1], g[1:]
    alpha, sigma = sde.marginal_alpha(g).tolist(), sde.marginal_std(g).tolist()
    columns = (alpha[:-1], alpha[1:], sigma[:-1], sigma[1:], sde.transition_var(t, s).tolist(),
               sde.drift_coef(t).tolist(), sde.diffusion_sq(t).tolist(), (s - t).tolist())  # fmt: skip
    return tuple(StepSchedule(*row) for row in zip(*columns, strict=True))


class LinearStep(NamedTuple):
    """A predictor's step written as ``x_mean = a x + b view(x, t)``, ``x = x_mean + std z`` (``std`` ``None`` on the
    probability flow: no draw): the formula of each predictor, in the view it is linear in."""

    view: str
    a: Scalar
    b: Scalar
    std: Scalar | None


def euler_maruyama_step(step: StepSchedule, probability_flow: bool) -> LinearStep:
    """Euler–Maruyama on the reverse SDE ``dx = [f x - g^2 s] dt + g dw`` (probability flow: ``g^2 s / 2``, no
    noise), Song et al. 2021, Eq. 6 and 13: ``x + (f x - w g^2 score) dt + g sqrt(-dt) z``."""
    weight = 0.5 if probability_flow else 1.0
    std = None if probability_flow else (step.diffusion_sq * -step.dt) ** 0.5
    return LinearStep("score", 1 + step.drift_coef * step.dt, -weight * step.diffusion_sq * step.dt, std)


def reverse_diffusion_step(step: StepSchedule, probability_flow: bool) -> LinearStep:
    """Reverse of the exact forward transition ``x_t = alpha_{t|s} x_s + G z`` (``G^2`` the transition variance):
    ``x_s = x_t - (alpha_{t|s} - 1) x_t + G^2 score + G z`` (Song et al. 2021, Eq. 46), finite for any step size."""
    weight = 0.5 if probability_flow else 1.0
    std = None if probability_flow else step.transition_var**0.5
    return LinearStep("score", 2 - step.alpha_t / step.alpha_s, weight * step.transition_var, std)


def ancestral_step(step: StepSchedule, probability_flow: bool) -> LinearStep:
    """A draw of the Gaussian posterior ``q(x_s | x_t, x0_hat)`` of any linear SDE.

    With ``alpha_{t|s} = alpha_t / alpha_s`` and ``v = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` the posterior of
    ``x_s`` given ``x_t`` and ``x_0`` has mean ``(alpha_{t|s} sigma_s^2 x_t + alpha_s v x_0) / sigma_t^2`` and
    variance ``v sigma_s^2 / sigma_t^2``; at Tweedie's ``x0_hat`` the mean is ``(x + v score) / alpha_{t|s}``:
    DDPM's step for VP and SMLD's for VE (Song et al. 2021, Eq. 47 and 48).
    """
    if probability_flow:
        raise ValueError("the ancestral predictor has no probability-flow form; use reverse_diffusion or ddim")
    var_t, var_s, v = step.sigma_t**2, step.sigma_s**2, step.transition_var
    return LinearStep("x0", step.alpha_t / step.alpha_s * var_s / var_t, step.alpha_s * v / var_t,
                      (v * var_s / var_t) ** 0.5)  # fmt: skip


#: predictor name -> its step as ``(StepSchedule, probability_flow) -> LinearStep``
STEPS = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}


def linear_update(
    model: ModelViews,
    x: torch.Tensor,
    t: torch.Tensor,
    step: LinearStep,
    alpha: Scalar,
    sigma: Scalar,
    generator: Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_mean + std z, x_mean)`` with ``x_mean = a x + b view(x, t)`` (one NFE; ``alpha``, ``sigma`` of the
    marginal at ``t``); ``(x_mean, x_mean)`` without a draw where ``std`` is ``None`` (the probability flow)."""
    x_mean = linear_in_view(model, step.view, step.a, x, step.b, t, alpha, sigma)
    if step.std is None:
        return x_mean, x_mean
    return add_noise(x_mean, step.std, generator), x_mean


def folded_steps(
    model: ModelViews, predictor: str, schedules: tuple[StepSchedule, ...], probability_flow: bool
) -> tuple[str, list[tuple[float, float, float | None]]]:
    """The view the predictor asks for and, per grid step, ``(a', b', std)`` of ``x_mean = a' x + b' own(x, t)``
    with the model's conversion to that view folded in (:meth:`ModelViews.fold`; ``std`` a float, ``None`` on the
    probability flow): the PC loop's steps, computed once per grid so that a step is one model call, two tensor
    operations and the draw."""
    steps = [STEPS[predictor](s, probability_flow) for s in schedules]
    folded = [(*model.fold(st.view, st.a, st.b, s.alpha_t, s.sigma_t), None if st.std is None else float(st.std))
              for st, s in zip(steps, schedules, strict=True)]  # fmt: skip
    return steps[0].view, folded


def _predictor(name: str):
    def predictor(
        sde: LinearSDE,
        model: ScoreFn,
        x: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        generator: Generator = None,
        probability_flow: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        schedule = step_schedule(sde, x, t, s)
        step = STEPS[name](schedule, probability_flow)
        return linear_update(as_views(model, sde), x, t, step, schedule.alpha_t, schedule.sigma_t, generator)

    predictor.__name__ = name
    predictor.__doc__ = STEPS[name].__doc__
    return predictor


euler_maruyama = _predictor("euler_maruyama")
reverse_diffusion = _predictor("reverse_diffusion")
ancestral = _predictor("ancestral")

PREDICTORS: dict[str, Predictor] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
}
