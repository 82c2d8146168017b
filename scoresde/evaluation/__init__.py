"""Sample-quality evaluation with classifier features (FID-like Fréchet distances, no downloads).

``frechet``: the Fréchet distance of Gaussian feature fits; ``images``: the checked grey-image input;
``feature_net``: a small classifier trained deterministically and cached as a feature extractor; ``digits`` and
``mnist``: its two specialisations (8x8 scikit-learn digits, MNIST-5k). Two-sample statistics on raw samples
(sliced Wasserstein, MMD) are in :mod:`scoresde.metrics`.
"""

from scoresde.evaluation.feature_net import FeatureNet, cache_dir
from scoresde.evaluation.frechet import frechet_distance, gaussian_fit

__all__ = ["FeatureNet", "cache_dir", "frechet_distance", "gaussian_fit"]
