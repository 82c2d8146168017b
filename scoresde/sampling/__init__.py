"""Samplers behind one interface (CONTRACT): ``get_sampler(name, **options)(sde, score_fn, shape, ...)``.

Every sampler returns a :class:`SampleResult` with ``samples`` and ``nfe``, the exact number of ``score_fn``
calls (counted by a wrapper, the final denoising step included).
"""

from __future__ import annotations

from scoresde.sampling.base import CountingScore, Sampler, SampleResult, tweedie_denoise
from scoresde.sampling.grids import GRIDS, time_grid
from scoresde.sampling.multistep import DDIMSampler, DPMSolverSampler, HeunSampler, PNDMSampler
from scoresde.sampling.ode import ODESampler, ScipyODESampler
from scoresde.sampling.pc import AncestralSampler, EulerMaruyamaSampler, PCSampler, ReverseDiffusionSampler
from scoresde.sampling.sde_solvers import SDEIntSampler

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
    return cls(**options)


def sampler_from_config(config) -> Sampler:
    """Build a sampler from a mapping ``{"name": ..., **options}`` (e.g. a ``conf/sampler/*.yaml`` group)."""
    options = dict(config)
    if "name" not in options:
        raise ValueError(f"sampler config needs a 'name' key (one of {sorted(SAMPLERS)}); got keys {sorted(options)}")
    return get_sampler(options.pop("name"), **options)


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "SampleResult",
    "Sampler",
    "CountingScore",
    "time_grid",
    "GRIDS",
    "tweedie_denoise",
]
