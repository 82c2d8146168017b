"""Sample-quality metrics for scikit-learn's 8x8 digits, with no downloads.

The digits (``sklearn.datasets.load_digits``: 1797 grey-scale 8x8 images, values 0..16, ten classes) ship inside
scikit-learn. A small CNN is trained on the fixed training split (:func:`scoresde.data.digits.digits_split`),
deterministically in seconds on one CPU thread, and cached (:mod:`scoresde.evaluation.feature_net`); its penultimate
layer is the feature space of a Fréchet distance in the manner of FID (Heusel et al. 2017), and its class
probabilities give confidence, class-histogram diversity and an Inception-Score-like number (Salimans et al. 2016).

Images given to every function here: values in ``[0, 1]`` (pixel value / 16 for the raw data; uint8 ``0..255`` as
``samples.npz`` holds them), shaped ``(N, 64)``, ``(N, S, S)``, ``(N, 1, S, S)`` or ``(N, S, S, 1)`` with
``S = 8 k``; larger images are reduced to 8x8 by ``k x k`` average pooling (the exact inverse of nearest-neighbour
upsampling by ``k``, e.g. 16x16 -> 8x8 by 2x2 means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scoresde.data.digits import NUM_CLASSES, digits_split
from scoresde.evaluation.feature_net import FeatureCNN, FeatureNet, Images
from scoresde.evaluation.images import grey_images

# Everything that determines the trained weights (its hash names the cache file); bump "version" when changing
# DigitsCNN or FeatureNet.train.
RECIPE = {
    "version": 2,
    "net": "conv32-conv32-maxpool-conv64-maxpool-fc64-dropout0.3-fc10",
    "split": {"test_fraction": 0.2, "seed": 0},
    "max_shift": 1,
    "seed": 0,
    "epochs": 30,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "schedule": "cosine",
    "threads": 1,
}


class DigitsCNN(FeatureCNN):
    """A 45k-parameter CNN on ``(N, 1, 8, 8)`` images; :meth:`features` is the 64-d penultimate layer (after ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))


def as_digit_images(images: Images, name: str = "images") -> torch.Tensor:
    """Checked images (see the module docstring) as ``(N, 1, 8, 8)`` float32 on the CPU in ``[0, 1]``."""
    x = grey_images(images, name, 8, lambda s: s > 0 and s % 8 == 0, "S a multiple of 8 (8, 16, 32, ...)",
                    " (pixel / 16 for the raw digits)")  # fmt: skip
    k = x.shape[2] // 8
    return F.avg_pool2d(x, k) if k > 1 else x


DIGITS = FeatureNet("digits", DigitsCNN, RECIPE, digits_split, as_digit_images, batch=4096)


def load_digits_classifier(retrain: bool = False) -> DigitsCNN:
    """The digits classifier (eval mode, frozen, on the CPU): loaded from the cache, or trained and cached."""
    return DIGITS.load(retrain)


def digits_features(images: Images) -> torch.Tensor:
    """Penultimate-layer features ``(N, 64)`` of the digits classifier (float32, CPU)."""
    return DIGITS.features(images)


def frechet_digits_distance(samples: Images, reference: Images | str = "test") -> float:
    """Squared Fréchet distance (FID-like) between ``samples`` and ``reference`` in the classifier's feature space.

    ``reference``: images, or ``"test"`` (default, the 359 test images) or ``"train"`` (the 1438 training images) of
    :func:`digits_split`. The value depends on the sample sizes (finite-sample bias), so compare models at equal
    ``N``; the training split against the test split gives the level of two independent real-data sets.
    """
    return DIGITS.frechet(samples, reference)


@dataclass(frozen=True)
class ClassifierScores:
    """What the digits classifier says about a set of images.

    ``labels``: predicted class per image ``(N,)``. ``confidence``: mean of the maximum class probability.
    ``histogram``: fraction of images per predicted class ``(10,)``. ``class_entropy``: entropy (nats) of
    ``histogram``, at most ``log 10 = 2.303`` (all classes equally often). ``inception_score``:
    ``exp(E_x KL(p(y|x) || p(y)))`` with this classifier in place of Inception (Salimans et al. 2016), in
    ``[1, 10]``; high when predictions are both confident and diverse.
    """

    labels: torch.Tensor
    confidence: float
    histogram: torch.Tensor
    class_entropy: float
    inception_score: float


def classifier_scores(samples: Images) -> ClassifierScores:
    """Classifier confidence, class histogram and its entropy, and an Inception-Score-like number for ``samples``."""
    logp = torch.log_softmax(DIGITS.apply(samples, "forward", "samples").to(torch.float64), dim=1)
    p = logp.exp()
    labels = p.argmax(1)
    hist = torch.bincount(labels, minlength=NUM_CLASSES).to(torch.float64) / len(labels)
    class_entropy = float(-(hist * hist.clamp_min(1e-300).log()).sum())
    log_marginal = p.mean(0).clamp_min(1e-300).log()
    kl = (p * (logp - log_marginal)).sum(1).mean()
    return ClassifierScores(
        labels=labels,
        confidence=float(p.max(1).values.mean()),
        histogram=hist,
        class_entropy=class_entropy,
        inception_score=float(kl.exp()),
    )


def accuracy(samples: Images, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of ``samples`` the classifier assigns to the given ``labels`` (e.g. for class-conditional samples)."""
    return DIGITS.accuracy(samples, labels, NUM_CLASSES)


__all__ = [
    "DIGITS",
    "ClassifierScores",
    "DigitsCNN",
    "accuracy",
    "as_digit_images",
    "classifier_scores",
    "digits_features",
    "frechet_digits_distance",
    "load_digits_classifier",
]
