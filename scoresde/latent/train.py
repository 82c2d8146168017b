"""Training the latent autoencoder: reconstruction + weak KL (Rombach et al. 2022, Sec. 3.1), then the latent scale.

The loss per image is ``||D(mu + sigma e) - x||^2 + kl_weight * KL(q(z | x) || N(0, I))`` (squared error summed over
pixels of images in ``[0, 1]``, KL in nats), averaged over the batch, minimised with Adam and a cosine learning rate.
Every random draw (batches, posterior noise) comes from one generator seeded by ``seed`` and the initial weights from
``seed`` too, so a run is reproducible on a given machine and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scoresde.latent.autoencoder import Autoencoder


@dataclass
class AutoencoderResult:
    """A trained autoencoder (eval mode, latent scale set) and how well it reconstructs.

    ``test_mse`` is the per-pixel mean squared error of ``decode(encode(x))`` on the held-out images (values in
    ``[0, 1]``); ``baseline_mse`` is that of the trivial reconstruction "every image is the mean training image";
    ``losses`` the training loss per step.
    """

    model: Autoencoder
    losses: list[float]
    test_mse: float | None
    baseline_mse: float | None


def check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """Float images ``(N, C, H, W)`` in ``[0, 1]`` without NaNs (a clear error otherwise)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (N, C, H, W)")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"{name} must hold finite values in [0, 1] (the datasets' image range)")
    return x


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def fit_latent_scale(model: Autoencoder, x_train: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Set ``shift`` and ``scale`` so that the scaled posterior means of ``x_train`` have mean 0 and variance 1 over
    all their elements (computed in float64); returns ``(shift, scale)``."""
    mu = _batched(lambda b: model.posterior(b)[0], x_train, batch_size).to(torch.float64)
    shift, std = float(mu.mean()), float(mu.std(correction=0))
    if not (math.isfinite(std) and std > 0):
        raise FloatingPointError(f"the latents of the training images have standard deviation {std}; cannot scale")
    model.shift.fill_(shift)
    model.scale.fill_(1.0 / std)
    return shift, 1.0 / std


@torch.no_grad()
def reconstruction_mse(model: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> float:
    """Per-pixel mean squared error of ``decode(encode(x))`` for images ``x`` in ``[0, 1]``."""
    rec = _batched(lambda b: model.decode(model.encode(b)), x, batch_size)
    return float((rec.to(torch.float64) - x.to(torch.float64)).square().mean())


def mean_image_mse(x_train: torch.Tensor, x: torch.Tensor) -> float:
    """The trivial baseline: per-pixel mean squared error of predicting every image of ``x`` by the training mean."""
    mean = x_train.to(torch.float64).mean(0, keepdim=True)
    return float((x.to(torch.float64) - mean).square().mean())


def train_autoencoder(
    x_train: torch.Tensor,
    x_test: torch.Tensor | None = None,
    latent_channels: int = 4,
    channels: Sequence[int] = (16, 32),
    kl_weight: float = 1e-3,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
) -> AutoencoderResult:
    """Train an :class:`Autoencoder` on images ``x_train`` ``(N, C, H, W)`` in ``[0, 1]``, set its latent scale and
    measure the held-out reconstruction error on ``x_test``. ``log(step, loss)`` is called every 100 steps."""
    check_images(x_train, "x_train")
    if x_test is not None and tuple(check_images(x_test, "x_test").shape[1:]) != tuple(x_train.shape[1:]):
        raise ValueError(f"x_test images {tuple(x_test.shape[1:])} differ from x_train's {tuple(x_train.shape[1:])}")
    if steps < 1 or batch_size < 1 or not lr > 0 or not kl_weight >= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, kl_weight >= 0; got {steps}, {batch_size}, "
                         f"{lr}, {kl_weight}")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Autoencoder(tuple(x_train.shape[1:]), latent_channels, channels)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        noise = torch.randn((batch_size, *model.latent_shape), generator=gen)
        rec, kl = model.losses(x_train[idx], noise)
        loss = (rec + kl_weight * kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"autoencoder loss became {losses[-1]} at step {step + 1}; lower lr")
        if log is not None and (step + 1) % 100 == 0:
            log(step + 1, losses[-1])
    model.eval().requires_grad_(False)
    fit_latent_scale(model, x_train)
    test_mse = baseline = None
    if x_test is not None:
        test_mse, baseline = reconstruction_mse(model, x_test), mean_image_mse(x_train, x_test)
    return AutoencoderResult(model, losses, test_mse, baseline)


__all__ = [
    "AutoencoderResult",
    "check_images",
    "fit_latent_scale",
    "mean_image_mse",
    "reconstruction_mse",
    "train_autoencoder",
]
