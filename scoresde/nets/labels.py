"""Class-label embedding for class-conditional score networks, with a null label for classifier-free guidance.

Labels ``0 .. num_classes - 1`` are the classes; label ``num_classes`` is the null label (unconditional), used
when ``y`` is ``None`` and by label dropout in training (Ho & Salimans 2022). The table starts at zero, so a fresh
conditional network computes the same function as its unconditional counterpart.
"""

from __future__ import annotations

import torch
from torch import nn


class LabelEmbedding(nn.Module):
    """``(B,)`` integer labels (or ``None``: the null label) -> ``(B, dim)`` vectors added to the time embedding."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(self.num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.shape != (batch,):
            raise ValueError(f"class labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
        if ((y < 0) | (y > self.num_classes)).any():
            raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null label)")
        return self.table(y.long())


def check_unconditional(y: torch.Tensor | None, name: str) -> None:
    """An unconditional network given class labels: a clear error rather than silently ignoring them."""
    if y is not None:
        raise ValueError(f"{name} was built without num_classes and cannot take class labels y")
