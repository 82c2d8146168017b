"""The Fréchet distance between Gaussian fits of two feature sets, as in FID (Heusel et al. 2017, Eq. 6).

With features from any extractor (e.g. Inception pool3 features computed with another package) it gives the same
number as FID; :mod:`scoresde.evaluation.digits` and :mod:`scoresde.evaluation.mnist` supply small classifiers'
features for data sets that ship without Inception weights.
"""

from __future__ import annotations

import torch

from scoresde.metrics import gaussian_w2


def gaussian_fit(features: torch.Tensor, name: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (``N - 1``) of ``features`` ``(N, F)``, in float64 on the CPU."""
    f = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must have shape (N, F), got {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} need at least 2 samples to estimate a covariance, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1])


def frechet_distance(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """Squared Fréchet distance between Gaussian fits of two feature sets ``(N, F)`` and ``(M, F)``, as in FID:
    ``|m_x - m_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)`` (Heusel et al. 2017, Eq. 6), in float64.

    Unbiased covariances (``N - 1``). The estimate is biased upwards at finite sample sizes, so compare values
    computed with the same ``N`` and ``M``.
    """
    mx, cx = gaussian_fit(features_x, "features_x")
    my, cy = gaussian_fit(features_y, "features_y")
    if mx.shape != my.shape:
        raise ValueError(f"feature dimensions differ: {mx.shape[0]} and {my.shape[0]}")
    return gaussian_w2(mx, cx, my, cy) ** 2


__all__ = ["frechet_distance", "gaussian_fit"]
