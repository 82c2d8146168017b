"""FIR up/down-sampling (StyleGAN2's ``upfirdn2d``) in plain PyTorch: no compiled kernels, CPU and GPU.

``upfirdn2d(x, k, up, down, pad)`` inserts ``up - 1`` zeros between pixels, pads (negative pads crop),
convolves every channel with the 2-D FIR filter ``k`` (a true convolution: the filter is flipped) and keeps
every ``down``-th pixel. The resampling helpers below choose the filter gain and the padding so that an
``H x W`` image maps to ``2H x 2W`` (or ``H/2 x W/2``), exactly as NCSN++ (Song et al. 2021, App. H) uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fir_kernel(k: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """2-D FIR filter from a separable 1-D one (outer product), normalised to sum ``gain``."""
    k1 = torch.as_tensor(list(k), dtype=torch.float32)
    if k1.ndim != 1 or k1.numel() == 0:
        raise ValueError(f"fir_kernel expects a non-empty 1-D sequence, got {k!r}")
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """Upsample by zero insertion, pad ``pad = (before, after)`` in both dimensions, FIR filter, downsample."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        x = x[..., max(-p0, 0) : x.shape[-2] - max(-p1, 0), max(-p0, 0) : x.shape[-1] - max(-p1, 0)]
    weight = torch.flip(kernel, (0, 1)).to(dtype=x.dtype, device=x.device)
    weight = weight[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR upsampling by ``factor``; ``kernel`` normalised to sum 1 (the gain ``factor**2`` is applied here).

    Equals ``upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))`` with
    ``p = K - factor``, computed as a strided transposed convolution, which skips the inserted zeros: its full
    output ``y[n] = sum_i x[i] k[n - factor i]`` is the convolution of the zero-stuffed signal, and the
    padding only selects the window ``y[K - 1 - pad0 :][: factor H]``.
    """
    c, ksize = x.shape[1], kernel.shape[0]
    p = ksize - factor
    crop0, crop1 = ksize - 1 - ((p + 1) // 2 + factor - 1), ksize - 1 - p // 2 - (factor - 1)
    weight = (kernel * factor**2).to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, *kernel.shape)
    if crop0 == crop1 and crop0 >= 0:
        return F.conv_transpose2d(x, weight, stride=factor, padding=crop0, groups=c)
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR downsampling by ``factor``; ``kernel`` normalised to sum 1."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Fused ``upsample_2d`` then a 'same' convolution with ``weight`` (out, in, k, k): a strided transposed
    convolution followed by one FIR filtering pass."""
    ksize = weight.shape[-1]
    p = (kernel.shape[0] - factor) - (ksize - 1)
    # conv_transpose2d takes (in, out, k, k); flipping the taps turns it into the adjoint of a correlation.
    w_t = torch.flip(weight, (2, 3)).transpose(0, 1)
    x = F.conv_transpose2d(x, w_t, stride=factor)
    return upfirdn2d(x, kernel * factor**2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Fused FIR filtering then a strided convolution with ``weight`` (out, in, k, k)."""
    ksize = weight.shape[-1]
    p = (kernel.shape[0] - factor) + (ksize - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, weight, stride=factor)


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling over ``factor x factor`` blocks."""
    return F.avg_pool2d(x, factor)
