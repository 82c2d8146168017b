"""Named 2-D toy distributions commonly used to test generative models (as in FFJORD, Grathwohl et al. 2019).

Each sampler draws ``n`` points ``(n, 2)`` with a ``torch.Generator`` for reproducibility. ``eight_gaussians``
is also available as an exact :class:`GaussianMixture` (:func:`eight_gaussians_mixture`), so its score and
density are known under every SDE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scoresde.data.mixture import GaussianMixture, ring_mixture
from scoresde.utils import rand, randn

# FFJORD's 8 Gaussians: centres at radius 4 and std 0.5, then everything divided by 1.414.
_RING_RADIUS = 4 / 1.414
_RING_STD = 0.5 / 1.414


def eight_gaussians_mixture() -> GaussianMixture:
    """The '8 Gaussians' data as an exact mixture (radius 2.83, std 0.354)."""
    return ring_mixture(8, _RING_RADIUS, _RING_STD)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return eight_gaussians_mixture().sample(n, generator=generator, dtype=torch.float32)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 board on [-4, 4]^2."""
    u = rand((n, 3), generator=generator)
    x1 = u[:, 0] * 4 - 2
    x2 = u[:, 1] - (u[:, 2] < 0.5).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 1.0) -> torch.Tensor:
    """The 2-D swiss roll (scikit-learn's ``make_swiss_roll`` projected on (x, z)), scaled by 1/5."""
    t = 1.5 * math.pi * (1 + 2 * rand((n,), generator=generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (x + noise * randn((n, 2), generator=generator)) / 5


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled to unit spread."""
    u = rand((n,), generator=generator)
    upper = rand((n,), generator=generator) < 0.5
    angle = u * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x, y], dim=1) + noise * randn((n, 2), generator=generator)
    return (pts - torch.tensor([0.5, 0.25])) * 2


TOY_DATASETS: dict[str, Callable[..., torch.Tensor]] = {
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "two_moons": two_moons,
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of the toy distribution ``name`` (one of :data:`TOY_DATASETS`)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, generator)
