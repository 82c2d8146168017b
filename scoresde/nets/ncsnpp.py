"""NCSN++ and DDPM++ (Song et al. 2021, App. H): a U-Net of residual blocks with optional FIR resampling,
progressive input/output pyramids and attention. DDPM++ is the same network with DDPM++ options.

The network is called ``net(x, label)``. With ``embedding_type="fourier"`` the label is the noise level
``sigma`` (the network embeds ``log sigma``); with ``"positional"`` it is a (scaled) time, e.g. ``999 t``.
The reference's input map ``2 x - 1`` for data in [0, 1] (``data.centered=False``) and its output division by
sigma (``scale_by_sigma``) are not part of the network: the preconditioning layer (:mod:`scoresde.score`) applies
them (``ScoreModel(centered=False, scale_by_sigma=True)``), next to the other parameterizations.

Submodules are named after their role (``down.1.blocks.0``, ``mid.attn``, ``up.0.upsample``, ...);
``official_order`` lists them in the order in which the reference code creates its flat ``all_modules`` list,
which is all :mod:`scoresde.nets.official` needs to read reference checkpoints.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

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
        self.data_shape = (channels, res, res)
        self.nf, self.num_res_blocks, self.num_resolutions = nf, num_res_blocks, n_res
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.resolutions = [res // 2**i for i in range(n_res)]
        self.skip_rescale, self.conditional = skip_rescale, conditional
        self.resblock_type, self.progressive = opts["resblock_type"], opts["progressive"]
        self.progressive_input, self.embedding_type = opts["progressive_input"], opts["embedding_type"]
        combine = functools.partial(Combine, method=opts["progressive_combine"])
        self.official_order: list[str] = []  # our submodule paths in the reference's creation order
        order = self.official_order.append

        # Noise-level embedding.
        if self.embedding_type == "fourier":
            self.fourier = GaussianFourierProjection(nf, scale=fourier_scale)
            order("fourier")
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        temb_dim = 4 * nf if conditional else None
        if conditional:
            self.embed_fc0, self.embed_fc1 = dense(embed_dim, 4 * nf), dense(4 * nf, 4 * nf)
            order("embed_fc0"), order("embed_fc1")
        self.num_classes = None if num_classes is None else int(num_classes)
        if self.num_classes is not None:  # not in the reference: kept out of official_order
            if not conditional:
                raise ValueError("NCSNpp: num_classes needs conditional=True (the label joins the noise embedding)")
            self.label_embed = LabelEmbedding(self.num_classes, 4 * nf)

        attn = functools.partial(AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        resample = dict(use_fir=fir, fir_kernel=fir_kernel)
        if self.resblock_type == "ddpm":
            resblock = functools.partial(
                ResnetBlockDDPM, temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale
            )
        else:
            resblock = functools.partial(
                ResnetBlockBigGAN,
                temb_dim=temb_dim,
                dropout=dropout,
                skip_rescale=skip_rescale,
                init_scale=init_scale,
                **resample,
            )

        # Downsampling path.
        self.conv_in = conv2d(channels, nf, 3)
        order("conv_in")
        skip_channels, in_ch, pyramid_ch = [nf], nf, channels
        self.down = nn.ModuleList()
        for i in range(n_res):
            level, path = nn.Module(), f"down.{i}"
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for j in range(num_res_blocks):
                out_ch = nf * ch_mult[i]
                level.blocks.append(resblock(in_ch=in_ch, out_ch=out_ch))
                order(f"{path}.blocks.{j}")
                in_ch = out_ch
                if self.resolutions[i] in self.attn_resolutions:
                    level.attns.append(attn(channels=in_ch))
                    order(f"{path}.attns.{j}")
                skip_channels.append(in_ch)
            if i != n_res - 1:
                if self.resblock_type == "ddpm":
                    level.downsample = Downsample(in_ch, with_conv=resamp_with_conv, **resample)
                else:
                    level.downsample = resblock(in_ch=in_ch, down=True)
                order(f"{path}.downsample")
                if self.progressive_input == "input_skip":
                    level.pyramid_down = Downsample(pyramid_ch, with_conv=False, **resample)
                    level.pyramid_combine = combine(dim1=pyramid_ch, dim2=in_ch)
                    order(f"{path}.pyramid_down"), order(f"{path}.pyramid_combine")
                    if opts["progressive_combine"] == "cat":
                        in_ch *= 2
                elif self.progressive_input == "residual":
                    level.pyramid_down = Downsample(pyramid_ch, in_ch, with_conv=True, **resample)
                    order(f"{path}.pyramid_down")
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)
            self.down.append(level)

        # Middle.
        in_ch = skip_channels[-1]
        self.mid = nn.Module()
        self.mid.block_0 = resblock(in_ch=in_ch)
        self.mid.attn = attn(channels=in_ch)
        self.mid.block_1 = resblock(in_ch=in_ch)
        order("mid.block_0"), order("mid.attn"), order("mid.block_1")

        # Upsampling path (built from the lowest resolution up; ``up[k]`` works at resolution level n_res-1-k).
        self.up = nn.ModuleList()
        pyramid_ch = 0
        for k, i in enumerate(reversed(range(n_res))):
            level, path = nn.Module(), f"up.{k}"
            level.blocks = nn.ModuleList()
            for j in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i]
                level.blocks.append(resblock(in_ch=in_ch + skip_channels.pop(), out_ch=out_ch))
                order(f"{path}.blocks.{j}")
                in_ch = out_ch
            if self.resolutions[i] in self.attn_resolutions:
                level.attn = attn(channels=in_ch)
                order(f"{path}.attn")
            if self.progressive != "none":
                if i != n_res - 1:
                    with_conv = self.progressive == "residual"
                    level.pyramid_up = Upsample(
                        pyramid_ch, in_ch if with_conv else None, with_conv=with_conv, **resample
                    )
                    order(f"{path}.pyramid_up")
                if self.progressive == "output_skip":
                    level.pyramid_norm = group_norm(in_ch)
                    level.pyramid_conv = conv2d(in_ch, channels, 3, init_scale=init_scale)
                    order(f"{path}.pyramid_norm"), order(f"{path}.pyramid_conv")
                    pyramid_ch = channels
                elif i == n_res - 1:  # residual: the pyramid starts at the lowest resolution
                    level.pyramid_norm = group_norm(in_ch)
                    level.pyramid_conv = conv2d(in_ch, in_ch, 3)
                    order(f"{path}.pyramid_norm"), order(f"{path}.pyramid_conv")
                    pyramid_ch = in_ch
                else:
                    pyramid_ch = in_ch
            if i != 0:
                if self.resblock_type == "ddpm":
                    level.upsample = Upsample(in_ch, with_conv=resamp_with_conv, **resample)
                else:
                    level.upsample = resblock(in_ch=in_ch, up=True)
                order(f"{path}.upsample")
            self.up.append(level)
        assert not skip_channels

        if self.progressive != "output_skip":
            self.norm_out = group_norm(in_ch)
            self.conv_out = conv2d(in_ch, channels, 3, init_scale=init_scale)
            order("norm_out"), order("conv_out")

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
