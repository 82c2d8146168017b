"""Diffusion Transformer (DiT; Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023).

The image ``(B, C, H, W)`` is cut into ``p x p`` patches, each linearly embedded to a token of width ``hidden_size``
with a fixed 2-D sine-cosine position embedding added (Sec. 3.2, "Patchify"). ``depth`` transformer blocks with
adaLN-Zero conditioning follow (Sec. 3.2, Fig. 3): the conditioning vector ``c`` — the embedded noise label plus,
for a class-conditional net, the embedded class label — regresses per block a shift, a scale and a gate for the
attention and for the MLP branch; the regressing layers start at zero, so every block starts as the identity. A final
adaptive LayerNorm and a zero-initialised linear layer give ``p * p * C`` values per token, rearranged into an image.

Called ``net(x, label, y=None)`` like every score network here: ``label`` ``(B,)`` is the noise label (``999 t`` for
the VP presets, embedded with DiT's 256-frequency sinusoidal features and a two-layer MLP); ``y`` ``(B,)`` are class
labels for a net built with ``num_classes`` (label ``num_classes`` is the null label, the default when ``y`` is None:
the convention of :mod:`scoresde.nets.labels`).

Differences from the published code, on purpose:

* The output has ``C`` channels (what the parameterization of :class:`~scoresde.score.ScoreModel` reads: noise,
  data or score), not ``2 C``: DiT learns the reverse-process variance (Nichol & Dhariwal 2021) for its discrete
  sampler, which the continuous-time samplers here do not use. The published DiT-XL/2 therefore has
  ``p^2 C (hidden_size + 1)`` more parameters than our preset (18,448 for XL/2).
* The position embedding is a fixed, non-persistent buffer computed from the grid, not a frozen parameter: it is not
  counted among the parameters (the published count includes its ``(H / p)(W / p) hidden_size`` values) and is not
  stored in checkpoints.
* The class table starts at zero (a fresh conditional net computes the same function as the unconditional one); the
  published code draws it from ``N(0, 0.02^2)``. Non-square inputs are allowed (``H`` and ``W`` multiples of ``p``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.nets.labels import LabelEmbedding, check_unconditional


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``(M, dim)`` sine-cosine features of positions ``pos`` ``(M,)``: frequencies ``10000^(-2k / dim)``, sines
    first (Vaswani et al. 2017, Sec. 3.5)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """``(grid_h * grid_w, dim)`` fixed 2-D position embedding (row-major tokens): half the channels encode the
    column, half the row, as in DiT / MAE."""
    if dim % 4:
        raise ValueError(f"DiT: hidden_size must be a multiple of 4 for the 2-D position embedding, got {dim}")
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def frequency_embedding(label: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's timestep features ``[cos(label w_k), sin(label w_k)]`` with ``w_k = max_period^(-k / (dim / 2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=label.device) / half)
    args = label.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm's affine map ``x (1 + scale) + shift`` with per-sample ``shift``, ``scale`` ``(B, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention (one fused ``qkv`` projection with bias, output projection)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: ``x + gate * branch(modulate(norm(x), shift, scale))`` for the
    attention and the MLP branch, the six modulation vectors regressed from ``c`` by a zero-initialised layer."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Adaptive LayerNorm, then a linear map of each token to its ``p * p * C`` output values."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer ``net(x, label, y=None)`` for images ``(B, *data_shape)``, ``data_shape = (C, H, W)``.

    The published sizes (Peebles & Xie 2023, Table 1) are ``(depth, hidden_size, num_heads)`` = S (12, 384, 6),
    B (12, 768, 12), L (24, 1024, 16), XL (28, 1152, 16) with ``mlp_ratio=4`` and ``patch_size`` 2, 4 or 8; presets in
    ``conf/model/dit/``. ``frequency_dim`` and ``max_period`` set the noise-label features (DiT: 256, 10000, for
    labels in ``[0, 1000)``).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        frequency_dim: int = 256,
        max_period: float = 10000.0,
    ):
        super().__init__()
        self._check(data_shape, patch_size, hidden_size, depth, num_heads, mlp_ratio, frequency_dim)
        self.data_shape = tuple(int(s) for s in data_shape)
        channels, height, width = self.data_shape
        self.patch_size, self.hidden_size = int(patch_size), int(hidden_size)
        self.grid = (height // self.patch_size, width // self.patch_size)
        self.frequency_dim, self.max_period = int(frequency_dim), float(max_period)
        self.num_classes = None if num_classes is None else int(num_classes)
        p, d = self.patch_size, self.hidden_size

        self.x_embedder = nn.Conv2d(channels, d, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(d, *self.grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(nn.Linear(self.frequency_dim, d), nn.SiLU(), nn.Linear(d, d))
        if self.num_classes is not None:
            self.y_embedder = LabelEmbedding(self.num_classes, d)
        self.blocks = nn.ModuleList(DiTBlock(d, int(num_heads), float(mlp_ratio)) for _ in range(int(depth)))
        self.final_layer = FinalLayer(d, p * p * channels)
        self._init_weights()

    @staticmethod
    def _check(data_shape, patch_size, hidden_size, depth, num_heads, mlp_ratio, frequency_dim) -> None:
        if len(data_shape) != 3 or min(int(s) for s in data_shape) < 1:
            raise ValueError(f"DiT needs images, data_shape=(C, H, W); got {tuple(data_shape)}")
        _, height, width = (int(s) for s in data_shape)
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(f"DiT: patch_size={patch_size} must divide the image size {height}x{width}")
        if hidden_size < 4 or num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"DiT: hidden_size={hidden_size} must be a multiple of num_heads={num_heads}")
        if depth < 0 or mlp_ratio <= 0 or frequency_dim < 2:
            raise ValueError(f"DiT: need depth >= 0, mlp_ratio > 0, frequency_dim >= 2; got {depth}, {mlp_ratio}, "
                             f"{frequency_dim}")  # fmt: skip

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers (and patch embedding) with zero biases, ``N(0, 0.02^2)``
        noise-label MLP, and zeros for every adaLN regression and the output layer (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for i in (0, 2):
            nn.init.normal_(self.t_embedder[i].weight, std=0.02)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> tokens ``(B, (H / p)(W / p), hidden_size)`` with the position embedding added."""
        return self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, (H / p)(W / p), p * p * C)`` -> ``(B, C, H, W)``; the inverse of cutting into patches."""
        (channels, height, width), p = self.data_shape, self.patch_size
        gh, gw = self.grid
        x = tokens.reshape(tokens.shape[0], gh, gw, p, p, channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], channels, height, width)

    def condition(self, label: torch.Tensor, y: torch.Tensor | None, batch: int, device, dtype) -> torch.Tensor:
        """The conditioning vector ``c`` ``(B, hidden_size)``: embedded noise label (+ embedded class label)."""
        label = torch.as_tensor(label, device=device)
        if label.ndim == 0:
            label = label.expand(batch)
        if label.shape != (batch,):
            raise ValueError(f"DiT: the noise label must have shape ({batch},), got {tuple(label.shape)}")
        c = self.t_embedder(frequency_embedding(label, self.frequency_dim, self.max_period).to(dtype))
        if self.num_classes is None:
            check_unconditional(y, "DiT")
            return c
        return c + self.y_embedder(y, batch, device).to(c.dtype)

    def forward(self, x: torch.Tensor, label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"DiT built for samples of shape {self.data_shape}, got a batch {tuple(x.shape)}")
        c = self.condition(label, y, x.shape[0], x.device, x.dtype)
        h = self.patchify(x)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


__all__ = ["DiT", "DiTBlock", "FinalLayer", "frequency_embedding", "sincos_2d"]
