"""The VP SDE of a discrete DDPM schedule (Ho et al. 2020): continuous time through training timesteps.

A discrete diffusion model is trained at ``N`` timesteps ``k = 0 .. N-1`` with ``x_k = sqrt(abar_k) x_0 +
sqrt(1 - abar_k) eps``, ``abar_k = prod_{i <= k} (1 - beta_i)`` (``alphas_cumprod``). This SDE puts timestep ``k``
at the time

    t_k = (k + 1) / N,        so t = 0 is clean data (alpha(0) = 1) and t_{N-1} = T = 1,

and interpolates ``log alpha(t)^2`` linearly in ``t`` between these knots (and the knot ``(0, log 1)``). It is
exact at every training timestep, variance preserving (``sigma^2 = 1 - alpha^2``), and its rate
``beta(t) = -d log alpha^2 / dt = -N log(1 - beta_k)`` is constant on ``(k / N, (k + 1) / N]``: the segment that
ends at timestep ``k`` carries that timestep's beta. So the exact transition over one segment is DDPM's step
``x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z`` (``discretize`` with ``dt = 1 / N``), while every sampler and
the probability-flow likelihood see a linear SDE defined at all ``t`` in ``[0, 1]``. A network trained on the
timesteps is evaluated at the continuous index ``timestep_of_time(t) = N t - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scoresde.sde.vp import _VarPreserving


class DiscreteVPSDE(_VarPreserving):
    """VP SDE whose ``alpha^2`` interpolates a discrete ``alphas_cumprod`` log-linearly (exact at the timesteps).

    ``alphas_cumprod``: the ``N`` values ``abar_0 > abar_1 > ... > abar_{N-1} > 0`` with ``abar_0 < 1``, in any
    float dtype (stored in float64). :meth:`from_betas` builds it from the betas.
    """

    pc_defaults = {"predictor": "ancestral", "corrector": "none", "snr": 0.16}

    def __init__(self, alphas_cumprod: torch.Tensor | Sequence[float]):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if abar.ndim != 1 or abar.numel() < 1:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {tuple(abar.shape)}")
        if not torch.isfinite(abar).all() or not (abar > 0).all() or not (abar < 1).all():
            raise ValueError(
                "alphas_cumprod must lie in (0, 1): a zero terminal value (zero terminal SNR) has no finite "
                f"log alpha at T, and a value of 1 means no noise; got range [{abar.min():.3g}, {abar.max():.3g}]"
            )
        log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(abar)])
        steps = log_abar[1:] - log_abar[:-1]  # log(1 - beta_k)
        if not (steps < 0).all():
            k = int(torch.nonzero(steps >= 0)[0])
            raise ValueError(f"alphas_cumprod must decrease strictly (every beta > 0); it does not at timestep {k}")
        super().__init__(abar.numel())
        self.num_timesteps = abar.numel()
        self._log_abar = log_abar  # knots at t = j / N, j = 0 .. N
        self._log_step = steps  # slope * (1 / N) on segment k

    @classmethod
    def from_betas(cls, betas: torch.Tensor | Sequence[float]) -> DiscreteVPSDE:
        """From the per-step betas ``beta_k`` in (0, 1) (``abar_k = prod_{i <= k} (1 - beta_i)``, in float64)."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        if b.ndim != 1 or not ((b > 0) & (b < 1)).all():
            raise ValueError("betas must be a 1-D sequence of values in (0, 1)")
        return cls(torch.exp(torch.cumsum(torch.log1p(-b), 0)))

    # --- timesteps ----------------------------------------------------------------------------------
    def time_of_timestep(self, k: torch.Tensor | int | float) -> torch.Tensor | float:
        """The time ``(k + 1) / N`` of training timestep ``k`` (float64 for tensors)."""
        if isinstance(k, torch.Tensor):
            return (k.to(torch.float64) + 1) / self.num_timesteps
        return (float(k) + 1) / self.num_timesteps

    def timestep_of_time(self, t: torch.Tensor) -> torch.Tensor:
        """The continuous timestep ``N t - 1`` a network trained on the timesteps is evaluated at."""
        return t * self.num_timesteps - 1

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.exp(self._log_abar[1:])

    @property
    def discrete_betas(self) -> torch.Tensor:
        return -torch.expm1(self._log_step)

    # --- the schedule -------------------------------------------------------------------------------
    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment index ``j`` (``t`` in ``[j / N, (j + 1) / N]``) and the position in it, in float64."""
        u = t.to(torch.float64) * self.num_timesteps
        j = torch.floor(u).clamp(0, self.num_timesteps - 1)
        return j.long(), u - j

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        j, frac = self._segment(t)
        knots, slopes = self._log_abar.to(t.device), self._log_step.to(t.device)
        return (0.5 * (knots[j] + frac * slopes[j])).to(t.dtype)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        j, _ = self._segment(t)
        return (-self.num_timesteps * self._log_step.to(t.device)[j]).to(t.dtype)

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda): the target log alpha^2, then invert the piecewise-linear knots.
        target = -torch.nn.functional.softplus(-2 * lam.to(torch.float64))
        depth = -self._log_abar.to(lam.device)  # increasing in t
        j = (torch.searchsorted(depth, (-target).contiguous()) - 1).clamp(0, self.num_timesteps - 1)
        frac = (-target - depth[j]) / (depth[j + 1] - depth[j])
        return ((j + frac) / self.num_timesteps).to(lam.dtype)

    def _params(self) -> dict:
        return {"N": self.num_timesteps}
