"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, App. H; Ho et al. 2020; BigGAN residual blocks).

Every block keeps a class attribute ``OFFICIAL_NAMES`` that maps the submodule names of the reference code
(``GroupNorm_0``, ``Conv_0``, ``NIN_1``, ...) to ours; :mod:`scoresde.nets.official` uses it to convert
reference checkpoints. The reference's 1x1 "NIN" layers store a weight of shape ``[in, out]``; ours are
``nn.Linear`` / 1x1 ``nn.Conv2d`` layers and the converter transposes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.nets import fir


@torch.no_grad()
def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM's initialisation: variance scaling, ``fan_avg``, uniform. ``scale = 0`` means ``1e-10``."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3 * scale / ((fan_in + fan_out) / 2))
    return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, init_scale: float = 1.0, stride: int = 1, padding=None):
    """Convolution with DDPM initialisation and zero bias; 'same' padding unless ``padding`` is given."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with DDPM initialisation and zero bias."""
    lin = nn.Linear(in_dim, out_dim)
    default_init_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as in NCSN++: ``min(C // 4, 32)`` groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def _combine_skip(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR upsampling or downsampling (StyleGAN2), weight ``(out, in, k, k)``."""

    def __init__(self, in_ch: int, out_ch: int, up: bool, fir_kernel: Sequence[int], kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up
        self.register_buffer("fir", fir.fir_kernel(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        if self.up:
            x = fir.upsample_conv_2d(x, weight, self.fir)
        else:
            x = fir.conv_downsample_2d(x, weight, self.fir)
        return x + self.bias.to(x.dtype)[None, :, None, None]


class _Resample(nn.Module):
    """Shared body of :class:`Upsample` and :class:`Downsample`."""

    OFFICIAL_NAMES = {"Conv_0": "conv", "Conv2d_0": "conv"}

    def __init__(self, up: bool, in_ch: int, out_ch: int | None, with_conv: bool, use_fir: bool, fir_kernel):
        super().__init__()
        out_ch = out_ch or in_ch
        self.up, self.with_conv, self.use_fir, self.out_ch = up, with_conv, use_fir, out_ch
        if with_conv and use_fir:
            self.conv = FIRConv2d(in_ch, out_ch, up=up, fir_kernel=fir_kernel)
        elif with_conv:
            self.conv = conv2d(in_ch, out_ch, 3) if up else conv2d(in_ch, out_ch, 3, stride=2, padding=0)
        elif in_ch != out_ch:
            raise ValueError(f"resampling without a convolution keeps the channels, got {in_ch} -> {out_ch}")
        if use_fir:
            self.register_buffer("fir", fir.fir_kernel(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_fir:
            if self.with_conv:
                return self.conv(x)
            return fir.upsample_2d(x, self.fir) if self.up else fir.downsample_2d(x, self.fir)
        if self.up:
            x = fir.naive_upsample_2d(x)
            return self.conv(x) if self.with_conv else x
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return fir.naive_downsample_2d(x)


class Upsample(_Resample):
    """2x upsampling: nearest (+3x3 conv) or FIR (+fused conv)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv=False, use_fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__(True, in_ch, out_ch, with_conv, use_fir, fir_kernel)


class Downsample(_Resample):
    """2x downsampling: average pool / strided 3x3 conv, or FIR (+fused conv)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv=False, use_fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__(False, in_ch, out_ch, with_conv, use_fir, fir_kernel)


class Combine(nn.Module):
    """Merge the progressive input pyramid into the main path: 1x1 conv then ``sum`` or ``cat``."""

    OFFICIAL_NAMES = {"Conv_0": "conv"}

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.conv = conv2d(dim1, dim2, 1)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels (DDPM), residual, optionally rescaled by ``1/sqrt(2)``."""

    OFFICIAL_NAMES = {"GroupNorm_0": "norm", "NIN_0": "q", "NIN_1": "k", "NIN_2": "v", "NIN_3": "proj_out"}

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (dense(channels, channels, 0.1) for _ in range(3))
        self.proj_out = dense(channels, channels, init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.q(seq), self.k(seq), self.v(seq)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        out = self.proj_out(out).transpose(1, 2).reshape(b, c, h, w)
        return _combine_skip(x, out, self.skip_rescale)


class _ResnetBlock(nn.Module):
    """Shared parts: GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> dropout -> conv."""

    OFFICIAL_NAMES = {
        "GroupNorm_0": "norm_0",
        "Conv_0": "conv_0",
        "Dense_0": "temb_proj",
        "GroupNorm_1": "norm_1",
        "Conv_1": "conv_1",
        "Conv_2": "skip",
        "NIN_0": "skip",
    }

    def __init__(self, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale):
        super().__init__()
        out_ch = out_ch or in_ch
        self.in_ch, self.out_ch, self.skip_rescale = in_ch, out_ch, skip_rescale
        self.norm_0 = group_norm(in_ch)
        self.conv_0 = conv2d(in_ch, out_ch, 3)
        self.temb_proj = dense(temb_dim, out_ch) if temb_dim is not None else None
        self.norm_1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = conv2d(out_ch, out_ch, 3, init_scale=init_scale)

    def _residual(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv_0(h)
        if temb is not None and self.temb_proj is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.dropout(F.silu(self.norm_1(h)))
        return self.conv_1(h)


class ResnetBlockDDPM(_ResnetBlock):
    """DDPM++ residual block; the shortcut is a 1x1 projection (or a 3x3 conv) when channels change."""

    def __init__(
        self, in_ch, out_ch=None, temb_dim=None, dropout=0.1, skip_rescale=False, init_scale=0.0, conv_shortcut=False
    ):
        super().__init__(in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        self.skip = None
        if self.in_ch != self.out_ch:
            # NIN (1x1, init scale 0.1) or a 3x3 conv shortcut, as in DDPM.
            ksize, scale = (3, 1.0) if conv_shortcut else (1, 0.1)
            self.skip = conv2d(in_ch, self.out_ch, ksize, init_scale=scale)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._residual(F.silu(self.norm_0(x)), temb)
        if self.skip is not None:
            x = self.skip(x)
        return _combine_skip(x, h, self.skip_rescale)


class ResnetBlockBigGAN(_ResnetBlock):
    """BigGAN-style residual block that can also resample (``up``/``down``, naive or FIR) inside the block."""

    def __init__(
        self,
        in_ch,
        out_ch=None,
        temb_dim=None,
        up=False,
        down=False,
        dropout=0.1,
        use_fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        init_scale=0.0,
    ):
        super().__init__(in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        self.up, self.down, self.use_fir = up, down, use_fir
        self.skip = conv2d(in_ch, self.out_ch, 1) if (self.in_ch != self.out_ch or up or down) else None
        if use_fir:
            self.register_buffer("fir", fir.fir_kernel(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return fir.upsample_2d(x, self.fir) if self.use_fir else fir.naive_upsample_2d(x)
        if self.down:
            return fir.downsample_2d(x, self.fir) if self.use_fir else fir.naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(F.silu(self.norm_0(x)))
        x = self._resample(x)
        h = self._residual(h, temb)
        if self.skip is not None:
            x = self.skip(x)
        return _combine_skip(x, h, self.skip_rescale)
