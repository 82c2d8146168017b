"""Two-sample statistics for low-dimensional samples: sliced Wasserstein distance and MMD.

Both take batches ``(N, ...)`` (flattened to ``(N, D)``) and are used to compare generated samples with data,
e.g. against the same statistic between two independent data samples (its null level at that sample size).
"""

from __future__ import annotations

import math

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, p: int = 2, generator: torch.Generator | None = None
) -> float:
    """Sliced ``p``-Wasserstein distance: the ``p``-Wasserstein distance of 1-D projections on random unit directions,
    averaged over ``n_projections`` directions (``p``-th power mean, then the ``1/p`` root).

    Samples of different sizes are compared through their empirical quantiles on a common grid.
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have different dimensions: {x.shape[1]} and {y.shape[1]}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    dirs = torch.randn(x.shape[1], n_projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ dirs.to(x.device), dim=0)[0], torch.sort(y @ dirs.to(y.device), dim=0)[0]
    if px.shape[0] != py.shape[0]:
        q = (torch.arange(max(len(px), len(py)), dtype=torch.float64, device=px.device) + 0.5) / max(len(px), len(py))
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float(((px - py).abs() ** p).mean() ** (1 / p))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012) with a sum of Gaussian kernels.

    ``bandwidths`` default to the median pairwise distance times (0.5, 1, 2).
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have different dimensions: {x.shape[1]} and {y.shape[1]}")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z) ** 2
    if bandwidths is None:
        med = float(d2[d2 > 0].median().sqrt()) if (d2 > 0).any() else 1.0
        bandwidths = (0.5 * med, med, 2 * med)
    k = sum(torch.exp(-d2 / (2 * b**2)) for b in bandwidths)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def gaussian_w2(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein) distance between two Gaussians: ``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)``.

    Returned as the distance itself (square root of that expression), computed with symmetric eigendecompositions.
    """
    c1, c2 = cov1.to(torch.float64), cov2.to(torch.float64)
    ev, evec = torch.linalg.eigh(c1)
    s1 = evec @ torch.diag(ev.clamp_min(0).sqrt()) @ evec.T
    mid = torch.linalg.eigvalsh(s1 @ c2 @ s1).clamp_min(0).sqrt().sum()
    d2 = float(((mean1 - mean2).to(torch.float64) ** 2).sum() + torch.trace(c1 + c2) - 2 * mid)
    return math.sqrt(max(d2, 0.0))
