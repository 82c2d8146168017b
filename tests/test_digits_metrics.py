"""Digits metrics: the fixed split, the cached classifier (accuracy, determinism, cache handling), the Fréchet
distance in its feature space, classifier scores, and input validation.

One real training per module run goes into a temporary cache (``SCORESDE_CACHE``); the determinism test trains a
second time. Everything else reuses the cached weights or stubs the trainer.
"""

from __future__ import annotations

import math
import os
import statistics
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoresde import digits_metrics as dm
from scoresde.evaluation.digits import DIGITS


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache directory holding the classifier, trained once for this module."""
    path = tmp_path_factory.mktemp("scoresde_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORESDE_CACHE", str(path))
        dm.load_digits_classifier()
        yield path


@pytest.fixture(scope="module")
def split():
    return dm.digits_split()


@pytest.fixture(scope="module")
def feats(cache, split):
    return dm.digits_features(split.train_images), dm.digits_features(split.test_images)


def _count_trainings(monkeypatch) -> list[int]:
    """Replace the trainer by a stub (random weights) that counts its calls."""
    calls = []

    def stub():
        calls.append(1)
        return dm.DigitsCNN().eval().requires_grad_(False)

    monkeypatch.setattr(DIGITS, "train", stub)
    return calls


# ------------------------------------------------------------------------------------------------ split


def test_split_is_fixed_stratified_and_in_unit_range(split):
    n_train, n_test = len(split.train_labels), len(split.test_labels)
    assert (n_train, n_test) == (1438, 359)
    assert split.train_images.shape == (1438, 1, 8, 8) and split.test_images.shape == (359, 1, 8, 8)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    for x in (split.train_images, split.test_images):
        assert x.min() == 0 and x.max() == 1
    # every class appears in the test set with round(0.2 * class size) images
    all_labels = torch.cat([split.train_labels, split.test_labels])
    for c in range(10):
        assert int((split.test_labels == c).sum()) == round(0.2 * int((all_labels == c).sum()))
    # same call, same split; the two parts are disjoint images of the data set
    again = dm.digits_split()
    assert torch.equal(again.test_images, split.test_images) and torch.equal(again.train_labels, split.train_labels)
    from scoresde.data.digits import _split_indices

    train_idx, test_idx = _split_indices(0.2, 0)
    assert not set(train_idx) & set(test_idx) and len(set(train_idx) | set(test_idx)) == 1797
    other = dm.digits_split(seed=1)
    assert not torch.equal(other.test_images, split.test_images)


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        dm.digits_split(test_fraction=1.0)


# ------------------------------------------------------------------------------------------------ classifier


def test_classifier_test_accuracy(cache, split):
    # 359 test images; at the measured 98.6% the binomial standard error is 0.6%, so 95% is far below.
    acc = dm.accuracy(split.test_images, split.test_labels)
    assert acc > 0.95, acc


def test_training_is_deterministic_and_restores_global_state(cache):
    cached = dm.load_digits_classifier().state_dict()
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    retrained = DIGITS.train().state_dict()
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert cached.keys() == retrained.keys()
    for k in cached:
        assert torch.equal(cached[k], retrained[k]), k


def test_cache_location_and_recipe_hash(monkeypatch, tmp_path):
    monkeypatch.delenv("SCORESDE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_dir() == tmp_path / "xdg" / "scoresde"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.cache_dir() == tmp_path / "home" / ".cache" / "scoresde"
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "mine"))
    assert dm.cache_dir() == tmp_path / "mine"
    name = DIGITS.path().name
    assert DIGITS.recipe_hash() in name
    monkeypatch.setitem(DIGITS.recipe, "epochs", DIGITS.recipe["epochs"] + 1)
    assert DIGITS.path().name != name  # a recipe change retrains


def test_cache_is_reused_without_training(cache, monkeypatch):
    calls = _count_trainings(monkeypatch)
    expected = dm.load_digits_classifier().state_dict()
    DIGITS.memo.clear()  # force a read from disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = dm.load_digits_classifier()
    assert calls == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k])


def _garbage(data: bytes) -> bytes:
    return b"not a safetensors file" * 10


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped(data: bytes) -> bytes:
    # a bit flip in the last tensor bytes: the file still parses, only the content hash can tell
    out = bytearray(data)
    out[-5] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize("corrupt", [_garbage, _truncated, _flipped])
def test_corrupt_cache_is_retrained_with_warning(cache, monkeypatch, tmp_path, corrupt):
    good = (cache / DIGITS.path().name).read_bytes()
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path))
    path = DIGITS.path()
    path.write_bytes(corrupt(good))
    calls = _count_trainings(monkeypatch)
    with pytest.warns(UserWarning, match="unusable.*retraining"):
        dm.load_digits_classifier()
    assert calls == [1]
    assert os.listdir(tmp_path) == [path.name]  # replaced atomically, no temporary file left behind
    DIGITS.memo.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.load_digits_classifier()  # the rewritten file loads cleanly
    assert calls == [1]


# ------------------------------------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_is_squared_and_exact_in_one_dimension():
    # For 1-D Gaussians the squared Fréchet distance is (m1 - m2)^2 + (s1 - s2)^2 (unbiased sample std here).
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + 2.0 * torch.randn(500, 1, generator=gen, dtype=torch.float64)
    b = -0.5 + 0.5 * torch.randn(300, 1, generator=gen, dtype=torch.float64)
    expected = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)
    assert dm.frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_self_zero_and_symmetric(feats):
    train, test = feats
    assert abs(dm.frechet_distance(test, test)) < 1e-6
    assert dm.frechet_distance(train, test) == pytest.approx(dm.frechet_distance(test, train), rel=1e-6)


def test_frechet_train_vs_test_at_null_level_and_far_below_corruptions(cache, split, feats):
    train_f, test_f = feats
    d_real = dm.frechet_digits_distance(split.train_images)  # reference: the test split
    assert d_real == pytest.approx(dm.frechet_distance(train_f, test_f), rel=1e-9)
    assert dm.frechet_digits_distance(split.test_images, reference="train") == pytest.approx(d_real, rel=1e-6)
    assert dm.frechet_digits_distance(split.train_images, split.test_images) == pytest.approx(d_real, rel=1e-9)
    # Null level: two disjoint random parts of the training split (1079 vs 359 images), 5 replicates.
    null = []
    for seed in range(5):
        p = torch.randperm(len(train_f), generator=torch.Generator().manual_seed(seed))
        null.append(dm.frechet_distance(train_f[p[359:]], train_f[p[:359]]))
    assert d_real < 2 * statistics.median(null), (d_real, null)

    x = split.train_images
    gen = torch.Generator().manual_seed(0)
    noisy = [
        dm.frechet_digits_distance((x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1))
        for s in (0.05, 0.1, 0.2, 0.4)
    ]
    assert all(a < b for a, b in zip([d_real, *noisy], noisy, strict=False)), (d_real, noisy)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    shuffled = x.reshape(-1, 64)[:, torch.randperm(64, generator=gen)]
    uniform = torch.rand(x.shape, generator=gen)
    for name, y in [("blur", blurred), ("shuffled pixels", shuffled), ("uniform noise", uniform)]:
        d = dm.frechet_digits_distance(y)
        assert d > 5 * max(null), (name, d, null)


def test_input_layouts_agree(cache, split):
    x = split.test_images[:50]
    f = dm.digits_features(x)
    assert f.shape == (50, dm.DigitsCNN.feature_dim)
    # flat (N, 64), numpy, and 16x16 / 32x32 nearest-neighbour upsampling (undone exactly by average pooling)
    assert torch.equal(dm.digits_features(x.reshape(50, 64)), f)
    assert torch.equal(dm.digits_features(x.numpy()), f)
    for k in (2, 4):
        assert torch.allclose(dm.digits_features(F.interpolate(x, scale_factor=k, mode="nearest")), f, atol=1e-6)
    # small overshoots from a sampler are clamped to [0, 1]
    assert torch.equal(dm.digits_features(x * 1.08 - 0.04), dm.digits_features((x * 1.08 - 0.04).clamp(0, 1)))


# ------------------------------------------------------------------------------------------------ classifier scores


def test_classifier_scores_real_vs_noise(cache, split):
    real = dm.classifier_scores(split.test_images)
    assert real.labels.shape == (359,) and real.histogram.shape == (10,)
    assert float(real.histogram.sum()) == pytest.approx(1.0)
    assert real.confidence > 0.9
    # the test split has 35-37 images per class; with > 95% accuracy the predicted histogram stays near uniform
    assert real.class_entropy > math.log(10) - 0.01
    assert real.inception_score > 8.5
    noise = dm.classifier_scores(torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert noise.confidence < real.confidence - 0.1
    assert noise.inception_score < real.inception_score / 2
    assert 1.0 <= noise.inception_score <= 10.0


def test_accuracy_label_errors(cache, split):
    with pytest.raises(ValueError, match="3 labels"):
        dm.accuracy(split.test_images[:5], torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9"):
        dm.accuracy(split.test_images[:2], torch.tensor([0, 10]))


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(4, 3, 8, 8), r"shape \(N, 64\), \(N, S, S\), \(N, 1, S, S\)"),
        (torch.rand(4, 1, 10, 10), "multiple of 8"),
        (torch.rand(4, 63), r"got \(4, 63\)"),
        (torch.zeros(0, 1, 8, 8), "empty"),
        (torch.full((4, 1, 8, 8), float("nan")), "NaN"),
        (2 * torch.rand(4, 1, 8, 8) - 1, r"values in \[0, 1\], the expected range.*\(x \+ 1\) / 2"),
        (16 * torch.rand(4, 1, 8, 8), r"values in \[0, 1\]"),
        (np.array([["a"] * 64]), "real-valued"),
        (torch.ones(4, 64, dtype=torch.bool), "real-valued"),
    ],
)
def test_bad_inputs_raise(cache, images, match):
    with pytest.raises(ValueError, match=match):
        dm.digits_features(images)


def test_frechet_needs_two_samples(cache, split):
    with pytest.raises(ValueError, match="at least 2 samples"):
        dm.frechet_digits_distance(split.test_images[:1])
    with pytest.raises(ValueError, match="reference must be images, 'test' or 'train'"):
        dm.frechet_digits_distance(split.test_images, reference="validation")
    with pytest.raises(ValueError, match="feature dimensions differ"):
        dm.frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
