"""The MNIST-5k metrics' public import path; they live in :mod:`scoresde.evaluation.mnist` (see there)."""

from scoresde.evaluation.mnist import (
    MnistCNN,
    MnistSplit,
    as_mnist_images,
    classifier_path,
    frechet_mnist_distance,
    load_mnist_classifier,
    mnist_accuracy,
    mnist_features,
    mnist_split,
)

__all__ = [
    "MnistCNN",
    "MnistSplit",
    "as_mnist_images",
    "classifier_path",
    "frechet_mnist_distance",
    "load_mnist_classifier",
    "mnist_accuracy",
    "mnist_features",
    "mnist_split",
]
