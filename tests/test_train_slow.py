"""The main job (``python train.py``: the small digits model) trained long enough to show a falling held-out loss."""

from __future__ import annotations

import json

import pytest
from test_train_cli import cli


@pytest.mark.slow
def test_main_job_held_out_loss_falls(tmp_path):
    run = tmp_path / "main"
    p = cli(
        run,
        "trainer.steps=200",
        "trainer.eval_every=50",
        "trainer.ckpt_every=100",
        "trainer.sample_n=16",
        "trainer.sampler.steps=50",
        "trainer.progress=false",
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 4
    # the held-out loss (EMA weights, fixed draws) falls: each evaluation below the first, the last clearly so
    assert all(e < evals[0] for e in evals[1:]) and evals[-1] < 0.8 * evals[0], evals
    assert (run / "samples" / "final.png").exists() and (run / "ema.safetensors").exists()
