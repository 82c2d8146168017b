"""What every sampler shares: the result type, the model's views with NFE counting, the option objects, the
starting point and Tweedie's final step (the forward perturbation is ``LinearSDE.perturb``).

A *model* is a score function ``score_fn(x, t)`` (CONTRACT) or an object that also — or only — offers the data
prediction ``x0_hat(x, t)`` (a denoiser) and/or the noise prediction ``eps_hat(x, t)``. With
``x_t = alpha_t x_0 + sigma_t z`` the three views are one quantity (Tweedie's formula):

    x0_hat = (x + sigma^2 score) / alpha,     eps_hat = -sigma score = (x - alpha x0_hat) / sigma.

:class:`ModelViews` asks the model for the view a sampler needs and converts only when the model lacks it; each
call of any view is one NFE.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from scoresde.sampling.grids import (
    GridOption,
    as_grid_option,
    cached_per_sde,
    check_final_time,
    check_steps,
    final_time,
    resolve_grid,
)
from scoresde.sampling.model_times import ModelTimes, check_model_times
from scoresde.sde import LinearSDE
from scoresde.utils import Generator, as_time, batch_broadcast, randn

#: Called once per step, before it, with a dict: ``i`` (step index), ``t`` (grid time of ``x``, a float), ``x``
#: (the state at ``t``) and ``denoised``: the data prediction there where the sampler has one, else ``None`` (UniPC:
#: the output at the predicted point, before UniC corrected ``x``).
StepCallback = Callable[[dict], None]
Scale = float | torch.Tensor | None


@dataclass
class SampleResult:
    """Output of a sampler: ``samples`` shaped as asked, ``nfe`` the number of model calls made."""

    samples: torch.Tensor
    nfe: int


_ZEROS: dict[tuple, torch.Tensor] = {}  # one 0-d zero per dtype and device, for :func:`scale`


def scale(x: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
    """``a x`` as a new tensor. For a number ``a`` it is computed as ``0 + a x``, one fused addition to a cached 0-d
    zero: bit-identical to ``x * a`` and, on the CPU in float32, about half its cost (multiplying by a Python number
    converts the number to a tensor of ``x``'s dtype on every call; measured in benchmarks/bench_samplers.py)."""
    if isinstance(a, torch.Tensor):
        return x * a
    zero = _ZEROS.get((x.dtype, x.device))
    if zero is None:
        zero = _ZEROS.setdefault((x.dtype, x.device), torch.zeros((), dtype=x.dtype, device=x.device))
    return torch.add(zero, x, alpha=a)


def add_scaled(x: torch.Tensor, c: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + c y`` in one fused operation (a new tensor), ``c`` a number or a tensor broadcasting against ``y``."""
    if isinstance(c, torch.Tensor):
        return torch.addcmul(x, c, y)
    return torch.add(x, y, alpha=c)


def scaled_sum(a: float | torch.Tensor, x: torch.Tensor, b: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``a x + b y`` in two operations (a new tensor), ``a``, ``b`` numbers or tensors broadcasting against ``x``; one
    where ``a`` is the number 1 (VE and EDM steps: ``alpha = 1``)."""
    if not isinstance(a, torch.Tensor) and a == 1:
        return add_scaled(x, b, y)
    out = scale(x, a)
    return out.addcmul_(b, y) if isinstance(b, torch.Tensor) else out.add_(y, alpha=b)


def linear_combination(terms: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``sum_k c_k v_k`` over the ``(c_k, v_k)`` with a number ``c_k != 0`` (a new tensor; at least one such term), one
    fused operation per term (the first two in one where the first coefficient is 1)."""
    terms = [(c, v) for c, v in terms if c != 0]
    (c0, v0), rest = terms[0], terms[1:]
    if c0 == 1 and rest:
        out, rest = add_scaled(v0, rest[0][0], rest[0][1]), rest[1:]
    else:
        out = scale(v0, c0)
    for c, v in rest:
        out.add_(v, alpha=c)
    return out


def add_noise(x: torch.Tensor, std: float | torch.Tensor, generator: Generator) -> torch.Tensor:
    """``x + std z`` (a new tensor) with ``z ~ N(0, I)`` drawn as :func:`~scoresde.utils.randn` draws it. On the CPU,
    for a number ``std >= 0`` and one CPU generator (or none) it is one ``torch.normal(x, std)`` call, which takes the
    same ``z`` from the generator's stream (and leaves it in the same state) and forms ``x + std z`` to round-off
    (tested), in one dispatch instead of a draw and an addition; elsewhere (per-sample generators, tensor ``std``,
    other devices, where that identity is unchecked) it draws, then adds. Also where a gradient flows through ``x``
    (``torch.normal`` passes none to its mean) or ``x`` is not contiguous (its output would lose the layout)."""
    if (
        isinstance(std, float)
        and std >= 0
        and x.device.type == "cpu"
        and x.is_contiguous()
        and not (x.requires_grad and torch.is_grad_enabled())
        and (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
    ):
        return torch.normal(x, std, generator=generator)
    return add_scaled(x, std, randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))


def noise_adder(x: torch.Tensor, generator: Generator) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """:func:`add_noise` for a loop over states like ``x`` with number stds. Where gradients are disabled (as in
    every sampler call), the device and the generator are checked once for the whole loop and only the layout per
    step; otherwise each step goes through :func:`add_noise` and its checks."""
    if (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
    ):

        def add(x_mean: torch.Tensor, std: float) -> torch.Tensor:
            if x_mean.is_contiguous() and std >= 0:
                return torch.normal(x_mean, std, generator=generator)
            return add_noise(x_mean, std, generator)

        return add
    return lambda x_mean, std: add_noise(x_mean, std, generator)


def x0_from_eps(x: torch.Tensor, eps_hat: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
    """Tweedie's data prediction from the noise prediction: ``x0_hat = (x - sigma eps_hat) / alpha``."""
    return scaled_sum(1 / alpha, x, -sigma / alpha, eps_hat)


#: Which output a view is computed from, in order of preference.
_PREFERENCE = {"score": ("score", "eps", "x0"), "eps": ("eps", "x0", "score"), "x0": ("x0", "eps", "score")}
#: ``(view, own output) -> (alpha, sigma) -> (p, q)`` with ``view = p x + q own`` (Tweedie's formula, module doc).
_CONVERSIONS = {
    ("score", "eps"): lambda alpha, sigma: (0.0, -1 / sigma),
    ("score", "x0"): lambda alpha, sigma: (-1 / sigma**2, alpha / sigma**2),
    ("eps", "x0"): lambda alpha, sigma: (1 / sigma, -alpha / sigma),
    ("eps", "score"): lambda alpha, sigma: (0.0, -sigma),
    ("x0", "eps"): lambda alpha, sigma: (1 / alpha, -sigma / alpha),
    ("x0", "score"): lambda alpha, sigma: (1 / alpha, sigma**2 / alpha),
}


def _shaped_like(out: torch.Tensor, x: torch.Tensor, view: str) -> torch.Tensor:
    """``out`` when it has ``x``'s shape; else a ``ValueError`` (broadcasting a ``(B, 1)`` output against ``(B, D)``
    would silently give wrong samples and log-likelihoods)."""
    if out.shape != x.shape:
        raise ValueError(f"the model's {view} output has shape {tuple(out.shape)}, expected x's {tuple(x.shape)}")
    return out


class ModelViews:
    """Score, noise prediction and data prediction of one model for one SDE; every call counts one NFE.

    ``alpha`` / ``sigma`` of ``x_t``'s marginal may be passed (floats precomputed per grid time) to save the
    schedule evaluation; otherwise they are computed from ``sde`` at ``t``. Calling the object is the score view
    (it is also the counting wrapper of plain score functions, ``CountingScore``).
    """

    def __init__(self, model, sde: LinearSDE | None = None):
        if isinstance(model, ModelViews):
            model = model.model
        self.model, self.sde, self.nfe = model, sde, 0
        self._score = model if callable(model) else None
        self._x0_hat = getattr(model, "x0_hat", None)
        self._eps_hat = getattr(model, "eps_hat", None)
        if self._score is None and self._x0_hat is None and self._eps_hat is None:
            raise TypeError(f"a model must be a score function (x, t) or offer x0_hat / eps_hat, got {model!r}")
        own = {"score": self._score, "eps": self._eps_hat, "x0": self._x0_hat}
        #: view -> (the output the model gives for it, the function giving it): its own view where it has it
        self._route = {view: next((name, own[name]) for name in order if own[name] is not None)
                       for view, order in _PREFERENCE.items()}  # fmt: skip

    @staticmethod
    def _time(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == x.shape[0]:
            return t
        return as_time(t, x)

    def _scales(self, x: torch.Tensor, t: torch.Tensor, alpha: Scale, sigma: Scale) -> tuple:
        if alpha is None or sigma is None:
            if self.sde is None:
                raise ValueError("converting between model views needs the SDE (ModelViews(model, sde))")
            alpha = batch_broadcast(self.sde.marginal_alpha(t), x) if alpha is None else alpha
            sigma = batch_broadcast(self.sde.marginal_std(t), x) if sigma is None else sigma
        return alpha, sigma

    def linear(self, view: str, x: torch.Tensor, t: float | torch.Tensor, alpha: Scale = None, sigma: Scale = None):
        """One model call as ``(p, q, out)``: ``out`` the model's own output and ``view(x, t) = p x + q out`` (``view``
        ``"score"``, ``"eps"`` or ``"x0"``; ``p = 0``, ``q = 1`` where the model has the view). A step linear in the
        view folds ``p``, ``q`` into its coefficients and saves the conversion."""
        self.nfe += 1
        t = self._time(x, t)
        native, fn = self._route[view]
        if native == view:
            return 0.0, 1.0, _shaped_like(fn(x, t), x, native)
        alpha, sigma = self._scales(x, t, alpha, sigma)
        return (*_CONVERSIONS[view, native](alpha, sigma), _shaped_like(fn(x, t), x, native))

    def own(self, view: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The model's own function that ``view`` is computed from, each call counted as one NFE: for a loop that
        folds the conversion into its step coefficients once per grid (:meth:`fold`) and calls it with ``(B,)``
        times (no time check, routing or conversion per call)."""
        native, fn = self._route[view]

        def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.nfe += 1
            return _shaped_like(fn(x, t), x, native)

        return counted

    def fold(self, view: str, a: Scale, b: Scale, alpha: Scale, sigma: Scale) -> tuple[Scale, Scale]:
        """``(a', b')`` with ``a x + b view(x, t) = a' x + b' own(x, t)`` (``own`` the function :meth:`own` gives)
        where the marginal at ``t`` has ``alpha``, ``sigma``: ``(a, b)`` where the model has the view."""
        native = self._route[view][0]
        if native == view:
            return a, b
        p, q = _CONVERSIONS[view, native](alpha, sigma)
        return a + b * p, b * q

    def view(self, view: str, x: torch.Tensor, t: float | torch.Tensor, alpha: Scale = None, sigma: Scale = None):
        """The model's ``view`` (``"score"``, ``"eps"`` or ``"x0"``) at ``(x, t)``: its own output, converted when
        it lacks that view."""
        native, fn = self._route[view]
        if native == view:  # the model's own output: no conversion (the common case, kept short)
            self.nfe += 1
            return _shaped_like(fn(x, self._time(x, t)), x, native)
        p, q, out = self.linear(view, x, t, alpha, sigma)
        if not isinstance(p, torch.Tensor) and p == 0:  # score <-> eps: a rescaling of the output alone
            return scale(out, q)
        return scaled_sum(p, x, q, out)

    def score(self, x: torch.Tensor, t: float | torch.Tensor, alpha: Scale = None, sigma: Scale = None):
        """``grad_x log p_t(x)``."""
        return self.view("score", x, t, alpha, sigma)

    def eps(self, x: torch.Tensor, t: float | torch.Tensor, alpha: Scale = None, sigma: Scale = None):
        """Noise prediction ``eps_hat(x, t)``."""
        return self.view("eps", x, t, alpha, sigma)

    def x0(self, x: torch.Tensor, t: float | torch.Tensor, alpha: Scale = None, sigma: Scale = None):
        """Data prediction ``x0_hat(x, t) = E[x_0 | x_t = x]``."""
        return self.view("x0", x, t, alpha, sigma)

    __call__ = score

    @contextmanager
    def told(self, model_time: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[ModelViews]:
        """Within the block every view asked for at ``(x, t)`` is the model's view at ``(x, model_time(t))``
        (``(B,)`` times): decoupled model times (:mod:`scoresde.sampling.model_times`). A loop that converts the
        model's own output with ``t``'s ``alpha`` and ``sigma`` (:meth:`fold`) still gets the view at the model
        time: the own output is corrected for the difference. Calls still count here. ``None``: the model as is."""
        if model_time is None:
            yield self
            return
        saved = self._route
        self._route = {view: (native, _told(self, view, native, fn, model_time))
                       for view, (native, fn) in saved.items()}  # fmt: skip
        try:
            yield self
        finally:
            self._route = saved

    def __repr__(self) -> str:
        return f"ModelViews({self.model!r}, nfe={self.nfe})"


def _told(model: ModelViews, view: str, native: str, fn: Callable, model_time: Callable) -> Callable:
    """``fn`` told ``model_time(t)``, its output ``o`` returned as ``o'`` with ``p_t x + q_t o' = p_tau x + q_tau o``
    (the conversion of ``native`` to ``view`` at ``t`` then gives the view at ``tau``)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = model_time(t)
        out = _shaped_like(fn(x, tau), x, native)
        if native == view:
            return out
        p_t, q_t = _CONVERSIONS[view, native](*model._scales(x, t, None, None))
        p_tau, q_tau = _CONVERSIONS[view, native](*model._scales(x, tau, None, None))
        return (out * q_tau + x * (p_tau - p_t)) / q_t

    return call


def linear_in_view(
    model: ModelViews, view: str, a: Scale, x: torch.Tensor, b: Scale, t: torch.Tensor, alpha: Scale, sigma: Scale
) -> torch.Tensor:
    """``a x + b view(x, t)`` (one NFE) in two tensor operations: the conversion of the model's own output to
    ``view`` is folded into the two coefficients (:meth:`ModelViews.linear`)."""
    p, q, out = model.linear(view, x, t, alpha, sigma)
    return scaled_sum(a + b * p, x, b * q, out)


#: The counting wrapper of a plain score function (its call is the score view).
CountingScore = ModelViews


def as_views(model, sde: LinearSDE | None) -> ModelViews:
    """``model`` itself when it already is a :class:`ModelViews` (keeping its count), else a new wrapper."""
    if isinstance(model, ModelViews):
        if model.sde is None:
            model.sde = sde
        return model
    return ModelViews(model, sde)


def tweedie_denoise(sde: LinearSDE, model, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """One final denoising step ``E[x_0 | x_t] = (x + sigma^2 s(x, t)) / alpha`` (Tweedie's formula; 1 NFE).

    In the coordinates ``y = x / alpha``, ``sigma_hat = sigma / alpha`` this is the Euler step of the
    probability-flow ODE from ``sigma_hat(t)`` to 0. The model's own ``x0_hat`` is used when it has one.
    """
    return as_views(model, sde).x0(x, t)


def check_finite(x, what: str, hint: str = "") -> None:
    """``x`` must be a floating tensor with finite values (a starting point, a measurement); else a ``ValueError``
    naming ``what`` before any model call (one host read of a reduction: a synchronization on an accelerator)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} holds {bad} NaN / infinite values{hint}")


def check_x_init(x_init, shape: Sequence[int]) -> None:
    """A starting point: a floating tensor of ``shape`` with finite values (:func:`check_finite`)."""
    check_finite(x_init, "x_init")
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")


def initial_state(
    sde: LinearSDE,
    shape: Sequence[int],
    generator: Generator,
    device: torch.device | str | None,
    x_init: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``x_init`` (moved to ``device``) or a draw from the prior ``p_T``."""
    if x_init is not None:
        check_x_init(x_init, shape)
        return x_init.to(device=device) if device is not None else x_init
    return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)


def batch_times(grid: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Every grid time as a ``(B,)`` tensor in ``x``'s dtype and device, built once per run: on the CPU one
    allocation; elsewhere one fill per time, so that no host-to-device copy (a synchronization, which a CUDA graph's
    capture refuses) is made."""
    if x.device.type != "cpu":
        return [torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device) for t in grid.detach().tolist()]
    column = grid.detach().to(dtype=x.dtype)[:, None]
    return list(column.expand(-1, x.shape[0]).contiguous().unbind(0))


@dataclass(frozen=True)
class GridCoords:
    """``alpha``, ``sigma``, ``lambda`` and ``sigma_hat = sigma / alpha`` at every grid time, as float64 tuples
    (hashable: coefficient tables are cached per grid)."""

    times: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    sigma_hat: tuple[float, ...]

    @classmethod
    def of(cls, sde: LinearSDE, grid: torch.Tensor) -> GridCoords:
        return _grid_coords(sde, tuple(grid.detach().to(device="cpu", dtype=torch.float64).tolist()))

    def __len__(self) -> int:
        return len(self.times)


@cached_per_sde
def _grid_coords(sde: LinearSDE, times: tuple[float, ...]) -> GridCoords:
    g = torch.tensor(times, dtype=torch.float64)
    lam = sde.marginal_lambda(g)
    values = (sde.marginal_alpha(g), sde.marginal_std(g), lam, torch.exp(-lam))
    return GridCoords(times, *(tuple(v.tolist()) for v in values))


def grid_conversions(model: ModelViews, view: str, coords: GridCoords) -> list[tuple[float, float]]:
    """``(p, q)`` with ``view = p x + q own`` at every grid time (:meth:`ModelViews.fold`), once per run: the loops
    then call the model's own function (:meth:`ModelViews.own`)."""
    return [model.fold(view, 0.0, 1.0, a, s) for a, s in zip(coords.alpha, coords.sigma, strict=True)]


def start_grid(sde: LinearSDE, model, x: torch.Tensor, grid: torch.Tensor) -> tuple[ModelViews, GridCoords, list]:
    """What a loop over ``grid`` starts from: the model's views, the grid's coordinates and its times as ``(B,)``
    tensors in ``x``'s dtype and device."""
    return as_views(model, sde), GridCoords.of(sde, grid), batch_times(grid, x)


def progress_iter(iterable, enabled: bool | None, desc: str, total: int | None = None):
    """tqdm over ``iterable`` when ``enabled`` (``None``: only when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


class Sampler:
    """Base of the objects ``get_sampler`` builds: they only hold options; ``__call__`` runs the algorithm.

    Subclasses define keyword-only options in ``__init__`` (defaults included) and ``sample(...)``.
    Unknown options raise a ``ValueError`` naming them and the valid ones.
    """

    name: str = ""

    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p != "self"]

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
        model = ModelViews(score_fn, sde)
        self.check(sde)
        x = initial_state(sde, shape, generator, device, x_init, getattr(self, "dtype", None))
        with torch.no_grad():
            samples = self.sample(sde, model, x, generator, callback)
        return SampleResult(samples=samples, nfe=model.nfe)

    def check(self, sde: LinearSDE) -> None:
        """Checks that need the SDE, run before any model call."""

    def sample(
        self, sde: LinearSDE, model: ModelViews, x: torch.Tensor, generator: Generator, callback: StepCallback | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.option_names() if hasattr(self, k))
        return f"{type(self).__name__}({opts})"


class GridSampler(Sampler):
    """A sampler on a fixed time grid: options ``steps``, ``grid`` (a name or the times), ``eps``, ``denoise``.

    ``steps=None`` means the sampler's default (``default_steps``; ``None`` there means ``sde.N``), ``eps=None``
    the SDE's final time. Times given as data fix ``steps`` and ``eps``; a conflicting value is an error.
    """

    default_steps: int | None = None
    default_grid: str = "uniform"
    #: The loop is this library's tensor arithmetic with no host reads, so a CUDA graph can capture it
    #: (:class:`~scoresde.sampling.graphs.GraphedSampler`); ``False`` where a solver library steps it.
    capturable: bool = True
    #: Times the model is told at each grid time (:meth:`with_grid`); ``None``: the grid's own.
    model_times: torch.Tensor | None = None
    _model_time: ModelTimes | None = None

    def __init__(
        self,
        *,
        steps: int | None = None,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.steps = check_steps(steps)
        self.eps = check_final_time(eps)
        self.grid = as_grid_option(grid)
        if isinstance(self.grid, torch.Tensor):
            if self.steps is not None and self.steps != len(self.grid) - 1:
                raise ValueError(f"steps={self.steps} conflicts with a grid of {len(self.grid) - 1} steps")
            if self.eps is not None and abs(self.eps - float(self.grid[-1])) > 1e-12 * self.eps:
                raise ValueError(f"eps={self.eps} conflicts with a grid ending at {float(self.grid[-1])}")
        self.denoise, self.progress, self.dtype = bool(denoise), progress, dtype

    def time_grid(self, sde: LinearSDE) -> torch.Tensor:
        """The float64 CPU times this sampler runs on for ``sde``: its grid, else its default grid, where a default of
        equal steps in time is the SDE's own choice of them (``sde.uniform_time_grid``: EDM's grid on EDM's SDE)."""
        default = self.default_grid
        if default == "uniform":
            default = getattr(sde, "uniform_time_grid", "uniform")
        return resolve_grid(sde, self.grid, self.steps, self.eps, default, self.default_steps,
                            getattr(self, "rho", 7.0))  # fmt: skip

    def check(self, sde: LinearSDE) -> None:
        grid = self.time_grid(sde)  # checked there: given times against the SDE, named grids once when built
        if self.model_times is not None:
            check_model_times(self.model_times, grid, sde)

    def with_grid(self, grid: GridOption, model_times: torch.Tensor | Sequence[float] | None = None) -> GridSampler:
        """A copy of this sampler running on ``grid`` (its ``steps`` / ``eps`` then follow from the times), its model
        told ``model_times`` (one per grid time; :mod:`~scoresde.sampling.model_times`) where given."""
        new = copy.copy(self)
        new.grid, new.steps, new.eps, new.model_times = as_grid_option(grid), None, None, None
        if isinstance(new.grid, torch.Tensor):
            new.eps = float(new.grid[-1])
        if model_times is not None:
            if not isinstance(new.grid, torch.Tensor):
                raise ValueError("model_times need the grid as times (one model time per grid time)")
            new.model_times = check_model_times(model_times, new.grid)
        new._model_time = None
        return new

    def model_time(self, sde: LinearSDE, grid: torch.Tensor) -> ModelTimes | None:
        """The map to the model's times on ``grid`` (``None`` without ``model_times``), kept for the next call."""
        if self.model_times is None:
            return None
        if self._model_time is None or self._model_time.sde is not sde:
            self._model_time = ModelTimes(sde, grid, self.model_times)
        return self._model_time

    def sample(self, sde, model, x, generator, callback):
        grid = self.time_grid(sde)
        with model.told(self.model_time(sde, grid)):
            x = self.run(sde, model, x, grid, generator, callback)
            return model.x0(x, float(grid[-1])) if self.denoise else x

    def run(
        self,
        sde: LinearSDE,
        model: ModelViews,
        x: torch.Tensor,
        grid: torch.Tensor,
        generator: Generator,
        callback: StepCallback | None,
    ) -> torch.Tensor:
        """The algorithm from ``grid[0]`` to ``grid[-1]`` (no final denoising)."""
        raise NotImplementedError

    def final_time(self, sde: LinearSDE) -> float:
        return float(self.grid[-1]) if isinstance(self.grid, torch.Tensor) else final_time(sde, self.eps)
