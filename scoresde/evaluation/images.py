"""Checked grey-image batches for the classifier metrics: one layout rule, one range rule, one error per problem."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

RANGE_TOLERANCE = 0.1  # values in [-0.1, 1.1] are accepted (and clamped to [0, 1]); anything else is an error


def grey_images(
    images: torch.Tensor | np.ndarray,
    name: str,
    flat_side: int,
    side_ok: Callable[[int], bool],
    side_rule: str,
    range_hint: str = "",
) -> torch.Tensor:
    """``images`` as ``(N, 1, S, S)`` float32 on the CPU with values in ``[0, 1]``.

    Accepted: values in ``[0, 1]`` (or uint8 ``0..255``, as ``samples.npz`` holds them) shaped ``(N, flat_side^2)``,
    ``(N, S, S)``, ``(N, 1, S, S)`` or ``(N, S, S, 1)`` with ``side_ok(S)`` (``side_rule`` says which ``S`` in the
    error). Values within ``RANGE_TOLERANCE`` of ``[0, 1]`` are clamped; anything else raises a ``ValueError``
    naming ``name`` and the problem."""
    try:
        x = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real-valued tensor or array: {err}") from err
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real-valued tensor or array, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
    if x.ndim == 2 and x.shape[1] == flat_side * flat_side:
        x = x.reshape(-1, 1, flat_side, flat_side)
    elif x.ndim == 3:  # (N, S, S)
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] == 1 and x.shape[1] != 1:  # (N, S, S, 1): the layout samples.npz holds
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or not side_ok(x.shape[2]):
        raise ValueError(
            f"{name} must be grey images of shape (N, {flat_side * flat_side}), (N, S, S), (N, 1, S, S) or "
            f"(N, S, S, 1) with {side_rule}, got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must have values in [0, 1], the expected range{range_hint} (map centred data with "
            f"(x + 1) / 2), got values in [{lo:.3g}, {hi:.3g}]"
        )
    return x.clamp(0.0, 1.0)


__all__ = ["RANGE_TOLERANCE", "grey_images"]
