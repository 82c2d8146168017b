"""scoresde: continuous-time score-based generative modeling with SDEs (Song et al., ICLR 2021).

What a notebook needs, importable from the package itself::

    import scoresde
    m = scoresde.load_model("outputs/main")                       # run dir, checkpoint, export, reference .pth
    sampler = scoresde.get_sampler("dpm_solver", steps=20)
    res = sampler(m.sde, m.model, (16, *m.data_shape))             # res.samples, res.nfe
    ll = scoresde.log_likelihood(m.sde, m.model, x)                # ll.logp (nats), ll.nfe

Names are resolved on first use, so ``import scoresde.sde`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "scoresde.loading",
    "LoadedModel": "scoresde.loading",
    "get_sampler": "scoresde.sampling",
    "SAMPLERS": "scoresde.sampling",
    "log_likelihood": "scoresde.likelihood",
    "bits_per_dim": "scoresde.likelihood",
    "dataset_bits_per_dim": "scoresde.likelihood",
    "inpaint": "scoresde.sampling.inverse",
    "colorize": "scoresde.sampling.inverse",
    "cfg_score_fn": "scoresde.guidance",
    "classifier_guidance": "scoresde.guidance",
    "generate": "scoresde.generate",
    "save_samples": "scoresde.generate",
    "train": "scoresde.training",
    "TrainConfig": "scoresde.training",
    "ScoreModel": "scoresde.score",
    "VPSDE": "scoresde.sde",
    "SubVPSDE": "scoresde.sde",
    "VESDE": "scoresde.sde",
    "CosineVPSDE": "scoresde.sde",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scoresde' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
