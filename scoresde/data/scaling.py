"""Data scaling and augmentation applied on the fly to a training batch.

Images are stored in ``[0, 1]``; a model sees them in ``[-1, 1]`` when ``centered`` (the reference's
``data.centered``, DDPM++ / VP) or in ``[0, 1]`` (NCSN++ / VE). Uniform dequantization turns data with ``L``
levels ``k / (L - 1)`` into ``(k + u) / L`` with ``u ~ U[0, 1)`` (Theis et al. 2016; Ho et al. 2020 App. B), and a
random horizontal flip mirrors each image with probability 1/2. Points (2-D toy data) pass unchanged.

The random draws are separate from their application (:meth:`BatchTransform.draw` / :meth:`apply`), so a
distributed trainer can draw them for the global batch and give each rank its share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scoresde.utils import Generator, rand


def to_model_range(x01: torch.Tensor, centered: bool) -> torch.Tensor:
    """[0, 1] -> [-1, 1] when ``centered``, else unchanged."""
    return 2 * x01 - 1 if centered else x01


def from_model_range(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Inverse of :func:`to_model_range`, clipped to [0, 1] (for saving images)."""
    return ((x + 1) / 2 if centered else x).clamp(0, 1)


@dataclass
class AugmentDraws:
    """Per-batch draws: dequantization noise ``u`` (like the batch, or None) and flip mask ``(B,)`` (or None)."""

    u: torch.Tensor | None
    flip: torch.Tensor | None

    def select(self, index) -> AugmentDraws:
        return AugmentDraws(None if self.u is None else self.u[index], None if self.flip is None else self.flip[index])


@dataclass
class BatchTransform:
    """Dequantize, flip and scale a batch of images (identity for points)."""

    is_image: bool
    centered: bool = True
    levels: int | None = None
    dequantize: bool = True
    random_flip: bool = False

    def draw(self, shape, generator: Generator = None, device=None) -> AugmentDraws:
        if not self.is_image:
            return AugmentDraws(None, None)
        u = rand(shape, generator=generator, device=device) if self.dequantize and self.levels else None
        flip = rand((shape[0],), generator=generator, device=device) < 0.5 if self.random_flip else None
        return AugmentDraws(u, flip)

    def apply(self, x: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
        if not self.is_image:
            return x
        if draws.u is not None:
            x = (x * (self.levels - 1) + draws.u.to(x.dtype)) / self.levels
        if draws.flip is not None:
            x = torch.where(draws.flip[:, None, None, None], x.flip(-1), x)
        return to_model_range(x, self.centered)

    def __call__(self, x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape, generator, x.device))

    def evaluation(self, x: torch.Tensor) -> torch.Tensor:
        """Held-out data: scaled, with dequantization at the centre of each bin and no flip."""
        if not self.is_image:
            return x
        if self.dequantize and self.levels:
            x = (x * (self.levels - 1) + 0.5) / self.levels
        return to_model_range(x, self.centered)
