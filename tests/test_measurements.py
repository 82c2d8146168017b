"""Orthogonal measurements of inverse problems: the algebra of ``z = Q x`` on every input layout, and the input checks.

Found by mutation testing (``make mutate``): the flattened ``(D, D)`` matrix path, the squareness check, mixed
dtypes, ``gray_rotation``'s one-channel case and colorization of images taller than one pixel were unchecked.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.sampling.inverse import OrthogonalMeasurement, colorize, gray_rotation
from scoresde.sde import VPSDE

F64 = torch.float64


def _orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


@pytest.mark.parametrize("shape", [(5, 6), (5, 2, 3), (5, 1, 2, 3)], ids=["flat", "2x3", "image"])
def test_flattened_matrix_acts_on_whole_samples(shape):
    """A ``(D, D)`` matrix that fits no channel axis acts on flattened samples: ``z = Q vec(x)`` (shaped like x);
    couple inverts it; replace sets exactly the known coordinates of ``Q x`` and keeps the others."""
    q = _orthogonal(6)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=F64)
    m = OrthogonalMeasurement(mask.reshape(shape[1:]), q)  # the mask is shaped like one sample of z
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    flat = x.reshape(5, 6)
    z = m.decouple(x)
    assert z.shape == x.shape
    torch.testing.assert_close(z.reshape(5, 6), flat @ q.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.couple(z), x, rtol=1e-12, atol=1e-12)
    known = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = m.replace(x, known)
    zo = out.reshape(5, 6) @ q.T
    torch.testing.assert_close(zo[:, mask == 1], known.reshape(5, 6)[:, mask == 1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(zo[:, mask == 0], (flat @ q.T)[:, mask == 0], rtol=1e-12, atol=1e-12)


def test_channel_matrix_and_float32_batches():
    """A ``(C, C)`` matrix acts on the channel axis of images, and a float64 matrix on a float32 batch gives float32."""
    q = _orthogonal(3, seed=4)
    m = OrthogonalMeasurement(torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1), q)
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(5))
    z = m.decouple(x)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, torch.einsum("ij,bjhw->bihw", q.float(), x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.couple(z), x, rtol=1e-5, atol=1e-5)


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match=r"matrix must be square, got shape \(2, 3\)"):
        OrthogonalMeasurement(torch.ones(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"matrix must be square, got shape \(4,\)"):
        OrthogonalMeasurement(torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="orthogonal"):
        OrthogonalMeasurement(torch.ones(2), 2 * torch.eye(2))
    with pytest.raises(ValueError, match="orthogonal"):
        OrthogonalMeasurement(torch.ones(4), 1.01 * _orthogonal(4))  # Q Q^T off by 2%
    OrthogonalMeasurement(torch.ones(4), _orthogonal(4).float())  # float32 rounding (~1e-7) is orthogonal enough
    m = OrthogonalMeasurement(torch.ones(5), _orthogonal(5))
    with pytest.raises(ValueError, match="matrix of size 5 fits neither the channels nor the 6 values of a sample"):
        m.decouple(torch.zeros(3, 6))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_gray_rotation_is_orthogonal_with_the_mean_direction_first(channels):
    q = gray_rotation(channels)
    assert q.shape == (channels, channels) and q.dtype == F64
    torch.testing.assert_close(q @ q.T, torch.eye(channels, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q[0], torch.full((channels,), 1 / math.sqrt(channels), dtype=F64))
    assert gray_rotation(channels, dtype=torch.float32).dtype == torch.float32


def test_gray_rotation_defaults_to_rgb():
    assert gray_rotation().shape == (3, 3)


@pytest.mark.parametrize("shape", [(4, 1, 2, 3), (4, 1, 5)], ids=["image-2x3", "signal-5"])
@pytest.mark.parametrize("channels", [3, 4])
def test_colorize_keeps_the_gray_level_exactly(shape, channels):
    """Any ``(B, 1, ...)`` gray input and any channel count: the output has ``channels`` channels whose mean is the
    gray input exactly (2 steps of a plain score; the samples' quality is tests/test_inverse.py's business)."""
    gray = torch.rand(*shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    res = colorize(VPSDE(), lambda x, t: -x, gray, channels=channels, steps=2, predictor="euler_maruyama",
                   corrector="none", generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert res.samples.shape == (shape[0], channels, *shape[2:])
    torch.testing.assert_close(res.samples.mean(1, keepdim=True), gray, rtol=0, atol=1e-12)


def test_colorize_refuses_what_is_not_a_gray_batch():
    with pytest.raises(ValueError, match=r"gray must be \(B, 1, \.\.\.\) images, got shape \(4, 5\)"):
        colorize(VPSDE(), lambda x, t: -x, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="gray"):
        colorize(VPSDE(), lambda x, t: -x, torch.zeros(4, 3, 2, 2))
