"""Score, noise and data predictions of a network trained on discrete timesteps (DDPM / SMLD / diffusers).

Such a network is called ``net(x, label)`` with a timestep label that is an affine function of our time,
``label = label_scale * t + label_shift`` (``N t - 1`` on a :class:`~scoresde.sde.DiscreteVPSDE`, ``(N - 1)(1 - t)``
for the reference's SMLD noise-level index), evaluated at non-integer labels between the training timesteps.
Data in [0, 1] (``centered=False``) reach the network as ``2 x - 1``, as in the reference. Its output is one of
(``x_t = alpha x_0 + sigma eps``):

* ``epsilon``      — the noise ``eps`` (Ho et al. 2020); ``score = -eps / sigma``;
* ``v_prediction`` — ``v = alpha eps - sigma x_0`` (Salimans & Ho 2022, variance-preserving SDEs only);
* ``sample``       — ``x_0``;
* ``sigma_score``  — ``sigma * score = -eps`` (NCSN / NCSN++ before their final division by the noise level);
* ``score``        — the score itself.

Each of :meth:`TimestepScoreModel.forward` (the score), :meth:`~TimestepScoreModel.eps_hat` and
:meth:`~TimestepScoreModel.x0_hat` makes one network call and converts the output directly, so a noise- or
data-prediction sampler gets the network's own prediction without a round trip through the score.
"""

from __future__ import annotations

import torch
from torch import nn

from scoresde.sde import LinearSDE
from scoresde.utils import as_time, batch_broadcast

PREDICTIONS = ("epsilon", "v_prediction", "sample", "sigma_score", "score")


def _time64(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a float64 ``(B,)`` tensor: the label and the schedule are computed at the caller's precision
    (a float64 time with float32 data keeps its digits; the network then runs in its own dtype)."""
    t = torch.as_tensor(t, device=x.device).to(torch.float64)
    return as_time(t, t.new_empty(x.shape[0]))


class TimestepScoreModel(nn.Module):
    """``score_fn(x, t)`` (and ``eps_hat``, ``x0_hat``) of a timestep-conditioned network on a linear SDE."""

    def __init__(
        self,
        net: nn.Module,
        sde: LinearSDE,
        prediction: str,
        label_scale: float,
        label_shift: float = 0.0,
        centered: bool = True,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if prediction == "v_prediction":
            t = torch.linspace(0.01, 1.0, 11, dtype=torch.float64) * sde.T
            if not torch.allclose(sde.marginal_alpha(t) ** 2 + sde.marginal_std(t) ** 2, torch.ones_like(t)):
                raise ValueError("v_prediction needs a variance-preserving SDE (alpha^2 + sigma^2 = 1)")
        self.net, self.sde, self.prediction = net, sde, prediction
        self.label_scale, self.label_shift = float(label_scale), float(label_shift)
        self.centered = bool(centered)  # False: data in [0, 1], the network sees 2 x - 1 (the reference's input map)

    def label(self, t: torch.Tensor) -> torch.Tensor:
        """The network's timestep label at ``t`` (no rounding: exact at the training timesteps)."""
        return t * self.label_scale + self.label_shift

    def raw(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The network's output at ``(x, t)``."""
        return self.net(self._net_input(x), self.label(_time64(t, x)))

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.centered else 2 * x - 1.0

    def _call(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network output, ``alpha`` and ``sigma`` at ``(x, t)``, broadcast like ``x``."""
        t = _time64(t, x)
        out = self.net(self._net_input(x), self.label(t))
        alpha = batch_broadcast(self.sde.marginal_alpha(t), x).to(out.dtype)
        sigma = batch_broadcast(self.sde.marginal_std(t), x).to(out.dtype)
        return out, alpha, sigma

    def _eps(self, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        p = self.prediction
        if p == "epsilon":
            return out
        if p == "sigma_score":
            return -out
        if p == "v_prediction":
            return alpha * out + sigma * x
        if p == "score":
            return -sigma * out
        return (x - alpha * out) / sigma  # sample

    def eps_hat(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction ``eps_hat = -sigma * score``."""
        out, alpha, sigma = self._call(x, t)
        return self._eps(out, x, alpha, sigma)

    def x0_hat(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Data prediction (Tweedie) ``x0_hat = (x + sigma^2 score) / alpha``."""
        out, alpha, sigma = self._call(x, t)
        if self.prediction == "sample":
            return out
        if self.prediction == "v_prediction":
            return alpha * x - sigma * out
        return (x - sigma * self._eps(out, x, alpha, sigma)) / alpha

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score ``grad_x log p_t(x)``."""
        out, alpha, sigma = self._call(x, t)
        if self.prediction == "score":
            return out
        if self.prediction == "sample":
            return (alpha * out - x) / sigma**2
        return -self._eps(out, x, alpha, sigma) / sigma

    # The names of scoresde.score.ScoreModel, for code written against it.
    predict_eps = eps_hat
    predict_x0 = x0_hat
