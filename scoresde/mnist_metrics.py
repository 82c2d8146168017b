"""The MNIST-5k metrics' public import path; they live in :mod:`scoresde.evaluation.mnist` (see there)."""

from scoresde.evaluation import mnist as _mnist
from scoresde.evaluation.mnist import *  # noqa: F403 - this module is the re-export

__all__ = list(_mnist.__all__)
