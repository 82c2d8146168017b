"""A dataset in latent space, encoded once: ``encode_dataset(autoencoder, dataset) -> ArrayDataset`` of latents.

The latents are the scaled posterior means (:meth:`~scoresde.latent.Autoencoder.encode`) of the dataset's train and
test images, computed in eval mode without augmentation. They are cached as ``latents-<key>.safetensors`` next to the
autoencoder file (or in ``cache_dir``), where ``key`` is a SHA-256 of the autoencoder's weights (latent scale
included) and of the images. A cache file is used only if its key, tensor names, shapes and content hash all match
and its values are finite; anything else is re-encoded (with a warning) and replaced atomically.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from scoresde.checkpoint import state_digest
from scoresde.data.datasets import ArrayDataset
from scoresde.latent.autoencoder import Autoencoder

KIND = "scoresde.latents"
VERSION = "1"


def cache_key(autoencoder: Autoencoder, dataset: ArrayDataset) -> str:
    """SHA-256 of the encoder state and the images (shapes and bytes of the train and test splits)."""
    h = hashlib.sha256(f"{KIND}|{VERSION}|".encode())
    h.update(state_digest(autoencoder.state_dict()).encode())
    h.update(state_digest({"train": dataset.train, "test": dataset.test}).encode())
    return h.hexdigest()


@torch.no_grad()
def _encode(autoencoder: Autoencoder, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        parts = [autoencoder.encode(x[i : i + batch_size].float()) for i in range(0, len(x), batch_size)]
    finally:
        autoencoder.train(was_training)
    return torch.cat(parts).contiguous()


def _read_cache(path: Path, key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The cached latents, or an error saying why the file is not usable."""
    from scoresde.checkpoint import load_safetensors

    state, meta = load_safetensors(path)
    if meta.get("kind") != KIND or meta.get("key") != key:
        raise ValueError("it was written for other weights or data")
    if {k: tuple(v.shape) for k, v in state.items()} != shapes:
        raise ValueError("its tensors do not have the expected names and shapes")
    if any(v.dtype != torch.float32 or not bool(torch.isfinite(v).all()) for v in state.values()):
        raise ValueError("its latents are not finite float32 values")
    if meta.get("sha256") != state_digest(state):
        raise ValueError("its content hash does not match")
    return state


def _write_cache(path: Path, key: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from scoresde.checkpoint import atomic_write_bytes

    meta = {"kind": KIND, "key": key, "sha256": state_digest(state)}
    atomic_write_bytes(save(state, metadata=meta), path)


def cache_path(autoencoder: Autoencoder, dataset: ArrayDataset, cache_dir: str | Path | None = None) -> Path | None:
    """Where the latents of ``dataset`` are cached: ``cache_dir`` or the autoencoder file's folder (``None`` for an
    autoencoder that was never saved or loaded and no ``cache_dir``)."""
    folder = cache_dir if cache_dir is not None else (Path(autoencoder.source).parent if autoencoder.source else None)
    if folder is None:
        return None
    return Path(folder) / f"latents-{cache_key(autoencoder, dataset)[:24]}.safetensors"


def encode_dataset(
    autoencoder: Autoencoder,
    dataset: ArrayDataset,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
) -> ArrayDataset:
    """The latents of ``dataset``'s images as an :class:`ArrayDataset` (``is_image=False``: the trainer applies no
    image transform to them), class labels carried over; read from the cache when it is valid, else encoded and
    cached."""
    if not dataset.is_image or tuple(dataset.data_shape) != tuple(autoencoder.data_shape):
        kind = "images" if dataset.is_image else "points"
        raise ValueError(
            f"the autoencoder encodes images of shape {autoencoder.data_shape}; dataset {dataset.name!r} holds {kind} "
            f"of shape {dataset.data_shape}"
        )
    shapes = {
        "train": (len(dataset.train), *autoencoder.latent_shape),
        "test": (len(dataset.test), *autoencoder.latent_shape),
    }
    path = cache_path(autoencoder, dataset, cache_dir)
    state = None
    if path is not None and path.exists():
        try:
            state = _read_cache(path, cache_key(autoencoder, dataset), shapes)
        except Exception as err:  # noqa: BLE001 - any unusable cache means: encode again
            warnings.warn(f"latent cache {str(path)!r} is unusable ({err}); encoding again", stacklevel=2)
    if state is None:
        state = {part: _encode(autoencoder, getattr(dataset, part), batch_size) for part in ("train", "test")}
        if path is not None:
            _write_cache(path, cache_key(autoencoder, dataset), state)
    return ArrayDataset(
        state["train"],
        state["test"],
        f"latent({dataset.name})",
        is_image=False,
        levels=None,
        train_labels=dataset.train_labels,
        test_labels=dataset.test_labels,
    )


__all__ = ["cache_key", "cache_path", "encode_dataset"]
