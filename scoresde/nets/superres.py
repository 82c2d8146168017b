"""Super-resolution score networks for cascaded diffusion (Ho et al., "Cascaded Diffusion Models for High Fidelity
Image Generation", JMLR 2022; Saharia et al., SR3).

A cascade samples a low-resolution image with one model and then a higher resolution with a model conditioned on it.
:class:`SuperResNet` turns any image network into such a conditional network: the low-resolution image, given as a
keyword ``low_res`` ``(B, C, H / f, W / f)``, is upsampled by ``f`` and concatenated to the noisy input along the
channels, together with a constant plane holding its augmentation level; the inner network, built for ``2 C + 1``
input channels, sees ``(B, 2C + 1, H, W)`` and the first ``C`` channels of its output are the result. So
``net(x, label, low_res=..., aug_level=...)`` keeps the call convention of every score network (the noise label, an
optional class label ``y``), and :func:`scoresde.conditioning.conditioned` makes it a plain score function for every
sampler.

Noise-conditioning augmentation (Ho et al. 2022, Sec. 3.2 and 4.4): in training the low-resolution input is corrupted
to a random level ``s ~ U(0, aug_max)``, ``low_res' = sqrt(1 - s^2) low_res + s e`` (variance preserving, ``e ~ N(0,
I)``), and the network is told ``s``; this makes the super-resolution model robust to the artefacts of the base
model's samples. At sampling time a fixed level is chosen (0: the low-resolution sample as it is) and the noise is
drawn once per sample, so every step sees the same conditioning. :meth:`SuperResNet.training_conditioning` and
:meth:`SuperResNet.sampling_conditioning` make those draws from a generator (reproducible, one generator per sample
allowed).

Dataset pairs: ``low_res = downsample(x, f)`` — the antialiased bilinear resize that ``data.image_size`` applies, so
a base model trained with ``data.image_size = H / f`` samples from the distribution the super-resolution model is
conditioned on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.utils import Generator, batch_broadcast, rand, randn

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H / f, W / f)`` by antialiased bilinear resizing (what ``data.image_size`` does;
    a linear map whose weights are non-negative and sum to 1, so it commutes with ``[0, 1] -> [-1, 1]``)."""
    f = int(factor)
    if x.ndim != 4 or f < 1 or x.shape[-2] % f or x.shape[-1] % f:
        raise ValueError(f"downsample: need images (B, C, H, W), H and W divisible by {factor}; got {tuple(x.shape)}")
    return F.interpolate(x, size=(x.shape[-2] // f, x.shape[-1] // f), mode="bilinear", antialias=True,
                         align_corners=False)  # fmt: skip


def augment_low_res(low_res: torch.Tensor, level: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """Gaussian conditioning augmentation ``sqrt(1 - s^2) low_res + s noise`` at level ``s`` (a number or ``(B,)``)."""
    s = torch.as_tensor(level, dtype=low_res.dtype, device=low_res.device)
    s = batch_broadcast(s, low_res)
    return torch.sqrt(1 - s**2) * low_res + s * noise.to(low_res.dtype)


class SuperResNet(nn.Module):
    """``net(x, label, low_res=..., aug_level=0.0, y=None)``: a score network for ``(B, *data_shape)`` conditioned on a
    low-resolution image ``(B, C, H / factor, W / factor)``.

    ``net`` is a network built for ``(2C + 1, H, W)`` inputs (its output's first ``C`` channels are used), or a
    factory ``net(data_shape=(2C + 1, H, W))`` — e.g. a config node with ``_partial_: true`` — in which case
    ``data_shape = (C, H, W)`` is required (the trainer passes it). ``aug_max`` is the largest training augmentation
    level (``0``: no augmentation); ``upsample`` one of ``nearest``, ``bilinear``, ``bicubic``.
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., nn.Module],
        factor: int,
        data_shape: Sequence[int] | None = None,
        aug_max: float = 0.5,
        upsample: str = "bilinear",
    ):
        super().__init__()
        if int(factor) != factor or factor < 2:
            raise ValueError(f"SuperResNet: factor must be an integer >= 2, got {factor}")
        if not 0 <= aug_max < 1:
            raise ValueError(f"SuperResNet: aug_max must lie in [0, 1), got {aug_max}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"SuperResNet: unknown upsample {upsample!r}; choose one of {UPSAMPLE_MODES}")
        self.factor, self.aug_max, self.upsample = int(factor), float(aug_max), upsample
        if data_shape is not None:
            shape = tuple(int(s) for s in data_shape)
            if len(shape) != 3:
                raise ValueError(f"SuperResNet needs images, data_shape=(C, H, W); got {shape}")
            if not isinstance(net, nn.Module):
                net = net(data_shape=(2 * shape[0] + 1, *shape[1:]))
        elif isinstance(net, nn.Module) and len(getattr(net, "data_shape", ())) == 3:
            inner = tuple(net.data_shape)
            if inner[0] % 2 != 1:
                raise ValueError(f"SuperResNet: the inner net takes {inner[0]} channels; it must take 2C + 1")
            shape = ((inner[0] - 1) // 2, *inner[1:])
        else:
            raise ValueError("SuperResNet needs data_shape=(C, H, W) (or an inner net with a data_shape attribute)")
        if not isinstance(net, nn.Module):
            raise TypeError(f"SuperResNet: net must be a torch module or a factory of one, got {type(net).__name__}")
        if shape[1] % self.factor or shape[2] % self.factor:
            raise ValueError(f"SuperResNet: image size {shape[1]}x{shape[2]} is not divisible by factor {self.factor}")
        inner_shape = getattr(net, "data_shape", None)
        if inner_shape is not None and tuple(inner_shape) != (2 * shape[0] + 1, *shape[1:]):
            want = (2 * shape[0] + 1, *shape[1:])
            raise ValueError(
                f"SuperResNet: the inner net is built for {tuple(inner_shape)}, expected {want} (x, upsampled low_res, "
                "augmentation level)"
            )
        self.net = net
        self.data_shape = shape
        self.low_res_shape = (shape[0], shape[1] // self.factor, shape[2] // self.factor)

    @property
    def num_classes(self) -> int | None:
        """The inner network's ``num_classes`` (class-conditional super-resolution, guidance's null label)."""
        return getattr(self.net, "num_classes", None)

    def upsampled(self, low_res: torch.Tensor) -> torch.Tensor:
        """``low_res`` upsampled by ``factor`` to the output resolution."""
        if low_res.ndim != 4 or tuple(low_res.shape[1:]) != self.low_res_shape:
            raise ValueError(f"SuperResNet: low_res must have shape (B, *{self.low_res_shape}), got "
                             f"{tuple(low_res.shape)}")  # fmt: skip
        align = False if self.upsample != "nearest" else None
        return F.interpolate(low_res, scale_factor=self.factor, mode=self.upsample, align_corners=align)

    def forward(
        self,
        x: torch.Tensor,
        label: torch.Tensor,
        low_res: torch.Tensor | None = None,
        aug_level: torch.Tensor | float = 0.0,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if low_res is None:
            raise ValueError("SuperResNet needs the low-resolution image: net(x, label, low_res=...)")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"SuperResNet built for samples of shape {self.data_shape}, got a batch {tuple(x.shape)}")
        b = x.shape[0]
        low_res = low_res.to(x.dtype)
        if low_res.shape[0] == 1 and b > 1:
            low_res = low_res.expand(b, *low_res.shape[1:])
        if low_res.shape[0] != b:
            raise ValueError(f"SuperResNet: low_res has a batch of {low_res.shape[0]}, x of {b}")
        level = torch.as_tensor(aug_level, dtype=x.dtype, device=x.device)
        if level.ndim not in (0, 1) or (level.ndim == 1 and level.shape[0] not in (1, b)):
            raise ValueError(f"SuperResNet: aug_level must be a number or have shape ({b},), got {tuple(level.shape)}")
        plane = batch_broadcast(level.reshape(-1) if level.ndim else level, x).expand(b, 1, *x.shape[2:])
        inp = torch.cat([x, self.upsampled(low_res), plane], dim=1)
        out = self.net(inp, label) if y is None else self.net(inp, label, y=y)
        return out[:, : self.data_shape[0]]

    # --- conditioning draws -----------------------------------------------------------------------------------
    def training_conditioning(self, low_res: torch.Tensor, generator: Generator = None) -> dict[str, Any]:
        """Keywords for one training batch: levels ``s ~ U(0, aug_max)`` ``(B,)`` then the noise, both from
        ``generator`` (one generator, or one per sample), and the augmented ``low_res``."""
        b = low_res.shape[0]
        s = rand((b,), generator=generator, device=low_res.device, dtype=low_res.dtype) * self.aug_max
        noise = randn(tuple(low_res.shape), generator=generator, device=low_res.device, dtype=low_res.dtype)
        return {"low_res": augment_low_res(low_res, s, noise), "aug_level": s}

    def sampling_conditioning(
        self, low_res: torch.Tensor, aug_level: float = 0.0, generator: Generator = None
    ) -> dict[str, Any]:
        """Keywords for sampling at a fixed level: the low-resolution image augmented once (noise from
        ``generator``) and the level; level 0 leaves it unchanged and draws nothing."""
        level = float(aug_level)
        if not (math.isfinite(level) and 0 <= level < 1):
            raise ValueError(f"aug_level must lie in [0, 1), got {aug_level}")
        if level == 0:
            return {"low_res": low_res, "aug_level": 0.0}
        noise = randn(tuple(low_res.shape), generator=generator, device=low_res.device, dtype=low_res.dtype)
        return {"low_res": augment_low_res(low_res, level, noise), "aug_level": level}


__all__ = ["SuperResNet", "UPSAMPLE_MODES", "augment_low_res", "downsample"]
