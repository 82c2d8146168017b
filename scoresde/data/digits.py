"""scikit-learn's 8x8 digits and their one fixed train/test split, shared by training (``data=digits``) and the
sample-quality metrics (:mod:`scoresde.digits_metrics`), so a model is never evaluated on images it trained on.
The data ship inside scikit-learn: no download."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """The digits split into training and test sets: images ``(N, 1, 8, 8)`` float32 in ``[0, 1]``, labels ``(N,)``
    int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=1)
def _load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data come from scikit-learn; install it with `pip install scoresde[digits]`"
        ) from err
    data = load_digits()
    return np.asarray(data.images, dtype=np.float32), np.asarray(data.target, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _split_indices(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, labels = _load_digits_arrays()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The fixed train/test split of scikit-learn's digits: the single source of truth for training and evaluation.

    Stratified: within each class the images are permuted with ``numpy.random.default_rng(seed)`` (classes in order
    0..9) and the first ``round(test_fraction * n_class)`` go to the test set; both sets keep the original order.
    Pixels are ``value / 16`` in ``[0, 1]``. The defaults give 1438 training and 359 test images.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _load_digits_arrays()
    train, test = _split_indices(float(test_fraction), int(seed))
    x = torch.from_numpy(images / 16.0).unsqueeze(1)
    y = torch.from_numpy(labels)
    return DigitsSplit(x[train].clone(), y[train].clone(), x[test].clone(), y[test].clone())
