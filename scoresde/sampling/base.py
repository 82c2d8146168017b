"""What every sampler shares: the result type, NFE counting, the starting point and the option check."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scoresde.sde import LinearSDE
from scoresde.utils import Generator, batch_broadcast

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    """Output of a sampler: ``samples`` shaped as asked, ``nfe`` the number of ``score_fn`` calls made."""

    samples: torch.Tensor
    nfe: int


class CountingScore:
    """Wraps a score function and counts its calls (each call is on the whole batch): NFE by construction."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.score_fn(x, t)


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
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
        return x_init.to(device=device) if device is not None else x_init
    return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)


def full_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A time value as a ``(B,)`` tensor matching ``x``."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()


def tweedie_denoise(sde: LinearSDE, score: ScoreFn, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """One final denoising step ``E[x_0 | x_t] = (x + sigma^2 s(x, t)) / alpha`` (Tweedie's formula; 1 NFE).

    In the coordinates ``y = x / alpha``, ``sigma_hat = sigma / alpha`` this is the Euler step of the
    probability-flow ODE from ``sigma_hat(t)`` to 0.
    """
    tt = full_time(t, x)
    sigma = batch_broadcast(sde.marginal_std(tt), x)
    alpha = batch_broadcast(sde.marginal_alpha(tt), x)
    return (x + sigma**2 * score(x, tt)) / alpha


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
        score_fn: ScoreFn,
        shape: Sequence[int],
        generator: Generator = None,
        device: torch.device | str | None = None,
        x_init: torch.Tensor | None = None,
    ) -> SampleResult:
        score = CountingScore(score_fn)
        dtype = getattr(self, "dtype", None)
        x = initial_state(sde, shape, generator, device, x_init, dtype)
        with torch.no_grad():
            samples = self.sample(sde, score, x, generator)
        return SampleResult(samples=samples, nfe=score.nfe)

    def sample(self, sde: LinearSDE, score: CountingScore, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.option_names() if hasattr(self, k))
        return f"{type(self).__name__}({opts})"
