"""Interoperability: models trained elsewhere as score models on this package's SDEs (CONTRACT: Interoperability).

``from_diffusers(unet, scheduler)`` / ``load_diffusers(folder)`` wrap a diffusers ``UNet2DModel`` and its DDPM-type
scheduler (needs the extra ``scoresde[diffusers]``, imported only when called).
"""

from scoresde.interop.diffusers import (
    DiffusersModel,
    alphas_cumprod_from_config,
    from_diffusers,
    is_diffusers_folder,
    load_diffusers,
)
from scoresde.interop.timestep_model import TimestepScoreModel

__all__ = [
    "DiffusersModel",
    "TimestepScoreModel",
    "alphas_cumprod_from_config",
    "from_diffusers",
    "is_diffusers_folder",
    "load_diffusers",
]
