"""Data: analytic Gaussian mixtures (exact scores and densities) and named 2-D toy distributions."""

from scoresde.data.mixture import GaussianMixture, random_mixture, ring_mixture
from scoresde.data.toy import TOY_DATASETS, eight_gaussians_mixture, sample_toy

__all__ = [
    "GaussianMixture",
    "random_mixture",
    "ring_mixture",
    "eight_gaussians_mixture",
    "TOY_DATASETS",
    "sample_toy",
]
