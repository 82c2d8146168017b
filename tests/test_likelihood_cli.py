"""likelihood.py end to end: a tiny trained run (continuous 2-D data, nats) and a reference checkpoint on
quantized images (bits/dim)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scoresde.jobs import likelihood as job
from tests.configs import typed_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "official_score_sde"


def run_likelihood(out: Path, *overrides: str) -> dict:
    return job.run(typed_config("likelihood", *overrides), out)


def test_trained_run_on_its_own_data(tmp_path):
    """A run's own (continuous, 2-D) test data: nats per sample, JSON written, NFE counted."""
    from scoresde.training import train
    from tests.test_train_cli import TOY, compose_cfg

    run = tmp_path / "run"
    train(compose_cfg(*TOY, "trainer.steps=20", "trainer.ckpt_every=20"), run)
    res = run_likelihood(tmp_path / "out", f"ckpt={run}", "n=16", "divergence=exact", "rtol=1e-3", "atol=1e-3")
    assert res["metric"] == "nats/sample" and res["n"] == 16 and math.isfinite(res["mean"]) and res["nfe"] > 0
    assert json.loads((tmp_path / "out" / "likelihood.json").read_text())["mean"] == res["mean"]
    # The default coordinates (angle) and the reference's (t) give the same answer to the solver's error (rtol 1e-3:
    # measured 4e-3 nats apart on this run, 26 vs 38 NFE).
    t = run_likelihood(tmp_path / "t", f"ckpt={run}", "n=16", "divergence=exact", "rtol=1e-3", "atol=1e-3",
                       "time_variable=t")  # fmt: skip
    assert t["mean"] == pytest.approx(res["mean"], abs=2e-2), (t["mean"], res["mean"])


@pytest.mark.parametrize("override, key", [("time_variable=sigma", "time_variable"), ("sigma_data=0", "sigma_data"),
                                           ("sigma_data=-1", "sigma_data")])  # fmt: skip
def test_bad_coordinates_are_refused_by_name(tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_likelihood(tmp_path, "ckpt=nowhere", override)
    assert not any(tmp_path.iterdir())


def test_reference_checkpoint_on_uint8_images(tmp_path):
    """The VP DDPM++ fixture on four random uint8 16x16 RGB images: bits/dim with the 8-bit offset, data in [-1, 1]."""
    ckpt = FIXTURES / "vp_ddpmpp_continuous" / "checkpoint.pth"
    assert ckpt.exists(), f"reference fixtures belong in {FIXTURES} (see its README)"
    images = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    res = run_likelihood(tmp_path / "out", f"ckpt={ckpt}", "+data=npz", f"data.path={tmp_path / 'imgs.npz'}",
                         "data.test_fraction=0.5", "rtol=1e-3", "atol=1e-3", "repeats=1")  # fmt: skip
    assert res["metric"] == "bits/dim" and res["levels"] == 256 and res["data_range"] == [-1.0, 1.0]
    assert res["n"] == 2 and math.isfinite(res["mean"]) and res["mean"] > 0


def test_reference_checkpoint_needs_data(tmp_path):
    ckpt = FIXTURES / "vp_ddpmpp_continuous" / "checkpoint.pth"
    with pytest.raises(ValueError, match="data"):
        run_likelihood(tmp_path, f"ckpt={ckpt}")
