"""Variance-exploding SDE (Song et al. 2021, Eq. 9 and 30), the continuous limit of SMLD / NCSN.

``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``,
``alpha = 1`` and the prior ``N(0, sigma_max^2 I)``. As in the reference, ``sigma(0) = sigma_min``: the
marginals are those of data already perturbed by the smallest noise level.
"""

from __future__ import annotations

import math

import torch

from scoresde.sde.base import LinearSDE


class VESDE(LinearSDE):
    """Variance-exploding SDE with a geometric noise schedule."""

    pc_defaults = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(N)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._log_sigma(t))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        return -self._log_sigma(t)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(2 * self._log_sigma(t)) * (2 * self._log_ratio)

    def transition_var(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # sigma_t^2 - sigma_s^2 without cancellation for close t and s.
        return -torch.exp(2 * self._log_sigma(t)) * torch.expm1(2 * (s - t) * self._log_ratio)

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    # Reference-code convenience: SMLD's geometric noise levels, increasing.
    @property
    def discrete_sigmas(self) -> torch.Tensor:
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
