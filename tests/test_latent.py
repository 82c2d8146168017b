"""Latent diffusion's autoencoder: held-out reconstruction against the trivial baseline, the latent round trip and
scale, files that are data only (bitwise round trip, hostile metadata refused), the cached latent dataset, and
``train_autoencoder.py``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("mlxtend")

from safetensors.torch import load_file, save_file  # noqa: E402

from scoresde.data import load_dataset  # noqa: E402
from scoresde.latent import (  # noqa: E402
    Autoencoder,
    encode_dataset,
    load_autoencoder,
    reconstruction_mse,
    save_autoencoder,
    train_autoencoder,
)
from scoresde.latent import cache as latent_cache  # noqa: E402
from scoresde.latent.io import state_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def trained(mnist):
    """A small autoencoder (8 and 16 channels, latents 4x7x7) trained for 200 steps: enough to test its contracts."""
    return train_autoencoder(mnist.train, mnist.test, channels=(8, 16), steps=200, batch_size=32, lr=1e-2)


def test_held_out_reconstruction_beats_the_mean_image(trained, mnist):
    """On the 500 held-out images the per-pixel MSE of decode(encode(x)) is well under that of predicting the mean
    training image (about 0.067 on MNIST; a short training already reaches less than half of it)."""
    assert trained.test_mse == pytest.approx(reconstruction_mse(trained.model, mnist.test))
    assert 0.05 < trained.baseline_mse < 0.09
    assert trained.test_mse < 0.5 * trained.baseline_mse, (trained.test_mse, trained.baseline_mse)
    assert sum(trained.losses[-20:]) < 0.5 * sum(trained.losses[:20])


@torch.no_grad()
def test_latent_scale_gives_unit_variance(trained, mnist):
    """Scaled latents have mean 0 and variance 1 over all elements of the training set (by construction, to float
    precision) and about that on the held-out images (500 x 196 values)."""
    m = trained.model
    assert m.latent_shape == (4, 7, 7)
    z = m.encode(mnist.train).double()
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.var(correction=0)) - 1) < 1e-4
    zt = m.encode(mnist.test).double()
    assert abs(float(zt.mean())) < 0.1 and abs(float(zt.var()) - 1) < 0.1
    mu, _ = m.posterior(mnist.test[:8])
    torch.testing.assert_close(m.decode(m.encode(mnist.test[:8])), m.decode_raw(mu), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_latent_round_trip(trained, mnist):
    """decode(encode(x)) is the reconstruction above; encode(decode(z)) returns latents of real images within a small
    fraction of their (unit) variance, so a latent and its decoded image name each other."""
    m = trained.model
    z = m.encode(mnist.test)
    z2 = m.encode(m.decode(z).clamp(0, 1))
    rel = float((z2 - z).square().mean() / z.var())
    assert rel < 0.15, rel


def test_save_load_is_bitwise(trained, tmp_path, mnist):
    path = save_autoencoder(trained.model, tmp_path / "ae.safetensors")
    loaded = load_autoencoder(path)
    a, b = trained.model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = mnist.test[:16]
    assert torch.equal(loaded.encode(x), trained.model.encode(x))
    assert not loaded.training and loaded.source == str(path)
    from scoresde.checkpoint import load_safetensors

    again = save_autoencoder(loaded, tmp_path / "again.safetensors")  # same tensors and metadata (header order aside)
    (s1, m1), (s2, m2) = load_safetensors(path), load_safetensors(again)
    assert m1 == m2 and s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def rewrite(src: Path, dst: Path, meta: dict | None = None, state: dict | None = None, rehash: bool = False) -> Path:
    """A copy of a saved autoencoder with some metadata / tensors replaced (optionally with a matching hash)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        old_meta = dict(f.metadata())
    tensors = load_file(str(src))
    tensors.update(state or {})
    new_meta = {**old_meta, **(meta or {})}
    if rehash:
        new_meta["sha256"] = state_digest(tensors)
    save_file(tensors, str(dst), metadata=new_meta)
    return dst


@pytest.mark.parametrize(
    "meta,match",
    [
        ({"kind": "scoresde.noisy_classifier"}, "not a scoresde autoencoder"),
        ({"format": "2"}, "unsupported format"),
        ({"data_shape": "__import__('os').system('touch pwned')"}, "data_shape"),
        ({"data_shape": '{"_target_": "os.system", "command": "true"}'}, "data_shape"),
        ({"channels": "[100000, 64]"}, "channels must be"),
        ({"channels": "[32, 64, 64, 64, 64, 64, 64]"}, "channels must be"),
        ({"latent_channels": "1e9"}, "latent_channels"),
        ({"latent_channels": "-4"}, "latent_channels"),
        ({"data_shape": "[1, 30, 30]"}, "not divisible"),
        ({"channels": "[16, 64]"}, "do not fit its metadata"),
        ({"sha256": "0" * 64}, "content hash"),
    ],
)
def test_hostile_or_inconsistent_metadata_is_refused(trained, tmp_path, meta, match):
    src = save_autoencoder(trained.model, tmp_path / "ae.safetensors")
    bad = rewrite(src, tmp_path / "bad.safetensors", meta=meta)
    with pytest.raises(ValueError, match=match):
        load_autoencoder(bad)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_bad_tensors_and_files_are_refused(trained, tmp_path):
    src = save_autoencoder(trained.model, tmp_path / "ae.safetensors")
    tampered = {"scale": torch.tensor(-1.0)}
    with pytest.raises(ValueError, match="content hash"):
        load_autoencoder(rewrite(src, tmp_path / "a.safetensors", state=tampered))
    with pytest.raises(ValueError, match="latent scale"):
        load_autoencoder(rewrite(src, tmp_path / "b.safetensors", state=tampered, rehash=True))
    nan = {"decoder.0.bias": torch.full_like(trained.model.decoder[0].bias, float("nan"))}
    with pytest.raises(ValueError, match="finite"):
        load_autoencoder(rewrite(src, tmp_path / "c.safetensors", state=nan, rehash=True))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable"):
        load_autoencoder(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_autoencoder(tmp_path / "missing.safetensors")


def test_bad_training_input_is_refused_before_training():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_autoencoder(torch.full((4, 1, 8, 8), 2.0), steps=1)
    with pytest.raises(ValueError, match="divisible"):
        train_autoencoder(torch.rand(4, 1, 6, 6), steps=1, channels=(8, 8))
    with pytest.raises(ValueError, match="steps"):
        train_autoencoder(torch.rand(4, 1, 8, 8), steps=0)
    with pytest.raises(ValueError, match="shape"):
        Autoencoder((1, 8, 8), channels=(8,)).encode(torch.rand(2, 1, 16, 16))


# ----------------------------------------------------------------------------------------------- latent dataset


def test_encode_dataset_caches_next_to_the_autoencoder(trained, tmp_path, mnist, monkeypatch):
    path = save_autoencoder(trained.model, tmp_path / "ae.safetensors")
    ae = load_autoencoder(path)
    lat = encode_dataset(ae, mnist)
    assert lat.data_shape == (4, 7, 7) and not lat.is_image and lat.name == "latent(mnist)"
    assert len(lat.train) == len(mnist.train) and len(lat.test) == len(mnist.test)
    assert torch.equal(lat.test[:32], ae.encode(mnist.test[:32]))
    cached = latent_cache.cache_path(ae, mnist)
    assert cached.parent == tmp_path and cached.exists()

    calls = []
    real_encode = latent_cache._encode
    monkeypatch.setattr(latent_cache, "_encode", lambda *a: calls.append(1) or real_encode(*a))
    again = encode_dataset(ae, mnist)
    assert not calls and torch.equal(again.train, lat.train)  # read from the cache, not encoded

    cached.write_bytes(cached.read_bytes()[:-16] + b"\x00" * 16)  # corrupt the latents (same size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = encode_dataset(ae, mnist)
    assert calls and any("unusable" in str(w.message) for w in caught)
    assert torch.equal(fixed.train, lat.train)

    other = load_dataset("mnist", test_fraction=0.2)  # other data: another cache file
    assert latent_cache.cache_path(ae, other) != cached
    with pytest.raises(ValueError, match="encodes images of shape"):
        encode_dataset(ae, load_dataset("digits"))


def test_an_unsaved_autoencoder_caches_only_where_told(trained, tmp_path, mnist):
    model = Autoencoder((1, 28, 28), channels=(8, 16))
    model.load_state_dict(trained.model.state_dict())
    assert latent_cache.cache_path(model, mnist) is None
    lat = encode_dataset(model, mnist, cache_dir=tmp_path)
    assert list(tmp_path.glob("latents-*.safetensors")) and lat.train.shape[1:] == (4, 7, 7)


# ----------------------------------------------------------------------------------------------- command line


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, HYDRA_FULL_ERROR="0")


def test_train_autoencoder_script(tmp_path):
    """The script trains (digits, one level: latents 4x4x4), writes the weights and a summary with the held-out
    reconstruction error; nonsense settings end with a one-line error and exit code 1, and leave nothing behind."""
    out = tmp_path / "ae"
    args = [sys.executable, str(ROOT / "train_autoencoder.py"), f"hydra.run.dir={out}", "data=digits"]
    ok = subprocess.run([*args, "steps=20", "channels=[8]"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((out / "autoencoder.json").read_text())
    assert summary["latent_shape"] == [4, 4, 4] and summary["test_reconstruction_mse"] > 0
    model = load_autoencoder(out / "autoencoder.safetensors")
    assert model.latent_shape == (4, 4, 4)
    bad_dir = tmp_path / "bad"
    bad = subprocess.run([*args[:2], f"hydra.run.dir={bad_dir}", "steps=0"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "steps=0" in bad.stderr and "Traceback" not in bad.stderr
    assert not (bad_dir / "autoencoder.safetensors").exists()


def test_the_job_locks_its_output_directory(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from scoresde.jobs.autoencoder import AutoencoderConfig, run
    from scoresde.rundir import RunDirInUse, RunDirLock
    from scoresde.schema import parse

    ConfigStore.instance().store(name="autoencoder_schema", node=AutoencoderConfig)
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = parse(AutoencoderConfig, compose("autoencoder", ["data=digits", "steps=2", "channels=[8]"]))
    assert cfg.data.kind == "digits" and cfg.kl_weight > 0
    with RunDirLock(tmp_path / "busy"), pytest.raises(RunDirInUse):
        run(cfg, tmp_path / "busy")
    assert not (tmp_path / "busy" / "autoencoder.safetensors").exists()
    with pytest.raises(ValueError, match="divisible by 16"):  # four levels do not fit 8x8 images
        run(dataclasses.replace(cfg, channels=[8, 8, 8, 8]), tmp_path / "odd")
    assert not (tmp_path / "odd" / "autoencoder.json").exists()
