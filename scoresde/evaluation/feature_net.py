"""A small classifier as a feature extractor: trained deterministically on first use, cached, checked on load.

:class:`FeatureNet` holds what a data set's metric needs: the network, its training recipe (every entry that
determines the weights; its hash names the cache file, so changing the recipe retrains), the data split it trains
on and the image check. Training is AdamW with a cosine learning rate and random pixel shifts, on one CPU thread with
deterministic kernels: bitwise reproducible on a given CPU. The cache file carries the recipe hash and a content hash
(:func:`scoresde.checkpoint.state_digest`); a file that fails to load or to match is retrained with a warning and
replaced atomically. The penultimate layer (``net.features``) is the feature space of a Fréchet distance in the manner
of FID (Heusel et al. 2017).

Cache: ``$SCORESDE_CACHE`` if set, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scoresde.checkpoint import atomic_write_bytes, load_safetensors, state_digest
from scoresde.evaluation.frechet import frechet_distance

Images = torch.Tensor | np.ndarray


class FeatureCNN(nn.Module):
    """A classifier whose penultimate layer is the feature space: subclasses define ``features(x)`` (``feature_dim``
    values after a ReLU) and ``fc2``, the class logits; dropout 0.3 on the features while training."""

    feature_dim = 64

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(self.features(x), 0.3, self.training))


def cache_dir() -> Path:
    """``$SCORESDE_CACHE`` if set, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``."""
    if os.environ.get("SCORESDE_CACHE"):
        return Path(os.environ["SCORESDE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "scoresde"
    return Path.home() / ".cache" / "scoresde"


@contextlib.contextmanager
def deterministic_cpu(seed: int, threads: int) -> Iterator[None]:
    """``threads`` threads, deterministic algorithms, seeded global CPU RNG (dropout, init); all restored afterwards."""
    saved_threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: leave any CUDA generator alone
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det)
            torch.set_num_threads(saved_threads)


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Training augmentation: translate each ``(1, S, S)`` image by ``-max_shift .. max_shift`` pixels per axis
    (zero fill)."""
    n, s, k = x.shape[0], x.shape[-1], max_shift
    padded = F.pad(x, (k, k, k, k))
    dy, dx = (torch.randint(0, 2 * k + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(s))[:, :, None]
    cols = (dx[:, None] + torch.arange(s))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


@dataclass(eq=False)
class FeatureNet:
    """One data set's feature classifier. ``build()`` makes the untrained network (with ``features`` and
    ``forward``); ``recipe`` holds the training settings (``split`` kwargs, ``seed``, ``epochs``, ``batch_size``,
    ``lr``, ``weight_decay``, ``max_shift``, ``threads``, a ``version`` to bump when the code changes); ``split(**
    recipe["split"])`` gives ``train_images`` / ``train_labels`` / ``test_images``; ``images(x, name)`` checks and
    converts inputs to the network's ``(N, 1, S, S)``."""

    name: str
    build: Callable[[], nn.Module]
    recipe: dict[str, Any]
    split: Callable[..., Any]
    images: Callable[[Images, str], torch.Tensor]
    batch: int = 4096
    memo: dict[tuple[str, int, int], nn.Module] = field(default_factory=dict)

    def recipe_hash(self) -> str:
        """Short hash of the training recipe; part of the cache file name."""
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:12]

    def path(self) -> Path:
        """Where the trained classifier is cached (the recipe hash is in the name)."""
        return cache_dir() / f"{self.name}_classifier-{self.recipe_hash()}.safetensors"

    def train(self) -> nn.Module:
        """Train the network on the training split following the recipe (eval mode, frozen)."""
        r = self.recipe
        split = self.split(**r["split"])
        x, y = split.train_images, split.train_labels
        with deterministic_cpu(r["seed"], r["threads"]):
            model = self.build()
            gen = torch.Generator().manual_seed(r["seed"])
            opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
            steps_per_epoch = math.ceil(len(x) / r["batch_size"])
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"] * steps_per_epoch)
            model.train()
            for _ in range(r["epochs"]):
                perm = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), r["batch_size"]):
                    idx = perm[i : i + r["batch_size"]]
                    loss = F.cross_entropy(model(random_shift(x[idx], gen, r["max_shift"])), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
        return model.eval().requires_grad_(False)

    def save(self, model: nn.Module, path: Path) -> None:
        """The weights with the recipe hash and their content hash, written atomically."""
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        meta = {"recipe": self.recipe_hash(), "sha256": state_digest(state)}
        atomic_write_bytes(save(state, metadata=meta), path)

    def read(self, path: Path) -> nn.Module:
        """A cached classifier; any problem (unreadable file, wrong keys/shapes, hash mismatch) raises."""
        state, meta = load_safetensors(path)
        if meta.get("recipe") != self.recipe_hash():
            raise ValueError(f"recipe hash {meta.get('recipe')!r} in the file, expected {self.recipe_hash()!r}")
        if meta.get("sha256") != state_digest(state):
            raise ValueError("content hash mismatch")
        model = self.build()
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

    def load(self, retrain: bool = False) -> nn.Module:
        """The classifier (eval mode, frozen, CPU): from the cache, or trained and cached. Kept in memory per cache
        file (path, modification time, size); an unusable cache file is retrained with a warning."""
        path = self.path()
        if not retrain and path.is_file():
            key = _file_key(path)
            if key in self.memo:
                return self.memo[key]
            try:
                self.memo[key] = self.read(path)
                return self.memo[key]
            except Exception as err:  # noqa: BLE001 - any failure to read the cache means: retrain
                warnings.warn(f"{self.name} classifier cache {path} is unusable ({err}); retraining", stacklevel=3)
        model = self.train()
        self.save(model, path)
        self.memo[_file_key(path)] = model
        return model

    def apply(self, images: Images, method: str, name: str) -> torch.Tensor:
        """``net.features`` or ``net.forward`` of checked ``images``, in batches, without gradients."""
        x = self.images(images, name)
        fn = getattr(self.load(), method)
        with torch.no_grad():
            return torch.cat([fn(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])

    def features(self, images: Images) -> torch.Tensor:
        """Penultimate-layer features ``(N, F)`` (float32, CPU)."""
        return self.apply(images, "features", "images")

    def frechet(self, samples: Images, reference: Images | str = "test") -> float:
        """Squared Fréchet distance between the features of ``samples`` and of ``reference``: images, or ``"test"``
        / ``"train"``, a part of the classifier's own split (its features cached per part and classifier file)."""
        fs = self.features(samples)
        if isinstance(reference, str):
            if reference not in ("test", "train"):
                raise ValueError(f"reference must be images, 'test' or 'train', got {reference!r}")
            self.load()  # make sure the cache exists so the key below names the model in use
            fr = _split_features(self, reference, _file_key(self.path()))
        else:
            fr = self.apply(reference, "features", "reference")
        return frechet_distance(fs, fr)

    def accuracy(self, images: Images, labels: torch.Tensor | np.ndarray, classes: int) -> float:
        """Fraction of ``images`` the classifier assigns to ``labels`` (integers in ``0 .. classes - 1``)."""
        y = torch.as_tensor(labels).reshape(-1).to(torch.int64).cpu()
        pred = self.apply(images, "forward", "samples").argmax(1)
        if y.shape[0] != pred.shape[0]:
            raise ValueError(f"got {pred.shape[0]} samples but {y.shape[0]} labels")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(f"labels must be in 0..{classes - 1}, got values in [{int(y.min())}, {int(y.max())}]")
        return float((pred == y).double().mean())


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _split_features(net: FeatureNet, part: str, file_key: tuple[str, int, int]) -> torch.Tensor:
    split = net.split(**net.recipe["split"])
    return net.features(split.test_images if part == "test" else split.train_images)


__all__ = ["FeatureCNN", "FeatureNet", "cache_dir", "deterministic_cpu", "random_shift"]
