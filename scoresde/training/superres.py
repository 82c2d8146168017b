"""Cascaded super-resolution in the trainer (Ho et al., JMLR 2022): with ``task=superres`` the network is wrapped in
:class:`~scoresde.nets.SuperResNet` and every example is conditioned on its own downsampled image
``downsample(x0, factor)``, corrupted by the noise-conditioning augmentation ``sqrt(1 - s^2) low + s e`` at a level
``s ~ U(0, aug_max)`` drawn per example (Sec. 4.4).

The levels and noise of a step are drawn for the *global* batch from the step's generator, after the loss draws, and
split across ranks like every other draw, so resumed and multi-process runs see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scoresde.conditioning import Conditioned, conditioned
from scoresde.nets.superres import augment_low_res, downsample
from scoresde.schema import ConfigError


@dataclass
class SuperResTask:
    factor: int
    aug_max: float

    @classmethod
    def of(cls, cfg, is_image: bool) -> SuperResTask | None:
        """The task of a ``task=superres`` run (``None`` otherwise); image data only."""
        if cfg.task != "superres":
            return None
        if not is_image:
            raise ConfigError(f"task=superres needs image data (data=mnist, digits, ...), not {cfg.data.kind}")
        return cls(int(cfg.superres.factor), float(cfg.superres.aug_max))

    def conditioning(self, x: torch.Tensor, shape, generator: torch.Generator, mine: Any = slice(None)) -> dict:
        """Keywords of a batch ``x`` (model range; the local part ``mine`` of a global batch of ``shape``)."""
        c, h, w = shape[1:]
        low = downsample(x, self.factor)
        s = torch.rand((shape[0],), generator=generator, device=x.device, dtype=x.dtype) * self.aug_max
        noise_shape = (shape[0], c, h // self.factor, w // self.factor)
        noise = torch.randn(noise_shape, generator=generator, device=x.device, dtype=x.dtype)
        s, noise = s[mine], noise[mine]
        return {"low_res": augment_low_res(low, s, noise), "aug_level": s}

    def preview(self, model, test: torch.Tensor, n: int) -> Conditioned:
        """``model`` conditioned on the first ``n`` held-out images (model range) downsampled, repeated if fewer."""
        low = downsample(test[torch.arange(n) % len(test)], self.factor)
        return conditioned(model, low_res=low, aug_level=0.0)


def with_conditioning(model, cond: dict | None, part: slice):
    """``model`` itself, or conditioned on the keywords ``cond`` restricted to the examples ``part``."""
    return model if cond is None else conditioned(model, **cond).select(part)


__all__ = ["SuperResTask", "with_conditioning"]
