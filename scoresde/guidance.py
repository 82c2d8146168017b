"""Guided scores: classifier-free and classifier guidance as plain score functions ``score_fn(x, t)``.

Bayes' rule on the noisy marginals gives ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``; both
guidance rules scale one of the two terms by a weight ``w``:

* classifier-free guidance (Ho & Salimans 2022, Eq. 6): ``s~ = (1 + w) s(x, t, y) - w s(x, t)``; ``w = 0`` is the
  conditional score, ``w > 0`` sharpens the class (it is ``s(x, t, y) + w grad log p_t(y | x)`` for exact scores);
* classifier guidance (Dhariwal & Nichol 2021, Alg. 1; Song et al. 2021, Eq. 49): ``s~ = s(x, t) + w grad_x log
  p_t(y | x)``; ``w = 1`` with the exact noisy classifier is exactly the conditional score.

Every result is a score function, so every sampler of :mod:`scoresde.sampling` accepts it unchanged and counts
one NFE per call (the conditional model wrapper batches the conditional and the null-label pass in one call).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoresde.sde import ScoreFn

Labels = int | torch.Tensor


def as_labels(y: Labels, x: torch.Tensor) -> torch.Tensor:
    """Class labels as a ``(B,)`` long tensor on ``x``'s device (an int means the same class for every sample)."""
    if isinstance(y, int) and not isinstance(y, bool):  # a fill: no host-to-device copy (CUDA graphs)
        return torch.full((x.shape[0],), y, dtype=torch.long, device=x.device)
    y = torch.as_tensor(y, device=x.device)
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"class labels must be integers, got dtype {y.dtype}")
    y = y.long()
    if y.ndim == 0:
        y = y.expand(x.shape[0])
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be an int or have shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}")
    return y


def classifier_free_guidance(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float) -> ScoreFn:
    """``(1 + w) cond_score_fn(x, t) - w uncond_score_fn(x, t)`` (Ho & Salimans 2022, Eq. 6)."""
    w = float(w)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = cond_score_fn(x, t)
        return cond if w == 0 else (1 + w) * cond - w * uncond_score_fn(x, t)

    return guided


def num_classes_of(model) -> int:
    """``num_classes`` of a conditional network or of the ``.net`` of a score model (its null label)."""
    for obj in (model, getattr(model, "net", None)):
        n = getattr(obj, "num_classes", None)
        if n is not None:
            return int(n)
    raise ValueError("the model is not class-conditional (no num_classes on it or on its .net); pass null_label")


def cfg_score_fn(model: Callable[..., torch.Tensor], y: Labels, w: float, null_label: int | None = None) -> ScoreFn:
    """Classifier-free guidance for one conditional network called as ``model(x, t, y=labels)``.

    ``null_label`` (default ``model.num_classes`` or ``model.net.num_classes``: the label the network was trained
    with under label dropout) gives the unconditional score. For ``w != 0`` the two passes run as one batch of
    ``2B``: one call of the network per score evaluation.
    """
    null = num_classes_of(model) if null_label is None else int(null_label)
    w = float(w)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = as_labels(y, x)
        if w == 0:
            return model(x, t, y=labels)
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        both = model(torch.cat([x, x]), torch.cat([tt, tt]), y=torch.cat([labels, torch.full_like(labels, null)]))
        cond, uncond = both.chunk(2)
        return (1 + w) * cond - w * uncond

    return guided


def classifier_guidance(
    score_fn: ScoreFn, log_prob_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: Labels, w: float
) -> ScoreFn:
    """``score_fn(x, t) + w grad_x log p_t(y | x)`` with the gradient by autograd (Dhariwal & Nichol 2021).

    ``log_prob_fn(x, t)`` returns ``(B, K)`` class logits or log-probabilities of a noise-conditional classifier
    (normalised here with ``log_softmax``, which leaves log-probabilities unchanged). Gradients are taken even
    inside a sampler's ``no_grad``; the result is detached.
    """
    w = float(w)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = score_fn(x, t)
        if w == 0:
            return s
        labels = as_labels(y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = log_prob_fn(xg, t)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(
                    f"log_prob_fn must return (B, K) = ({x.shape[0]}, K) logits, got {tuple(logits.shape)}"
                )
            logp = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        return (s + w * grad.to(s.dtype)).detach()

    return guided


GUIDANCE_KINDS = ("cfg", "classifier")


def guided_score(
    model,
    label: int | None,
    kind: str = "cfg",
    scale: float = 0.0,
    classifier: str | None = None,
    sde=None,
    centered: bool | None = None,
    data_shape: tuple[int, ...] | None = None,
) -> ScoreFn:
    """The score function to sample with: ``model`` itself, or for ``label=k`` its class-``k`` score — classifier-free
    guidance of weight ``scale`` for a class-conditional model (``kind="cfg"``), or classifier guidance with the
    noise-conditional classifier saved at ``classifier`` (``kind="classifier"``, written by ``train_classifier.py``;
    with ``sde`` / ``centered`` / ``data_shape`` (the shape of one sample of the model) given, one trained under
    another SDE, data scaling or data shape is refused here, before any sampling)."""
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"guidance.kind={kind!r} is unknown; choose one of {GUIDANCE_KINDS}")
    if label is None:
        if scale != 0:
            raise ValueError("guidance.scale needs a class: set label=<class index>")
        return model
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(f"label={label!r} must be an integer class index")
    if kind == "classifier":
        import json

        from scoresde.classifier import load_classifier, log_prob_fn

        if not classifier:
            raise ValueError("guidance.kind=classifier needs guidance.classifier=<classifier.safetensors> "
                             "(train one with train_classifier.py)")  # fmt: skip
        net, meta = load_classifier(classifier, sde)
        if data_shape is not None and tuple(net.data_shape) != tuple(data_shape):
            raise ValueError(f"classifier {classifier!r} was trained on data of shape {tuple(net.data_shape)}, the "
                             f"model samples data of shape {tuple(data_shape)}")  # fmt: skip
        if centered is not None and json.loads(meta["centered"]) != centered:
            raise ValueError(f"classifier {classifier!r} was trained on data scaled differently (centered) from the "
                             "model")  # fmt: skip
        n = int(meta["num_classes"])
        if not 0 <= label < n:
            raise ValueError(f"label={label} is not a class of the classifier (0 .. {n - 1})")
        device = next(model.parameters()).device
        return classifier_guidance(model, log_prob_fn(net.to(device)), label, scale)
    try:
        n = num_classes_of(model)
    except ValueError:  # num_classes_of's advice (null_label) is cfg_score_fn's, not an argument here
        raise ValueError(f"label={label} with kind='cfg' needs a class-conditional model (num_classes on it or on its "
                         ".net); this model is unconditional: use kind='classifier' with classifier=<a "
                         "classifier.safetensors from train_classifier.py>") from None  # fmt: skip
    if not 0 <= label < n:
        raise ValueError(f"label={label} is not a class of this model (0 .. {n - 1})")
    return cfg_score_fn(model, label, scale)


__all__ = [
    "as_labels",
    "num_classes_of",
    "classifier_free_guidance",
    "cfg_score_fn",
    "classifier_guidance",
    "guided_score",
    "GUIDANCE_KINDS",
]
