"""Time grids as data: decreasing times ``T = t_0 > t_1 > ... > t_n = eps`` for fixed-step samplers (CONTRACT).

A grid is either a name or the times themselves (a 1-D sequence / tensor, or a ``.pt`` / ``.npy`` file holding
one). Named grids are defined through the SDE's own members (``marginal_lambda`` and ``inverse_lambda``), so they
work for VP, sub-VP, VE and any ``LinearSDE`` alike, whatever its ``T``:

* ``uniform``   — uniform in ``t`` (Song et al. 2021);
* ``quadratic`` — ``t = eps + (T - eps) u^2`` for uniform ``u`` (denser near the data; Song, Meng & Ermon 2021);
* ``edm``       — Karras et al. (2022), Eq. 5: ``sigma_hat^(1/rho)`` uniform, ``sigma_hat = sigma / alpha``,
  ``rho = 7``;
* ``logsnr``    — uniform in ``lambda = log(alpha / sigma)`` (Lu et al. 2022, DPM-Solver; k-diffusion's
  "exponential" sigmas);
* ``logistic``  — uniform in ``sigma_c / (sigma_c + sigma_hat)`` with ``sigma_c = e^(-1/2) = 0.61`` (a typical data
  scale), i.e. ``lambda`` at the quantiles of a logistic distribution centred at ``1/2``: denser than ``logsnr``
  where ``sigma_hat`` is near the data scale, sparser at both ends. Measured best for few-step UniPC on exact
  mixture scores (benchmarks/bench_samplers.py; on the trained digits model ``logsnr`` is better from 6 steps).

The final time ``eps`` defaults to the SDE's own ``sde.eps`` where it defines one, else ``1e-3``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scoresde.sde import LinearSDE

GRIDS = ("uniform", "quadratic", "edm", "logsnr", "logistic")
LOGISTIC_CENTER = 0.5  # lambda at the centre of the logistic grid: sigma_hat = e^(-1/2)
GRID_FILE_SUFFIXES = (".pt", ".npy")
DEFAULT_FINAL_TIME = 1e-3
CACHE_SIZE = 128  # grids (and their coefficient tables) remembered per cached builder

GridOption = str | Sequence[float] | torch.Tensor | np.ndarray | None


def sde_fingerprint(sde: LinearSDE) -> tuple | None:
    """A hashable value that fixes ``sde``'s schedule: its class and its instance attributes, where these are all
    plain numbers or strings (``None`` otherwise, e.g. an SDE holding a tensor: its tables are then not cached)."""
    state = getattr(sde, "__dict__", None)
    if state is None or not all(isinstance(v, (int, float, str, bool, type(None))) for v in state.values()):
        return None
    return type(sde), tuple(state.items())  # (unsorted: another order is another key, never a wrong one)


def cached_per_sde(build):
    """Memoize ``build(sde, *args)`` (hashable ``args``, an immutable result) on the SDE's :func:`sde_fingerprint`:
    a grid's times and schedule coefficients are computed once however many batches are sampled on it, and an SDE
    whose parameters change gets new ones."""
    table: dict = {}

    @functools.wraps(build)
    def cached(sde: LinearSDE, *args):
        fingerprint = sde_fingerprint(sde)
        if fingerprint is None:
            return build(sde, *args)
        key = (fingerprint, args)
        if key not in table:
            if len(table) >= CACHE_SIZE:
                table.pop(next(iter(table)))  # the oldest entry
            table[key] = build(sde, *args)
        return table[key]

    cached.cache_clear = table.clear
    return cached


def final_time(sde: LinearSDE, eps: float | None = None) -> float:
    """``eps`` when given, else the SDE's own final time ``sde.eps`` (EDM: 0.002), else ``1e-3``."""
    return float(getattr(sde, "eps", DEFAULT_FINAL_TIME)) if eps is None else float(eps)


def check_steps(steps, option: str = "steps") -> int | None:
    """``None`` (the sampler's default) or an integer ``>= 1``; else a ``ValueError`` naming ``option``."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not float(steps).is_integer():
        raise ValueError(f"{option} must be a positive integer (or null for the default), got {steps!r}")
    if int(steps) < 1:
        raise ValueError(f"{option} must be >= 1 (or null for the default), got {steps!r}")
    return int(steps)


def final_time_below_T(sde: LinearSDE, eps: float | None = None) -> float:
    """:func:`final_time`, checked to lie below ``sde.T`` (an integration runs from ``T`` down to it)."""
    eps = final_time(sde, eps)
    if not eps < sde.T:
        raise ValueError(f"eps (the final time) must be < T = {sde.T}, got {eps}")
    return eps


def check_final_time(eps, option: str = "eps") -> float | None:
    """``None`` (the SDE's default) or a finite time ``> 0``."""
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{option} (the final time) must be a finite number > 0 (or null for the SDE's), got {eps!r}")
    return float(eps)


def check_grid(grid: torch.Tensor, sde: LinearSDE | None = None, source: str = "grid") -> torch.Tensor:
    """A valid grid as a 1-D float64 CPU tensor: at least 2 finite times, strictly decreasing, ending above 0, and
    (given ``sde``) starting at ``sde.T``. ``source`` names the option or file in the error."""
    g = torch.as_tensor(grid).detach()
    if not (g.is_floating_point() or g.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{source} must hold real times, got dtype {g.dtype}")
    g = g.to(device="cpu", dtype=torch.float64)
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"{source} must be a 1-D sequence of at least 2 times (T, ..., eps), got {tuple(g.shape)}")
    times = g.tolist()  # checked as Python floats: a handful of tensor operations costs more on short grids
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"{source} contains NaN or inf: {times}")
    if not all(b < a for a, b in zip(times[:-1], times[1:], strict=True)):
        raise ValueError(f"{source} must be strictly decreasing from T to the final time, got {times}")
    if times[-1] <= 0:
        raise ValueError(f"{source} must end at a final time > 0, got {times[-1]}")
    if sde is not None and not math.isclose(times[0], float(sde.T), rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{source} must start at the SDE's T = {sde.T}, got {times[0]}")
    return g


def load_grid(path: str | Path) -> torch.Tensor:
    """A grid saved as a 1-D tensor in ``.pt`` (read with ``weights_only=True``) or a 1-D array in ``.npy`` (read
    without pickle). A file that is not such a grid raises ``ValueError`` naming it."""
    p = Path(path)
    if p.suffix not in GRID_FILE_SUFFIXES:
        raise ValueError(f"grid file {p} must end in one of {GRID_FILE_SUFFIXES}")
    if not p.is_file():
        raise ValueError(f"grid file {p} does not exist")
    try:
        if p.suffix == ".npy":
            data = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not a plain tensor/array: say which file
        raise ValueError(f"grid file {p} is not a saved 1-D tensor / array: {err}") from err
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"grid file {p} holds a {type(data).__name__}, not a 1-D tensor of times")
    return check_grid(data, source=f"grid file {p}")


def as_grid_option(grid: GridOption) -> str | torch.Tensor | None:
    """Normalize a ``grid`` option: ``None``, a grid name, a path to a saved grid (loaded), or times (validated)."""
    if grid is None:
        return None
    if isinstance(grid, (str, Path)):
        name = str(grid)
        if name in GRIDS:
            return name
        if Path(name).suffix in GRID_FILE_SUFFIXES:
            return load_grid(name)
        raise ValueError(f"unknown time grid {name!r}; choose one of {GRIDS}, a .pt / .npy file or a 1-D tensor")
    return check_grid(torch.as_tensor(np.asarray(grid) if isinstance(grid, Sequence) else grid))


def time_grid(
    sde: LinearSDE,
    steps: int,
    eps: float | None = None,
    kind: str = "uniform",
    rho: float = 7.0,
    T: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``steps + 1`` decreasing times of the named grid ``kind`` from ``T`` (default ``sde.T``) to ``eps``."""
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {GRIDS}")
    steps = check_steps(steps)
    if steps is None:
        raise ValueError("steps must be given to build a named grid")
    T = float(sde.T) if T is None else float(T)
    eps = final_time(sde, eps)
    if not 0 < eps < T:
        raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)  # 0 at T, 1 at eps
    ends = torch.tensor([T, eps], dtype=torch.float64)
    if kind == "uniform":
        t = T + (eps - T) * u
    elif kind == "quadratic":
        t = eps + (T - eps) * (1 - u) ** 2
    else:
        lam_T, lam_eps = sde.marginal_lambda(ends)
        if kind == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * u
        elif kind == "logistic":  # v = sigmoid(lambda - c) uniform
            v_T, v_eps = torch.sigmoid(lam_T - LOGISTIC_CENTER), torch.sigmoid(lam_eps - LOGISTIC_CENTER)
            v = v_T + (v_eps - v_T) * u
            lam = LOGISTIC_CENTER + torch.log(v) - torch.log1p(-v)
        else:  # edm: sigma_hat = exp(-lambda)
            s_max, s_min = torch.exp(-lam_T) ** (1 / rho), torch.exp(-lam_eps) ** (1 / rho)
            lam = -rho * torch.log(s_max + (s_min - s_max) * u)
        t = sde.inverse_lambda(lam)
    t[0], t[-1] = T, eps  # exact end points
    return t.to(device=device, dtype=dtype)


def resolve_grid(
    sde: LinearSDE,
    grid: str | torch.Tensor | None,
    steps: int | None,
    eps: float | None,
    default_grid: str,
    default_steps: int | None,
    rho: float = 7.0,
) -> torch.Tensor:
    """The float64 CPU grid a sampler runs on: the given times (checked to start at ``sde.T``) or the named grid
    with ``steps`` (default ``default_steps``, ``None`` meaning ``sde.N``) from ``T`` to the final time."""
    if isinstance(grid, torch.Tensor):
        return check_grid(grid, sde)
    n = steps if steps is not None else (default_steps if default_steps is not None else sde.N)
    eps = final_time_below_T(sde, eps)
    return _named_grid(sde, grid or default_grid, n, eps, rho).clone()  # a copy: callers may change theirs


@cached_per_sde
def _named_grid(sde: LinearSDE, kind: str, steps: int, eps: float, rho: float) -> torch.Tensor:
    return check_grid(time_grid(sde, steps, eps, kind, rho=rho), sde, f"the {kind} grid of {steps} steps")
