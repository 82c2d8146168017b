"""From a network's output to a score: one wrapper owns the parameterization (DESIGN: ``ScoreModel``).

A network is called as ``net(x, label)`` with ``x`` of shape ``(B, ...)`` and a per-sample noise label ``(B,)``;
it returns a tensor shaped like ``x``. What the label is and what the output means are options, not
``isinstance`` checks on the SDE:

* ``time_input``: ``"t"`` (the label is ``time_scale * t``; the reference VP/sub-VP models use ``t * 999``),
  ``"sigma"`` (the label is ``sigma(t)``, the reference VE models), ``"log_sigma"``.
* ``parameterization``:
  ``"score"``  — the output is the score itself (reference VE; NCSN++ divides by sigma internally);
  ``"eps"``    — the output predicts the noise ``eps`` of ``x_t = alpha x_0 + sigma eps``; ``score = -out / sigma``
  (reference VP / sub-VP continuous models);
  ``"x0"``     — the output predicts ``x_0``; ``score = (alpha out - x) / sigma^2``.
"""

from __future__ import annotations

import torch
from torch import nn

from scoresde.sde import LinearSDE
from scoresde.utils import as_time, batch_broadcast

PARAMETERIZATIONS = ("score", "eps", "x0")
TIME_INPUTS = ("t", "sigma", "log_sigma")


class ScoreModel(nn.Module):
    """``score_fn(x, t)`` of a network for a given SDE and parameterization.

    Calling the module returns the score; :meth:`predict_eps` and :meth:`predict_x0` give the other two
    views of the same output (used by data-prediction samplers and losses).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: LinearSDE,
        parameterization: str = "eps",
        time_input: str = "t",
        time_scale: float = 1.0,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; choose one of {TIME_INPUTS}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.time_scale = float(time_scale)

    def noise_label(self, t: torch.Tensor) -> torch.Tensor:
        """The label ``(B,)`` the network is conditioned on."""
        if self.time_input == "t":
            return t * self.time_scale
        sigma = self.sde.marginal_std(t)
        return sigma if self.time_input == "sigma" else torch.log(sigma)

    def raw(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The network's output at ``(x, t)``."""
        t = as_time(t, x)
        return self.net(x, self.noise_label(t), **kwargs)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The score ``grad_x log p_t(x)``."""
        t = as_time(t, x)
        out = self.net(x, self.noise_label(t), **kwargs)
        if self.parameterization == "score":
            return out
        sigma = batch_broadcast(self.sde.marginal_std(t), x).to(out.dtype)
        if self.parameterization == "eps":
            return -out / sigma
        alpha = batch_broadcast(self.sde.marginal_alpha(t), x).to(out.dtype)
        return (alpha * out - x) / sigma**2

    def predict_eps(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """Noise prediction ``eps = -sigma * score``."""
        t = as_time(t, x)
        if self.parameterization == "eps":
            return self.raw(x, t, **kwargs)
        return -batch_broadcast(self.sde.marginal_std(t), x) * self.forward(x, t, **kwargs)

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """Data prediction (Tweedie) ``x0 = (x + sigma^2 score) / alpha``."""
        t = as_time(t, x)
        if self.parameterization == "x0":
            return self.raw(x, t, **kwargs)
        sigma = batch_broadcast(self.sde.marginal_std(t), x)
        alpha = batch_broadcast(self.sde.marginal_alpha(t), x)
        return (x + sigma**2 * self.forward(x, t, **kwargs)) / alpha
