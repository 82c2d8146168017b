"""Checkpoints that survive: atomic writes, ``weights_only`` loads, RNG states, clear errors, safetensors export.

A checkpoint is a ``torch.save``d dict of state dicts and plain values only (loads with
``torch.load(weights_only=True)``); the resolved config travels inside as a YAML string. Writes go to a temporary
file in the same directory, are flushed to disk and then ``os.replace``d over the target, so a process killed at
any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


# --- files ------------------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: serialized in memory first, so that a failing write (disk full) is an
    ``OSError`` naming the file rather than an error deep inside the serializer, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getbuffer(), path)


def atomic_write_bytes(data: bytes | memoryview, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file beside it (unique per process, so concurrent writers
    never share one), flushed and fsynced, then ``os.replace``d over ``path``; the temporary file is removed if
    anything fails, and the old ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run directory (``<run>/checkpoints/last.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / CHECKPOINT_DIR / LAST, p / LAST):
            if cand.is_file():
                return cand
        raise CheckpointError(f"no checkpoint in run directory {str(p)!r} (looked for {CHECKPOINT_DIR}/{LAST})")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    return p


def run_checkpoint(run_dir: str | Path) -> Path | None:
    """The run directory's own last checkpoint, if any (auto-resume)."""
    p = Path(run_dir) / CHECKPOINT_DIR / LAST
    return p if p.is_file() else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint (file or run directory) with ``weights_only=True``; clear error if unreadable."""
    p = find_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is unreadable (truncated, corrupted or not a checkpoint): {err}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{str(p)!r} is not a scoresde checkpoint (no 'model' entry)")
    state["path"] = str(p)
    return state


def load_state_strict(module: nn.Module, state_dict: dict, source: str, what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with a message naming the file and the mismatching entries."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} entries: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} entries: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise CheckpointError(
            f"checkpoint {source!r} holds a {what} of another architecture than the configured one: " + "; ".join(parts)
        )
    module.load_state_dict(state_dict, strict=True)


# --- RNG states -------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """RNG states of torch (CPU and CUDA), numpy and python, as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# --- sharing ----------------------------------------------------------------------------------------------
def export_safetensors(module: nn.Module, path: str | Path, metadata: dict[str, str]) -> Path:
    """Weights of ``module`` as safetensors with string ``metadata`` (e.g. the config YAML)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    return atomic_write_bytes(save(tensors, metadata={k: str(v) for k, v in metadata.items()}), path)


def read_weights_file(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the safetensors file a user named as ``what`` (``"classifier"``, ...): a
    ``FileNotFoundError`` when it is missing, a ``ValueError`` naming it when it is unreadable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return load_safetensors(p)
    except CheckpointError as err:
        raise ValueError(f"{what} {str(path)!r} is not a readable safetensors file ({err})") from None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted tensor names, dtypes, shapes and bytes (CPU): the content hash a weights file carries
    in its metadata and is checked against on load."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; clear error when unreadable."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:
        raise CheckpointError(f"weights file {str(p)!r} is unreadable: {err}") from err
