"""Denoising score matching losses (Song et al., ICLR 2021, Eq. 7; Song et al., NeurIPS 2021, Eq. 8-9).

For ``x_t = alpha(t) x_0 + sigma(t) z`` the conditional score is ``-z / sigma``, so

    lambda(t) || s(x_t, t) + z / sigma ||^2  =  (lambda(t) / sigma^2) || sigma s + z ||^2 .

* ``weighting="sigma2"`` (default, the paper's): ``lambda = sigma^2``, the per-example loss is
  ``|| sigma s + z ||^2``, i.e. ``|| z - eps_hat ||^2``.
* ``weighting="likelihood"``: ``lambda = g(t)^2`` (Song et al. 2021, "Maximum likelihood training of score-based
  diffusion models"), which makes the loss an upper bound on the negative log-likelihood.
* ``importance_sampling=True`` (likelihood weighting only): ``t`` is drawn from ``q(t) ∝ g^2 / sigma^2``. For any
  linear SDE ``g^2 / sigma^2 = -2 d lambda / dt`` with ``lambda = log(alpha / sigma)``, so ``t`` is uniform in
  ``lambda`` (``t = inverse_lambda(lambda)``) and the importance weight is the constant
  ``2 (lambda(eps) - lambda(T)) / (T - eps)``: same expectation as uniform ``t``, lower variance.
* ``time_sampling="discrete"``: ``t`` on the grid ``(i + 1) T / N``, ``i ~ U{0..N-1}``: the DDPM (eps-prediction,
  Ho et al. 2020) and SMLD (Song & Ermon 2019) losses of discrete-time models. :func:`ddpm_loss` and
  :func:`smld_loss` are these presets.

Class-conditional models (Ho & Salimans 2022): ``loss(model, x, generator, y=labels)`` passes the labels to the
network; with ``label_dropout = p`` each label is replaced by the null label (``num_classes``) with probability ``p``
(uniforms drawn after ``t`` and ``z``, so the other draws do not change), training one network for the
conditional and the unconditional score.

The EDM recipe (Karras et al. 2022, Sec. 5 and Table 1), for any linear SDE through ``s = sigma / alpha``:

* ``time_sampling="lognormal"``: ``ln s ~ N(p_mean, p_std^2)`` (-1.2, 1.2), truncated to the SDE's range
  ``[s(eps), s(T)]`` (an exact inverse-CDF draw, so no mass piles up at the ends), ``t = inverse_lambda(-ln s)``;
* ``weighting="edm"``: ``lambda(s) = (s^2 + sd^2) / (s sd)^2`` in front of ``|| x0_hat - x_0 ||^2``. Since
  ``x0_hat - x_0 = s (eps_hat - z)`` that is ``(s^2 + sd^2) / sd^2`` in front of ``|| z - eps_hat ||^2``; with the
  ``edm`` parameterization the network's own target then has unit weight at every noise level.

:func:`edm_loss` is the two together (``loss.name=edm``); each also combines with the other options.

Reduction over dimensions: ``reduce_mean=True`` takes the mean, otherwise half the sum (the reference's
convention); the batch is always averaged. The draws are made as the reference does: ``t`` first, then
``z = randn_like(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scoresde.guidance import as_labels, num_classes_of
from scoresde.score import ScoreModel
from scoresde.sde import LinearSDE
from scoresde.utils import Generator, rand, randn

WEIGHTINGS = ("sigma2", "likelihood", "edm")
TIME_SAMPLINGS = ("uniform", "discrete", "lognormal")


@dataclass
class LossDraws:
    """The random draws of one loss evaluation: times ``t`` ``(B,)``, noise ``z`` like ``x``, weights ``(B,)`` and,
    with label dropout, ``keep`` ``(B,)`` (``False``: the label is replaced by the null label)."""

    t: torch.Tensor
    z: torch.Tensor
    weight: torch.Tensor
    keep: torch.Tensor | None = None

    def select(self, index: slice | torch.Tensor) -> LossDraws:
        """The draws of a subset of the batch (e.g. one rank's share of a global batch)."""
        keep = None if self.keep is None else self.keep[index]
        return LossDraws(self.t[index], self.z[index], self.weight[index], keep)


@dataclass
class DSMLoss:
    """Denoising score matching for a :class:`~scoresde.score.ScoreModel` under a linear SDE.

    ``loss(score_model, x, generator)`` returns the batch-mean loss; :meth:`draw` and :meth:`per_example`
    expose the two halves so a trainer can draw the noise of a global batch once and split it.
    """

    sde: LinearSDE
    eps: float = 1e-5
    reduce_mean: bool = True
    weighting: str = "sigma2"
    importance_sampling: bool = False
    time_sampling: str = "uniform"
    label_dropout: float = 0.0
    sigma_data: float | None = None  # weighting="edm": the data's standard deviation
    p_mean: float = -1.2  # time_sampling="lognormal": mean and std of ln(sigma / alpha)
    p_std: float = 1.2

    def __post_init__(self):
        if not 0 <= self.label_dropout <= 1:
            raise ValueError(f"label_dropout must lie in [0, 1], got {self.label_dropout}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.weighting!r}; choose one of {WEIGHTINGS}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        if self.importance_sampling and (self.weighting != "likelihood" or self.time_sampling != "uniform"):
            raise ValueError("importance_sampling needs weighting='likelihood' and time_sampling='uniform'")
        if not 0 < self.eps < self.sde.T:
            raise ValueError(f"loss eps must lie in (0, T = {self.sde.T}), got {self.eps}")
        if self.weighting == "edm" and not (self.sigma_data is not None and self.sigma_data > 0):
            raise ValueError(
                f"weighting='edm' needs sigma_data > 0 (the data's standard deviation), got {self.sigma_data}"
            )
        if not self.p_std > 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")

    # --- time -------------------------------------------------------------------------------------------
    def sample_time(
        self, n: int, generator: Generator = None, device=None, dtype=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Times ``(n,)`` and the importance weights ``(n,)`` that make the estimator unbiased."""
        dtype = dtype or torch.get_default_dtype()
        T, eps = self.sde.T, self.eps
        u = rand((n,), generator=generator, device=device, dtype=dtype)
        if self.time_sampling == "discrete":
            N = self.sde.N
            t = (torch.floor(u * N).clamp(max=N - 1) + 1) * (T / N)
            return t, torch.ones_like(t)
        if self.time_sampling == "lognormal":
            return self._lognormal_time(u), torch.ones_like(u)
        if not self.importance_sampling:
            return u * (T - eps) + eps, torch.ones_like(u)
        ends = torch.tensor([eps, T], device=device, dtype=torch.float64)
        lam = self.sde.marginal_lambda(ends)
        lam_t = lam[0] + u.to(torch.float64) * (lam[1] - lam[0])
        t = self.sde.inverse_lambda(lam_t).clamp(eps, T).to(dtype)
        weight = 2 * (lam[0] - lam[1]) / (T - eps)
        return t, torch.full_like(t, float(weight))

    def _lognormal_time(self, u: torch.Tensor) -> torch.Tensor:
        """``t`` with ``ln(sigma / alpha) ~ N(p_mean, p_std^2)`` truncated to ``[eps, T]``, from uniforms ``u``."""
        ends = torch.tensor([self.eps, self.sde.T], device=u.device, dtype=torch.float64)
        cdf = torch.special.ndtr((-self.sde.marginal_lambda(ends) - self.p_mean) / self.p_std)
        log_s = self.p_mean + self.p_std * torch.special.ndtri(cdf[0] + u.to(torch.float64) * (cdf[1] - cdf[0]))
        return self.sde.inverse_lambda(-log_s).clamp(self.eps, self.sde.T).to(u.dtype)

    def time_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) / sigma(t)^2``: the factor in front of ``|| sigma s + z ||^2`` (1 for ``sigma2``)."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        if self.weighting == "edm":
            s2 = torch.exp(-2 * self.sde.marginal_lambda(t))
            return (s2 + self.sigma_data**2) / self.sigma_data**2
        return self.sde.diffusion_sq(t) / self.sde.marginal_std(t) ** 2

    def draw(self, x_shape, generator: Generator = None, device=None, dtype=None) -> LossDraws:
        """``t`` then ``z``, in the reference's order (then the label-dropout uniforms, if any)."""
        t, w = self.sample_time(x_shape[0], generator=generator, device=device, dtype=dtype)
        z = randn(tuple(x_shape), generator=generator, device=device, dtype=dtype)
        keep = None
        if self.label_dropout > 0:
            keep = rand((x_shape[0],), generator=generator, device=device, dtype=torch.float64) >= self.label_dropout
        return LossDraws(t, z, w if self.importance_sampling else w * self.time_weight(t), keep)

    # --- loss -------------------------------------------------------------------------------------------
    def per_example(
        self, score_model: ScoreModel, x: torch.Tensor, draws: LossDraws, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-example loss ``(B,)`` at the given draws (class labels ``y`` for a class-conditional model)."""
        t, z = draws.t, draws.z
        x_t = self.sde.perturb(x, t, z)
        kwargs = {}
        if y is not None:
            y = as_labels(y, x)
            if draws.keep is not None:
                y = torch.where(draws.keep.to(y.device), y, torch.full_like(y, num_classes_of(score_model)))
            kwargs["y"] = y
        # sigma * score + z == z - eps_hat; every parameterization gives eps_hat from its output directly.
        residual = z - score_model.eps_hat(x_t, t, **kwargs)
        sq = residual.square().reshape(x.shape[0], -1)
        if sq.dtype in (torch.float16, torch.bfloat16):
            sq = sq.float()
        per = sq.mean(dim=1) if self.reduce_mean else 0.5 * sq.sum(dim=1)
        return per * draws.weight.to(per.dtype)

    def __call__(
        self,
        score_model: ScoreModel,
        x: torch.Tensor,
        generator: Generator = None,
        draws: LossDraws | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch-mean loss of ``score_model`` on data ``x`` (with class labels ``y``)."""
        if draws is None:
            draws = self.draw(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.per_example(score_model, x, draws, y).mean()


def dsm_loss(sde: LinearSDE, **options) -> DSMLoss:
    """Continuous-time DSM loss (Song et al. 2021, Eq. 7); options as :class:`DSMLoss`."""
    return DSMLoss(sde, **options)


def ddpm_loss(sde: LinearSDE, reduce_mean: bool = True) -> DSMLoss:
    """DDPM's ``|| eps - eps_hat(x_i, i) ||^2`` at the ``N`` discrete noise levels of the SDE (Ho et al. 2020)."""
    return DSMLoss(sde, reduce_mean=reduce_mean, time_sampling="discrete")


def smld_loss(sde: LinearSDE, reduce_mean: bool = False) -> DSMLoss:
    """SMLD's ``sigma_i^2``-weighted DSM at the ``N`` discrete noise levels (Song & Ermon 2019)."""
    return DSMLoss(sde, reduce_mean=reduce_mean, time_sampling="discrete")


def edm_loss(
    sde: LinearSDE,
    sigma_data: float | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    eps: float = 1e-5,
    reduce_mean: bool = True,
) -> DSMLoss:
    """EDM's loss (Karras et al. 2022, Eq. 8 and Table 1): log-normal noise levels, weighting
    ``(s^2 + sd^2) / (s sd)^2`` on ``|| x0_hat - x_0 ||^2``; ``sigma_data`` is the data's standard deviation."""
    return DSMLoss(
        sde,
        eps=eps,
        reduce_mean=reduce_mean,
        weighting="edm",
        time_sampling="lognormal",
        sigma_data=sigma_data,
        p_mean=p_mean,
        p_std=p_std,
    )


LOSSES = {"dsm": dsm_loss, "ddpm": ddpm_loss, "smld": smld_loss, "edm": edm_loss}


def get_loss(name: str, sde: LinearSDE, **options) -> DSMLoss:
    """Build a loss by name (``dsm``, ``ddpm``, ``smld``, ``edm``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](sde, **options)
    except TypeError as err:
        raise ValueError(f"bad option for loss {name!r}: {err}") from None
