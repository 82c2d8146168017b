"""Predictors: one step of the reverse-time SDE from ``t`` down to ``s < t`` (Song et al. 2021, Sec. 4.2, App. E).

Each is a pure function ``(sde, model, x, t, s, generator) -> (x, x_mean)`` with ``t``, ``s`` shaped ``(B,)``;
``x_mean`` is the step without its noise. ``model`` is a score function or a :class:`ModelViews`; the ancestral
step asks it for its data prediction. All work for any linear SDE (VP, sub-VP, VE) through the SDE's own members.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoresde.sampling.base import ScoreFn, as_views
from scoresde.sde import LinearSDE
from scoresde.utils import Generator, batch_broadcast, randn

Predictor = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _noise(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def euler_maruyama(
    sde: LinearSDE,
    model: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    generator: Generator = None,
    probability_flow: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler–Maruyama on the reverse SDE ``dx = [f - g^2 s] dt + g dw`` (or the probability-flow ODE)."""
    drift, diffusion = sde.reverse(model, probability_flow).sde(x, t)
    dt = batch_broadcast(s - t, x)  # negative: time runs backwards
    x_mean = x + drift * dt
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(diffusion, x) * torch.sqrt(-dt) * _noise(x, generator), x_mean


def reverse_diffusion(
    sde: LinearSDE,
    model: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    generator: Generator = None,
    probability_flow: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse of the forward discretization ``x_t = x_s + f + G z``: ``x_s = x_t - f + G^2 score + G z``
    (Song et al. 2021, Eq. 46). With the SDE's exact transitions it is finite for any step size."""
    rev_f, rev_G = sde.reverse(model, probability_flow).discretize(x, t, t - s)
    x_mean = x - rev_f
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(rev_G, x) * _noise(x, generator), x_mean


def ancestral(
    sde: LinearSDE,
    model: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    generator: Generator = None,
    probability_flow: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling from the Gaussian posterior ``q(x_s | x_t, x0_hat)`` of any linear SDE.

    With ``alpha_{t|s} = alpha_t / alpha_s`` and ``v = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` the posterior of
    ``x_s`` given ``x_t`` and ``x_0`` has mean ``(alpha_{t|s} sigma_s^2 x_t + alpha_s v x_0) / sigma_t^2`` and
    variance ``v sigma_s^2 / sigma_t^2``; at Tweedie's ``x0_hat`` the mean is ``(x + v score) / alpha_{t|s}``:
    DDPM's step for VP and SMLD's for VE (Song et al. 2021, Eq. 47 and 48).
    """
    if probability_flow:
        raise ValueError("the ancestral predictor has no probability-flow form; use reverse_diffusion or ddim")
    alpha_t, alpha_s = sde.marginal_alpha(t), sde.marginal_alpha(s)
    var_t, var_s = sde.marginal_std(t) ** 2, sde.marginal_std(s) ** 2
    v = sde.transition_var(t, s)
    x0 = as_views(model, sde).x0(x, t, batch_broadcast(alpha_t, x), batch_broadcast(var_t.sqrt(), x))
    x_mean = batch_broadcast(alpha_t / alpha_s * var_s / var_t, x) * x + batch_broadcast(alpha_s * v / var_t, x) * x0
    std = torch.sqrt(v * var_s / var_t)
    return x_mean + batch_broadcast(std, x) * _noise(x, generator), x_mean


PREDICTORS: dict[str, Predictor] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
}
