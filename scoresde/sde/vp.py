"""Variance-preserving SDEs: VP and sub-VP (Song et al. 2021, Eq. 11 and 29) and the cosine VP schedule
(Nichol & Dhariwal 2021).

With ``m(t) = log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``:

* VP:     ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``, ``sigma^2 = 1 - alpha^2``;
* sub-VP: ``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - alpha^4)) dw``, ``sigma = 1 - alpha^2``.

``sigma`` is computed as ``sqrt(-expm1(2 m))`` (resp. ``-expm1(2 m)``) so that it is exact to float precision at
``t = 1e-5``, where the reference's ``1 - exp(2 m)`` loses 0.6% (VP) and 1.2% (sub-VP) in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scoresde.sde.base import LinearSDE


class _VarPreserving(LinearSDE):
    """Common part of the VP schedules: ``alpha^2 + sigma^2 = 1``, prior ``N(0, I)``."""

    prior_std = 1.0

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * self.marginal_log_mean_coeff(t)))

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t)

    def transition_var(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # 1 - alpha_{t|s}^2 without cancellation for close t and s.
        return -torch.expm1(2 * (self.marginal_log_mean_coeff(t) - self.marginal_log_mean_coeff(s)))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = -d log alpha^2 / dt``."""
        raise NotImplementedError


class _LinearBeta(_VarPreserving):
    """The linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)`` shared by VP and sub-VP."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if beta_max <= 0:
            raise ValueError(f"beta_max must be > 0, got {beta_max}")
        super().__init__(N)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda), so log alpha = -softplus(-2 lambda) / 2.
        return self._t_from_log_alpha(-0.5 * F.softplus(-2 * lam))

    def _t_from_log_alpha(self, m: torch.Tensor) -> torch.Tensor:
        # Root of (beta_max - beta_min) t^2 / 4 + beta_min t / 2 + m = 0, written without cancellation.
        delta = self.beta_max - self.beta_min
        return -4 * m / (self.beta_min + torch.sqrt(self.beta_min**2 - 4 * delta * m))

    # Reference-code conveniences (DDPM's discrete schedule with N steps).
    @property
    def discrete_betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.discrete_betas, dim=0)

    def _params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N}


class VPSDE(_LinearBeta):
    """Variance-preserving SDE, the continuous limit of DDPM (Song et al. 2021, Eq. 11)."""


class SubVPSDE(_LinearBeta):
    """Sub-VP SDE (Song et al. 2021, Eq. 29): marginal variance never above the VP one; prior ``N(0, I)``."""

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2 * self.marginal_log_mean_coeff(t))

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t) * -torch.expm1(4 * self.marginal_log_mean_coeff(t))

    def transition_var(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = (1 - alpha_{t|s}^2)(1 - alpha_t^2 alpha_s^2), no cancellation.
        mt, ms = self.marginal_log_mean_coeff(t), self.marginal_log_mean_coeff(s)
        return torch.expm1(2 * (mt - ms)) * torch.expm1(2 * (mt + ms))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # alpha / (1 - alpha^2) = e^lambda  =>  alpha = 2 / (q + sqrt(q^2 + 4)) with q = e^-lambda,
        # i.e. log alpha = -asinh(q / 2), free of cancellation at large lambda (small t).
        return self._t_from_log_alpha(-torch.asinh(0.5 * torch.exp(-lam)))


class CosineVPSDE(_VarPreserving):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021), Eq. 17.

    ``alpha(t)^2 = cos^2(a(t)) / cos^2(a(0))`` with ``a(t) = (t + s) / (1 + s) * pi / 2``, hence
    ``beta(t) = -d log alpha^2 / dt = pi / (1 + s) * tan(a(t))``. That ``beta`` is infinite at ``t = 1``, so it
    is clipped at ``beta_max`` (as the discrete schedule clips its betas): past the time ``t_c`` where the
    clip starts, ``log alpha`` falls linearly and every quantity stays finite up to ``T = 1``. With the
    defaults ``t_c ~ 0.980`` and ``alpha(1) ~ 1.15e-2`` (linear VP: ``6.6e-3``).
    """

    def __init__(self, s: float = 0.008, N: int = 1000, beta_max: float = 100.0):
        super().__init__(N)
        if s <= 0:
            raise ValueError(f"the cosine offset s must be > 0, got {s}")
        if beta_max <= math.pi / (1 + s) * math.tan(s / (1 + s) * math.pi / 2):
            raise ValueError(f"beta_max={beta_max} is below the cosine schedule's beta(0)")
        self.s = float(s)
        self.beta_max = float(beta_max)
        self._scale = math.pi / (2 * (1 + self.s))  # da/dt
        self._a0 = self.s * self._scale
        # Start of the clip: pi / (1 + s) * tan(a) = beta_max.
        a_c = math.atan(beta_max / (2 * self._scale))
        self.t_clip = a_c / self._scale - self.s
        self._log_alpha_clip = math.log(math.cos(self._a0 + self.t_clip * self._scale) / math.cos(self._a0))

    def _u(self, t: torch.Tensor) -> torch.Tensor:
        """``a(t) - a(0)``, kept apart from ``a(0)`` so that small ``t`` loses no digits."""
        return t.clamp(max=self.t_clip) * self._scale

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return (2 * self._scale * torch.tan(self._a0 + self._u(t))).clamp(max=self.beta_max)

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        # log(cos a / cos a0) = log1p((cos a - cos a0) / cos a0), the difference by a product formula.
        u = self._u(t)
        diff = -2 * torch.sin(self._a0 + 0.5 * u) * torch.sin(0.5 * u)
        cosine = torch.log1p(diff / math.cos(self._a0))
        clipped = self._log_alpha_clip - 0.5 * self.beta_max * (t - self.t_clip)
        return torch.where(t <= self.t_clip, cosine, clipped)

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - cos^2(a) / cos^2(a0) = sin(a - a0) sin(a + a0) / cos^2(a0): exact at small t.
        u = self._u(t)
        var_cos = torch.sin(u) * torch.sin(u + 2 * self._a0) / math.cos(self._a0) ** 2
        var_clip = -torch.expm1(2 * self.marginal_log_mean_coeff(t))
        return torch.sqrt(torch.where(t <= self.t_clip, var_cos, var_clip))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda). In the cosine part
        # cos a = alpha cos a0 and sin^2 a = sigma^2 + alpha^2 sin^2 a0 (no cancellation), so atan2 gives a.
        alpha2, sigma2 = torch.sigmoid(2 * lam), torch.sigmoid(-2 * lam)
        a = torch.atan2(torch.sqrt(sigma2 + alpha2 * math.sin(self._a0) ** 2), torch.sqrt(alpha2) * math.cos(self._a0))
        t_cos = (a - self._a0) / self._scale
        m = -0.5 * F.softplus(-2 * lam)
        t_lin = self.t_clip + 2 * (self._log_alpha_clip - m) / self.beta_max
        return torch.where(m >= self._log_alpha_clip, t_cos, t_lin)

    def _params(self) -> dict:
        return {"s": self.s, "N": self.N, "beta_max": self.beta_max}
