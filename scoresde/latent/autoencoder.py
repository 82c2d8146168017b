"""A small convolutional KL-regularized autoencoder for latent diffusion (Rombach et al., CVPR 2022, Sec. 3.1).

Why a KL-regularized VAE rather than a deterministic autoencoder: the score model's samples are never exactly latents
of real images, so the decoder should map a *neighbourhood* of each latent to the same image. Training the decoder on
posterior draws ``z = mu(x) + sigma(x) e`` with a weak KL pull towards ``N(0, I)`` (the paper's "KL-reg.", there with
weight ``1e-6`` on per-pixel sums) gives exactly that, and keeps the latents in a bounded region; with
``kl_weight = 0`` the model is a plain autoencoder with the same latent scaling. Diffusion sees the posterior mean
only (the latents are encoded once and cached, so there is no per-epoch posterior draw).

Latent scaling (Rombach et al. 2022, Sec. 4.3.2 and App. G; the ``shift_factor`` / ``scaling_factor`` of later VAEs):
after training, ``shift`` and ``scale`` are set from the posterior means of the training images so that the scaled
latents ``z = (mu(x) - shift) * scale`` have mean 0 and variance 1 over all their elements. The score model then sees
data whose scale matches the SDE's prior ``N(0, I)``, and its sampled ``z`` is decoded as ``decode(z) =
D(z / scale + shift)``.

Images enter and leave in ``[0, 1]`` (the datasets' range), ``(B, C, H, W)`` with ``H`` and ``W`` divisible by
``2 ** len(channels)``; the latents are ``(B, latent_channels, H / f, W / f)`` with ``f = 2 ** len(channels)``
(``f = 4``: MNIST 28x28 -> 4x7x7, a quarter of the pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MAX_CHANNELS = 4096  # sizes read from a file are checked against these before anything is allocated
MAX_LEVELS = 6
INITIAL_LOGVAR = -6.0


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class Autoencoder(nn.Module):
    """KL-regularized convolutional autoencoder: :meth:`encode` ``x -> z`` (scaled posterior mean), :meth:`decode`
    ``z -> x``, :meth:`posterior` ``x -> (mu, logvar)`` unscaled, and the loss terms of :meth:`losses`.

    Encoder: per level a 3x3 convolution and a stride-2 4x4 convolution (SiLU between), then a 3x3 convolution to
    ``2 * latent_channels`` (mean and log-variance). Decoder: the mirror image with transposed convolutions.
    """

    def __init__(self, data_shape: Sequence[int], latent_channels: int = 4, channels: Sequence[int] = (16, 32)):
        super().__init__()
        check_architecture(data_shape, latent_channels, channels)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_channels = int(latent_channels)
        self.channels = tuple(int(c) for c in channels)
        c_in, h, w = self.data_shape
        f = self.factor
        self.latent_shape = (self.latent_channels, h // f, w // f)

        enc: list[nn.Module] = []
        prev = c_in
        for c in self.channels:
            enc += [_conv(prev, c), nn.SiLU(), nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
            prev = c
        enc.append(_conv(prev, 2 * self.latent_channels))
        self.encoder = nn.Sequential(*enc)
        # Start with a narrow posterior (std ~0.05): with std 1 the decoder first sees mostly noise and the encoder
        # gets almost no gradient, so training can sit at the mean image for long (posterior collapse).
        with torch.no_grad():
            enc[-1].bias[self.latent_channels :].fill_(INITIAL_LOGVAR)

        dec: list[nn.Module] = [_conv(self.latent_channels, prev), nn.SiLU()]
        for c in reversed(self.channels):
            dec += [_conv(prev, c), nn.SiLU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
            prev = c
        dec.append(_conv(prev, c_in))
        self.decoder = nn.Sequential(*dec)
        # Latent normalisation (set by fit_latent_scale after training); part of the saved state.
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.source: str | None = None  # the file it was saved to / loaded from (latent caches go beside it)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor ``f = 2 ** len(channels)``."""
        return 2 ** len(self.channels)

    def _check_images(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"autoencoder built for images of shape {self.data_shape}, got a batch {tuple(x.shape)}")

    def posterior(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(B, *latent_shape)`` of ``q(z | x)`` for images in ``[0, 1]`` (unscaled)."""
        self._check_images(x01)
        mu, logvar = self.encoder(2 * x01 - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Images in (about) ``[0, 1]`` from unscaled latents."""
        if tuple(z_raw.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, *{self.latent_shape}), got {tuple(z_raw.shape)}")
        return (self.decoder(z_raw) + 1) / 2

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(mu(x) - shift) * scale`` of images in ``[0, 1]``: what the score model is trained on."""
        mu, _ = self.posterior(x01)
        return (mu - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (values about ``[0, 1]``, not clipped) from scaled latents: ``D(z / scale + shift)``."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, *{self.latent_shape}), got {tuple(z.shape)}")
        return self.decode_raw(z / self.scale + self.shift)

    def losses(self, x01: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction error (squared error summed over pixels, images in ``[0, 1]``) of the decoded
        posterior draw ``mu + exp(logvar / 2) * noise``, and the KL divergence ``KL(q(z | x) || N(0, I))`` in nats."""
        mu, logvar = self.posterior(x01)
        z = mu + torch.exp(0.5 * logvar) * noise
        rec = (self.decode_raw(z) - x01).square().flatten(1).sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)
        return rec, kl


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_architecture(data_shape: Sequence[int], latent_channels: int, channels: Sequence[int]) -> None:
    """Refuse sizes that cannot build (or that a file could use to make us allocate without bound)."""
    shape = tuple(data_shape)
    if len(shape) != 3 or not all(_is_int(s) and 0 < s <= 1 << 14 for s in shape):
        raise ValueError(f"autoencoder data_shape must be (C, H, W) with positive sizes, got {shape}")
    chans = tuple(channels)
    if not 1 <= len(chans) <= MAX_LEVELS or not all(_is_int(c) and 0 < c <= MAX_CHANNELS for c in chans):
        raise ValueError(f"autoencoder channels must be 1-{MAX_LEVELS} sizes in [1, {MAX_CHANNELS}], got {chans}")
    if not (_is_int(latent_channels) and 0 < latent_channels <= MAX_CHANNELS):
        raise ValueError(f"autoencoder latent_channels must lie in [1, {MAX_CHANNELS}], got {latent_channels}")
    f = 2 ** len(chans)
    if shape[1] % f or shape[2] % f:
        raise ValueError(f"image size {shape[1]}x{shape[2]} is not divisible by 2 ** len(channels) = {f}")


__all__ = ["Autoencoder", "check_architecture"]
