"""Classifier-free and classifier guidance on a Gaussian mixture whose components are the classes (exact oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoresde.data import GaussianMixture
from scoresde.data.classes import MixtureClasses
from scoresde.guidance import as_labels, cfg_score_fn, classifier_free_guidance, classifier_guidance
from scoresde.metrics import sliced_wasserstein
from scoresde.sampling import get_sampler
from scoresde.sde import VESDE, VPSDE

N = 2000
K = 1  # the class we condition on
# Three overlapping classes in 2-D: class 1 has substantial mass where class 0 and 2 live, so guidance matters.
MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]], [0.5, 0.4, 0.3])
SAMPLERS = {"euler_maruyama": {"steps": 200}, "ode": {}, "ddim": {"steps": 50}}
# Classifier guidance costs three score-sized evaluations plus a backward pass per step: one fast sampler by
# default, the others in the slow suite.
CASES = [
    ("cfg_w0", "euler_maruyama"),
    ("cfg_w0", "ode"),
    ("cfg_w0", "ddim"),
    ("classifier_w1", "ddim"),
    pytest.param("classifier_w1", "euler_maruyama", marks=pytest.mark.slow),
    pytest.param("classifier_w1", "ode", marks=pytest.mark.slow),
]


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=g, dtype=torch.float64)
    return x, t


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_score_identities_float64(sde):
    """Bayes' rule on p_t: s + grad log p_t(y | x) is the class score (to float64 round-off); CFG is its formula."""
    oracle = MixtureClasses(MIX, sde)
    x, t = _points()
    cond = oracle.class_score_fn(K)(x, t)
    uncond = MIX.score(x, t, sde)
    guided = classifier_guidance(MIX.score_fn(sde), oracle.log_posterior, K, 1.0)(x, t)
    scale = cond.abs().max()
    assert torch.allclose(guided, cond, atol=1e-10 * float(scale), rtol=0), float((guided - cond).abs().max())
    assert torch.equal(cfg_score_fn(oracle, K, 0.0)(x, t), cond)
    w = 2.5
    expected = (1 + w) * cond - w * uncond
    assert torch.allclose(cfg_score_fn(oracle, K, w)(x, t), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(
        classifier_free_guidance(oracle.class_score_fn(K), MIX.score_fn(sde), w)(x, t), expected, rtol=1e-12, atol=1e-12
    )
    # per-sample labels: each row guided towards its own class
    y = torch.arange(len(x)) % 3
    per = cfg_score_fn(oracle, y, 0.0)(x, t)
    for k in range(3):
        assert torch.equal(per[y == k], oracle.class_score_fn(k)(x[y == k], t[y == k]))


def test_classifier_guidance_runs_under_no_grad_and_detaches():
    sde = VPSDE()
    oracle = MixtureClasses(MIX, sde)
    x, t = _points(8)
    with torch.no_grad():
        out = classifier_guidance(MIX.score_fn(sde), oracle.log_posterior, K, 3.0)(x, t)
    assert not out.requires_grad and torch.isfinite(out).all()


def test_bad_labels_and_models():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="integers"):
        as_labels(torch.tensor([0.5] * 4), x)
    with pytest.raises(ValueError, match="shape"):
        as_labels(torch.tensor([0, 1]), x)
    with pytest.raises(ValueError, match="num_classes"):
        cfg_score_fn(lambda x, t, y=None: x, 0, 1.0)(x, torch.ones(4))
    with pytest.raises(ValueError, match="logits"):
        classifier_guidance(lambda x, t: x, lambda x, t: x.sum(1), 0, 1.0)(x, torch.ones(4))


def test_guided_score_refuses_what_the_model_cannot_do(tmp_path):
    """A classifier trained on another data shape is refused when the guided score is built (naming the classifier
    and both shapes), not at the first score call; label with kind='cfg' on an unconditional model names what to do
    with guided_score's own arguments (not cfg_score_fn's null_label)."""
    from scoresde.classifier import save_classifier
    from scoresde.guidance import guided_score
    from scoresde.nets import MLP

    sde = VPSDE()
    model = MLP((3, 8, 8), hidden=8, depth=1, embed_dim=8)
    path = save_classifier(MLP((1, 8, 8), hidden=8, depth=1, out_dim=10), tmp_path / "c.safetensors",
                           sde, centered=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"c\.safetensors.*shape \(1, 8, 8\).*shape \(3, 8, 8\)"):
        guided_score(model, 3, "classifier", 4.0, str(path), sde, True, data_shape=(3, 8, 8))
    guided_score(model, 3, "classifier", 4.0, str(path), sde, True, data_shape=(1, 8, 8))  # the right shape loads
    with pytest.raises(ValueError, match="unconditional.*kind='classifier'") as err:
        guided_score(model, 3, "cfg", 1.0)
    assert "null_label" not in str(err.value)


@pytest.fixture(scope="module")
def reference():
    """Exact samples of class K, and the null level of the sliced Wasserstein statistic between two such samples."""
    comp = MixtureClasses(MIX, VPSDE()).components[K]
    null = [
        sliced_wasserstein(
            comp.sample(N, torch.Generator().manual_seed(100 + i)),
            comp.sample(N, torch.Generator().manual_seed(200 + i)),
        )
        for i in range(10)
    ]
    return comp.sample(N, torch.Generator().manual_seed(1)), float(np.mean(null)), float(np.std(null))


def _class_fraction(x: torch.Tensor) -> float:
    """Fraction of samples the data-level Bayes classifier assigns to class K."""
    return float((MIX.responsibilities(x).argmax(1) == K).double().mean())


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_guided_samples_match_the_class(name, kind, reference):
    """Guided sampling (N = 2000, fixed seed) with CFG at w = 0 or the exact classifier at w = 1 samples class K:

    * sliced Wasserstein to exact class-K samples below the null level (10 replicates) + 4 null standard deviations;
    * the fraction the data-level Bayes classifier assigns to K within 5 binomial standard errors of the exact one;
    * mean within 5 standard errors (0.016 per coordinate) + 0.02 discretization bias of the class mean.
    """
    sde = VPSDE()
    oracle = MixtureClasses(MIX, sde)
    if kind == "cfg_w0":
        score = cfg_score_fn(oracle, K, 0.0)
    else:
        score = classifier_guidance(MIX.score_fn(sde), oracle.log_posterior, K, 1.0)
    ref, null_mean, null_sd = reference
    x = get_sampler(name, **SAMPLERS[name])(sde, score, (N, 2), generator=torch.Generator().manual_seed(0)).samples
    assert torch.isfinite(x).all()
    assert sliced_wasserstein(x, ref) < null_mean + 4 * null_sd
    p = _class_fraction(ref)
    assert abs(_class_fraction(x) - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-9
    se = MIX.covs[K].diagonal().sqrt() / math.sqrt(N)
    assert ((x.mean(0) - MIX.means[K]).abs() < 5 * se + 0.02).all(), x.mean(0)


@pytest.mark.parametrize("kind", ["cfg", "classifier"])
def test_larger_guidance_concentrates_on_the_class(kind):
    """Mean exact posterior p(K | x_0) of N = 2000 guided samples (ddim, 50 steps) rises with w in {0, 1, 3}
    (classifier guidance starts at w = 0: the unconditional mixture), by more than 5 standard errors each time."""
    sde = VPSDE()
    oracle = MixtureClasses(MIX, sde)
    means, ses = [], []
    for w in (0.0, 1.0, 3.0):
        if kind == "cfg":
            score = cfg_score_fn(oracle, K, w)
        else:
            score = classifier_guidance(MIX.score_fn(sde), oracle.log_posterior, K, w)
        x = get_sampler("ddim", steps=50)(sde, score, (N, 2), generator=torch.Generator().manual_seed(0)).samples
        post = MIX.responsibilities(x)[:, K]
        means.append(float(post.mean()))
        ses.append(float(post.std() / math.sqrt(N)))
    for i in range(2):
        assert means[i + 1] - means[i] > 5 * math.hypot(ses[i], ses[i + 1]), means
