"""Latent diffusion in the trainer and the loader (Rombach et al., CVPR 2022, Sec. 3): with ``latent.autoencoder`` set,
the run's images are encoded once (cached, :func:`scoresde.latent.encode_dataset`) and the score model is trained on
the scaled latents; its samples are decoded to images.

The run stores the autoencoder's resolved path and the SHA-256 of its weights (``latent.sha256``); loading the run
rebuilds the decoder from that file and refuses it when its content differs (a swapped or retrained autoencoder
would decode the samples into something else without any other sign).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from scoresde.checkpoint import state_digest
from scoresde.data import ArrayDataset
from scoresde.latent import Autoencoder, encode_dataset, load_autoencoder
from scoresde.schema import ConfigError, to_yaml


def _load(path: str, what: str, error: type[Exception]) -> Autoencoder:
    try:
        return load_autoencoder(path)
    except (FileNotFoundError, ValueError) as err:
        raise error(f"{what}: {err}") from None


def prepare_latent_data(cfg, setup, data: ArrayDataset) -> tuple[ArrayDataset, Autoencoder | None]:
    """``(data, None)`` for a pixel-space run; for a latent run ``(latents of data, autoencoder)``, with
    ``cfg.latent.autoencoder`` resolved, ``cfg.latent.sha256`` filled in (a given one must match the file) and
    ``setup.config_yaml`` rewritten to hold both."""
    lat = cfg.latent
    if lat.autoencoder is None:
        return data, None
    path = str(Path(lat.autoencoder).expanduser().resolve())
    ae = _load(path, "latent.autoencoder", ConfigError)
    digest = state_digest(ae.state_dict())
    if lat.sha256 is not None and lat.sha256 != digest:
        raise ConfigError(f"latent.sha256={lat.sha256!r} does not match the autoencoder {path!r} (sha256 {digest})")
    if not data.is_image or tuple(data.data_shape) != ae.data_shape:
        raise ConfigError(f"latent.autoencoder {path!r} encodes images of shape {ae.data_shape}; data {data.name!r} "
                          f"holds samples of shape {tuple(data.data_shape)}")  # fmt: skip
    lat.autoencoder, lat.sha256 = path, digest
    if getattr(setup, "config_yaml", ""):
        setup.config_yaml = to_yaml(cfg)
    return encode_dataset(ae, data, lat.cache_dir), ae


def latent_to_unit(autoencoder: Autoencoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> decoded images in ``[0, 1]`` (clipped; on the CPU, where the autoencoder lives)."""

    @torch.no_grad()
    def to_unit(z: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode(z.detach().float().cpu()).clamp(0, 1)

    return to_unit


def run_autoencoder(cfg, data_shape: tuple[int, ...], source: str) -> Autoencoder | None:
    """The decoder of a stored latent run (``None`` for a pixel-space run): the file the run names, refused unless
    its weights hash to the stored ``latent.sha256`` and its latents have the run's ``data_shape``."""
    from scoresde.checkpoint import CheckpointError

    lat = getattr(cfg, "latent", None)
    if lat is None or lat.autoencoder is None:
        return None
    what = f"refusing {source!r}: its latent.autoencoder"
    ae = _load(lat.autoencoder, what, CheckpointError)
    digest = state_digest(ae.state_dict())
    if lat.sha256 != digest:
        raise CheckpointError(
            f"{what} {lat.autoencoder!r} is not the file the run was trained with (sha256 {digest[:16]}..., the run "
            f"stored {str(lat.sha256)[:16]}...): it was swapped or retrained; restore the original file"
        )
    if tuple(ae.latent_shape) != tuple(data_shape):
        raise CheckpointError(f"{what} makes latents {ae.latent_shape}, the model takes {tuple(data_shape)}")
    return ae


@torch.no_grad()
def encode_images(autoencoder: Autoencoder, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled latents of images in ``[0, 1]`` (what the score model of a latent run sees)."""
    parts = [autoencoder.encode(images01[i : i + batch_size].float()) for i in range(0, len(images01), batch_size)]
    return torch.cat(parts)


__all__ = ["encode_images", "latent_to_unit", "prepare_latent_data", "run_autoencoder"]
