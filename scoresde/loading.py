"""One loader for every trained model the toolkit reads (CONTRACT "Loading"): ``load_model(path)``.

``path`` may be a scoresde run directory, one of its checkpoints (``checkpoints/last.pt``), an exported
``ema.safetensors``, a checkpoint of the reference implementation (``checkpoint_*.pth``, continuous or discrete
time, with its ``config.json`` beside it or ``official_config=`` a published name / path), or a local diffusers model
folder (a ``UNet2DModel`` with its DDPM-type scheduler config; extra ``scoresde[diffusers]``). The result holds the
score model (eval mode, on the CPU), its SDE, the shape of one sample, the training config and how to map samples
back to [0, 1].

A checkpoint is data. Files are read with ``torch.load(weights_only=True)`` or safetensors; the training config
stored inside is parsed into the typed schema and rebuilt from the allowlist of :mod:`scoresde.registry` — nothing
a file names is imported or called — and weights are loaded strictly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scoresde.checkpoint import CheckpointError, find_checkpoint, load_safetensors, load_state_strict
from scoresde.schema import ConfigError

EXPORT_FORMAT = "scoresde-ema-1"


@dataclass
class LoadedModel:
    """A trained model ready to sample from: ``model(x, t)`` is its score function (eval mode, CPU)."""

    model: Any  # a ScoreModel (nn.Module): score, x0_hat / eps_hat views
    sde: Any
    data_shape: tuple[int, ...]
    config: Any  # the TrainConfig of a scoresde run; the reference config (dict) of a reference checkpoint
    centered: bool = True  # images in [-1, 1] (True) or [0, 1] (False) in the model's space
    source: str = ""  # the file the weights came from
    kind: str = "scoresde"  # scoresde | reference | diffusers
    autoencoder: Any = None  # latent runs (latent.autoencoder): the Autoencoder whose latents the model samples
    task: str = "generate"  # generate | superres (a SuperResNet: sample with low_res= conditioning)

    @property
    def is_image(self) -> bool:
        """Whether samples are images in the model's pixel space (latents of an autoencoder are not)."""
        return len(self.data_shape) == 3 and self.autoencoder is None

    @property
    def is_latent(self) -> bool:
        return self.autoencoder is not None

    @property
    def low_res_shape(self) -> tuple[int, ...] | None:
        """The shape of one low-resolution input of a super-resolution model (``None`` for other models)."""
        return tuple(self.model.net.low_res_shape) if self.task == "superres" else None

    @property
    def to_unit(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Model-space images -> [0, 1] (``None`` for low-dimensional data, which has no pixel range)."""
        if self.autoencoder is not None:
            from scoresde.training.latent import latent_to_unit

            return latent_to_unit(self.autoencoder)  # decoded images
        if not self.is_image:
            return None
        from scoresde.data import from_model_range

        centered = self.centered
        return lambda x: from_model_range(x, centered)

    def to(self, device: torch.device | str) -> LoadedModel:
        self.model.to(device)
        return self


def load_model(
    path: str | Path, use_ema: bool = True, official_config: str | dict | None = None, map_location: str = "cpu"
) -> LoadedModel:
    """The model at ``path`` (see the module docstring); EMA weights by default (``use_ema=False``: the raw ones)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist (a run directory, checkpoint or ema.safetensors)")
    if p.suffix == ".safetensors":
        if not use_ema:
            raise CheckpointError(f"{str(p)!r} is an export of the EMA weights only; use the run's checkpoint for "
                                  "use_ema=false")  # fmt: skip
        return _load_export(p)
    if p.is_dir() and not (p / "checkpoints").is_dir() and (p / "ema.safetensors").is_file():
        return _load_export(p / "ema.safetensors")
    if p.is_dir() and _is_diffusers(p):
        return _load_diffusers(p)
    file = find_checkpoint(p)
    state = _torch_load(file, map_location)
    if _is_reference(state):
        return _load_reference(file, state, official_config, use_ema)
    return _load_checkpoint(file, state, use_ema)


def _torch_load(file: Path, map_location: str) -> dict:
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {str(file)!r} is unreadable (truncated, corrupted or not a checkpoint; "
                              f"only plain tensors and values are accepted): {err}") from None  # fmt: skip
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{str(file)!r} is not a checkpoint this toolkit reads (no 'model' entry)")
    return state


def _is_reference(state: dict) -> bool:
    """A score_sde_pytorch checkpoint: ``{model, ema: {shadow_params, ...}, optimizer, step}`` and no stored config."""
    ema = state.get("ema")
    return {"model", "ema", "optimizer", "step"} <= set(state) and isinstance(ema, dict) and "shadow_params" in ema


def parse_data_shape(value: Any, source: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    ok = isinstance(value, (list, tuple)) and 1 <= len(value) <= 4
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in value)
    if not ok:
        raise CheckpointError(f"{source!r}: data_shape must be a list of 1-4 positive sizes, got {value!r}")
    return tuple(int(v) for v in value)


def build_trained(config_text: Any, data_shape: tuple[int, ...], source: str):
    """``(score_model, sde, cfg)`` of a stored training config, built from the allowlist (weights not loaded)."""
    from scoresde.training.build import build_setup, parse_train_config
    from scoresde.training.trainer import build_score_model

    if not config_text:
        raise CheckpointError(f"{source!r} holds no training config to rebuild the model from")
    try:
        cfg = parse_train_config(config_text, f"the config stored in {source!r}")
        setup = build_setup(cfg)
    except ConfigError as err:
        raise CheckpointError(f"refusing {source!r}: {err}") from None
    return build_score_model(cfg, setup, data_shape), setup.sde, cfg


def _finish(model, state: dict, source: str, what: str, sde, cfg, shape) -> LoadedModel:
    load_state_strict(model, state, source, what)
    model.data_shape = shape  # the shape of one sample, for samplers
    from scoresde.training.latent import run_autoencoder

    ae = run_autoencoder(cfg, shape, source)  # latent runs: the decoder, checked against the stored hash
    return LoadedModel(model.eval(), sde, shape, cfg, bool(cfg.model.centered), source, "scoresde", ae, cfg.task)


def _load_checkpoint(file: Path, state: dict, use_ema: bool) -> LoadedModel:
    source = str(file)
    shape = parse_data_shape(state.get("data_shape"), source)
    model, sde, cfg = build_trained(state.get("config"), shape, source)
    if use_ema:
        ema = state.get("ema")
        if not isinstance(ema, dict):
            raise CheckpointError(f"{source!r} holds no EMA weights; use use_ema=false")
        weights = {k.removeprefix("module."): v for k, v in ema.items() if k != "_extra_state"}
    else:
        weights = state["model"]
    return _finish(model, weights, source, "EMA model" if use_ema else "model", sde, cfg, shape)


def _load_export(file: Path) -> LoadedModel:
    weights, meta = load_safetensors(file)
    source = str(file)
    if meta.get("format") not in (EXPORT_FORMAT, None) or "config" not in meta or "data_shape" not in meta:
        raise CheckpointError(f"{source!r} was not exported by scoresde (no config / data_shape metadata)")
    shape = parse_data_shape(meta["data_shape"], source)
    model, sde, cfg = build_trained(meta["config"], shape, source)
    return _finish(model, weights, source, "EMA model", sde, cfg, shape)


def _is_diffusers(folder: Path) -> bool:
    """A diffusers model folder (``unet/`` + ``scheduler/``, or ``config.json`` + ``scheduler_config.json``)."""
    from scoresde.interop.diffusers import is_diffusers_folder

    return is_diffusers_folder(folder)


def _load_diffusers(folder: Path) -> LoadedModel:
    from scoresde.interop.diffusers import load_diffusers

    m = load_diffusers(folder)
    config = {"scheduler": m.scheduler_config, "prediction_type": m.prediction_type}
    return LoadedModel(m.score_fn.eval(), m.sde, tuple(m.data_shape), config, True, str(folder), "diffusers")


def _load_reference(file: Path, state: dict, official_config, use_ema: bool) -> LoadedModel:
    from scoresde.nets import load_official_checkpoint

    config = official_config
    if config is None:
        beside = file.parent / "config.json"
        if not beside.exists():
            raise CheckpointError(
                f"{str(file)!r} is a reference score_sde_pytorch checkpoint: name its config with "
                "official_config=<published name, e.g. ve/cifar10_ncsnpp_continuous> or a config.json path"
            )
        config = str(beside)
    m = load_official_checkpoint(file, config, use_ema=use_ema)
    return LoadedModel(m.score_model, m.sde, tuple(m.data_shape), m.config, bool(m.centered), str(file), "reference")


__all__ = ["EXPORT_FORMAT", "LoadedModel", "build_trained", "load_model", "parse_data_shape"]
