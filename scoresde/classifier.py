"""Noise-conditional classifiers ``p(y | x_t, t)`` for classifier guidance (Dhariwal & Nichol 2021; Song et al.
2021, App. I.1): trained with cross-entropy on data noised by the SDE's own perturbation kernel at
``t ~ U(eps, T)``, saved as safetensors with their settings in the metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scoresde.nets import MLP


@dataclass
class ClassifierResult:
    """A trained classifier, its training losses and its accuracy on noisy test data at a few times."""

    net: MLP
    losses: list[float]
    accuracy: dict[float, float]


def noisy(sde, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw of ``x_t ~ N(alpha(t) x0, sigma(t)^2 I)``."""
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return sde.perturb(x0, t, z)


def accuracy_at(net: MLP, sde, x0: torch.Tensor, y: torch.Tensor, t: float, seed: int = 0) -> float:
    """Accuracy of ``net`` on ``x0`` noised to time ``t`` (one draw, fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        xt = noisy(sde, x0, torch.full((len(x0),), float(t), dtype=x0.dtype, device=x0.device), g)
        return float((net(xt, torch.full((len(x0),), float(t), device=x0.device)).argmax(1) == y).float().mean())


def train_classifier(
    sde,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    eps: float = 1e-5,
    seed: int = 0,
    hidden: int = 256,
    depth: int = 3,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> ClassifierResult:
    """Train an MLP classifier of ``x_t`` and ``t`` (label: ``t`` itself) with Adam; deterministic for a seed."""
    if len(x_train) != len(y_train) or len(x_train) == 0:
        raise ValueError(f"need as many labels as images (> 0); got {len(x_train)} images, {len(y_train)} labels")
    if int(y_train.min()) < 0 or int(y_train.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    torch.manual_seed(seed)
    net = MLP(tuple(x_train.shape[1:]), hidden=hidden, depth=depth, out_dim=num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(int(steps)):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=g)
        t = eps + (sde.T - eps) * torch.rand(batch_size, generator=g)
        xt = noisy(sde, x_train[idx], t, g)
        loss = F.cross_entropy(net(xt, t), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"classifier loss became {losses[-1]} at step {len(losses)}")
    net.eval()
    acc = {}
    if x_test is not None and y_test is not None:
        acc = {t: accuracy_at(net, sde, x_test, y_test, t) for t in (0.05, 0.3, 0.6, 1.0)}
    return ClassifierResult(net, losses, acc)


def save_classifier(net: MLP, path: str | Path, sde, centered: bool) -> Path:
    """Weights as safetensors; the architecture, the SDE (repr) and the data scaling in the metadata."""
    from safetensors.torch import save

    from scoresde.checkpoint import atomic_write_bytes

    meta = {
        "kind": "scoresde.noisy_classifier",
        "data_shape": json.dumps(list(net.data_shape)),
        "num_classes": str(net.out_dim),
        "hidden": str(net.blocks[0]["fc1"].in_features),
        "depth": str(len(net.blocks)),
        "sde": repr(sde),
        "centered": json.dumps(bool(centered)),
    }
    return atomic_write_bytes(save({k: v.contiguous() for k, v in net.state_dict().items()}, metadata=meta), path)


def _meta_int(meta: dict, key: str, source: str, hi: int) -> int:
    value = meta.get(key, "")
    if not (isinstance(value, str) and value.isdigit() and 1 <= int(value) <= hi):
        raise ValueError(f"classifier {source!r}: metadata {key}={value!r} is not an integer in [1, {hi}]")
    return int(value)


def load_classifier(path: str | Path, sde=None) -> tuple[MLP, dict]:
    """A classifier saved by :func:`save_classifier`; with ``sde``, refuse one trained under another SDE. The file is
    data: its metadata are checked values (sizes, names), never code; the weights load strictly."""
    from scoresde.checkpoint import CheckpointError, read_weights_file
    from scoresde.loading import parse_data_shape

    state, meta = read_weights_file(path, "classifier")
    source = str(path)
    if meta.get("kind") != "scoresde.noisy_classifier":
        raise ValueError(f"{source!r} is not a scoresde noise-conditional classifier (train_classifier.py)")
    if sde is not None and meta.get("sde") != repr(sde):
        raise ValueError(f"classifier {source!r} was trained under {meta.get('sde')}, the model uses {sde!r}")
    if meta.get("centered") not in ("true", "false"):
        raise ValueError(f"classifier {source!r}: metadata centered={meta.get('centered')!r} is not true/false")
    try:
        shape = parse_data_shape(meta.get("data_shape"), source)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    sizes = (("hidden", "hidden", 1 << 16), ("depth", "depth", 256), ("out_dim", "num_classes", 1 << 20))
    kwargs = {k: _meta_int(meta, m, source, hi) for k, m, hi in sizes}
    net = MLP(shape, **kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"classifier {source!r}: weights do not fit its metadata: {str(err).splitlines()[0]}"
        ) from None
    return net.eval(), meta


def log_prob_fn(net: MLP) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, t) -> log p(y | x_t, t)`` for every class ``(B, K)``, for :func:`scoresde.guidance.classifier_guidance`."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(net(x, t.to(torch.float32)), dim=-1)

    return fn
