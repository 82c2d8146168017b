"""Small shape- and RNG-helpers shared by every module.

The single broadcasting rule of the package lives here: a per-sample quantity of shape ``(B,)`` is
reshaped to ``(B, 1, ..., 1)`` so that it multiplies a batch ``x`` of any trailing shape. No other
module hard-codes image dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


def batch_broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``v`` of shape ``(B,)`` (or a scalar) to broadcast against ``x``.

    ``x`` has shape ``(B, ...)``; the result has shape ``(B, 1, ..., 1)`` with ``x.ndim`` axes.
    """
    if v.ndim == 0:
        return v
    if v.ndim != 1 or (v.shape[0] != x.shape[0] and v.shape[0] != 1):
        raise ValueError(f"per-sample tensor of shape {tuple(v.shape)} does not match batch of shape {tuple(x.shape)}")
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def as_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a ``(B,)`` tensor on ``x``'s device, in ``x``'s floating dtype.

    Accepts a Python float, a 0-d tensor or a ``(B,)`` tensor. Computing the schedule in the data's dtype
    keeps float64 problems at float64 precision.
    """
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if isinstance(t, (float, int)) and not isinstance(t, bool):  # a fill: no host-to-device copy (CUDA graphs)
        return torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
    t = torch.as_tensor(t, device=x.device, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"time must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def flat_dim(x: torch.Tensor) -> int:
    """Number of dimensions per sample of a batch ``x`` of shape ``(B, ...)``."""
    n = 1
    for s in x.shape[1:]:
        n *= s
    return n


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the first."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def derived_seed(seed: int, k: int) -> int:
    """The seed of stream ``k`` of a run with seed ``seed`` (training step ``k``, sample ``k``): independent streams
    for every pair, from numpy's ``SeedSequence``."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, np.uint64)[0] % (2**63))


def _draw(
    fn,
    shape: Sequence[int],
    generator: Generator,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    shape = shape if isinstance(shape, torch.Size) else tuple(int(s) for s in shape)
    dtype = dtype or torch.get_default_dtype()
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = fn(shape, generator=generator, device=gen_device, dtype=dtype)
    else:
        gens = list(generator)
        if len(gens) != shape[0]:
            raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]} samples")
        out = torch.stack([fn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens])
    if device is None or out.device == torch.device(device):  # no move (a per-step cost in the samplers' loops)
        return out
    return out.to(device)


def randn(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal draws of ``shape`` from one generator or from one generator per sample.

    With a list of generators, row ``k`` is drawn from ``generator[k]`` alone, so sample ``k`` does not
    depend on the batch size (as EDM's per-seed generators). Draws are made on the generator's device and
    moved to ``device``, so a CPU generator reproduces the same numbers for CUDA tensors.
    """
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform [0, 1) draws with the same generator conventions as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)
