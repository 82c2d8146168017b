"""Saving and loading the latent autoencoder as safetensors. A file is data: its metadata are checked values (sizes,
a format tag, a content hash), never names of things to build or call; the weights load strictly.

Metadata: ``kind`` (``scoresde.autoencoder``), ``format`` (``1``), ``data_shape`` and ``channels`` (JSON lists of
integers), ``latent_channels`` (an integer) and ``sha256`` (a hash of every tensor, names included). The latent
``shift`` and ``scale`` are tensors of the state. Sizes are checked against bounds, and the file's tensors against an
architecture built on the meta device, before a single real weight is allocated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from scoresde.checkpoint import state_digest
from scoresde.latent.autoencoder import Autoencoder, check_architecture

KIND = "scoresde.autoencoder"
FORMAT = "1"


def save_autoencoder(model: Autoencoder, path: str | Path) -> Path:
    """Write ``model`` (weights, latent shift and scale) to ``path`` atomically."""
    from safetensors.torch import save

    from scoresde.checkpoint import atomic_write_bytes

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "kind": KIND,
        "format": FORMAT,
        "data_shape": json.dumps(list(model.data_shape)),
        "latent_channels": str(model.latent_channels),
        "channels": json.dumps(list(model.channels)),
        "sha256": state_digest(state),
    }
    out = atomic_write_bytes(save(state, metadata=meta), path)
    model.source = str(out)
    return out


def _int_list(meta: dict, key: str, source: str) -> list[int]:
    try:
        value = json.loads(meta.get(key, ""))
    except (json.JSONDecodeError, TypeError):
        value = None
    if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"autoencoder {source!r}: metadata {key}={meta.get(key)!r} is not a JSON list of integers")
    return value


def _int(meta: dict, key: str, source: str) -> int:
    value = meta.get(key, "")
    if not (isinstance(value, str) and value.isdigit() and len(value) <= 6):
        raise ValueError(f"autoencoder {source!r}: metadata {key}={value!r} is not a small positive integer")
    return int(value)


def architecture_from_metadata(meta: dict, source: str) -> dict:
    """The constructor arguments the metadata describe, every value checked (bounds included)."""
    if meta.get("kind") != KIND:
        raise ValueError(f"{source!r} is not a scoresde autoencoder (metadata kind={meta.get('kind')!r})")
    if meta.get("format") != FORMAT:
        raise ValueError(f"autoencoder {source!r}: unsupported format {meta.get('format')!r} (expected {FORMAT!r})")
    kwargs = dict(
        data_shape=tuple(_int_list(meta, "data_shape", source)),
        latent_channels=_int(meta, "latent_channels", source),
        channels=tuple(_int_list(meta, "channels", source)),
    )
    try:
        check_architecture(**kwargs)
    except ValueError as err:
        raise ValueError(f"autoencoder {source!r}: {err}") from None
    return kwargs


def load_autoencoder(path: str | Path) -> Autoencoder:
    """An autoencoder saved by :func:`save_autoencoder` (eval mode, frozen, CPU); refuses files whose metadata are not
    plain checked values, whose tensors do not fit the described architecture or whose content hash differs."""
    from scoresde.checkpoint import read_weights_file

    source = str(path)
    state, meta = read_weights_file(path, "autoencoder")
    kwargs = architecture_from_metadata(meta, source)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Autoencoder(**kwargs).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        diff = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
        raise ValueError(f"autoencoder {source!r}: tensors do not fit its metadata (first differences: {diff[:3]})")
    if meta.get("sha256") != state_digest(state):
        raise ValueError(f"autoencoder {source!r}: content hash mismatch (the file is corrupt or was altered)")
    if not all(v.is_floating_point() and bool(torch.isfinite(v).all()) for v in state.values()):
        raise ValueError(f"autoencoder {source!r}: weights must be finite floating-point tensors")
    if not (math.isfinite(float(state["scale"])) and float(state["scale"]) > 0):
        raise ValueError(f"autoencoder {source!r}: latent scale {float(state['scale'])} must be positive")
    model = Autoencoder(**kwargs)
    model.load_state_dict(state, strict=True)
    model.source = str(Path(path).expanduser())
    return model.eval().requires_grad_(False)


__all__ = ["architecture_from_metadata", "load_autoencoder", "save_autoencoder"]
