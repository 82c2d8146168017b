"""Fitted time grids: the interior times of a grid chosen so that a given sampler, at a given step count, lands
where the exact probability-flow ODE does (in the spirit of "learning to discretize", Tong et al. 2024, with a
derivative-free optimizer instead of back-propagation through the sampler).

From start points ``x_init`` (draws of the prior) a teacher — an adaptive ODE solve at tight tolerance — gives
the ODE's end points at the final time. The grid's times are parameterized by their increments in
``lambda = log(alpha / sigma)``, ``lambda_k = lambda_T + (lambda_eps - lambda_T) cumsum(softmax(0, theta))_k``, so
every parameter vector is an ordered grid from ``T`` to the final time; Nelder–Mead minimizes the log RMS distance
between the sampler's end points (no final denoising) and the teacher's on part of the start points, and the rest
checks the result: a fit that does not beat the start grid on those held-out points is not used. With
``fit_model_times`` a second Nelder–Mead fits the grid and the model times (:mod:`~scoresde.sampling.model_times`,
as ``lambda``-shifts of the grid's) together, from the chosen grid; they are used where they beat it there.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.optimize
import torch

from scoresde.checkpoint import atomic_save
from scoresde.sampling.base import GridSampler, ModelViews, check_finite
from scoresde.sampling.grids import check_grid
from scoresde.sampling.model_times import ModelTimes, check_model_times
from scoresde.sampling.ode import ODESampler
from scoresde.sampling.pc import pc_settings
from scoresde.sde import LinearSDE

CACHE_VERSION = 2  # 2: the key says whether model times were fitted


@dataclass
class GridFit:
    """A fitted grid and what the fit measured (errors are RMS end-point distances to the teacher, relative to
    the RMS size of the teacher's end points)."""

    grid: torch.Tensor  # float64: T, ..., final time; the start grid when the fit did not help on held-out points
    start_grid: torch.Tensor
    fit_nfe: int  # model calls of the fit itself (teacher, optimizer, checks): not the sampler's NFE
    train_error: tuple[float, float]  # (start grid, fitted grid) on the fit points
    heldout_error: tuple[float, float]  # (start grid, fitted grid) on the held-out points
    improved: bool
    #: With ``fit_model_times``: the times the model is told at each time of ``grid``, fitted together with it
    #: (``sampler.with_grid(grid, model_times)``); ``None`` (and ``grid`` the grid alone) when the pair did not beat
    #: the grid alone on the held-out points, or without ``fit_model_times``.
    model_times: torch.Tensor | None = None
    #: ``(grid alone, grid and model times)`` on the held-out points, when model times were fitted.
    model_times_heldout_error: tuple[float, float] | None = None


def is_deterministic(sampler: GridSampler, sde: LinearSDE | None = None) -> bool:
    """Whether ``sampler`` solves the probability-flow ODE (no noise draws). ``pc``'s predictor and corrector left
    to the SDE's defaults (``None``) are resolved with ``sde``'s (without it they count as not deterministic)."""
    if isinstance(sampler, ODESampler):
        return sampler.method not in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
    noisy = getattr(sampler, "eta", 0.0) > 0 or getattr(sampler, "s_churn", 0.0) > 0
    if hasattr(sampler, "predictor"):  # predictor-corrector family: only the probability-flow predictors
        predictor, corrector = sampler.predictor, getattr(sampler, "corrector", "none")
        if sde is not None and (predictor is None or corrector is None):
            settings = pc_settings(sde, predictor, corrector, None)
            predictor, corrector = settings["predictor"], settings["corrector"]
        pc_det = getattr(sampler, "probability_flow", False) and corrector == "none"
        return pc_det and predictor not in ("ancestral", None)
    return sampler.name not in ("sdeint",) and not noisy


def lambda_grid(sde: LinearSDE, theta: np.ndarray, lam_start: float, lam_end: float) -> torch.Tensor:
    """The grid whose ``lambda`` increments are ``softmax(0, theta)`` of the span, from ``T`` to the final time."""
    logits = np.concatenate([[0.0], theta])
    frac = np.exp(logits - logits.max())
    cum = np.concatenate([[0.0], np.cumsum(frac / frac.sum())])
    lam = torch.tensor(lam_start + (lam_end - lam_start) * cum, dtype=torch.float64)
    times = sde.inverse_lambda(lam)
    return times


def theta_of_grid(sde: LinearSDE, grid: torch.Tensor) -> np.ndarray:
    """The parameters of :func:`lambda_grid` that reproduce ``grid``."""
    inc = np.diff(sde.marginal_lambda(grid.to(torch.float64)).numpy())
    return np.log(inc[1:] / inc[0])


def _check_fit_inputs(sde: LinearSDE, sampler: GridSampler, x_init: torch.Tensor, heldout: float) -> torch.Tensor:
    """Refuse what cannot be fitted, before any model call; the sampler's start grid otherwise."""
    if not isinstance(sampler, GridSampler) or not is_deterministic(sampler, sde):
        raise ValueError(f"a grid can be fitted only for a deterministic fixed-step sampler, got {sampler!r}")
    if not isinstance(x_init, torch.Tensor) or x_init.ndim < 2 or x_init.shape[0] < 4:
        got = tuple(x_init.shape) if isinstance(x_init, torch.Tensor) else type(x_init).__name__
        raise ValueError(f"x_init must be a batch of at least 4 start points, got {got}")
    check_finite(x_init, "x_init")
    if not 0 < heldout < 1:
        raise ValueError(f"heldout must be a fraction in (0, 1), got {heldout}")
    start = sampler.time_grid(sde)
    if len(start) - 1 < 2:
        raise ValueError("a grid of 1 step has no interior time to fit")
    return start


def _nelder_mead(objective, theta0: np.ndarray, max_evals: int, step: float = 0.5, tol: float = 1e-3) -> np.ndarray:
    """SciPy's adaptive Nelder–Mead from ``theta0`` with a simplex of ``step``-unit steps; its best point."""
    simplex = np.vstack([theta0, theta0 + step * np.eye(len(theta0))])
    options = {"maxfev": max_evals, "initial_simplex": simplex, "xatol": tol, "fatol": tol, "adaptive": True}
    return scipy.optimize.minimize(objective, theta0, method="Nelder-Mead", options=options).x


def fit_grid(
    sde: LinearSDE,
    score_fn,
    sampler: GridSampler,
    x_init: torch.Tensor,
    *,
    heldout: float = 0.25,
    teacher_tol: float | None = None,
    max_evals: int | None = None,
    fit_model_times: bool = False,
) -> GridFit:
    """Fit the interior times of ``sampler``'s grid (its ``steps`` / ``eps`` / start grid) on ``x_init``.

    ``heldout``: fraction of the start points kept out of the fit to check it. ``teacher_tol``: rtol = atol of the
    teacher's dopri5 (default 1e-6 in float32, 1e-9 in float64). ``max_evals``: sampler runs the optimizer may make
    (default ``150 * (steps - 1)``). ``fit_model_times``: then fit the time the model is told at each grid time but
    the last (:mod:`~scoresde.sampling.model_times`) together with the grid, from the fitted grid (another
    ``150 * (2 steps - 1)`` runs by default); grid and model times replace the grid alone where they beat it on the
    held-out points.
    """
    start = _check_fit_inputs(sde, sampler, x_init, heldout)
    steps = len(start) - 1
    model = ModelViews(score_fn, sde)
    final = float(start[-1])
    tol = teacher_tol or (1e-9 if x_init.dtype == torch.float64 else 1e-6)
    teacher = ODESampler(method="dopri5", rtol=tol, atol=tol, eps=final, denoise=False)
    n_hold = max(1, int(round(heldout * x_init.shape[0])))
    with torch.no_grad():
        target = teacher.sample(sde, model, x_init, None, None)
        scale = float(target.pow(2).mean().sqrt())

        def error(grid: torch.Tensor, part: slice, model_times: torch.Tensor | None = None) -> float:
            told = None if model_times is None else ModelTimes(sde, grid, model_times)
            with model.told(told):
                out = sampler.run(sde, model, x_init[part], grid, None, None)
            err = float((out - target[part]).pow(2).mean().sqrt()) / scale
            return err if math.isfinite(err) else 1e6

        fit_part, hold_part = slice(0, x_init.shape[0] - n_hold), slice(x_init.shape[0] - n_hold, None)
        lam_start, lam_end = (float(v) for v in sde.marginal_lambda(start[[0, -1]]))

        def grid_of(theta: np.ndarray) -> torch.Tensor:
            g = lambda_grid(sde, theta, lam_start, lam_end)
            g[0], g[-1] = float(start[0]), final
            return g

        def log_error(params: np.ndarray) -> float:  # the grid's parameters, then any model times' lambda-shifts
            grid = grid_of(params[: steps - 1])
            told = model_times_of(sde, grid, params[steps - 1 :]) if len(params) > steps - 1 else None
            return math.log(error(grid, fit_part, told))

        theta = _nelder_mead(log_error, theta_of_grid(sde, start), max_evals or 150 * (steps - 1))
        fitted = grid_of(theta)
        train = (error(start, fit_part), error(fitted, fit_part))
        hold = (error(start, hold_part), error(fitted, hold_part))
        improved = hold[1] < hold[0]
        grid = check_grid(fitted if improved else start, sde)
        model_times = times_hold = None
        if fit_model_times:  # grid and model times together, from the chosen grid and no shifts
            params = np.concatenate([theta if improved else theta_of_grid(sde, start), np.zeros(steps)])
            params = _nelder_mead(log_error, params, max_evals or 150 * (2 * steps - 1), step=0.1, tol=1e-4)
            both = grid_of(params[: steps - 1])
            told = model_times_of(sde, both, params[steps - 1 :])
            times_hold = (min(hold), error(both, hold_part, told))
            if times_hold[1] < times_hold[0]:
                grid, model_times = check_grid(both, sde), told
    return GridFit(grid, start, model.nfe, train, hold, improved, model_times, times_hold)


def model_times_of(sde: LinearSDE, grid: torch.Tensor, shift: np.ndarray) -> torch.Tensor:
    """The model times whose ``lambda`` is the grid's plus ``shift`` (one per grid time but the last, which keeps its
    own), each kept inside the grid's ``lambda`` range (the times the model was trained on)."""
    lam = sde.marginal_lambda(grid.to(torch.float64))
    told = (lam[:-1] + torch.as_tensor(shift, dtype=torch.float64)).clamp(float(lam[0]), float(lam[-1]))
    times = torch.cat([sde.inverse_lambda(told).to(torch.float64), grid[-1:].to(torch.float64)])
    return times.clamp(max=float(grid[0]))


def optimize_grid(sde: LinearSDE, score_fn, sampler: GridSampler, x_init: torch.Tensor, **options) -> torch.Tensor:
    """A grid for ``sampler`` (its step count and final time) fitted on the start points ``x_init`` against an
    accurate solution of the same ODE (CONTRACT); a 1-D float64 tensor ``T, ..., eps`` for ``grid=``. The fit's own
    model calls are not the sampler's NFE (see :func:`fit_grid` for them and the errors)."""
    return fit_grid(sde, score_fn, sampler, x_init, **options).grid


def weights_digest(model) -> str | None:
    """SHA-256 of a module's parameters and buffers (``None`` for a plain function)."""
    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fit_key(
    sde: LinearSDE,
    score_fn,
    sampler: GridSampler,
    data_shape,
    seed: int,
    n: int,
    dtype,
    max_evals: int | None,
    fit_model_times: bool = False,
) -> dict:
    """Everything a fitted grid depends on (JSON-serializable: the sampler's options with a grid as its times)."""

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)

    options = {k: plain(getattr(sampler, k)) for k in sampler.option_names() if k != "progress" and hasattr(sampler, k)}
    return {"version": CACHE_VERSION, "sampler": sampler.name, "options": options, "sde": repr(sde),
            "data_shape": list(data_shape), "seed": int(seed), "n": int(n), "dtype": str(dtype),
            "max_evals": max_evals, "weights": weights_digest(score_fn),
            "fit_model_times": bool(fit_model_times)}  # fmt: skip


def _read_cache(path: Path, key: str, sde: LinearSDE, steps: int, final: float) -> dict | None:
    """The cached fit at ``path`` when it is a valid record of this key, else ``None`` (with a warning if present)."""
    if not path.exists():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(record, dict) or record.get("key") != key:
            raise ValueError("it records a different fit")
        grid = check_grid(record["grid"], sde, source=f"cached grid {path}")
        if len(grid) != steps + 1 or not math.isclose(float(grid[-1]), final, rel_tol=1e-9):
            raise ValueError(f"its grid has {len(grid) - 1} steps ending at {float(grid[-1])}")
        times = record.get("model_times")
        times = None if times is None else check_model_times(times, grid, sde)
        return {"grid": grid, "fit_nfe": int(record["fit_nfe"]), "model_times": times}
    except Exception as err:  # a cache file is data: never trust it blindly
        warnings.warn(f"ignoring the cached grid {path}: {err}; fitting again", stacklevel=3)
        return None


class FittedGrid(NamedTuple):
    """What :func:`fit_or_load_grid` gives: ``sampler.with_grid(grid, model_times)`` samples on it."""

    grid: torch.Tensor
    fit_nfe: int  # the fit's model calls; 0 when loaded from the cache
    cached: bool
    model_times: torch.Tensor | None


def fit_or_load_grid(
    cache_dir: str | Path,
    sde: LinearSDE,
    score_fn,
    sampler: GridSampler,
    data_shape,
    seed: int = 0,
    device: torch.device | str | None = None,
    n: int = 256,
    dtype: torch.dtype = torch.float32,
    max_evals: int | None = None,
    fit_model_times: bool = False,
) -> FittedGrid:
    """``(grid, fit_nfe, cached, model_times)``: the fitted grid of ``sampler`` for this model, loaded from
    ``cache_dir`` when a valid record of the same fit exists, else fitted on ``n`` prior draws seeded by ``seed``
    (``data_shape`` is the shape of one sample; ``max_evals`` and ``fit_model_times`` as :func:`fit_grid`'s) and saved
    there. ``fit_nfe`` is the fit's model calls (0 when loaded); ``model_times`` ``None`` unless fitted and kept. The
    cache key holds the sampler and its options, the SDE, the seed, ``n``, the dtype, ``max_evals``,
    ``fit_model_times`` and a SHA-256 of the model's weights (for an ``nn.Module``)."""
    key_dict = fit_key(sde, score_fn, sampler, data_shape, seed, n, dtype, max_evals, fit_model_times)
    key = json.dumps(key_dict, sort_keys=True)
    start = sampler.time_grid(sde)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"grid_{sampler.name}_{len(start) - 1}steps_{digest}.pt"
    cached = _read_cache(path, key, sde, len(start) - 1, float(start[-1]))
    if cached is not None:
        return FittedGrid(cached["grid"], 0, True, cached["model_times"])
    gen = torch.Generator().manual_seed(int(seed))
    x_init = sde.prior_sampling((int(n), *data_shape), generator=gen, dtype=dtype).to(device)
    fit = fit_grid(sde, score_fn, sampler, x_init, max_evals=max_evals, fit_model_times=fit_model_times)
    record = {"key": key, "grid": fit.grid, "fit_nfe": fit.fit_nfe, "improved": fit.improved,
              "heldout_error": list(fit.heldout_error), "model_times": fit.model_times}  # fmt: skip
    atomic_save(record, path)
    return FittedGrid(fit.grid, fit.fit_nfe, False, fit.model_times)
