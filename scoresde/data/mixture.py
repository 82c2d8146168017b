"""Gaussian mixtures: analytic test problems with exact scores and densities under every linear SDE.

Under an SDE with ``x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)`` a component ``N(mu_k, Sigma_k)`` of the data
becomes ``N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)``, so the marginal ``p_t`` is again a Gaussian mixture and
its log-density and score ``grad log p_t`` are exact. With ``Sigma_k = U_k diag(e_k) U_k^T`` the marginal
covariance is ``U_k diag(alpha^2 e_k + sigma^2) U_k^T``: one eigendecomposition per component serves every
time, so evaluating a batch with per-sample times costs ``O(B K D^2)``.

Data may be image-shaped: the mixture lives in ``D = prod(event_shape)`` dimensions and every method takes
batches ``(B, *event_shape)`` or ``(B, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scoresde.utils import Generator, as_time, rand, randn


@dataclass(frozen=True)
class _Cast:
    """The mixture's parameters cast to one dtype and device."""

    log_w: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    evecs: torch.Tensor  # (K, D, D)
    evals: torch.Tensor  # (K, D)


class GaussianMixture:
    """Mixture ``sum_k w_k N(mu_k, Sigma_k)`` in any dimension, with exact marginals under linear SDEs.

    Args:
        weights: ``(K,)`` non-negative, normalised internally.
        means: ``(K, D)``.
        covs: ``(K, D, D)`` full covariances, ``(K, D)`` diagonal ones, ``(K,)`` isotropic variances or a
            float (shared isotropic variance). Must be positive definite.
        event_shape: shape of one sample (default ``(D,)``); e.g. ``(1, 4, 4)`` for a 16-D image problem.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        means: Sequence[Sequence[float]] | torch.Tensor,
        covs: torch.Tensor | Sequence | float = 1.0,
        event_shape: Sequence[int] | None = None,
    ):
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must be (K, D) with K = len(weights) = {w.shape[0]}, got {tuple(mu.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be non-negative and not all zero")
        k, d = mu.shape
        c = torch.as_tensor(covs, dtype=torch.float64)
        if c.ndim == 0:
            c = c.expand(k)
        if c.ndim == 1:
            c = c[:, None].expand(k, d)
        if c.ndim == 2:
            c = torch.diag_embed(c)
        if c.shape != (k, d, d):
            raise ValueError(f"covs must be a float, (K,), (K, D) or (K, D, D) = ({k}, {d}, {d}); got {tuple(c.shape)}")
        c = 0.5 * (c + c.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(c)
        if (evals <= 0).any():
            raise ValueError("every component covariance must be positive definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = c
        self._evals, self._evecs = evals, evecs
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold D = {d} values")
        self._cache: dict[tuple, _Cast] = {}

    # --- basic properties ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """Overall mean ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Overall covariance ``(D, D)`` (law of total covariance)."""
        m = self.mean()
        dev = self.means - m
        w = self.weights[:, None, None]
        return (w * (self.covs + dev[:, :, None] * dev[:, None, :])).sum(0)

    def _cast(self, dtype: torch.dtype, device: torch.device) -> _Cast:
        key = (dtype, str(device))
        if key not in self._cache:
            self._cache[key] = _Cast(
                self.weights.log().to(device, dtype),
                self.means.to(device, dtype),
                self._evecs.to(device, dtype),
                self._evals.to(device, dtype),
            )
        return self._cache[key]

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] == self.event_shape or (x.ndim == 2 and x.shape[1] == self.dim):
            return x.reshape(x.shape[0], self.dim)
        raise ValueError(
            f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) or (B, {self.dim}), "
            f"got {tuple(x.shape)}"
        )

    # --- sampling -----------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: Generator = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples shaped ``(n, *event_shape)`` (and their component labels)."""
        u = rand((n,), generator=generator, dtype=torch.float64)
        labels = torch.searchsorted(torch.cumsum(self.weights, 0), u, right=True).clamp_max(self.n_components - 1)
        z = randn((n, self.dim), generator=generator, dtype=torch.float64)
        scale = self._evecs[labels] * self._evals[labels].sqrt()[:, None, :]
        x = self.means[labels] + (scale @ z[:, :, None])[..., 0]
        x = x.reshape(n, *self.event_shape).to(device=device, dtype=dtype)
        return (x, labels.to(device)) if return_labels else x

    def sample_marginal(
        self, n: int, t: float, sde, generator: Generator = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Samples of ``p_t``: draw ``x_0`` from the mixture, then noise it with the SDE's kernel."""
        x0 = self.sample(n, generator=generator, dtype=dtype)
        return sde.perturb(x0, float(t), randn(x0.shape, generator, dtype=dtype))

    def marginal(self, sde, t: float) -> GaussianMixture:
        """The marginal ``p_t`` as a new mixture (scalar ``t``)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha = float(sde.marginal_alpha(tt))
        sigma = float(sde.marginal_std(tt))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye, self.event_shape
        )

    # --- densities and scores -----------------------------------------------------------------------
    def _components(
        self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component log-densities ``(B, K)``, rotated residuals and variances ``(B, K, D)``."""
        p = self._cast(x.dtype, x.device)
        xf = self._flatten(x)
        resid = xf[:, None, :] - alpha[:, None, None] * p.means[None]  # (B, K, D)
        y = torch.einsum("bkd,kde->bke", resid, p.evecs)  # coordinates in each eigenbasis
        var = alpha[:, None, None] ** 2 * p.evals[None] + sigma[:, None, None] ** 2
        log_n = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return p.log_w[None] + log_n, y, var, p.evecs

    def _alpha_sigma(self, x: torch.Tensor, t, sde) -> tuple[torch.Tensor, torch.Tensor]:
        if sde is None:
            one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            return one, torch.zeros_like(one)
        t = as_time(t, x)
        return sde.marginal_alpha(t), sde.marginal_std(t)

    def log_prob(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """``log p_t(x)`` ``(B,)``; with ``sde=None`` the data density ``p_0`` itself."""
        joint, *_ = self._components(x, *self._alpha_sigma(x, t, sde))
        return torch.logsumexp(joint, dim=1)

    def responsibilities(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x_t)``, ``(B, K)``."""
        joint, *_ = self._components(x, *self._alpha_sigma(x, t, sde))
        return torch.softmax(joint, dim=1)

    def score(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """Exact score ``grad_x log p_t(x)``, shaped like ``x``."""
        joint, y, var, evecs = self._components(x, *self._alpha_sigma(x, t, sde))
        r = torch.softmax(joint, dim=1)  # (B, K)
        grad_rot = -(y / var) * r[:, :, None]  # (B, K, D) in each eigenbasis
        return torch.einsum("bke,kde->bd", grad_rot, evecs).reshape(x.shape)

    def denoiser(self, x: torch.Tensor, t, sde) -> torch.Tensor:
        """Exact posterior mean ``E[x_0 | x_t = x]`` (Tweedie: ``(x + sigma^2 score) / alpha``)."""
        tt = as_time(t, x)
        alpha, sigma = sde.marginal_alpha(tt), sde.marginal_std(tt)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x + sigma.reshape(shape) ** 2 * self.score(x, tt, sde)) / alpha.reshape(shape)

    def score_fn(self, sde) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A score function ``(x, t) -> grad log p_t(x)`` for samplers and the likelihood."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score(x, t, sde)

        return score_fn

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, event_shape={self.event_shape})"


def random_mixture(
    dim: int,
    n_components: int = 3,
    seed: int = 0,
    spread: float = 2.0,
    min_var: float = 0.05,
    max_var: float = 0.5,
    event_shape: Sequence[int] | None = None,
) -> GaussianMixture:
    """A reproducible mixture with random weights, means and full (anisotropic, rotated) covariances.

    Means are drawn ``N(0, spread^2 / D I)`` per coordinate (so their norms are ``~spread``); each covariance has
    eigenvalues log-uniform in ``[min_var, max_var]`` and a random orthogonal eigenbasis.
    """
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    means = torch.randn(n_components, dim, generator=g, dtype=torch.float64) * spread / math.sqrt(dim)
    q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
    u = torch.rand(n_components, dim, generator=g, dtype=torch.float64)
    ev = torch.exp(math.log(min_var) + u * (math.log(max_var) - math.log(min_var)))
    covs = q @ torch.diag_embed(ev) @ q.transpose(-1, -2)
    return GaussianMixture(w, means, covs, event_shape)


def ring_mixture(n_components: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Equal-weight isotropic Gaussians evenly spaced on a circle in 2-D (the '8 Gaussians' problem)."""
    angles = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.ones(n_components), means, std**2)
