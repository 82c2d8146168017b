"""DSM loss with class labels and label dropout (Ho & Salimans 2022), checked with the exact mixture-of-classes
oracle as the 'network'."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde.data import GaussianMixture
from scoresde.data.classes import MixtureClasses
from scoresde.losses import DSMLoss
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]], [0.5, 0.4, 0.3])


class OracleNet(nn.Module):
    """``net(x, t, y)`` returning the exact conditional score (``ScoreModel`` with score parameterization, label t)."""

    def __init__(self, sde):
        super().__init__()
        self.oracle = MixtureClasses(MIX, sde)
        self.num_classes = self.oracle.num_classes
        self.seen = []

    def forward(self, x, label, y=None):
        self.seen.append(None if y is None else y.clone())
        return self.oracle(x, label, y)


def test_label_dropout_keeps_the_other_draws_and_drops_at_rate_p():
    """t and z are unchanged by the option (determinism of existing runs); the dropped fraction of B = 20000
    labels is within 5 binomial standard errors of p = 0.2."""
    sde, b = VPSDE(), 20000
    plain = DSMLoss(sde).draw((b, 2), torch.Generator().manual_seed(0))
    drop = DSMLoss(sde, label_dropout=0.2).draw((b, 2), torch.Generator().manual_seed(0))
    assert plain.keep is None and torch.equal(plain.t, drop.t) and torch.equal(plain.z, drop.z)
    frac = 1 - float(drop.keep.double().mean())
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / b)
    assert torch.equal(drop.select(slice(0, 10)).keep, drop.keep[:10])


def test_dropped_labels_become_the_null_label_and_conditioning_lowers_the_loss():
    """The network sees label K (null) exactly where keep is False. With exact scores, the DSM loss (N = 20000)
    with true labels is below the label-free one by more than 5 standard errors of the paired difference: the
    conditional score is the DSM minimiser given the labels."""
    sde, n = VPSDE(), 20000
    net = OracleNet(sde)
    model = ScoreModel(net, sde, parameterization="score", time_input="t")
    x, y = MIX.sample(n, torch.Generator().manual_seed(1), return_labels=True)
    loss = DSMLoss(sde, label_dropout=0.3)
    draws = loss.draw(x.shape, torch.Generator().manual_seed(2), dtype=x.dtype)
    loss.per_example(model, x, draws, y)
    seen = net.seen[-1]
    assert torch.equal(seen[draws.keep], y[draws.keep]) and (seen[~draws.keep] == 3).all()
    full = DSMLoss(sde)
    d = full.draw(x.shape, torch.Generator().manual_seed(2), dtype=x.dtype)
    cond = full.per_example(model, x, d, y)
    uncond = full.per_example(model, x, d)
    diff = uncond - cond
    assert float(diff.mean()) > 5 * float(diff.std()) / math.sqrt(n)
    assert float(full(model, x, torch.Generator().manual_seed(2), y=y)) == pytest.approx(float(cond.mean()))


def test_bad_label_dropout():
    with pytest.raises(ValueError, match="label_dropout"):
        DSMLoss(VPSDE(), label_dropout=1.5)
