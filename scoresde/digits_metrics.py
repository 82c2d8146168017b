"""The digits metrics' public import path; they live in :mod:`scoresde.evaluation.digits` (see there)."""

from scoresde.data.digits import DigitsSplit, digits_split
from scoresde.evaluation.digits import (
    ClassifierScores,
    DigitsCNN,
    accuracy,
    classifier_scores,
    digits_features,
    frechet_digits_distance,
    load_digits_classifier,
)
from scoresde.evaluation.feature_net import cache_dir
from scoresde.evaluation.frechet import frechet_distance

__all__ = [
    "ClassifierScores",
    "DigitsCNN",
    "DigitsSplit",
    "accuracy",
    "cache_dir",
    "classifier_scores",
    "digits_features",
    "digits_split",
    "frechet_digits_distance",
    "frechet_distance",
    "load_digits_classifier",
]
