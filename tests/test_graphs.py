"""GraphedSampler: a fixed-step sampler captured once as a CUDA graph and replayed.

Without CUDA: every refusal comes before any work, with a message naming the problem. With CUDA (marked ``cuda``):
the replay gives the eager loop's samples from the same start and generator seed, its NFE, and leaves the
generator where the eager loop leaves it; captures are reused per (SDE, model, shape, generator); weights loaded in
place are seen; a model that reads a value on the host is refused with a clear error.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from scoresde.nets import MLP
from scoresde.sampling import get_sampler
from scoresde.sampling.base import ModelViews, batch_times
from scoresde.sampling.graphs import GraphedSampler
from scoresde.score import ScoreModel
from scoresde.sde import EDMSDE, VESDE, VPSDE
from scoresde.utils import as_time
from tests.conftest import SDE_FACTORIES

# every fixed-step sampler, stochastic ones included (10 steps each)
CASES = [
    ("euler_maruyama", {}),
    ("reverse_diffusion", {}),
    ("ancestral", {}),
    ("euler_maruyama", {"probability_flow": True}),
    ("pc", {"corrector": "langevin", "snr": 0.16}),
    ("pc", {"predictor": "reverse_diffusion", "corrector": "annealed_langevin", "snr": 0.1}),
    ("ddim", {}),
    ("ddim", {"eta": 1.0}),
    ("heun", {}),
    ("heun", {"s_churn": 10.0}),
    ("dpm_solver", {"order": 3}),
    ("unipc", {}),
    ("pndm", {}),
    ("pndm", {"variant": "s"}),
]
STOCHASTIC = {"euler_maruyama", "reverse_diffusion", "ancestral", "pc"}


def mlp_model(sde, device="cpu"):
    """A random MLP score. Its output layer starts at zero, and a zero score gives Langevin's step-size rule a zero
    denominator (an infinite step, as in the reference code), so every weight is moved off its initial value."""
    torch.manual_seed(0)
    model = ScoreModel(MLP((2,), hidden=64, depth=2), sde)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return model.to(device).eval()


# ---- refusals (no CUDA needed) ----


@pytest.mark.parametrize("name", ["ode", "ode_scipy", "sdeint"])
def test_adaptive_or_library_samplers_are_refused(name):
    with pytest.raises(TypeError, match="fixed-step sampler"):
        GraphedSampler(get_sampler(name))


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
@pytest.mark.parametrize("name", ["warmup", "max_graphs"])
def test_bad_counts_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        GraphedSampler(get_sampler("ddim"), **{name: value})


def test_refusals_before_any_model_call():
    sde = VPSDE()
    calls = []

    def model(x, t):
        calls.append(1)
        return -x

    graphed = GraphedSampler(get_sampler("ddim", steps=4))
    with pytest.raises(ValueError, match="CUDA device, got device='cpu'"):
        graphed(sde, model, (8, 2), device="cpu")
    with pytest.raises(ValueError, match="CUDA device, got device='cpu'"):
        graphed(sde, model, (8, 2), x_init=torch.zeros(8, 2))  # the device follows x_init
    with pytest.raises(ValueError, match="callback"):
        graphed(sde, model, (8, 2), device="cuda", callback=lambda info: None)
    with pytest.raises(ValueError, match=r"x_init has shape \(4, 2\), expected \(8, 2\)"):
        graphed(sde, model, (8, 2), device="cuda", x_init=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="per-sample generator lists"):
        graphed(sde, model, (2, 2), generator=[torch.Generator(), torch.Generator()], device="cuda")
    with pytest.raises(ValueError, match="the generator is on 'cpu'"):
        graphed(sde, model, (8, 2), generator=torch.Generator(), device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="is_available"):
            graphed(sde, model, (8, 2), device="cuda")
    assert calls == [] and graphed.captures == 0


def test_the_sampler_is_copied_without_progress_bar():
    sampler = get_sampler("dpm_solver", steps=5, progress=True)
    graphed = GraphedSampler(sampler)
    assert graphed.sampler.progress is False and sampler.progress is True
    assert "DPMSolverSampler" in repr(graphed)


def test_times_from_numbers_equal_the_copied_times():
    """``as_time`` fills for a number and ``batch_times`` fills off the CPU (no host-to-device copy): same values."""
    x = torch.zeros(5, 3, dtype=torch.float32)
    for t in (0.3, 1e-3, 1, 0.123456789):
        assert torch.equal(as_time(t, x), torch.tensor(t, dtype=torch.float32).expand(5))
        assert as_time(t, x.double()).dtype == torch.float64
    grid = torch.tensor([1.0, 0.7, 0.123456789, 1e-3], dtype=torch.float64)
    for got, t in zip(batch_times(grid, x), grid, strict=True):
        assert torch.equal(got, t.float().expand(5))


class HostTraffic(TorchDispatchMode):
    """Records what would read from or copy to the host on an accelerator: on the meta device an op mixing a CPU
    tensor (not a 0-d one, which is a kernel argument) with meta tensors, and ``torch.tensor`` / ``torch.as_tensor``
    asked for a non-CPU device (a host tensor copied over)."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        out = func(*args, **kwargs)
        outs = [o for o in (out if isinstance(out, tuple | list) else [out]) if isinstance(o, torch.Tensor)]
        if any(a.device.type == "cpu" and a.ndim > 0 for a in tensors) and any(
            t.device.type == "meta" for t in (*tensors, *outs)
        ):
            self.hits.append(str(func))
        return out


class HostTensors(TorchFunctionMode):
    """``torch.tensor`` / ``torch.as_tensor`` of host data (numbers, lists, CPU tensors) for another device."""

    def __init__(self, hits: list[str]):
        super().__init__()
        self.hits = hits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_device = torch.device(kwargs.get("device") or "cpu").type != "cpu"
        data = args[0] if args else kwargs.get("data")
        from_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
        if func in (torch.tensor, torch.as_tensor) and to_device and from_host:
            self.hits.append(f"{func.__name__}({data!r}, device={kwargs['device']})")
        return func(*args, **kwargs)


@pytest.mark.parametrize("sde", [*SDE_FACTORIES.values(), EDMSDE], ids=[*SDE_FACTORIES, "edm"])
def test_every_capturable_loop_stays_on_the_device(sde):
    """What a capture refuses, caught without a GPU: every capturable sampler (and Tweedie's final step, int class
    labels) runs on the meta device, where a host read (``.item()``, ``float()``) raises, with no host tensor
    copied over. Reverting ``batch_times`` to its host copy makes this fail."""
    from scoresde.guidance import as_labels

    sde = sde()
    model = ScoreModel(MLP((2,), hidden=8, depth=1), sde).to("meta")
    hits: list[str] = []
    for name, options in CASES:
        sampler = get_sampler(name, steps=4, **options)
        assert sampler.capturable
        dispatch = HostTraffic()
        with torch.no_grad(), HostTensors(hits), dispatch:
            out = sampler.sample(sde, ModelViews(model, sde), torch.zeros(3, 2, device="meta"), None, None)
            as_labels(2, out)
        hits += [f"{name} {options}: {h}" for h in dispatch.hits]
        assert out.device.type == "meta" and out.shape == (3, 2)
    assert hits == []


# ---- on CUDA ----


def eager_and_graphed(name, options, sde, model, shape, seed=3):
    sampler = get_sampler(name, steps=10, **options)
    graphed = GraphedSampler(sampler)
    x0 = sde.prior_sampling(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
    g_eager, g_graph = torch.Generator("cuda").manual_seed(seed), torch.Generator("cuda").manual_seed(seed)
    eager = sampler(sde, model, shape, generator=g_eager, device="cuda", x_init=x0)
    got = graphed(sde, model, shape, generator=g_graph, device="cuda", x_init=x0)
    return eager, got, g_eager, g_graph, graphed


@pytest.mark.cuda
@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_replay_equals_the_eager_loop(name, options, sde):
    """Same kernels on the same inputs, and the noise drawn from the same generator state: the graph's samples are
    the eager loop's to float32 round-off, with the same NFE, and the generator ends in the same state."""
    model = mlp_model(sde, "cuda")
    eager, got, g_eager, g_graph, graphed = eager_and_graphed(name, options, sde, model, (256, 2))
    scale = eager.samples.abs().max()
    assert torch.isfinite(got.samples).all()
    assert float((got.samples - eager.samples).abs().max() / scale) < 1e-5
    assert got.nfe == eager.nfe and graphed.captures == 1
    assert torch.equal(g_eager.get_state(), g_graph.get_state())


@pytest.mark.cuda
def test_replays_reuse_the_capture_and_advance_the_generator():
    """Two calls in a row from one seeded generator give the eager loop's two batches (the second draws fresh noise);
    a new shape captures again."""
    sde = VPSDE()
    model = mlp_model(sde, "cuda")
    sampler = get_sampler("euler_maruyama", steps=8)
    graphed = GraphedSampler(sampler)
    g1, g2 = torch.Generator("cuda").manual_seed(0), torch.Generator("cuda").manual_seed(0)
    eager = [sampler(sde, model, (128, 2), generator=g1, device="cuda").samples for _ in range(2)]
    got = [graphed(sde, model, (128, 2), generator=g2, device="cuda").samples for _ in range(2)]
    assert graphed.captures == 1
    for e, g in zip(eager, got, strict=True):
        assert float((g - e).abs().max()) < 1e-5 * float(e.abs().max())
    assert not torch.allclose(got[0], got[1])
    graphed(sde, model, (64, 2), generator=g2, device="cuda")
    assert graphed.captures == 2
    out = graphed(sde, model, (128, 2), generator=g2, device="cuda")
    assert graphed.captures == 2 and out.samples.shape == (128, 2)
    # a fresh generator per call reuses the capture (each capture draws from its own, loaded with the caller's state)
    for seed in (7, 8):
        e = sampler(sde, model, (128, 2), generator=torch.Generator("cuda").manual_seed(seed), device="cuda").samples
        g = graphed(sde, model, (128, 2), generator=torch.Generator("cuda").manual_seed(seed), device="cuda").samples
        assert float((g - e).abs().max()) < 1e-5 * float(e.abs().max())
    assert graphed.captures == 2
    # at most max_graphs are kept, the least recently used dropped; clear() drops all
    small = GraphedSampler(sampler, max_graphs=1)
    for shape in [(16, 2), (32, 2), (16, 2)]:
        small(sde, model, shape, device="cuda")
    assert small.captures == 3
    small.clear()
    small(sde, model, (16, 2), device="cuda")
    assert small.captures == 4


@pytest.mark.cuda
def test_the_default_generator_and_in_place_weights():
    """``generator=None`` draws from the device's default generator as the eager loop does; weights copied into the
    model after the capture are used by the next replay."""
    sde = VPSDE()
    model = mlp_model(sde, "cuda")
    sampler = get_sampler("ancestral", steps=6)
    graphed = GraphedSampler(sampler)
    x0 = torch.randn(64, 2, device="cuda")
    torch.cuda.manual_seed(5)
    eager = sampler(sde, model, (64, 2), device="cuda", x_init=x0).samples
    torch.cuda.manual_seed(5)
    got = graphed(sde, model, (64, 2), device="cuda", x_init=x0).samples
    assert float((got - eager).abs().max()) < 1e-5 * float(eager.abs().max())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    torch.cuda.manual_seed(5)
    eager = sampler(sde, model, (64, 2), device="cuda", x_init=x0).samples
    torch.cuda.manual_seed(5)
    got = graphed(sde, model, (64, 2), device="cuda", x_init=x0).samples
    assert graphed.captures == 1
    assert float((got - eager).abs().max()) < 1e-5 * float(eager.abs().max())


@pytest.mark.cuda
@pytest.mark.parametrize("when", ["always", "capturing"])
def test_a_model_reading_the_host_is_refused_and_the_generators_kept(when):
    """A host read is refused by the warm-up (synchronizations made errors) or, where it only happens inside the
    capture, by the capture; either way the generators are left as they were and still draw."""
    sde = VPSDE()

    def model(x, t):
        if when == "always" or torch.cuda.is_current_stream_capturing():
            x.cpu()  # a device-to-host copy: a synchronization
        return -x

    mlp = mlp_model(sde, "cuda")
    earlier = GraphedSampler(get_sampler("euler_maruyama", steps=5))  # captured before the failure
    x0 = torch.randn(16, 2, device="cuda")
    earlier(sde, mlp, (16, 2), device="cuda", x_init=x0)
    g = torch.Generator("cuda").manual_seed(0)
    state, default_state = g.get_state(), torch.cuda.get_rng_state()
    mode, stream = torch.cuda.get_sync_debug_mode(), torch.cuda.current_stream()
    stage = "warm-up" if when == "always" else "capture"
    with pytest.raises(RuntimeError, match=f"could not be captured in a CUDA graph \\({stage} failed"):
        GraphedSampler(get_sampler("ddim", steps=4))(sde, model, (8, 2), generator=g, device="cuda")
    assert torch.equal(g.get_state(), state) and torch.equal(torch.cuda.get_rng_state(), default_state)
    assert torch.cuda.get_sync_debug_mode() == mode and torch.cuda.current_stream() == stream
    a = torch.randn(4, device="cuda", generator=g)
    g.set_state(state)
    assert torch.equal(a, torch.randn(4, device="cuda", generator=g))
    torch.randn(4, device="cuda")  # the default generator draws too
    torch.cuda.manual_seed(1)  # and the graph captured before still replays, drawing from it
    got = earlier(sde, mlp, (16, 2), device="cuda", x_init=x0).samples
    torch.cuda.manual_seed(1)
    eager = earlier.sampler(sde, mlp, (16, 2), device="cuda", x_init=x0).samples
    assert float((got - eager).abs().max()) < 1e-5 * float(eager.abs().max())


# ---- generate(..., cuda_graph=True) and sample.py cuda_graph=true ----


def test_generate_and_sample_job_refuse_graphs_they_cannot_run(tmp_path):
    """Refused before any model is loaded or called: no CUDA device, a sampler with no loop of its own, an inverse
    problem."""
    from scoresde.generate import generate
    from scoresde.jobs import sample as job
    from scoresde.schema import ConfigError
    from tests.configs import typed_config

    sde = VPSDE()

    def model(x, t):
        raise AssertionError("no model call expected")

    with pytest.raises(ValueError, match="a CUDA graph samples on a CUDA device, got device='cpu'"):
        generate(model, sde, (2,), 4, get_sampler("ddim", steps=3), device="cpu", cuda_graph=True)
    with pytest.raises(TypeError, match="fixed-step sampler"):
        generate(model, sde, (2,), 4, get_sampler("ode"), device="cuda", cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="a CUDA graph needs a CUDA device, and torch.cuda.is_available"):
            generate(model, sde, (2,), 4, get_sampler("ddim", steps=3), device="cuda", cuda_graph=True)

    def run(*overrides):
        return job.run(typed_config("sample", f"ckpt={tmp_path / 'nope'}", "cuda_graph=true", *overrides), tmp_path)

    with pytest.raises(ConfigError, match="cuda_graph=True: needs a CUDA device, not device=cpu"):
        run("device=cpu")
    with pytest.raises(ConfigError, match="cuda_graph=true: a CUDA graph needs a fixed-step sampler"):
        run("sampler=ode", "device=cuda")
    with pytest.raises(ConfigError, match="graphs replay plain sampling"):
        run(f"gray={tmp_path / 'g.npy'}", "device=cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="resolved to cpu"):
            run("device=auto")


@pytest.mark.cuda
def test_generate_with_graphs_keeps_the_per_sample_starts():
    """A deterministic sampler gives generate's samples with or without the graph (the starting points keep their
    per-sample seeds; last batch smaller: a second capture); a stochastic one is reproducible and finite."""
    from scoresde.generate import generate

    sde = VPSDE()
    model = mlp_model(sde, "cuda")
    for name, opts in [("dpm_solver", {"steps": 6}), ("euler_maruyama", {"steps": 8})]:
        sampler = get_sampler(name, **opts)
        runs = [generate(model, sde, (2,), 10, sampler, seed=4, batch_size=4, device="cuda", cuda_graph=g)
                for g in (False, True, True)]  # fmt: skip
        eager, graphed, again = (r.samples for r in runs)
        assert graphed.shape == (10, 2) and torch.isfinite(graphed).all()
        assert runs[1].nfe == runs[0].nfe and torch.equal(graphed, again)
        if name == "dpm_solver":
            assert float((graphed - eager).abs().max()) < 1e-5 * float(eager.abs().max())


@pytest.mark.cuda
def test_sample_job_with_cuda_graph(tmp_path):
    """sample.py cuda_graph=true on a tiny trained run: the deterministic sampler's samples equal those without."""
    import numpy as np

    from scoresde.jobs import sample as job
    from scoresde.training import train
    from tests.configs import typed_config
    from tests.test_train_cli import TOY, compose_cfg

    run = tmp_path / "run"
    train(compose_cfg(*TOY, "trainer.steps=30", "trainer.ckpt_every=30"), run)
    opts = [f"ckpt={run}", "sampler=unipc", "sampler.steps=6", "n=10", "batch_size=4", "device=cuda"]
    plain = np.load(job.run(typed_config("sample", *opts), tmp_path / "a")["npz"])["arr_0"]
    graphed = np.load(job.run(typed_config("sample", *opts, "cuda_graph=true"), tmp_path / "b")["npz"])["arr_0"]
    np.testing.assert_allclose(graphed, plain, rtol=1e-5, atol=1e-5)


def test_model_times_stay_on_the_device_after_the_first_call():
    """Model times (``with_grid(grid, model_times)``) copy their knots to the device once, on the first call (a warm-up
    run before any capture does it); later calls read nothing from the host."""
    sde = VPSDE()
    model = ScoreModel(MLP((2,), hidden=8, depth=1), sde).to("meta")
    hits: list[str] = []
    for name, options in (("unipc", {}), ("ddim", {}), ("heun", {}), ("pc", {"corrector": "langevin", "snr": 0.16})):
        sampler = get_sampler(name, steps=4, **options)
        grid = sampler.time_grid(sde)
        sampler = sampler.with_grid(grid, torch.cat([grid[:-1] * 0.9, grid[-1:]]))
        with torch.no_grad():
            sampler.sample(sde, ModelViews(model, sde), torch.zeros(3, 2, device="meta"), None, None)
            dispatch = HostTraffic()
            with HostTensors(hits), dispatch:
                out = sampler.sample(sde, ModelViews(model, sde), torch.zeros(3, 2, device="meta"), None, None)
        hits += [f"{name}: {h}" for h in dispatch.hits]
        assert out.device.type == "meta" and out.shape == (3, 2)
    assert hits == []


@pytest.mark.cuda
def test_replay_with_model_times_equals_the_eager_loop():
    sde = VPSDE()
    model = mlp_model(sde, "cuda")
    sampler = get_sampler("unipc", steps=8)
    grid = sampler.time_grid(sde)
    sampler = sampler.with_grid(grid, torch.cat([grid[:-1] * 0.95, grid[-1:]]))
    x0 = sde.prior_sampling((256, 2), generator=torch.Generator("cuda").manual_seed(1), device="cuda")
    eager = sampler(sde, model, x0.shape, device="cuda", x_init=x0)
    graphed = GraphedSampler(sampler)
    got = graphed(sde, model, x0.shape, device="cuda", x_init=x0)
    assert float((got.samples - eager.samples).abs().max() / eager.samples.abs().max()) < 1e-5
    assert got.nfe == eager.nfe and graphed.captures == 1
