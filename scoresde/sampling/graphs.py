"""A fixed-step sampler replayed as one CUDA graph (``torch.cuda.CUDAGraph``).

On a GPU a small network's call is a few dozen short kernels, so the host's launches, not the GPU, set the time of
a sampling loop, and every update between two calls adds its own launches. :class:`GraphedSampler` captures the
whole loop once per (SDE, model, batch shape, dtype, device): every model call, every update, every noise draw and
the final denoising step. Each later call copies the starting point into the graph's input and replays it: one
launch for the whole trajectory.

Semantics are the sampler's: the same samples from the same starting point and generator state, the same ``nfe``
(counted while capturing). Each capture draws from a generator of its own; a call copies the caller's generator
state into it, replays (PyTorch's graph-safe RNG draws from that state and advances it as the eager loop does) and
copies the advanced state back, so any generator works with any capture. What a graph cannot do is refused before
any work: a per-step ``callback`` (the host is not in the loop), per-sample generator lists and CPU generators
(their draws cross from the host), a device other than CUDA, samplers with adaptive steps. The model must not read
values on the host (``.item()``, a CPU tensor moved over, data-dependent branches): the last warm-up run, with
PyTorch's synchronizations made errors, refuses such a model before any capture. Should a capture itself fail,
the generators it touched are restored; PyTorch's caching allocator may still count that capture as running (it
then reclaims memory freed on other streams late), so a long-running process had better restart.

A model that draws from the default generator itself (dropout left in training mode) does not see its draws
reproduced as in the eager loop when ``generator=None``: the sampler's draws come from the capture's own generator,
whose advanced state is then written to the default one.

Replays reuse the model's parameter storage: load new weights in place (``load_state_dict``, ``copy_``, as EMA
swaps do). ``.to()``, ``.half()`` or ``load_state_dict(assign=True)`` give the parameters new storage, which a
graph captured before does not see: :meth:`GraphedSampler.clear` and capture again.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scoresde.sampling.base import GridSampler, ModelViews, SampleResult, StepCallback, check_x_init
from scoresde.sde import LinearSDE
from scoresde.utils import Generator

#: Graphs whose capture failed, kept alive: PyTorch's allocator may still hold a filter that refers to them.
_FAILED_CAPTURES: list[torch.cuda.CUDAGraph] = []


@dataclass
class _Capture:
    """One captured loop: what it was captured for (compared by identity), its graph, static tensors and its own
    generator."""

    sde: LinearSDE
    score_fn: object
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    graph: torch.cuda.CUDAGraph
    generator: torch.Generator  # registered with the graph; loaded with the caller's state around each replay
    x: torch.Tensor  # the graph's input: the starting point is copied here
    out: torch.Tensor  # the graph's output
    nfe: int

    def matches(self, sde, score_fn, shape, dtype, device) -> bool:
        return (self.sde is sde and self.score_fn is score_fn and self.shape == shape and self.dtype == dtype
                and self.device == device)  # fmt: skip


class GraphedSampler:
    """``sampler`` (a fixed-step :class:`~scoresde.sampling.base.GridSampler`) run as a replayed CUDA graph.

    Called like a sampler: ``graphed = GraphedSampler(get_sampler("dpm_solver", steps=10))``, then
    ``graphed(sde, score_fn, shape, generator=g, device="cuda")`` per batch. The first call for a given SDE, model
    (the same objects), shape, dtype and device captures: ``warmup`` eager runs, the last with synchronizations made
    errors, then the capture; neither changes the caller's generator. Later calls replay. ``captures`` counts the
    captures made; at most ``max_graphs`` are kept (the least recently used is dropped), :meth:`clear` drops all.
    """

    def __init__(self, sampler: GridSampler, warmup: int = 2, max_graphs: int = 8):
        if not (isinstance(sampler, GridSampler) and sampler.capturable):
            raise TypeError(
                f"a CUDA graph needs a fixed-step sampler whose loop is this library's (pc, euler_maruyama, "
                f"reverse_diffusion, ancestral, ddim, heun, dpm_solver, unipc, pndm); {type(sampler).__name__} is "
                "stepped by a solver library or chooses its steps at run time"
            )
        for name, value in (("warmup", warmup), ("max_graphs", max_graphs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.sampler = copy.copy(sampler)
        self.sampler.progress = False  # a progress bar would only tick during the capture
        self.warmup, self.max_graphs = warmup, max_graphs
        self.captures = 0
        self._graphs: list[_Capture] = []  # most recently used last

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
        if x_init is not None:
            check_x_init(x_init, shape)
        device = cuda_device(device, x_init, generator)
        self.sampler.check(sde)
        dtype = x_init.dtype if x_init is not None else (self.sampler.dtype or torch.get_default_dtype())
        entry = next((c for c in self._graphs if c.matches(sde, score_fn, shape, dtype, device)), None)
        if entry is None:
            entry = self._capture(sde, score_fn, shape, dtype, device)
        self._graphs.remove(entry)
        self._graphs.append(entry)
        gen = generator if generator is not None else torch.cuda.default_generators[device.index]
        if x_init is None:
            x_init = sde.prior_sampling(shape, generator=gen, device=device, dtype=dtype)
        entry.x.copy_(x_init)
        entry.generator.set_state(gen.get_state())  # host-side: the seed and offset the replay starts from
        entry.graph.replay()
        gen.set_state(entry.generator.get_state())  # advanced by the graph's draws, as the eager loop would
        return SampleResult(samples=entry.out.clone(), nfe=entry.nfe)

    def clear(self) -> None:
        """Drop every captured graph (and its memory pool); the next call captures again."""
        if self._graphs:
            torch.cuda.synchronize()  # no replay may still be running on memory a dropped graph releases
        self._graphs.clear()

    def _capture(self, sde, score_fn, shape, dtype, device) -> _Capture:
        """Warm up, then capture ``sampler.sample`` on a static input, drawing from a generator of the capture's own,
        on a stream of the device's own. The device's default generator (PyTorch registers it with every capture; a
        model may draw from it) is left in the state it had; after a failure, so are the current stream and device."""
        with torch.cuda.device(device):
            default = torch.cuda.default_generators[device.index]
            state, stream = default.get_state(), torch.cuda.current_stream()
            own, graph, stage, failed = torch.Generator(device), torch.cuda.CUDAGraph(), "warm-up", True
            try:
                with torch.inference_mode(False), torch.no_grad():
                    x = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)
                    self._warm_up(sde, score_fn, x, own)
                    stage = "capture"
                    graph.register_generator_state(own)
                    model = ModelViews(score_fn, sde)
                    with torch.cuda.graph(graph, stream=torch.cuda.Stream()):
                        out = self.sampler.sample(sde, model, x, own, None)
                failed = False
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as err:
                raise RuntimeError(
                    f"{self.sampler.name} could not be captured in a CUDA graph ({stage} failed: {err}). The loop or "
                    "the model may read from the host (.item(), a CPU tensor moved to the GPU, a branch on a value); "
                    "sample without the graph"
                ) from err
            finally:
                if failed:
                    torch.cuda.set_stream(stream)  # a failed capture_end skips the graph context's exit
                    if stage == "capture":
                        _FAILED_CAPTURES.append(graph)  # PyTorch's allocator may still refer to it
                        _unstick(default)
                default.set_state(state)
        self.captures += 1
        entry = _Capture(sde, score_fn, shape, dtype, device, graph, own, x, out, model.nfe)
        self._graphs.append(entry)
        if len(self._graphs) > self.max_graphs:
            self._graphs.pop(0)
        return entry

    def _warm_up(self, sde, score_fn, x, generator) -> None:
        """``warmup`` eager runs on a side stream (as PyTorch asks before a capture), the last with synchronizing
        operations made errors: a loop or a model that reads from the host is refused before any capture begins,
        while one-time work on a first call (compilation, cached constants) is allowed."""
        mode = torch.cuda.get_sync_debug_mode()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for k in range(self.warmup):
                    if k == self.warmup - 1:
                        _set_sync_debug_mode("error")
                    self.sampler.sample(sde, ModelViews(score_fn, sde), x, generator, None)
        finally:
            _set_sync_debug_mode(mode)
        torch.cuda.current_stream().wait_stream(side)

    def __repr__(self) -> str:
        return f"GraphedSampler({self.sampler!r})"


def cuda_device(
    device: torch.device | str | None = None, x_init: torch.Tensor | None = None, generator: Generator = None
) -> torch.device:
    """The indexed CUDA device a graph samples on (``device``, else ``x_init``'s, else ``cuda``), checked with the
    generator that feeds it: a ``ValueError`` naming what cannot be graphed, a ``RuntimeError`` without CUDA."""
    return _check_generator(generator, _cuda_device(device, x_init))


def _cuda_device(device: torch.device | str | None, x_init: torch.Tensor | None) -> torch.device:
    """The device asked for (``x_init``'s, else ``cuda``) if it is a CUDA device; else a ``ValueError`` naming it."""
    if device is None:
        device = x_init.device if x_init is not None else "cuda"
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"a CUDA graph samples on a CUDA device, got device={str(device)!r}")
    return device


def _check_generator(generator: Generator, device: torch.device) -> torch.device:
    """Only one generator on the sampling device can feed a graph; returns the device with its index."""
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
    torch.cuda.init()  # torch.cuda.default_generators is empty before
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        raise RuntimeError(
            f"a CUDA graph's draws need CUDAGraph.register_generator_state (PyTorch >= 2.5, not {torch.__version__})"
        )
    index = device.index if device.index is not None else gen_device.index
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def _unstick(default: torch.Generator) -> None:
    """After a capture that failed half way, PyTorch (<= 2.12) leaves the generators it registered in capture mode
    (the capture's epilogue is skipped), and every later draw from them, or replay of a graph holding them, fails.
    The current device's default generator is shared by every graph, so it is put back by a trivial capture that
    succeeds (its epilogue resets the same state object the other graphs hold), begun and ended directly (the graph
    context would empty the allocator's cache, which PyTorch < 2.8 refuses while a failed capture is listed).
    Nothing happens where draws still work; this never raises over the capture's own error."""
    probe = torch.empty(1, device=default.device)
    try:
        probe.normal_(generator=default)
        return
    except RuntimeError:
        pass
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(torch.cuda.Stream()):
            graph.capture_begin()
            try:
                probe.normal_(generator=default)
            finally:
                graph.capture_end()
    except RuntimeError:
        pass


def _set_sync_debug_mode(mode: str | int) -> None:
    """``torch.cuda.set_sync_debug_mode`` without its warning that the mode is a prototype (it does not catch every
    synchronization; the capture catches the rest)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Synchronization debug mode is a prototype")
        torch.cuda.set_sync_debug_mode(mode)
