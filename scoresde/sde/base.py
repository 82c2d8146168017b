"""Base classes of the forward SDEs (Song et al., ICLR 2021, Sec. 3 and App. B).

``SDE`` is the generic Itô SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` with the member names of the
reference code. ``LinearSDE`` specialises it to the drift ``f(t) x`` used by VP, sub-VP and VE: then

    x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),

and every quantity a sampler needs (mean coefficient, std, half log-SNR ``lambda = log(alpha / sigma)`` and
its inverse, the exact Gaussian transition between two times) is owned by the SDE, so no other module
asks which SDE it holds.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import torch

from scoresde.utils import Generator, as_time, batch_broadcast, flat_dim, randn, sum_except_batch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE(abc.ABC):
    """Forward SDE ``dx = f(x, t) dt + g(t) dw`` with ``t`` in ``[0, T]``."""

    T: float = 1.0

    def __init__(self, N: int = 1000):
        if int(N) < 1:
            raise ValueError(f"N (number of discretization steps) must be >= 1, got {N}")
        self.N = int(N)

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` shaped like ``x`` and diffusion ``g(t)`` shaped ``(B,)``."""

    @abc.abstractmethod
    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (like ``x``) and std ``(B,)`` of the perturbation kernel ``p_{0t}(x_t | x_0 = x)``."""

    @abc.abstractmethod
    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: Generator = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """A sample of the prior ``p_T`` of the given shape ``(B, ...)``."""

    @abc.abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B,)`` of the prior at ``z``, in nats."""

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One discrete forward step ``x(t) = x(t - dt) + f + G z``: Euler–Maruyama for a generic SDE."""
        t = as_time(t, x)
        dt = self._step(x, dt)
        drift, diffusion = self.sde(x, t)
        return drift * batch_broadcast(dt, x), diffusion * torch.sqrt(dt)

    def _step(self, x: torch.Tensor, dt: torch.Tensor | float | None) -> torch.Tensor:
        """The step size as a ``(B,)`` tensor; ``None`` means ``T / N``."""
        return as_time(self.T / self.N if dt is None else dt, x)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (drift ``f - g^2 s``) or the probability-flow ODE (drift ``f - g^2 s / 2``).

        Song et al. (2021), Eq. (6) and Eq. (13).
        """
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time SDE / probability-flow ODE of a forward ``SDE`` given a score function.

    Time still runs forward in the argument ``t``; a solver integrates it from ``T`` down to ``eps``. Every
    other member (``marginal_prob``, ``prior_sampling``, ...) is the forward SDE's.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def __getattr__(self, name: str):
        # Only called for attributes not found normally: delegate to the forward SDE.
        if name == "forward":
            raise AttributeError(name)
        return getattr(self.forward, name)

    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t, x)
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_broadcast(diffusion**2, x) * score * self._weight()
        if self.probability_flow:
            diffusion = torch.zeros_like(diffusion)
        return drift, diffusion

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The drift alone (the first member of :meth:`sde`): what an ODE solver integrates."""
        return self.sde(x, t)[0]

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse of the forward discretization: ``x(t - dt) = x(t) - rev_f + rev_G z``."""
        t = as_time(t, x)
        f, G = self.forward.discretize(x, t, dt)
        rev_f = f - batch_broadcast(G**2, x) * self.score_fn(x, t) * self._weight()
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


class LinearSDE(SDE):
    """SDE with linear drift ``dx = f(t) x dt + g(t) dw`` and Gaussian marginals ``N(alpha x_0, sigma^2 I)``.

    Subclasses give the schedule as functions of a ``(B,)`` time tensor: ``marginal_log_mean_coeff``
    (``log alpha``), ``marginal_std`` (``sigma``), ``drift_coef`` (``f = d log alpha / dt``),
    ``diffusion_sq`` (``g^2``), ``inverse_lambda`` and the prior std.
    """

    prior_std: float = 1.0
    #: Predictor-corrector settings the paper's experiments used with this SDE (reference configs).
    pc_defaults: dict = {"predictor": "euler_maruyama", "corrector": "none", "snr": 0.16}
    #: The sampler ``sample.py`` uses when the user names none (``{"name": ..., **options}``): the reference's
    #: predictor-corrector sampler with ``pc_defaults``.
    default_sampler: dict = {"name": "pc"}
    #: The grid that samplers defaulting to equal steps in time (``uniform``: ddim, pndm, pc, ...) use on this SDE:
    #: ``uniform`` where ``t`` is a clock of the noise level (VP's, VE's geometric sigmas), EDM's grid where ``t`` is
    #: the noise level itself (equal steps in sigma from 80 would leave one step below sigma = 0.08).
    uniform_time_grid: str = "uniform"

    # --- the schedule -------------------------------------------------------------------------------
    @abc.abstractmethod
    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t)``."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t)``, computed without cancellation at small ``t``."""

    @abc.abstractmethod
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t) = d log alpha / dt``."""

    @abc.abstractmethod
    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)^2``."""

    @abc.abstractmethod
    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """The time ``t`` at which ``marginal_lambda(t) == lam``."""

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha(t)``, the mean coefficient of ``x_t | x_0``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR ``lambda(t) = log(alpha(t) / sigma(t))``, decreasing in ``t``."""
        return self.marginal_log_mean_coeff(t) - torch.log(self.marginal_std(t))

    def perturb(self, x0: torch.Tensor, t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A draw of the forward marginal ``x_t = alpha_t x0 + sigma_t z`` given the noise ``z`` (Eq. 29, App. B)."""
        t = as_time(t, x0)
        return batch_broadcast(self.marginal_alpha(t), x0) * x0 + batch_broadcast(self.marginal_std(t), x0) * z

    def transition_var(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Variance of ``x_t | x_s`` for ``s <= t``: ``sigma_t^2 - alpha_{t|s}^2 sigma_s^2``."""
        a_ts = torch.exp(2 * (self.marginal_log_mean_coeff(t) - self.marginal_log_mean_coeff(s)))
        return (self.marginal_std(t) ** 2 - a_ts * self.marginal_std(s) ** 2).clamp_min(0)

    # --- the SDE interface --------------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t, x)
        return batch_broadcast(self.drift_coef(t), x) * x, torch.sqrt(self.diffusion_sq(t))

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> LinearReverseSDE:
        """The reverse-time SDE / probability-flow ODE (Eq. 6 / Eq. 13) with drift ``f(t) x - w g(t)^2 score``, its
        schedule evaluated once per time (:class:`LinearReverseSDE`)."""
        return LinearReverseSDE(self, score_fn, probability_flow)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t, x)
        return batch_broadcast(self.marginal_alpha(t), x) * x, self.marginal_std(t)

    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: Generator = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        z = randn(shape, generator=generator, device=device, dtype=dtype)
        return z if self.prior_std == 1 else z * self.prior_std  # (VP: no multiplication by 1 over the whole state)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        d = flat_dim(z)
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - sum_except_batch(z**2) / (2 * var)

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Gaussian transition from ``s = max(t - dt, 0)`` to ``t``: ``f = (alpha_{t|s} - 1) x``,
        ``G = sqrt(sigma_t^2 - alpha_{t|s}^2 sigma_s^2)``.

        For VP these are DDPM's steps with ``beta_i = 1 - alpha_{t|s}^2`` (Ho et al. 2020), for VE SMLD's
        ``G = sqrt(sigma_t^2 - sigma_s^2)`` (Song & Ermon 2019); both tend to the reference's discretization
        (``beta_i = beta(t) / N``) as ``dt -> 0`` and stay finite for any step size.
        """
        t = as_time(t, x)
        s = (t - self._step(x, dt)).clamp_min(0)
        a_ts = torch.exp(self.marginal_log_mean_coeff(t) - self.marginal_log_mean_coeff(s))
        f = batch_broadcast(a_ts - 1, x) * x
        return f, torch.sqrt(self.transition_var(t, s))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict:
        return {"N": self.N}


def _schedule_times(t: torch.Tensor | float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(time for the schedule, time for the score)``: a scalar time (a number or a 0-d tensor) becomes ``(1,)`` for
    the schedule (evaluated once; schedules are written for 1-D times) and is expanded to ``(B,)`` for the score; a
    ``(B,)`` time is both. Checked as :func:`~scoresde.utils.as_time` checks it."""
    t_batch = as_time(t, x)
    scalar = not isinstance(t, torch.Tensor) or t.ndim == 0
    return (t_batch[:1] if scalar else t_batch), t_batch


class LinearReverseSDE(ReverseSDE):
    """The reverse of a :class:`LinearSDE`: drift ``f(t) x - w g(t)^2 score(x, t)`` (``w = 1``: the reverse SDE, Song
    et al. 2021 Eq. 6; ``w = 1/2``: the probability-flow ODE, Eq. 13) from the SDE's own ``f`` and ``g^2``, evaluated
    once per time (a scalar time: once for the batch), in two fused tensor operations besides the score call."""

    forward: LinearSDE

    def _drift(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(drift, g^2, t)``: ``g^2`` 0-d or ``(B,)`` as the time was given, ``t`` the ``(B,)`` time."""
        t_sched, t_batch = _schedule_times(t, x)
        f, g_sq = self.forward.drift_coef(t_sched), self.forward.diffusion_sq(t_sched)
        score = self.score_fn(x, t_batch)
        drift = torch.addcmul(x * batch_broadcast(f, x), batch_broadcast(g_sq, x), score, value=-self._weight())
        return drift, g_sq, t_batch

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return self._drift(x, t)[0]

    def sde(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        drift, g_sq, t_batch = self._drift(x, t)
        if self.probability_flow:
            return drift, torch.zeros(t_batch.shape, dtype=t_batch.dtype, device=t_batch.device)
        return drift, torch.sqrt(g_sq).expand(t_batch.shape).contiguous()
