"""Bitwise resume with the main job's model: DDPM++ on the digits with dropout 0.1, through the CLI, on CPU.

Dropout draws from the global torch RNG, so a resumed run only matches an uninterrupted one if the checkpoint
restores that RNG (the per-step generators cover the data, loss and augmentation draws, not dropout). A dropout-free
MLP cannot see the difference; this model does (measured without the RNG restore: 832 of 1041 tensors differ after
2 + 2 steps). Every tensor of the two final checkpoints that training depends on (model, EMA, optimizer moments,
scheduler, step, torch RNG) must be bitwise equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.test_train_cli import cli

MAIN_MODEL = [
    "model=digits_ddpmpp",
    "model.net.dropout=0.1",  # the main job has none; with it the resume must also restore the dropout RNG
    "data=digits",
    "trainer.sample_n=0",
    "trainer.export=false",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.num_threads=1",
    "trainer.device=cpu",  # bitwise: on a GPU cuDNN's kernels may differ run to run (test_train_cuda.py resumes there)
    "trainer.batch_size=16",  # the main job's model and recipe; a smaller batch and held-out set keep it quick
    "trainer.eval_examples=16",
]


def _flatten(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) inside a checkpoint, keyed by its path; the config text and paths left out."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("config", "path"):
                out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
    elif isinstance(obj, int | float | bool):
        out[prefix] = torch.tensor(obj)
    return out


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return _flatten(torch.load(run / "checkpoints" / "last.pt", weights_only=True))


@pytest.fixture(scope="module")
def resumed_and_uninterrupted(tmp_path_factory) -> tuple[dict, dict, dict]:
    """4 steps at once vs 2 steps, then resumed to 4 (checkpoints every 2 steps), through the CLI."""
    tmp = tmp_path_factory.mktemp("resume_dropout")
    ref, run = tmp / "ref", tmp / "run"
    p = cli(ref, *MAIN_MODEL, "trainer.steps=4", "trainer.ckpt_every=2")
    assert p.returncode == 0, p.stderr[-3000:]
    p = cli(run, *MAIN_MODEL, "trainer.steps=2", "trainer.ckpt_every=2")
    assert p.returncode == 0, p.stderr[-3000:]
    p = cli(run, *MAIN_MODEL, "trainer.steps=4", "trainer.ckpt_every=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "at step 2" in p.stdout, p.stdout[-2000:]
    stored = yaml.safe_load(torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["config"])
    return stored, _checkpoint(ref), _checkpoint(run)


UNSEEDED = ("/rng/numpy/", "/rng/python/")


def test_main_model_resumes_bitwise_with_dropout(resumed_and_uninterrupted):
    """Model, EMA, optimizer moments, scheduler, step and the torch RNG state: bitwise equal."""
    stored, a, b = resumed_and_uninterrupted
    assert stored["model"]["net"]["dropout"] == 0.1 and stored["model"]["net"]["_target_"].endswith("NCSNpp")
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("/model/")]) > 100 and "/rng/torch" in a
    differ = [k for k in a if not k.startswith(UNSEEDED) and not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:5]}"


def test_numpy_and_python_rng_states_resume_too(resumed_and_uninterrupted):
    _, a, b = resumed_and_uninterrupted
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(UNSEEDED))
