"""A Gaussian mixture whose components are the classes: an exact class-conditional score model and classifier.

With ``p(x) = sum_k w_k N(mu_k, Sigma_k)`` and class ``y = k`` for component ``k``, every quantity guidance needs is
exact under a linear SDE: ``grad log p_t(x | y = k)`` is the score of component ``k``'s marginal, ``grad log
p_t(x)`` the mixture's, and ``p_t(y = k | x)`` the responsibility of component ``k``. It is called like a
conditional network, ``oracle(x, t, y=labels)``, with label ``K`` (``num_classes``) the null label.
"""

from __future__ import annotations

import torch

from scoresde.data.mixture import GaussianMixture


class MixtureClasses:
    """Exact conditional/unconditional scores and the exact noisy classifier of a mixture under ``sde``."""

    def __init__(self, mixture: GaussianMixture, sde):
        self.mixture, self.sde = mixture, sde
        self.num_classes = mixture.n_components
        self.components = [
            GaussianMixture([1.0], mixture.means[k : k + 1], mixture.covs[k : k + 1], mixture.event_shape)
            for k in range(self.num_classes)
        ]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``grad log p_t(x | y)`` per sample; ``y = None`` or ``y = num_classes`` gives ``grad log p_t(x)``."""
        if y is None:
            return self.mixture.score(x, t, self.sde)
        y = torch.as_tensor(y, device=x.device).long().expand(x.shape[0])
        if ((y < 0) | (y > self.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null), got {y}")
        out = torch.zeros_like(x)
        for k in range(self.num_classes + 1):
            sel = y == k
            if sel.any():
                src = self.mixture if k == self.num_classes else self.components[k]
                out[sel] = src.score(x[sel], torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])[sel], self.sde)
        return out

    def class_score_fn(self, k: int):
        """``score_fn(x, t)`` of class ``k`` alone."""
        return self.components[k].score_fn(self.sde)

    def log_posterior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log p_t(y = k | x)``, ``(B, K)``: the exact noise-conditional classifier."""
        joint = torch.stack([c.log_prob(x, t, self.sde) for c in self.components], dim=1)
        log_w = self.mixture.weights.log().to(device=x.device, dtype=joint.dtype)
        return torch.log_softmax(joint + log_w, dim=1)
