"""Sample-quality metrics for scikit-learn's 8x8 digits, with no downloads.

The digits (``sklearn.datasets.load_digits``: 1797 grey-scale 8x8 images, values 0..16, ten classes) ship inside
scikit-learn. A small CNN is trained on a fixed training split, deterministically and in seconds on one CPU thread,
and cached in the user's cache directory; its penultimate layer is the feature space of a Fréchet distance in the
manner of FID (Heusel et al. 2017), and its class probabilities give confidence, class-histogram diversity and an
Inception-Score-like number (Salimans et al. 2016).

Images given to every function here: values in ``[0, 1]`` (pixel value / 16 for the raw data), as a tensor or
array of shape ``(N, 64)`` or ``(N, 1, S, S)`` with ``S = 8 k``; larger images are reduced to 8x8 by ``k x k``
average pooling (the exact inverse of nearest-neighbour upsampling by ``k``, e.g. 16x16 -> 8x8 by 2x2 means).

Cache: ``$SCORESDE_CACHE`` if set, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``; the file name
carries a hash of the training recipe, so changing the recipe retrains. A file that fails to load or whose content
hash does not match is retrained (with a warning) and replaced atomically.

Standard FID needs Inception weights, which are not shipped; with features from any extractor (e.g. Inception
pool3 features computed with another package), :func:`frechet_distance` gives the same number as FID.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scoresde.data.digits import NUM_CLASSES, DigitsSplit, digits_split
from scoresde.metrics import gaussian_w2

__all__ = [
    "ClassifierScores",
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

RANGE_TOLERANCE = 0.1  # values in [-0.1, 1.1] are accepted (and clamped to [0, 1]); anything else is an error

# Everything that determines the trained weights. Changing any entry changes the cache file name; bump "version"
# when changing DigitsCNN or _train_classifier.
_RECIPE = {
    "version": 1,
    "net": "conv32-conv32-maxpool-conv64-maxpool-fc64-dropout0.3-fc10",
    "split": {"test_fraction": 0.2, "seed": 0},
    "augment": "shift1",
    "seed": 0,
    "epochs": 30,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "schedule": "cosine",
    "threads": 1,
}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def _as_digit_images(images: torch.Tensor | np.ndarray, name: str = "images") -> torch.Tensor:
    """Validate images in ``[0, 1]`` (or uint8 ``0..255``, as ``samples.npz`` holds them) of shape ``(N, 64)``,
    ``(N, 8k, 8k)``, ``(N, 1, 8k, 8k)`` or ``(N, 8k, 8k, 1)`` and return ``(N, 1, 8, 8)`` float32 on the CPU
    (``k x k`` average pooling for ``k > 1``; values clamped to ``[0, 1]`` after the range check)."""
    try:
        x = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real-valued tensor or array: {err}") from err
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real-valued tensor or array, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    elif x.ndim == 3:  # (N, S, S)
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] == 1 and x.shape[1] != 1:  # (N, S, S, 1): the layout samples.npz holds
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] % 8 != 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} must have shape (N, 64), (N, S, S), (N, 1, S, S) or (N, S, S, 1) with S a multiple of 8 "
            f"(8, 16, 32, ...), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must have values in the expected range [0, 1] (pixel / 16 for the raw digits; map centred data "
            f"with (x + 1) / 2), got values in [{lo:.3g}, {hi:.3g}]"
        )
    k = x.shape[2] // 8
    if k > 1:
        x = F.avg_pool2d(x, k)
    return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Classifier: architecture, deterministic training, cache
# ----------------------------------------------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """A 45k-parameter CNN on ``(N, 1, 8, 8)`` images; :meth:`features` is the 64-d penultimate layer (after ReLU)."""

    feature_dim = 64

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(self.features(x), 0.3, self.training))


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: translate each image by -1, 0 or +1 pixel per axis (zero fill)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = (torch.randint(0, 3, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(8))[:, :, None]
    cols = (dx[:, None] + torch.arange(8))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def recipe_hash() -> str:
    """Short hash of the training recipe; part of the cache file name."""
    return hashlib.sha256(json.dumps(_RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """``$SCORESDE_CACHE`` if set, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``."""
    if os.environ.get("SCORESDE_CACHE"):
        return Path(os.environ["SCORESDE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "scoresde"
    return Path.home() / ".cache" / "scoresde"


def classifier_path() -> Path:
    """Where the trained classifier is cached (the recipe hash is in the name)."""
    return cache_dir() / f"digits_classifier-{recipe_hash()}.safetensors"


@contextlib.contextmanager
def _deterministic_cpu(seed: int) -> Iterator[None]:
    """One thread, deterministic algorithms, seeded global CPU RNG (dropout, init); all restored afterwards."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: leave any CUDA generator alone
        torch.set_num_threads(_RECIPE["threads"])
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det)
            torch.set_num_threads(threads)


def _train_classifier() -> DigitsCNN:
    """Train :class:`DigitsCNN` on the training split following ``_RECIPE``: AdamW with a cosine learning rate,
    random +-1 pixel shifts, dropout 0.3; a few seconds on one CPU thread, bitwise reproducible on a given CPU."""
    r = _RECIPE
    split = digits_split(**r["split"])
    x, y = split.train_images, split.train_labels
    with _deterministic_cpu(r["seed"]):
        model = DigitsCNN()
        gen = torch.Generator().manual_seed(r["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        steps_per_epoch = math.ceil(len(x) / r["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"] * steps_per_epoch)
        model.train()
        for _ in range(r["epochs"]):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), r["batch_size"]):
                idx = perm[i : i + r["batch_size"]]
                loss = F.cross_entropy(model(_random_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval().requires_grad_(False)


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_atomic(model: DigitsCNN, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"recipe": recipe_hash(), "sha256": _state_digest(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _load(path: Path) -> DigitsCNN:
    """Load a cached classifier; any problem (unreadable file, wrong keys/shapes, hash mismatch) raises."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("recipe") != recipe_hash():
        raise ValueError(f"recipe hash {meta.get('recipe')!r} in the file, expected {recipe_hash()!r}")
    if meta.get("sha256") != _state_digest(state):
        raise ValueError("content hash mismatch")
    model = DigitsCNN()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


_MEMO: dict[tuple[str, int, int], DigitsCNN] = {}


def load_digits_classifier(retrain: bool = False) -> DigitsCNN:
    """The digits classifier (eval mode, frozen, on the CPU): loaded from the cache, or trained and cached.

    Kept in memory per cache file (path, modification time, size). A cache file that cannot be loaded or fails
    its content hash is retrained with a warning and replaced atomically (temporary file + ``os.replace``).
    """
    path = classifier_path()
    if not retrain and path.is_file():
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in _MEMO:
            return _MEMO[key]
        try:
            model = _load(path)
            _MEMO[key] = model
            return model
        except Exception as err:  # noqa: BLE001 - any failure to read the cache means: retrain
            warnings.warn(f"digits classifier cache {path} is unusable ({err}); retraining", stacklevel=2)
    model = _train_classifier()
    _save_atomic(model, path)
    st = path.stat()
    _MEMO[(str(path), st.st_mtime_ns, st.st_size)] = model
    return model


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------

_BATCH = 4096


def _apply(images: torch.Tensor | np.ndarray, fn_name: str, name: str) -> torch.Tensor:
    x = _as_digit_images(images, name)
    model = load_digits_classifier()
    fn = getattr(model, fn_name)
    with torch.no_grad():
        return torch.cat([fn(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])


def digits_features(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Penultimate-layer features ``(N, 64)`` of the digits classifier (float32, CPU)."""
    return _apply(images, "features", "images")


def _gaussian_fit(features: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must have shape (N, F), got {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} need at least 2 samples to estimate a covariance, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1])


def frechet_distance(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """Squared Fréchet distance between Gaussian fits of two feature sets ``(N, F)`` and ``(M, F)``, as in FID:
    ``|m_x - m_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)`` (Heusel et al. 2017, eq. 6), in float64.

    Unbiased covariances (``N - 1``). The estimate is biased upwards at finite sample sizes, so compare values
    computed with the same ``N`` and ``M``.
    """
    mx, cx = _gaussian_fit(features_x, "features_x")
    my, cy = _gaussian_fit(features_y, "features_y")
    if mx.shape != my.shape:
        raise ValueError(f"feature dimensions differ: {mx.shape[0]} and {my.shape[0]}")
    return gaussian_w2(mx, cx, my, cy) ** 2


@functools.lru_cache(maxsize=8)
def _split_features(part: str, model_key: tuple[str, int, int]) -> torch.Tensor:
    split = digits_split(**_RECIPE["split"])
    return digits_features(split.test_images if part == "test" else split.train_images)


def frechet_digits_distance(
    samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray | str = "test"
) -> float:
    """Squared Fréchet distance (FID-like) between ``samples`` and ``reference`` in the classifier's feature space.

    ``reference``: images, or ``"test"`` (default, the 359 test images) or ``"train"`` (the 1438 training images) of
    :func:`digits_split`. The value depends on the sample sizes (finite-sample bias), so compare models at equal
    ``N``; the training split against the test split gives the level of two independent real-data sets.
    """
    fs = digits_features(samples)
    if isinstance(reference, str):
        if reference not in ("test", "train"):
            raise ValueError(f"reference must be images, 'test' or 'train', got {reference!r}")
        load_digits_classifier()  # make sure the cache exists so the key below names the model in use
        st = classifier_path().stat()
        fr = _split_features(reference, (str(classifier_path()), st.st_mtime_ns, st.st_size))
    else:
        fr = _apply(reference, "features", "reference")
    return frechet_distance(fs, fr)


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


def classifier_scores(samples: torch.Tensor | np.ndarray) -> ClassifierScores:
    """Classifier confidence, class histogram and its entropy, and an Inception-Score-like number for ``samples``."""
    logp = torch.log_softmax(_apply(samples, "forward", "samples").to(torch.float64), dim=1)
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


def accuracy(samples: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of ``samples`` the classifier assigns to the given ``labels`` (e.g. for class-conditional samples)."""
    y = torch.as_tensor(labels).reshape(-1).to(torch.int64).cpu()
    pred = _apply(samples, "forward", "samples").argmax(1)
    if y.shape[0] != pred.shape[0]:
        raise ValueError(f"got {pred.shape[0]} samples but {y.shape[0]} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got values in [{int(y.min())}, {int(y.max())}]")
    return float((pred == y).double().mean())
