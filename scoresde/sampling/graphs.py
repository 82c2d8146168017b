"""A fixed-step sampler replayed as one CUDA graph (``torch.cuda.CUDAGraph``).

On a GPU a small network's call is a few dozen short kernels, so the host's launches, not the GPU, set the time of
a sampling loop, and every update between two calls adds its own launches. :class:`GraphedSampler` captures the
whole loop once per (SDE, model, batch shape, dtype, device, generator): every model call, every update, every
noise draw and the final denoising step. Each later call copies the starting point into the graph's input and
replays it: one launch for the whole trajectory.

Semantics are the sampler's: the same samples from the same starting point and generator state (the graph draws
the noise from the generator's current state and advances it as the eager loop does, PyTorch's graph-safe RNG),
the same ``nfe`` (counted while capturing). What a graph cannot do is refused before any work: a per-step
``callback`` (the host is not in the loop), per-sample generator lists and CPU generators (their draws cross from
the host), a device other than CUDA, samplers with adaptive steps. The model must not read values on the host
(``.item()``, data-dependent branches); a capture that fails says so.

Replays reuse the model's parameters in place: load new weights with ``copy_`` / ``load_state_dict`` (as EMA
swaps do), not by replacing the module, or capture again with a new :class:`GraphedSampler`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scoresde.sampling.base import GridSampler, ModelViews, SampleResult, StepCallback
from scoresde.sde import LinearSDE
from scoresde.utils import Generator


@dataclass
class _Capture:
    """One captured loop: what it was captured for (compared by identity) and its static tensors."""

    sde: LinearSDE
    score_fn: object
    generator: torch.Generator | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # the graph's input: the starting point is copied here
    out: torch.Tensor  # the graph's output
    nfe: int

    def matches(self, sde, score_fn, generator, shape, dtype, device) -> bool:
        return (self.sde is sde and self.score_fn is score_fn and self.generator is generator
                and self.shape == shape and self.dtype == dtype and self.device == device)  # fmt: skip


class GraphedSampler:
    """``sampler`` (a fixed-step :class:`~scoresde.sampling.base.GridSampler`) run as a replayed CUDA graph.

    Called like a sampler: ``GraphedSampler(get_sampler("dpm_solver", steps=10))(sde, score_fn, shape,
    generator=torch.Generator("cuda").manual_seed(0), device="cuda")``. The first call for a given SDE, model,
    shape, dtype, device and generator captures (one eager warm-up run, then the capture; neither touches the
    generator's state); later calls replay. ``captures`` counts the captures made.
    """

    def __init__(self, sampler: GridSampler, warmup: int = 1):
        if not (isinstance(sampler, GridSampler) and sampler.capturable):
            raise TypeError(
                f"a CUDA graph needs a fixed-step sampler whose loop is this library's (pc, euler_maruyama, "
                f"reverse_diffusion, ancestral, ddim, heun, dpm_solver, unipc, pndm); {type(sampler).__name__} is "
                "stepped by a solver library or chooses its steps at run time"
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1 (eager runs before the capture), got {warmup!r}")
        self.sampler = copy.copy(sampler)
        self.sampler.progress = False  # a progress bar would only tick during the capture
        self.warmup = warmup
        self.captures = 0
        self._graphs: list[_Capture] = []

    def __call__(
        self,
        sde: LinearSDE,
        score_fn,
        shape: Sequence[int],
        generator: Generator = None,
        device: torch.device | str | None = None,
        x_init: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> SampleResult:
        shape = tuple(int(s) for s in shape)
        if callback is not None:
            raise ValueError("a CUDA graph runs the whole loop without the host: no per-step callback (pass None)")
        if x_init is not None and tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
        device = _check_generator(generator, _cuda_device(device, x_init))
        self.sampler.check(sde)
        dtype = x_init.dtype if x_init is not None else (self.sampler.dtype or torch.get_default_dtype())
        entry = next((c for c in self._graphs if c.matches(sde, score_fn, generator, shape, dtype, device)), None)
        if entry is None:
            entry = self._capture(sde, score_fn, generator, shape, dtype, device)
        if x_init is None:
            x_init = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
        entry.x.copy_(x_init)
        entry.graph.replay()
        return SampleResult(samples=entry.out.clone(), nfe=entry.nfe)

    def _capture(self, sde, score_fn, generator, shape, dtype, device) -> _Capture:
        """Warm up, then capture ``sampler.sample`` on a static input. The generators' states (the device's default
        one, which PyTorch registers with every capture, and ``generator``) are restored afterwards, so a capture
        draws nothing the caller can see."""
        gens = [torch.cuda.default_generators[device.index], *([generator] if generator is not None else [])]
        states = [g.get_state() for g in gens]
        x = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream(device)
        try:
            with torch.cuda.device(device), torch.no_grad():
                self._warm_up(sde, score_fn, x, generator)
                if generator is not None:
                    graph.register_generator_state(generator)
                model = ModelViews(score_fn, sde)
                with torch.cuda.graph(graph):
                    out = self.sampler.sample(sde, model, x, generator, None)
        except RuntimeError as err:
            torch.cuda.set_stream(stream)  # a failed capture_end skips the graph context's exit, which restores it
            raise RuntimeError(
                f"{self.sampler.name} could not be captured in a CUDA graph ({err}). The loop or the model reads "
                "from the host (.item(), a CPU tensor moved to the GPU, a branch on a value); sample without the graph"
            ) from err
        finally:
            for gen, state in zip(gens, states, strict=True):
                _restore(gen, state)
        self.captures += 1
        entry = _Capture(sde, score_fn, generator, shape, dtype, device, graph, x, out, model.nfe)
        self._graphs.append(entry)
        return entry

    def _warm_up(self, sde, score_fn, x, generator) -> None:
        """``warmup`` eager runs on a side stream (as PyTorch asks before a capture) with synchronizing operations
        made errors, so that a loop or a model reading from the host is refused before any capture begins."""
        mode = torch.cuda.get_sync_debug_mode()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            _set_sync_debug_mode("error")
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.sampler.sample(sde, ModelViews(score_fn, sde), x, generator, None)
        finally:
            _set_sync_debug_mode(mode)
        torch.cuda.current_stream().wait_stream(side)

    def __repr__(self) -> str:
        return f"GraphedSampler({self.sampler!r})"


def _cuda_device(device: torch.device | str | None, x_init: torch.Tensor | None) -> torch.device:
    """The device asked for (``x_init``'s, else ``cuda``) if it is a CUDA device; else a ``ValueError`` naming it."""
    if device is None:
        device = x_init.device if x_init is not None else "cuda"
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"a CUDA graph samples on a CUDA device, got device={str(device)!r}")
    return device


def _check_generator(generator: Generator, device: torch.device) -> torch.device:
    """Only the device's own generator can be replayed inside a graph; returns the device with its index."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            "a CUDA graph draws from one CUDA generator; per-sample generator lists draw each row on its own "
            "(pass one torch.Generator('cuda') or None)"
        )
    gen_device = torch.device(generator.device) if generator is not None else device
    if gen_device.type != "cuda" or (None not in (gen_device.index, device.index) and gen_device.index != device.index):
        raise ValueError(
            f"a CUDA graph draws on the GPU; the generator is on {str(gen_device)!r}, the samples on {str(device)!r} "
            "(pass torch.Generator(device) or None)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("a CUDA graph needs a CUDA device, and torch.cuda.is_available() is False here")
    if generator is not None and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        raise ValueError(
            f"replaying an explicit generator needs CUDAGraph.register_generator_state (PyTorch >= 2.5; this is "
            f"{torch.__version__}); pass generator=None to draw from the device's default generator"
        )
    index = device.index if device.index is not None else gen_device.index
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def _restore(gen: torch.Generator, state: torch.Tensor) -> None:
    """Put ``gen`` back to ``state``. A capture that failed half way leaves its generators in capture mode (PyTorch
    skips the capture's epilogue) and every later draw from them fails; such a generator gets a fresh graph-safe
    state first, then ``state``'s seed and offset."""
    gen.set_state(state)
    try:
        torch.empty(1, device=gen.device).normal_(generator=gen)  # a probe draw, undone below
    except RuntimeError:
        gen.graphsafe_set_state(torch.Generator(gen.device).graphsafe_get_state())
    gen.set_state(state)


def _set_sync_debug_mode(mode: str | int) -> None:
    """``torch.cuda.set_sync_debug_mode`` without its warning that the mode is a prototype (it does not catch every
    synchronization; the capture catches the rest)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Synchronization debug mode is a prototype")
        torch.cuda.set_sync_debug_mode(mode)
