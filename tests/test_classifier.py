"""Noise-conditional classifier: training on the digits, save/load, its CLI, and classifier guidance in sample.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.classifier import accuracy_at, load_classifier, save_classifier, train_classifier
from scoresde.data import load_dataset, to_model_range
from scoresde.sde import VESDE, VPSDE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", image_size=None)
    return to_model_range(ds.train, True), ds.train_labels, to_model_range(ds.test, True), ds.test_labels


@pytest.fixture(scope="module")
def trained(digits):
    x, y, xt, yt = digits
    return train_classifier(VPSDE(), x, y, 10, steps=300, hidden=128, depth=2, x_test=xt, y_test=yt)


def test_accuracy_falls_with_noise(trained):
    """359 test images (binomial s.e. <= 0.027): well above chance (0.1) at t = 0.05, at chance at t = 1 where VP
    keeps alpha(1) = 0.0066 of the signal; and the losses fell."""
    acc = trained.accuracy
    assert acc[0.05] > 0.8 and acc[0.05] > acc[0.3] > acc[1.0] - 0.05
    assert acc[1.0] < 0.25
    assert np.mean(trained.losses[-50:]) < np.mean(trained.losses[:50])


def test_save_load_round_trip_and_errors(trained, digits, tmp_path):
    path = save_classifier(trained.net, tmp_path / "c.safetensors", VPSDE(), centered=True)
    net, meta = load_classifier(path, VPSDE())
    x = digits[2][:8]
    t = torch.full((8,), 0.2)
    torch.testing.assert_close(net(x, t), trained.net(x, t))
    assert json.loads(meta["centered"]) is True and int(meta["num_classes"]) == 10
    with pytest.raises(ValueError, match="trained under"):
        load_classifier(path, VESDE())
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        load_classifier(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="labels"):
        train_classifier(VPSDE(), digits[0][:4], torch.tensor([0, 1, 2, 11]), 10, steps=1)


def test_cli_and_classifier_guidance_in_sample_py(tmp_path, digits):
    """train_classifier.py writes a classifier; sample.py guides a (tiny) digits score model with it: with w = 10 the
    classifier assigns far more samples to the requested class than without guidance (64 samples each: a binomial
    standard error of at most 0.063 per fraction)."""
    from scoresde.jobs import classifier as clf_job
    from scoresde.jobs import sample as sample_job
    from scoresde.training import train
    from tests.configs import typed_config
    from tests.test_train_cli import compose_cfg

    cfg = typed_config("classifier", "steps=300", "hidden=128", "depth=2")
    summary = clf_job.run(cfg, tmp_path / "clf")
    assert Path(summary["classifier"]).exists() and summary["num_classes"] == 10

    run = tmp_path / "score"
    train(
        compose_cfg("data=digits", "model=mlp", "model.net.hidden=64", "model.net.depth=2", "trainer.steps=30",
                    "trainer.batch_size=64", "trainer.progress=false", "trainer.sample_n=0", "trainer.eval_every=0",
                    "trainer.export=false", "trainer.tensorboard=false"), run)  # fmt: skip
    net, _ = load_classifier(summary["classifier"])

    def fraction(scale: float) -> float:
        scfg = typed_config("sample",
            f"ckpt={run}", "n=64", "sampler=ddim", "sampler.steps=10", "label=3", "guidance.kind=classifier",
            f"guidance.scale={scale}", f"guidance.classifier={summary['classifier']}")  # fmt: skip
        out = tmp_path / f"s{scale}"
        sample_job.run(scfg, out)
        x = to_model_range(torch.from_numpy(np.load(out / "samples.npz")["arr_0"]).permute(0, 3, 1, 2) / 255, True)
        with torch.no_grad():
            return float((net(x, torch.full((len(x),), 0.01)).argmax(1) == 3).float().mean())

    base, guided = fraction(0.0), fraction(10.0)
    assert guided > base + 0.3 and guided > 0.5, (base, guided)
    assert accuracy_at(net, VPSDE(), digits[2], digits[3], 0.05) > 0.8
