"""NCSN++ and DDPM++ (Song et al. 2021, App. H): a U-Net of residual blocks with optional FIR resampling,
progressive input/output pyramids and attention. DDPM++ is the same network with DDPM++ options.

The network is called ``net(x, label)``. With ``embedding_type="fourier"`` the label is the noise level
``sigma`` (the network embeds ``log sigma``); with ``"positional"`` it is a (scaled) time, e.g. ``999 t``.
The reference's input map ``2 x - 1`` for data in [0, 1] (``data.centered=False``) and its output division by
sigma (``scale_by_sigma``) are not part of the network: the preconditioning layer (:mod:`scoresde.score`) applies
them (``ScoreModel(centered=False, scale_by_sigma=True)``), next to the other parameterizations.

Submodules are named after their role (``down.1.blocks.0``, ``mid.attn``, ``up.0.upsample``, ...); the order in
which the reference code creates its flat ``all_modules`` list, which reference checkpoints are keyed by, is the
converter's business (:func:`scoresde.nets.official.official_module_order`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.nets.embeddings import GaussianFourierProjection, sinusoidal_embedding
from scoresde.nets.labels import LabelEmbedding, check_unconditional
from scoresde.nets.layers import (
    AttnBlock,
    Combine,
    Downsample,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    Upsample,
    conv2d,
    dense,
    group_norm,
)

_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


@dataclass(frozen=True)
class _Parts:
    """Constructors of the blocks shared by the down and up paths (the options applied)."""

    resblock: Callable[..., nn.Module]
    attn: Callable[..., nn.Module]
    combine: Callable[..., nn.Module]
    resample: dict
    resamp_with_conv: bool
    init_scale: float


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network for images ``(B, C, H, W)`` with ``H == W``.

    Options and defaults follow the reference configs (``model.*``); ``data_shape = (C, H, W)`` replaces
    ``data.num_channels`` and ``data.image_size``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        fir: bool = True,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        conditional: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        opts = dict(
            resblock_type=resblock_type.lower(),
            progressive=progressive.lower(),
            progressive_input=progressive_input.lower(),
            progressive_combine=progressive_combine.lower(),
            embedding_type=embedding_type.lower(),
        )
        for key, value in opts.items():
            if value not in _CHOICES[key]:
                raise ValueError(f"NCSNpp: unknown {key} {value!r}; choose one of {_CHOICES[key]}")
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"NCSNpp needs square images, data_shape=(C, H, H); got {tuple(data_shape)}")
        channels, res = int(data_shape[0]), int(data_shape[1])
        n_res = len(ch_mult)
        if res % 2 ** (n_res - 1):
            raise ValueError(f"image size {res} is not divisible by 2**(len(ch_mult) - 1) = {2 ** (n_res - 1)}")
        if num_classes is not None and not conditional:
            raise ValueError("NCSNpp: num_classes needs conditional=True (the label joins the noise embedding)")
        self.data_shape = (channels, res, res)
        self.nf, self.num_res_blocks, self.num_resolutions = nf, num_res_blocks, n_res
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.resolutions = [res // 2**i for i in range(n_res)]
        self.skip_rescale, self.conditional = skip_rescale, conditional
        self.resblock_type, self.progressive = opts["resblock_type"], opts["progressive"]
        self.progressive_input, self.embedding_type = opts["progressive_input"], opts["embedding_type"]
        self.num_classes = None if num_classes is None else int(num_classes)

        self._build_embedding(fourier_scale)
        resample = dict(use_fir=fir, fir_kernel=fir_kernel)
        block_opts = dict(
            temb_dim=4 * nf if conditional else None, dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale
        )
        if self.resblock_type == "ddpm":
            resblock = functools.partial(ResnetBlockDDPM, **block_opts)
        else:
            resblock = functools.partial(ResnetBlockBigGAN, **block_opts, **resample)
        parts = _Parts(
            resblock=resblock,
            attn=functools.partial(AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale),
            combine=functools.partial(Combine, method=opts["progressive_combine"]),
            resample=resample,
            resamp_with_conv=resamp_with_conv,
            init_scale=init_scale,
        )
        self.conv_in = conv2d(channels, nf, 3)
        skip_channels = self._build_down(ch_mult, parts)
        in_ch = skip_channels[-1]
        self.mid = nn.Module()
        self.mid.block_0 = parts.resblock(in_ch=in_ch)
        self.mid.attn = parts.attn(channels=in_ch)
        self.mid.block_1 = parts.resblock(in_ch=in_ch)
        in_ch = self._build_up(ch_mult, skip_channels, parts)
        if self.progressive != "output_skip":
            self.norm_out = group_norm(in_ch)
            self.conv_out = conv2d(in_ch, channels, 3, init_scale=init_scale)

    def _build_embedding(self, fourier_scale: float) -> None:
        """Noise-level embedding (Fourier features of log sigma, or sinusoidal), its two dense layers and the
        optional class-label embedding (not in the reference)."""
        nf = self.nf
        if self.embedding_type == "fourier":
            self.fourier = GaussianFourierProjection(nf, scale=fourier_scale)
        if self.conditional:
            embed_dim = 2 * nf if self.embedding_type == "fourier" else nf
            self.embed_fc0, self.embed_fc1 = dense(embed_dim, 4 * nf), dense(4 * nf, 4 * nf)
        if self.num_classes is not None:
            self.label_embed = LabelEmbedding(self.num_classes, 4 * nf)

    def _build_down(self, ch_mult: Sequence[int], parts: _Parts) -> list[int]:
        """Downsampling path ``down[i]`` at resolution ``res / 2**i``, with the progressive input pyramid; returns
        the channel counts of the skip connections."""
        channels, nf = self.data_shape[0], self.nf
        skip_channels, in_ch, pyramid_ch = [nf], nf, channels
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(self.num_res_blocks):
                level.blocks.append(parts.resblock(in_ch=in_ch, out_ch=nf * ch_mult[i]))
                in_ch = nf * ch_mult[i]
                if self.resolutions[i] in self.attn_resolutions:
                    level.attns.append(parts.attn(channels=in_ch))
                skip_channels.append(in_ch)
            if i != self.num_resolutions - 1:
                if self.resblock_type == "ddpm":
                    level.downsample = Downsample(in_ch, with_conv=parts.resamp_with_conv, **parts.resample)
                else:
                    level.downsample = parts.resblock(in_ch=in_ch, down=True)
                if self.progressive_input == "input_skip":
                    level.pyramid_down = Downsample(pyramid_ch, with_conv=False, **parts.resample)
                    level.pyramid_combine = parts.combine(dim1=pyramid_ch, dim2=in_ch)
                    if level.pyramid_combine.method == "cat":
                        in_ch *= 2
                elif self.progressive_input == "residual":
                    level.pyramid_down = Downsample(pyramid_ch, in_ch, with_conv=True, **parts.resample)
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)
            self.down.append(level)
        return skip_channels

    def _build_up(self, ch_mult: Sequence[int], skip_channels: list[int], parts: _Parts) -> int:
        """Upsampling path, built from the lowest resolution up (``up[k]`` works at resolution level
        ``n_res - 1 - k``), with the progressive output pyramid; consumes ``skip_channels``, returns the channels."""
        channels, in_ch, pyramid_ch = self.data_shape[0], skip_channels[-1], 0
        self.up = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(self.num_res_blocks + 1):
                level.blocks.append(parts.resblock(in_ch=in_ch + skip_channels.pop(), out_ch=self.nf * ch_mult[i]))
                in_ch = self.nf * ch_mult[i]
            if self.resolutions[i] in self.attn_resolutions:
                level.attn = parts.attn(channels=in_ch)
            if self.progressive != "none":
                if i != self.num_resolutions - 1:
                    with_conv = self.progressive == "residual"
                    out_ch = in_ch if with_conv else None
                    level.pyramid_up = Upsample(pyramid_ch, out_ch, with_conv=with_conv, **parts.resample)
                if self.progressive == "output_skip":
                    level.pyramid_norm = group_norm(in_ch)
                    level.pyramid_conv = conv2d(in_ch, channels, 3, init_scale=parts.init_scale)
                    pyramid_ch = channels
                else:  # residual: the pyramid starts at the lowest resolution with a norm and a conv
                    if i == self.num_resolutions - 1:
                        level.pyramid_norm, level.pyramid_conv = group_norm(in_ch), conv2d(in_ch, in_ch, 3)
                    pyramid_ch = in_ch
            if i != 0:
                if self.resblock_type == "ddpm":
                    level.upsample = Upsample(in_ch, with_conv=parts.resamp_with_conv, **parts.resample)
                else:
                    level.upsample = parts.resblock(in_ch=in_ch, up=True)
            self.up.append(level)
        assert not skip_channels
        return in_ch

    def embed(self, label: torch.Tensor) -> torch.Tensor | None:
        """Noise-level embedding ``(B, 4 nf)`` in float32 (outside autocast), or ``None`` if unconditional."""
        with torch.autocast(label.device.type, enabled=False):
            dtype = torch.promote_types(label.dtype, torch.float32)
            label = label.to(dtype)
            if self.embedding_type == "fourier":
                temb = self.fourier(torch.log(label))
            else:
                temb = sinusoidal_embedding(label, self.nf).to(dtype)
            if not self.conditional:
                return None
            temb = self.embed_fc0(temb.to(self.embed_fc0.weight.dtype))
            return self.embed_fc1(F.silu(temb))

    def forward(self, x: torch.Tensor, label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"NCSNpp built for samples of shape {self.data_shape}, got a batch {tuple(x.shape)}")
        if label.shape != x.shape[:1]:
            raise ValueError(f"label must have shape ({x.shape[0]},), got {tuple(label.shape)}")
        temb = self.embed(label)  # float32 (or the weights' dtype); autocast casts it where it enters a layer
        if self.num_classes is None:
            check_unconditional(y, "NCSNpp")
        else:
            temb = temb + self.label_embed(y, x.shape[0], x.device).to(temb.dtype)

        # Down.
        pyramid = x if self.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = block(hs[-1], temb)
                if len(level.attns):
                    h = level.attns[j](h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                h = level.downsample(hs[-1]) if self.resblock_type == "ddpm" else level.downsample(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = level.pyramid_down(pyramid)
                    h = level.pyramid_combine(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = level.pyramid_down(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
                hs.append(h)

        # Middle.
        h = self.mid.block_0(hs[-1], temb)
        h = self.mid.block_1(self.mid.attn(h), temb)

        # Up.
        pyramid = None
        for k, level in enumerate(self.up):
            i = self.num_resolutions - 1 - k
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if hasattr(level, "attn"):
                h = level.attn(h)
            if self.progressive == "output_skip":
                out = level.pyramid_conv(F.silu(level.pyramid_norm(h)))
                pyramid = out if pyramid is None else level.pyramid_up(pyramid) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = level.pyramid_conv(F.silu(level.pyramid_norm(h)))
                else:
                    pyramid = level.pyramid_up(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
            if i != 0:
                h = level.upsample(h) if self.resblock_type == "ddpm" else level.upsample(h, temb)
        assert not hs

        return pyramid if self.progressive == "output_skip" else self.conv_out(F.silu(self.norm_out(h)))
