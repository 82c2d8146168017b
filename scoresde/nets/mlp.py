"""A small MLP score network for low-dimensional data (2-D toy sets, small vectors)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from scoresde.nets.embeddings import GaussianFourierProjection
from scoresde.nets.labels import LabelEmbedding, check_unconditional


class MLP(nn.Module):
    """``net(x, label)`` for data of any shape ``(B, *data_shape)``, flattened to ``D`` inputs.

    The noise label is embedded with fixed Gaussian Fourier features (scale ``fourier_scale``), passed through a
    two-layer embedding MLP and added to every hidden layer (as in DDPM's residual blocks). Residual SiLU
    blocks of width ``hidden``; the last layer starts at zero so the initial output is 0. With ``out_dim`` the output
    is ``(B, out_dim)`` instead of shaped like ``x`` (e.g. the logits of a noise-conditional classifier).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 128,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.out_dim = None if out_dim is None else int(out_dim)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.data_shape = tuple(int(s) for s in data_shape)
        dim = math.prod(self.data_shape)
        self.embed = GaussianFourierProjection(embed_dim // 2, scale=fourier_scale)
        self.embed_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        if self.num_classes is not None:
            self.label_embed = LabelEmbedding(self.num_classes, hidden)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {"emb": nn.Linear(hidden, hidden), "fc1": nn.Linear(hidden, hidden), "fc2": nn.Linear(hidden, hidden)}
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim if self.out_dim is None else self.out_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"MLP built for samples of shape {self.data_shape}, got a batch {tuple(x.shape)}")
        emb = self.embed_mlp(self.embed(label.to(torch.float32)).to(x.dtype))
        if self.num_classes is None:
            check_unconditional(y, "MLP")
        else:
            emb = emb + self.label_embed(y, x.shape[0], x.device).to(emb.dtype)
        h = self.input(x.reshape(x.shape[0], -1))
        for blk in self.blocks:
            r = torch.nn.functional.silu(blk["fc1"](torch.nn.functional.silu(h)) + blk["emb"](emb))
            h = h + blk["fc2"](r)
        out = self.output(torch.nn.functional.silu(self.norm(h)))
        return out.reshape(x.shape) if self.out_dim is None else out
