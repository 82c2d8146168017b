"""Cascaded super-resolution: the conditioning path of SuperResNet + conditioned() checked with the exact conditional
score of a Gaussian problem (every sampler must reproduce p(x | low_res)), the augmentation draws, shapes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde import registry
from scoresde.conditioning import conditioned
from scoresde.guidance import cfg_score_fn
from scoresde.nets import DiT, NCSNpp, SuperResNet
from scoresde.nets.superres import augment_low_res, downsample
from scoresde.sampling import get_sampler
from scoresde.score import ScoreModel
from scoresde.sde import VESDE, VPSDE

C, H, F = 1, 4, 2  # 4x4 images, 2x2 low-resolution
D = C * H * H
LOW = (C, H // F, H // F)


def operator(fn, n_in: int, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map on images, column k = fn(basis image k), in float64."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
    return fn(eye).reshape(n_in, -1).T


class GaussianProblem:
    """``x ~ N(mu, S)`` on 4x4 images, ``low_res = sqrt(1 - s^2) A x + s e`` with ``A`` = :func:`downsample` (an
    antialiased bilinear 2x reduction): the posterior ``p(x | low_res) = N(m(low_res), P)`` in closed form."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(D, D, generator=g, dtype=torch.float64)
        self.S = q @ q.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
        self.mu = 0.5 * torch.randn(D, generator=g, dtype=torch.float64)
        self.A = operator(lambda e: downsample(e, F), D, (C, H, H))  # (4, 16)

    def posterior(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain ``K`` (16, 4) and covariance ``P`` of ``x | low_res`` at augmentation level ``s``."""
        B = math.sqrt(1 - level**2) * self.A
        R = level**2 * torch.eye(B.shape[0], dtype=torch.float64)
        K = self.S @ B.T @ torch.linalg.inv(B @ self.S @ B.T + R)
        return K, self.S - K @ B @ self.S

    def mean(self, low: torch.Tensor, level: float) -> torch.Tensor:
        """Posterior means ``(N, 16)`` for observations ``(N, 4)``."""
        K, _ = self.posterior(level)
        return self.mu + (low - math.sqrt(1 - level**2) * self.mu @ self.A.T) @ K.T


class ExactInner(nn.Module):
    """A stand-in for the inner network of SuperResNet: it reads the noisy image, the upsampled low-resolution image
    and the level plane from its ``2C + 1`` input channels (inverting the upsampling exactly) and returns the exact
    noise prediction ``eps = sigma (alpha^2 P + sigma^2 I)^-1 (x - alpha m(low_res))`` of ``p_t(x | low_res)``."""

    def __init__(self, problem: GaussianProblem, sde, upsample_matrix: torch.Tensor):
        super().__init__()
        self.problem, self.sde = problem, sde
        self.data_shape = (2 * C + 1, H, H)
        self.recover = torch.linalg.pinv(upsample_matrix)  # (4, 16): exact on the range of the upsampling

    def forward(self, inp: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = inp.shape[0]
        x, up, plane = inp[:, :C].reshape(n, D), inp[:, C : 2 * C].reshape(n, D), inp[:, 2 * C]
        level = float(plane[0, 0, 0])
        assert torch.all(plane == level), "one augmentation level per call in this test"
        t = label.to(torch.float64)
        assert torch.all(t == t[0])
        alpha, sigma = self.sde.marginal_alpha(t[:1]).item(), self.sde.marginal_std(t[:1]).item()
        low = up @ self.recover.T
        _, P = self.problem.posterior(level)
        cov = alpha**2 * P + sigma**2 * torch.eye(D, dtype=torch.float64)
        eps = sigma * torch.linalg.solve(cov, (x - alpha * self.problem.mean(low, level)).T).T
        return eps.reshape(n, C, H, H)


def exact_model(problem: GaussianProblem, sde, upsample: str = "bilinear") -> ScoreModel:
    probe = SuperResNet(nn.Identity(), F, data_shape=(C, H, H), upsample=upsample)  # only for its upsampling map
    U = operator(probe.upsampled, C * LOW[1] * LOW[2], LOW)  # (16, 4)
    assert torch.linalg.matrix_rank(U) == U.shape[1]
    net = SuperResNet(ExactInner(problem, sde, U), F, upsample=upsample)
    return ScoreModel(net, sde, parameterization="eps", time_input="t", time_scale=1.0).double()


def whitened_residuals(samples: torch.Tensor, means: torch.Tensor, P: torch.Tensor, tol: float = 1e-9):
    """Residuals ``x - m`` in the eigenbasis of ``P``: whitened on its range, raw on its null space."""
    evals, evecs = torch.linalg.eigh(P)
    r = (samples.reshape(len(samples), D) - means) @ evecs
    keep = evals > tol
    return r[:, keep] / evals[keep].sqrt(), r[:, ~keep]


def sample(sampler, sde, score_fn, seed: int):
    """``N`` samples in float64 (the start drawn from the prior in float64, the rest follows its dtype)."""
    g = torch.Generator().manual_seed(seed)
    x_init = sde.prior_sampling((N, C, H, H), generator=g, dtype=torch.float64)
    return sampler(sde, score_fn, (N, C, H, H), generator=g, x_init=x_init)


N = 4000  # samples per check: a whitened mean has s.e. 1/sqrt(N) = 0.016, a covariance entry at most sqrt(2/N) = 0.022
SAMPLERS = [  # steps where each sampler's own discretization error is below the statistical tolerance
    pytest.param("ode", dict(rtol=1e-6, atol=1e-6), id="ode"),
    pytest.param("dpm_solver", dict(steps=30), id="dpm_solver"),
    # DDIM is first order: on this problem's smallest eigenvalue (0.05) 100 uniform steps lose 11 % of the variance
    pytest.param("ddim", dict(steps=1000), id="ddim", marks=pytest.mark.slow),
    pytest.param("euler_maruyama", dict(steps=500), id="euler_maruyama", marks=pytest.mark.slow),
    pytest.param("pc", dict(steps=300, predictor="reverse_diffusion", snr=0.16), id="pc", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,options", SAMPLERS)
@pytest.mark.parametrize("level", [0.0, 0.4])
def test_samplers_reproduce_the_conditional_distribution(name, options, level):
    """One fixed low-resolution observation, broadcast from a batch of 1 by conditioned(): the samples' whitened
    residuals have mean 0 and identity covariance within 5 standard errors (N = 4000), and at level 0 the directions
    the observation pins down (the null space of P) carry no residual beyond the last step's noise."""
    problem, sde = GaussianProblem(), VPSDE()
    g = torch.Generator().manual_seed(1)
    x_true = problem.mu + torch.randn(1, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(problem.S).T
    low = augment_low_res((x_true @ problem.A.T).reshape(1, *LOW), level, torch.randn(1, *LOW, generator=g,
                          dtype=torch.float64))  # fmt: skip
    score_fn = conditioned(exact_model(problem, sde), low_res=low, aug_level=level)
    res = sample(get_sampler(name, **options), sde, score_fn, seed=2)
    _, P = problem.posterior(level)
    white, null = whitened_residuals(res.samples, problem.mean(low.reshape(1, -1), level), P)
    se = 1 / math.sqrt(N)
    assert white.mean(0).abs().max() < 5 * se, white.mean(0)
    cov = torch.cov(white.T)
    assert (cov - torch.eye(len(cov), dtype=cov.dtype)).abs().max() < 5 * math.sqrt(2) * se, cov.diagonal()
    assert null.shape[1] == (C * LOW[1] * LOW[2] if level == 0 else 0)  # one pinned direction per low-res pixel
    if null.numel():
        assert null.abs().max() < 0.05, null.abs().max()


@pytest.mark.parametrize("upsample", ["nearest", "bicubic"])
def test_per_sample_conditioning_through_a_batch(upsample):
    """A different observation for every sample (drawn from the model of the data), on VE with DDIM: the residuals from
    each sample's own posterior mean are N(0, P) (N = 4000, 5 standard errors), so no sample saw another's image."""
    problem, sde = GaussianProblem(seed=3), VESDE(sigma_max=20.0)
    g = torch.Generator().manual_seed(4)
    xs = problem.mu + torch.randn(N, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(problem.S).T
    level = 0.2
    low = augment_low_res((xs @ problem.A.T).reshape(N, *LOW), level, torch.randn(N, *LOW, generator=g,
                          dtype=torch.float64))  # fmt: skip
    score_fn = conditioned(exact_model(problem, sde, upsample), low_res=low, aug_level=torch.full((N,), level))
    res = sample(get_sampler("ddim", steps=200), sde, score_fn, seed=5)
    _, P = problem.posterior(level)
    white, _ = whitened_residuals(res.samples, problem.mean(low.reshape(N, -1), level), P)
    se = 1 / math.sqrt(N)
    assert white.mean(0).abs().max() < 5 * se
    assert (torch.cov(white.T) - torch.eye(D, dtype=torch.float64)).abs().max() < 5 * math.sqrt(2) * se


# ----------------------------------------------------------------------------------------------- the network


def test_augmentation_draws_are_reproducible_and_per_sample():
    net = SuperResNet(DiT((3, 8, 8), patch_size=2, hidden_size=16, depth=1, num_heads=2), 2, aug_max=0.5)
    low = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = net.training_conditioning(low, torch.Generator().manual_seed(7))
    b = net.training_conditioning(low, torch.Generator().manual_seed(7))
    assert torch.equal(a["low_res"], b["low_res"]) and torch.equal(a["aug_level"], b["aug_level"])
    assert a["aug_level"].shape == (6,) and float(a["aug_level"].min()) >= 0 and float(a["aug_level"].max()) < 0.5
    # One generator per sample: sample k's draw does not depend on the batch it is in.
    gens = lambda: [torch.Generator().manual_seed(100 + k) for k in range(6)]  # noqa: E731
    full = net.training_conditioning(low, gens())
    alone = net.training_conditioning(low[3:4], gens()[3:4])
    torch.testing.assert_close(full["low_res"][3:4], alone["low_res"], rtol=0, atol=0)
    # The draw is sqrt(1 - s^2) low + s e, e ~ N(0, 1): variance preserving. 20,000 pixel draws at s = 0.6 from
    # low = 1: mean 0.8 and standard deviation 0.6 (standard errors 0.004 and 0.003).
    ones = torch.ones(1250, 1, 4, 4)
    draw = augment_low_res(ones, 0.6, torch.randn(ones.shape, generator=torch.Generator().manual_seed(3)))
    assert abs(float(draw.mean()) - 0.8) < 0.02 and abs(float(draw.std()) - 0.6) < 0.015
    drawn = net.training_conditioning(ones, torch.Generator().manual_seed(3))
    s_ = drawn["aug_level"][:, None, None, None]
    e = (drawn["low_res"] - torch.sqrt(1 - s_**2)) / s_  # the noise the draw used: N(0, 1), 20,000 values
    assert abs(float(e.mean())) < 0.03 and abs(float(e.std()) - 1) < 0.03
    # Sampling: level 0 returns the image itself; a level draws the noise once, reproducibly.
    assert net.sampling_conditioning(low)["low_res"] is low
    s1 = net.sampling_conditioning(low, 0.3, torch.Generator().manual_seed(1))
    s2 = net.sampling_conditioning(low, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(s1["low_res"], s2["low_res"]) and s1["aug_level"] == 0.3
    with pytest.raises(ValueError, match=r"aug_level must lie in \[0, 1\)"):
        net.sampling_conditioning(low, 1.5)


@pytest.mark.parametrize("factor", [2, 4])
def test_shapes_with_real_inner_networks(factor):
    """The inner network sees 2C + 1 channels at full resolution; the output is shaped like x. Built directly and, as
    the trainer builds it, from a config whose inner net is a factory (_partial_) that gets data_shape."""
    shape = (3, 16, 16)
    low = torch.rand(2, 3, 16 // factor, 16 // factor)
    x, label = torch.randn(2, *shape), torch.tensor([10.0, 900.0])
    inner = NCSNpp((7, 16, 16), nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), fir=False,
                   progressive_input="none", embedding_type="positional")  # fmt: skip
    net = SuperResNet(inner, factor)
    assert net.data_shape == shape and net.low_res_shape == (3, 16 // factor, 16 // factor)
    assert net(x, label, low_res=low, aug_level=0.1).shape == x.shape
    registry.register("scoresde.nets.SuperResNet", SuperResNet)  # what the lead's registry line will allow
    node = {"_target_": "scoresde.nets.SuperResNet", "factor": factor, "aug_max": 0.3,
            "net": {"_target_": "scoresde.nets.DiT", "_partial_": True, "patch_size": 4, "hidden_size": 32,
                    "depth": 1, "num_heads": 2, "num_classes": 10}}  # fmt: skip
    built = registry.build(node, "model.net", data_shape=list(shape))
    assert built.net.data_shape == (7, 16, 16) and built.num_classes == 10
    out = built(x, label, low_res=low, aug_level=torch.tensor([0.0, 0.2]), y=torch.tensor([1, 10]))
    assert out.shape == x.shape


def test_conditioned_keeps_views_tiles_for_guidance_and_selects_batches():
    torch.manual_seed(0)
    inner = DiT((3, 8, 8), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=4)
    for block in [*inner.blocks, inner.final_layer]:
        nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.3)
    nn.init.normal_(inner.final_layer.linear.weight, std=0.3)
    nn.init.normal_(inner.y_embedder.table.weight)
    model = ScoreModel(SuperResNet(inner, 2), VPSDE(), time_scale=999.0)
    low = torch.rand(3, 1, 4, 4)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.4)
    cond = conditioned(model, low_res=low, aug_level=0.1)
    torch.testing.assert_close(cond(x, t), model(x, t, low_res=low, aug_level=0.1))
    torch.testing.assert_close(cond.predict_x0(x, t), model.predict_x0(x, t, low_res=low, aug_level=0.1))
    torch.testing.assert_close(cond.predict_eps(x, t), model.predict_eps(x, t, low_res=low, aug_level=0.1))
    assert hasattr(cond, "x0_hat") == hasattr(model, "x0_hat")

    class WithViews:  # the preconditioned models' views: x0_hat / eps_hat take the same keywords
        def __call__(self, x, t, low_res):
            return x + low_res.mean()

        def x0_hat(self, x, t, low_res):
            return 2 * x + low_res.mean()

        def eps_hat(self, x, t, low_res):
            return 3 * x + low_res.mean()

    viewed = conditioned(WithViews(), low_res=torch.ones(1, 1, 4, 4))
    assert torch.equal(viewed.x0_hat(x, t), 2 * x + 1) and torch.equal(viewed.eps_hat(x, t), 3 * x + 1)
    assert not hasattr(viewed, "predict_x0")
    assert cond.sde is model.sde and cond.net is model.net
    # Classifier-free guidance stacks [x, x] in one call: the conditioning is tiled to match.
    w, y = 2.0, torch.tensor([0, 1, 3])
    guided = cfg_score_fn(cond, y, w)(x, t)
    by_hand = (1 + w) * model(x, t, low_res=low, aug_level=0.1, y=y) - w * model(
        x, t, low_res=low, aug_level=0.1, y=torch.full((3,), 4)
    )
    torch.testing.assert_close(guided, by_hand, rtol=1e-5, atol=1e-5)
    # One batch of a longer run: the per-sample tensors are cut to it.
    part = cond.select(slice(1, 3))
    torch.testing.assert_close(part(x[1:], t[1:]), cond(x, t)[1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="low_res= has a batch of 2"):
        part(x, t)


def test_bad_inputs_are_refused_with_the_reason():
    inner = DiT((3, 8, 8), patch_size=2, hidden_size=16, depth=1, num_heads=2)
    net = SuperResNet(inner, 2)
    x, label = torch.zeros(2, 1, 8, 8), torch.zeros(2)
    with pytest.raises(ValueError, match="needs the low-resolution image"):
        net(x, label)
    with pytest.raises(ValueError, match=r"low_res must have shape \(B, \*\(1, 4, 4\)\)"):
        net(x, label, low_res=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="aug_level"):
        net(x, label, low_res=torch.zeros(2, 1, 4, 4), aug_level=torch.zeros(3))
    with pytest.raises(ValueError, match="2C \\+ 1"):
        SuperResNet(DiT((2, 8, 8), patch_size=2, hidden_size=16, depth=1, num_heads=2), 2)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        SuperResNet(inner, 1)
    with pytest.raises(ValueError, match="not divisible by factor 3"):
        SuperResNet(inner, 3)
    with pytest.raises(ValueError, match="aug_max"):
        SuperResNet(inner, 2, aug_max=1.0)
    with pytest.raises(ValueError, match="built for"):
        SuperResNet(inner, 2, data_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="divisible by 2"):
        downsample(torch.zeros(1, 1, 5, 5), 2)
