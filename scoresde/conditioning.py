"""A score model with fixed conditioning keywords, as a plain score function that keeps the model's other views.

Models that take extra inputs — a low-resolution image for super-resolution (``low_res=``, ``aug_level=``), or any
other keyword the network accepts — are called ``model(x, t, **conditioning)``. Samplers call ``score_fn(x, t)``;
``conditioned(model, low_res=lr, aug_level=0.0)`` closes over the keywords, so every sampler, the likelihood and the
guidance helpers work on it unchanged, and it keeps the data / noise predictions (``x0_hat``, ``eps_hat`` and their
older names ``predict_x0``, ``predict_eps``) when the model has them.

Tensor keywords are per-sample: their first axis is the batch. A batch of 1 is broadcast; a batch ``b`` dividing the
sampler's batch ``B`` is tiled ``B / b`` times (``[c, c, ...]``), which is how the guidance helpers stack their
conditional and unconditional passes into one call (``torch.cat([x, x])``). Any other size is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

VIEWS = ("x0_hat", "eps_hat", "predict_x0", "predict_eps")
FORWARDED = ("sde", "net", "num_classes", "parameterization", "data_shape")


def _fit_batch(name: str, value: Any, batch: int) -> Any:
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    b = value.shape[0]
    if b == batch:
        return value
    if b == 1:
        return value.expand(batch, *value.shape[1:])
    if b and batch % b == 0:
        return value.repeat(batch // b, *([1] * (value.ndim - 1)))
    raise ValueError(f"conditioning {name}= has a batch of {b}, which does not fit the sampler's batch of {batch}")


class Conditioned:
    """``score_fn(x, t)`` ``= model(x, t, **conditioning)``; with the model's ``x0_hat`` / ``eps_hat`` (and
    ``predict_x0`` / ``predict_eps``) views under the same conditioning. Extra keywords of a call (e.g. ``y=`` from
    classifier-free guidance) are passed on. ``sde``, ``net``, ``num_classes``, ``parameterization`` and
    ``data_shape`` are read from the model."""

    def __init__(self, model: Callable[..., torch.Tensor], **conditioning: Any):
        if not callable(model):
            raise TypeError(f"conditioned() needs a callable model, got {type(model).__name__}")
        self.model = model
        self.conditioning = dict(conditioning)
        for view in VIEWS:
            if callable(getattr(model, view, None)):
                setattr(self, view, self._view(view))

    def keywords(self, x: torch.Tensor) -> dict[str, Any]:
        """The conditioning keywords fitted to the batch of ``x``."""
        return {k: _fit_batch(k, v, x.shape[0]) for k, v in self.conditioning.items()}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(x, t, **self.keywords(x), **kwargs)

    def _view(self, name: str) -> Callable[..., torch.Tensor]:
        method = getattr(self.model, name)

        def view(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return method(x, t, **self.keywords(x), **kwargs)

        view.__name__ = name
        view.__doc__ = getattr(method, "__doc__", None)
        return view

    def select(self, index: slice | torch.Tensor) -> Conditioned:
        """The same model with every per-sample tensor keyword restricted to ``index`` (e.g. one batch of a run)."""
        picked = {
            k: v[index] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] > 1 else v
            for k, v in self.conditioning.items()
        }
        return Conditioned(self.model, **picked)

    def __getattr__(self, name: str) -> Any:
        if name in FORWARDED:
            return getattr(self.__dict__["model"], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __repr__(self) -> str:
        keys = ", ".join(sorted(self.conditioning))
        return f"Conditioned({type(self.model).__name__}, {keys})"


def conditioned(model: Callable[..., torch.Tensor], **conditioning: Any) -> Conditioned:
    """``model`` with fixed conditioning keywords as a score function (see :class:`Conditioned`)."""
    return Conditioned(model, **conditioning)


__all__ = ["Conditioned", "VIEWS", "conditioned"]
