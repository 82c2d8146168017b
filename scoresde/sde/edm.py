"""The SDE of Karras et al. (NeurIPS 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

``sigma(t) = t``, ``alpha = 1``: ``x_t = x_0 + t z``, i.e. ``dx = sqrt(2 t) dw`` (their Eq. 6 with ``s(t) = 1``),
on ``t in [0, T]`` with ``T = sigma_max = 80``, and the final time ``eps = sigma_min = 0.002`` that samplers stop
at. Time *is* the noise level, so ``lambda = -log t``, its inverse ``exp(-lambda)`` and every transition are in
closed form; the prior is ``N(0, sigma_max^2 I)``.
"""

from __future__ import annotations

import torch

from scoresde.sde.base import LinearSDE


class EDMSDE(LinearSDE):
    """Variance-exploding SDE with ``sigma(t) = t`` (Karras et al. 2022, Sec. 4), ``T = sigma_max``."""

    pc_defaults = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}
    #: EDM's deterministic sampler (Alg. 2): 17 Heun steps on the rho = 7 grid from 80 to 0.002, then the final
    #: Euler step to sigma = 0 (our Tweedie denoising step): 35 NFE, as in the paper.
    default_sampler = {"name": "heun", "steps": 17, "grid": "edm", "rho": 7.0, "eps": 0.002, "denoise": True}
    uniform_time_grid = "edm"  # equal steps in t = sigma are nobody's choice (see LinearSDE)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(N)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def T(self) -> float:  # type: ignore[override]
        return self.sigma_max

    @property
    def eps(self) -> float:
        """The final time of sampling (``sigma_min``); samplers default to it."""
        return self.sigma_min

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(t)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return 2 * t

    def transition_var(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # t^2 - s^2 without cancellation for close t and s.
        return ((t - s) * (t + s)).clamp_min(0)

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.exp(-lam)

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
