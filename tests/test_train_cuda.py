"""Speed knobs on a GPU (skipped without CUDA): bf16 / fp16 autocast (GradScaler), channels_last, torch.compile,
and an exact resume on the same device."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_cli import checkpoint_tensors, compose_cfg

pytestmark = pytest.mark.cuda

DIGITS = [
    "model=digits_ddpmpp",
    "data=digits",
    "trainer.device=cuda",
    "trainer.num_threads=null",
    "trainer.progress=false",
    "trainer.batch_size=64",
    "trainer.sample_n=16",
    "trainer.sampler.steps=20",
    "trainer.log_every=5",
    "trainer.eval_every=10",
    "trainer.tensorboard=false",
]


def run(run_dir, *overrides):
    from scoresde.training import train

    return train(compose_cfg(*DIGITS, *overrides), run_dir)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precisions_and_channels_last(tmp_path, precision):
    res = run(tmp_path / "run", f"trainer.precision={precision}", "trainer.channels_last=true", "trainer.steps=20")
    assert res.step == 20 and all(math.isfinite(r["loss"]) for r in res.history if "loss" in r)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert res.samples is not None and res.samples.exists()


def test_compile(tmp_path):
    res = run(tmp_path / "run", "trainer.compile=true", "trainer.steps=10")
    assert res.step == 10 and math.isfinite(res.history[-1]["loss"])


def test_resume_on_cuda_matches(tmp_path):
    """Resume on the GPU: same weights as an uninterrupted run (to float32 rounding; cuDNN may pick
    non-deterministic kernels)."""
    ref, part = tmp_path / "ref", tmp_path / "part"
    run(ref, "trainer.steps=20", "trainer.ckpt_every=10")
    run(part, "trainer.steps=10", "trainer.ckpt_every=10")
    run(part, "trainer.steps=20", "trainer.ckpt_every=10")
    a = checkpoint_tensors(ref / "checkpoints" / "last.pt")
    b = checkpoint_tensors(part / "checkpoints" / "last.pt")
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
