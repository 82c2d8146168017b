"""Exponential moving average of a model's weights, kept as a separate averaged copy.

``ema = EMA(model, decay)``; after each optimizer step ``ema.update(model)``; ``ema.module`` is the averaged
model (eval mode, no gradients) used for held-out losses, samples and export. As in the reference
(``ExponentialMovingAverage(use_num_updates=True)``, yang-song/score_sde_pytorch ``models/ema.py``) the ``n``-th
update (``n = 1, 2, ...``; the count is incremented before the decay is computed) uses the decay
``min(decay, (1 + n) / (10 + n))``: 2/11, 3/12, 4/13, ... so short runs are not dominated by the initial weights.
``num_updates`` counts the updates made, as the reference's does, so checkpoints carry the same value. Buffers are
copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA(nn.Module):
    """Averaged copy of ``model``; its ``state_dict`` holds the averaged tensors and the update count."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0 <= decay <= 1:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: its own 1-based index ``n = num_updates + 1`` enters the warm-up."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update got a model with a different number of parameters")
        floats = [(e, p) for e, p in zip(ema_params, params, strict=True) if e.is_floating_point()]
        if floats:
            # ema <- ema + (1 - decay) (p - ema)
            torch._foreach_lerp_([e for e, _ in floats], [p.to(e.dtype) for e, p in floats], 1 - decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        self.num_updates += 1

    def get_extra_state(self) -> Any:
        return {"decay": self.decay, "num_updates": self.num_updates, "warmup": self.warmup}

    def set_extra_state(self, state: Any) -> None:
        self.num_updates = int(state["num_updates"])
        self.warmup = bool(state.get("warmup", True))
        # the configured decay wins over the stored one, so a resumed run may change it deliberately

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
