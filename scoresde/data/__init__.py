"""Data: analytic Gaussian mixtures (exact scores and densities), named 2-D toy distributions, in-memory
training datasets (toy, digits, mnist, npz, folder, cifar10) and on-the-fly scaling / augmentation."""

from scoresde.data.datasets import LOADERS, ArrayDataset, DataError, load_dataset
from scoresde.data.mixture import GaussianMixture, random_mixture, ring_mixture
from scoresde.data.scaling import BatchTransform, from_model_range, to_model_range
from scoresde.data.toy import TOY_DATASETS, eight_gaussians_mixture, sample_toy

__all__ = [
    "GaussianMixture",
    "random_mixture",
    "ring_mixture",
    "eight_gaussians_mixture",
    "TOY_DATASETS",
    "sample_toy",
    "ArrayDataset",
    "DataError",
    "LOADERS",
    "load_dataset",
    "BatchTransform",
    "to_model_range",
    "from_model_range",
]
