"""Noise-level embeddings shared by the score networks."""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin(2 pi W l), cos(2 pi W l)]`` of a scalar label (Tancik et al. 2020).

    ``W ~ N(0, scale^2)`` is fixed (not trained). The output has ``2 * embedding_size`` channels, sines first.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        proj = label[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def sinusoidal_embedding(label: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of a float label, ``dim`` channels, sines first."""
    half = dim // 2
    # Same operation order as DDPM / the reference code, so that float32 results agree bitwise.
    step = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=label.device, dtype=torch.float32) * -step)
    args = label.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb
