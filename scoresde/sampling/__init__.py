"""Samplers behind one interface (CONTRACT): ``get_sampler(name, **options)(sde, score_fn, shape, ...)``.

Every sampler returns a :class:`SampleResult` with ``samples`` and ``nfe``, the exact number of model calls
(counted by a wrapper, the final denoising step included). The algorithms are also plain functions of
``(sde, model, x, grid, generator, callback)`` (``sample_ddim``, ``sample_dpm_solver``, ``sample_unipc``, ...), and
a grid can be fitted to a sampler and a model (:func:`optimize_grid`). On a GPU, :class:`GraphedSampler` replays a
fixed-step sampler's whole loop as one CUDA graph.
"""

from __future__ import annotations

from scoresde.sampling.base import (
    CountingScore,
    GridSampler,
    ModelViews,
    Sampler,
    SampleResult,
    tweedie_denoise,
)
from scoresde.sampling.ddim import DDIMSampler, sample_ddim
from scoresde.sampling.dpm_solver import DPMSolverSampler, sample_dpm_solver
from scoresde.sampling.fitted_grids import GridFit, fit_grid, fit_or_load_grid, optimize_grid
from scoresde.sampling.graphs import GraphedSampler
from scoresde.sampling.grids import GRIDS, load_grid, time_grid
from scoresde.sampling.heun import HeunSampler, sample_heun
from scoresde.sampling.ode import ODESampler, ScipyODESampler
from scoresde.sampling.pc import (
    AncestralSampler,
    EulerMaruyamaSampler,
    PCSampler,
    ReverseDiffusionSampler,
    sample_pc,
)
from scoresde.sampling.pndm import PNDMSampler, sample_pndm
from scoresde.sampling.sde_solvers import SDEIntSampler
from scoresde.sampling.unipc import UniPCSampler, sample_unipc

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        EulerMaruyamaSampler,
        ReverseDiffusionSampler,
        AncestralSampler,
        PCSampler,
        ODESampler,
        ScipyODESampler,
        SDEIntSampler,
        PNDMSampler,
        DDIMSampler,
        HeunSampler,
        DPMSolverSampler,
        UniPCSampler,
    )
}


def get_sampler(name: str, **options) -> Sampler:
    """Build the sampler ``name`` with its options; an unknown name or option raises ``ValueError`` naming it."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    cls = SAMPLERS[name]
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; valid options: {valid}")
    _check_option_types(cls, name, options)
    try:
        return cls(**options)
    except TypeError as err:  # a value of the wrong kind deep in a check
        raise ValueError(f"sampler {name!r}: bad option value ({err})") from None


def _check_option_types(cls: type, name: str, options: dict) -> None:
    """A text where a number or flag is expected (``sampler.steps=abc`` from a command line) is named before use."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        hint = str(params[key].annotation)
        if isinstance(value, str) and not any(word in hint for word in ("str", "Grid", "Any")):
            raise ValueError(f"sampler {name!r}: option {key}={value!r} must be {hint}, not text")


def sampler_from_config(config) -> Sampler:
    """Build a sampler from a mapping ``{"name": ..., **options}`` (e.g. a ``conf/sampler/*.yaml`` group) or a bare
    name (its defaults). ``grid`` may be a grid name, a list of times or the path of a saved grid (``.pt``,
    ``.npy``)."""
    options = {"name": config} if isinstance(config, str) else dict(config)
    if "name" not in options:
        raise ValueError(f"sampler config needs a 'name' key (one of {sorted(SAMPLERS)}); got keys {sorted(options)}")
    return get_sampler(options.pop("name"), **options)


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sampler_from_config",
    "SampleResult",
    "Sampler",
    "GridSampler",
    "GraphedSampler",
    "ModelViews",
    "CountingScore",
    "time_grid",
    "load_grid",
    "GRIDS",
    "tweedie_denoise",
    "optimize_grid",
    "fit_grid",
    "fit_or_load_grid",
    "GridFit",
    "sample_pc",
    "sample_ddim",
    "sample_pndm",
    "sample_heun",
    "sample_dpm_solver",
    "sample_unipc",
]
