"""Inverse problems by replacement: inpainting, colorization, any measurement of orthogonal coordinates.

Song et al. (2021), Sec. 5 and App. I: write the data in orthogonal coordinates ``z = Q x`` of which a part
``z[mask]`` is known (``Q = I`` and a pixel mask for inpainting; a per-pixel 3x3 colour rotation whose first row
is ``(1, 1, 1) / sqrt(3)`` for colorization, where the gray level is known). Because ``Q`` is orthogonal the forward
SDE acts on ``z`` exactly as on ``x`` (``Q eps`` is again standard normal), so the known part at time ``t`` is
distributed as ``alpha_t z0[mask] + sigma_t noise``. PC sampling then alternates each corrector / predictor step
with replacing the known part by a fresh forward-noised draw at the time the state has reached: the one PC loop
(:func:`~scoresde.sampling.pc.sample_pc`) with the replacement as its per-update hook.

Differences from the reference ``controllable_generation.py``: its inpainter builds ``x_mean`` from the noisy
``x`` (``x_mean = x * (1 - mask) + ...``) and replaces after the predictor with the noise level of the step's
start time ``t`` instead of its end ``t - dt``; here the replacement uses the end time, the final step is Tweedie
denoising, and the known part of the output is set exactly to the measurement.

Replacement is an approximation of sampling ``p(x_unknown | z_known)``: the score of the unknown part is taken at
one random draw of the noisy known part, not averaged over its posterior. It is exact when the known and unknown
coordinates are independent; for correlated data it is biased (see tests/test_inverse.py for the measured bias on
a Gaussian).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scoresde.sampling import get_sampler
from scoresde.sampling.base import SampleResult, check_finite
from scoresde.sampling.pc import check_pc_choices, pc_settings
from scoresde.sde import LinearSDE, ScoreFn
from scoresde.utils import Generator, randn


def gray_rotation(channels: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An orthogonal ``(C, C)`` matrix whose first row is ``(1, ..., 1) / sqrt(C)``: coordinate 0 is the gray level
    times ``sqrt(C)`` (Householder reflection of ``e_1`` onto that row)."""
    u = torch.full((channels,), 1 / math.sqrt(channels), dtype=dtype)
    v = u.clone()
    v[0] -= 1.0
    if v.norm() < 1e-12:
        return torch.eye(channels, dtype=dtype)
    return torch.eye(channels, dtype=dtype) - 2 * torch.outer(v, v) / (v @ v)


def check_mask(mask: torch.Tensor, what: str = "mask") -> None:
    """Refuse a mask that is not all 0 (unknown) and 1 (known): a value in between (or above) would mix the known
    pixels with the sample, and NaN would turn the samples to NaN. The one check of masks, from Python or a file."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{what}: the mask must be a tensor of 0 (unknown) and 1 (known), got {type(mask).__name__}")
    m = mask.double()
    check_finite(m, f"{what}: the mask", "; it must be 0 (unknown) or 1 (known)")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{what}: mask values must be 0 (unknown) or 1 (known); found {torch.unique(m)[:8].tolist()}")


@dataclass
class OrthogonalMeasurement:
    """Known coordinates ``mask`` (1 known, 0 unknown) of ``z = Q x``.

    The mask is shaped like one sample (``data_shape``) or like the batch (``(B or 1, *data_shape)``, a mask per
    sample); any axis but the batch may also be 1 to broadcast (``(1, H, W)`` for every channel of ``(C, H, W)``
    images), and ``(H, W)`` stands for ``(1, H, W)``. Other shapes are refused, even where torch would broadcast
    them (``(W,)`` against ``(B, C, H, W)``).

    ``matrix`` is ``None`` (``Q = I``: inpainting), a ``(C, C)`` orthogonal matrix acting on the channel axis 1 of
    images ``(B, C, ...)`` (colorization), or a ``(D, D)`` one acting on flattened samples.
    """

    mask: torch.Tensor
    matrix: torch.Tensor | None = None

    def __post_init__(self):
        check_mask(self.mask)
        if self.matrix is not None:
            q = self.matrix
            if q.ndim != 2 or q.shape[0] != q.shape[1]:
                raise ValueError(f"matrix must be square, got shape {tuple(q.shape)}")
            eye = torch.eye(q.shape[0], dtype=torch.float64, device=q.device)
            if not torch.allclose(q.double() @ q.double().T, eye, atol=1e-5):
                raise ValueError("matrix must be orthogonal (Q Q^T = I)")

    def _apply(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        q = q.to(device=x.device, dtype=x.dtype)
        if x.ndim > 2 and q.shape[0] == x.shape[1]:
            return torch.einsum("ij,bj...->bi...", q, x)
        d = x[0].numel()
        if q.shape[0] != d:
            raise ValueError(f"matrix of size {q.shape[0]} fits neither the channels nor the {d} values of a sample")
        return (x.reshape(x.shape[0], d) @ q.T).reshape(x.shape)

    def check_fits(self, shape: tuple[int, ...]) -> None:
        """Refuse a mask that fits a batch of ``shape`` ``(B, *data_shape)`` only by torch's broadcasting rules."""
        m, data = tuple(self.mask.shape), tuple(shape[1:])
        if len(m) == len(shape) and m[0] in (1, shape[0]):
            m = m[1:]  # one mask per sample
        if len(data) >= 2 and m == data[1:]:
            m = (1, *m)  # (H, W) for (C, H, W) images: the same mask on every channel
        if len(m) != len(data) or any(a not in (1, b) for a, b in zip(m, data, strict=True)):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit a batch of shape {tuple(shape)}: use one "
                f"sample's shape {data} or the batch's {tuple(shape)} (an axis may be 1 to broadcast over it)"
            )

    def decouple(self, x: torch.Tensor) -> torch.Tensor:
        """``z = Q x``."""
        return x if self.matrix is None else self._apply(x, self.matrix)

    def couple(self, z: torch.Tensor) -> torch.Tensor:
        """``x = Q^T z``."""
        return z if self.matrix is None else self._apply(z, self.matrix.T)

    def replace(self, x: torch.Tensor, z_known: torch.Tensor) -> torch.Tensor:
        """``x`` with the known coordinates of ``Q x`` set to those of ``z_known``."""
        m = self.mask.to(device=x.device, dtype=x.dtype)
        if self.matrix is None:
            return x * (1 - m) + z_known * m
        return self.couple(self.decouple(x) * (1 - m) + z_known * m)


def replacement_sample(
    sde: LinearSDE,
    score_fn: ScoreFn,
    measurement: OrthogonalMeasurement,
    known: torch.Tensor,
    *,
    generator: Generator = None,
    x_init: torch.Tensor | None = None,
    **options,
) -> SampleResult:
    """PC sampling of ``x`` given the known coordinates of ``Q x``, those of ``Q known`` (``known`` shaped like the
    batch; its unknown part is ignored): the ``pc`` sampler (``options``: its ``predictor``, ``corrector``, ``snr``,
    ``n_steps``, ``steps``, ``eps``, ``grid``, ``denoise``; defaults the SDE's ``sde.pc_defaults`` and ``sde.N``
    steps) with the replacement as its ``constrain`` hook. NFE = ``steps * (1 + n_steps [if a corrector]) +
    denoise``. The mask, ``known`` and its shape are checked before any model call."""
    check_finite(known, "known", " (its unknown pixels are ignored: set them to any finite value, e.g. 0)")
    if known.ndim < 1:
        raise ValueError(f"known must be a batch (B, *data_shape), got shape {tuple(known.shape)}")
    measurement.check_fits(known.shape)
    sampler = get_sampler("pc", dtype=known.dtype, **options)
    settings = pc_settings(sde, sampler.predictor, sampler.corrector, sampler.snr)
    check_pc_choices(settings["predictor"], settings["corrector"], allow_no_predictor=False)
    z0 = measurement.decouple(known)

    def replace_known(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The known part set to a fresh forward-noised draw of the measurement at the time ``t`` reached."""
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return measurement.replace(x, sde.perturb(z0.to(x.dtype), t, noise))

    sampler.constrain = replace_known
    if x_init is not None:
        x_init = x_init.to(device=known.device, dtype=known.dtype)
    result = sampler(sde, score_fn, known.shape, generator, known.device, x_init)
    result.samples = measurement.replace(result.samples, z0.to(result.samples.dtype))
    return result


def inpaint(sde: LinearSDE, score_fn: ScoreFn, known: torch.Tensor, mask: torch.Tensor, **options) -> SampleResult:
    """Fill in ``x`` where ``mask == 0`` given ``known`` where ``mask == 1`` (options of :func:`replacement_sample`).

    ``known`` is the batch ``(B, *data_shape)`` (finite; its unknown pixels are ignored); ``mask`` holds only 0 and 1,
    shaped like one sample or like the batch, an axis of 1 broadcasting (:class:`OrthogonalMeasurement`)."""
    return replacement_sample(sde, score_fn, OrthogonalMeasurement(mask), known, **options)


def colorize(sde: LinearSDE, score_fn: ScoreFn, gray: torch.Tensor, channels: int = 3, **options) -> SampleResult:
    """Colour images ``(B, C, ...)`` whose channel mean is ``gray`` ``(B, 1, ...)`` (options of
    :func:`replacement_sample`). The known coordinate is ``sqrt(C) * gray`` along ``(1, .., 1) / sqrt(C)``."""
    if gray.ndim < 3 or gray.shape[1] != 1:
        raise ValueError(f"gray must be (B, 1, ...) images, got shape {tuple(gray.shape)}")
    check_finite(gray, "gray")
    q = gray_rotation(channels, dtype=gray.dtype).to(gray.device)
    mask = torch.zeros((channels,) + (1,) * (gray.ndim - 2), dtype=gray.dtype, device=gray.device)
    mask[0] = 1
    known = gray.expand(-1, channels, *gray.shape[2:])  # Q (g, .., g) = (sqrt(C) g, 0, .., 0)
    return replacement_sample(sde, score_fn, OrthogonalMeasurement(mask, q), known, **options)


__all__ = ["OrthogonalMeasurement", "check_mask", "gray_rotation", "replacement_sample", "inpaint", "colorize"]
