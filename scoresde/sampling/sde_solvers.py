"""The reverse-time SDE through ``torchsde.sdeint`` (an adapter: torchsde does the stepping).

torchsde integrates forward in time, so the reverse SDE ``dx = [f - g^2 score] dt + g dw`` on ``t: T -> eps`` is
written in ``s = T - t``: ``dy = -[f - g^2 score](y, T - s) ds + g(T - s) dw_s`` with diagonal noise. The Brownian
motion is seeded from the caller's generator (one ``BrownianInterval`` for the batch, or one per sample when a
list of generators is given), so runs are reproducible.
"""

from __future__ import annotations

import torch
import torchsde
from torchsde._brownian.brownian_base import BaseBrownian

from scoresde.sampling.base import GridOption, GridSampler, ModelViews
from scoresde.sde import LinearSDE

METHODS = ("euler", "milstein", "srk")
_LEVY = {"euler": "none", "milstein": "none", "srk": "space-time"}


def _seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else None))


class _PerSampleBrownian(BaseBrownian):
    """A batch of independent Brownian motions, row ``k`` seeded from generator ``k`` (batch-size invariant)."""

    def __init__(self, intervals: list[torchsde.BrownianInterval]):
        self.intervals = intervals

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 - torchsde's names
        outs = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.intervals]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, dim=0) for parts in zip(*outs, strict=True))
        return torch.cat(outs, dim=0)

    def __repr__(self) -> str:
        return f"_PerSampleBrownian(n={len(self.intervals)})"

    @property
    def dtype(self):
        return self.intervals[0].dtype

    @property
    def device(self):
        return self.intervals[0].device

    @property
    def shape(self):
        return (len(self.intervals), *self.intervals[0].shape[1:])

    @property
    def levy_area_approximation(self):
        return self.intervals[0].levy_area_approximation


class _ReverseTime(torch.nn.Module):
    """The reverse SDE in forward time ``s = T - t`` on flattened states ``(B, D)``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde: LinearSDE, score: ModelViews, shape: tuple[int, ...], eps: float):
        super().__init__()
        self.sde, self.shape, self.eps = sde, shape, eps
        self.reverse = sde.reverse(score)  # the reverse SDE's drift f x - g^2 score (Eq. 6), the SDE's own
        self._last: tuple | None = None  # torchsde checks shapes with f(t0, y0), then steps from (t0, y0) again
        self._time: tuple | None = None  # (s, t, g) at the last time asked: torchsde asks for f and g (twice) there

    def _at(self, s: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The time ``t = T - s`` (0-d, clamped to ``[eps, T]``) and ``g(t)`` expanded to ``y`` (the schedule sees the
        time as ``(1,)``, the shape schedules are written for)."""
        key = float(s)
        if self._time is None or self._time[0] != key:
            t = torch.tensor(min(max(self.sde.T - key, self.eps), self.sde.T), dtype=y.dtype, device=y.device)
            self._time = (key, t, torch.sqrt(self.sde.diffusion_sq(t.reshape(1))).expand_as(y))
        return self._time[1], self._time[2]

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        key = (float(s), y.data_ptr(), y._version)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        t = self._at(s, y)[0]
        out = self.reverse.drift(y.reshape(self.shape), t).reshape(y.shape).neg_()
        self._last = (key, out)
        return out

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._at(s, y)[1]


class SDEIntSampler(GridSampler):
    """``sdeint``: reverse-time SDE with torchsde's Itô solvers (``euler``, ``milstein``, ``srk``), one solver step per
    interval of the time ``grid`` (``steps``, default ``sde.N``, of a named grid — uniform by default — or the
    times themselves). ``euler`` costs 1 model call per step, ``milstein`` 1 (derivative-free in the
    state-independent noise), ``srk`` 4."""

    name = "sdeint"
    default_steps = None
    default_grid = "uniform"
    capturable = False  # torchsde steps it (its Brownian motion is drawn and cached on the host side)

    def __init__(
        self,
        *,
        method: str = "euler",
        steps: int | None = None,
        grid: GridOption = None,
        eps: float | None = None,
        denoise: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {METHODS}")
        super().__init__(steps=steps, grid=grid, eps=eps, denoise=denoise, dtype=dtype)
        self.method = method

    def run(self, sde, model, x, grid, generator, callback):
        eps = float(grid[-1])
        y0 = x.reshape(x.shape[0], -1)
        span = sde.T - eps
        kw = dict(t0=0.0, t1=span, dtype=y0.dtype, device=y0.device, levy_area_approximation=_LEVY[self.method])
        if generator is None or isinstance(generator, torch.Generator):
            bm = torchsde.BrownianInterval(size=y0.shape, entropy=_seed(generator), **kw)
        else:
            bm = _PerSampleBrownian(
                [torchsde.BrownianInterval(size=(1, y0.shape[1]), entropy=_seed(g), **kw) for g in generator]
            )
        # torchsde runs forward in s = T - t. Its fixed-step solvers do not stop on intermediate output times (they
        # interpolate), so a uniform grid is one call with steps a hair longer than span / n (the last one clipped to
        # the end), and any other grid one call per interval (one step each). The Brownian motion is shared.
        ts = (sde.T - grid.to(torch.float64)).clamp(0.0, span).tolist()
        ts[0], ts[-1] = 0.0, span
        gaps = torch.tensor(ts, dtype=torch.float64).diff()  # float32 gaps round the longest below its interval
        if torch.allclose(gaps, gaps.mean(), rtol=1e-9, atol=0):
            ts = [0.0, span]
        options = {"grad_free": True} if self.method == "milstein" else None
        field = _ReverseTime(sde, model, tuple(x.shape), eps)
        dt = float(gaps.max()) * (1 + 1e-9)
        y = y0
        for s0, s1 in zip(ts[:-1], ts[1:], strict=True):
            interval = torch.tensor([s0, s1], dtype=torch.float64, device=y0.device)
            y = torchsde.sdeint(field, y, interval, bm=bm, method=self.method, dt=dt, options=options)[-1]
        return y.reshape(x.shape)
