"""The command lines of the diffusion family (issue 16), on the 8x8 digits with tiny models and a few steps:

* latent diffusion: ``train.py latent.autoencoder=PATH`` trains on the autoencoder's latents, stores its path and
  content hash, ``sample.py`` decodes, ``likelihood.py`` reports the latent NLL as such, a swapped autoencoder is
  refused;
* cascaded super-resolution: ``train.py task=superres`` conditions on ``downsample(x0, factor)`` with per-example
  noise-conditioning augmentation; ``sample.py low_res=...`` gives one high-resolution sample per low-resolution
  input with every sampler, chained after a base run's samples; bad ``low_res`` refused naming the key.

Quality is measured elsewhere (tests/test_family_slow.py, benchmarks/bench_family.py); these check the wiring.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from scoresde.checkpoint import CheckpointError
from scoresde.data import load_dataset
from scoresde.jobs import likelihood as likelihood_job
from scoresde.jobs import sample as sample_job
from scoresde.latent import load_autoencoder, save_autoencoder, train_autoencoder
from scoresde.loading import load_model
from scoresde.nets.superres import downsample
from scoresde.schema import ConfigError
from scoresde.training import train
from tests.configs import typed_config
from tests.test_train_cli import _env, compose_cfg

ROOT = Path(__file__).resolve().parents[1]

TINY = [  # a small MLP (EDM preconditioning) on the digits, short runs
    "data=digits",
    "model=mlp",
    "model.net.hidden=64",
    "model.net.depth=2",
    "model.net.embed_dim=32",
    "trainer.batch_size=32",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "trainer.tensorboard=false",
    "trainer.eval_every=0",
    "trainer.sample_n=6",
    "trainer.sampler.steps=5",
    "trainer.ckpt_every=1000",
]
SAMPLERS = {  # every sampler of conf/sampler, with options that keep it to a few score evaluations
    "ode": ["sampler.method=euler", "sampler.steps=3"],
    "ode_scipy": ["sampler.rtol=1e-2", "sampler.atol=1e-2"],
    "sdeint": ["sampler.steps=3"],
    "pc": ["sampler.steps=3"],
    "dpm_solver": ["sampler.steps=3"],
    "unipc": ["sampler.steps=3"],
    "heun": ["sampler.steps=3"],
    "euler_maruyama": ["sampler.steps=3"],
    "reverse_diffusion": ["sampler.steps=3"],
    "ancestral": ["sampler.steps=3"],
    "ddim": ["sampler.steps=3"],
    "pndm": ["sampler.steps=4"],
}


def sample(out: Path, *overrides: str) -> dict:
    return sample_job.run(typed_config("sample", *overrides), out)


def images_of(path: Path) -> np.ndarray:
    return np.load(path)["arr_0"]


def save_images(path: Path, x01: torch.Tensor) -> Path:
    """Images (N, C, H, W) in [0, 1] as sample.py writes them: uint8 (N, H, W, C) in arr_0."""
    np.savez(path, arr_0=(x01 * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return path


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8, test_fraction=0.2)  # what data=digits gives the runs here


def autoencoder_file(folder: Path, digits, seed: int) -> Path:
    """A tiny autoencoder of the digits (latents 2x4x4), trained for 30 steps: enough for the wiring."""
    res = train_autoencoder(digits.train, digits.test, latent_channels=2, channels=(8,), steps=30, batch_size=32,
                            lr=5e-3, seed=seed)  # fmt: skip
    return save_autoencoder(res.model, folder / "autoencoder.safetensors")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("latent")
    ae = autoencoder_file(folder / "ae", digits, seed=0)
    run = folder / "run"
    train(compose_cfg(*TINY, f"latent.autoencoder={ae}", "trainer.steps=15"), run)
    return run, ae


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("superres") / "run"
    train(compose_cfg(*TINY, "task=superres", "superres.factor=2", "superres.aug_max=0.3", "trainer.steps=15"), run)
    return run


# --- latent diffusion ------------------------------------------------------------------------------------------
def test_latent_run_stores_the_autoencoder_and_its_hash(latent_run):
    run, ae = latent_run
    cfg = load_model(run).config
    with safe_open(ae, "pt") as f:  # the hash the autoencoder file itself carries (computed when it was saved)
        file_hash = f.metadata()["sha256"]
    assert cfg.latent.autoencoder == str(ae.resolve()) and cfg.latent.sha256 == file_hash
    # the exported weights carry the same config
    assert load_model(run / "ema.safetensors").config.latent == cfg.latent


def test_latent_run_trains_on_the_latents_and_decodes(latent_run, digits, tmp_path):
    """The model's samples are latents (2x4x4); sample.py writes the decoded 8x8 images and the latents, and the
    images are the decoder's output of those latents (to the uint8 rounding: one level)."""
    run, ae_path = latent_run
    loaded = load_model(run)
    ae = load_autoencoder(ae_path)
    assert loaded.is_latent and not loaded.is_image and loaded.data_shape == ae.latent_shape == (2, 4, 4)
    paths = sample(tmp_path, f"ckpt={run}", "sampler=dpm_solver", "sampler.steps=4", "n=5", "batch_size=3")
    images, latents = images_of(paths["npz"]), np.load(paths["latents"])["arr_0"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert latents.shape == (5, 2, 4, 4) and np.isfinite(latents).all()
    with torch.no_grad():
        decoded = ae.decode(torch.from_numpy(latents)).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(decoded - images.astype(np.float64)).max() <= 0.5 + 1e-3  # round to nearest
    # the preview of the run decodes too
    assert images_of(run / "samples" / "final.npz").shape == (6, 8, 8, 1)


def test_latent_likelihood_is_named_and_is_the_latent_nll(latent_run, digits, tmp_path):
    """likelihood.py reports -log p(z) of the latents z = E(x) under its own label, equal to the probability-flow
    log-likelihood of the encoded images computed directly (same probes: same seeds)."""
    from scoresde.generate import sample_seed
    from scoresde.likelihood import log_likelihood

    run, ae_path = latent_run
    res = likelihood_job.run(typed_config("likelihood", f"ckpt={run}", "n=4", "rtol=1e-4", "atol=1e-4"), tmp_path)
    assert res["metric"] == "nll_latent_nats" and "not of the images" in res["note"]
    assert res["bits_per_latent_dim"] == pytest.approx(res["mean"] / (32 * math.log(2)))
    loaded = load_model(run)
    z = load_autoencoder(ae_path).encode(digits.test[:4])
    gens = [torch.Generator().manual_seed(sample_seed(0, k)) for k in range(4)]
    direct = log_likelihood(loaded.sde, loaded.model, z, rtol=1e-4, atol=1e-4, generator=gens,
                            divergence="hutchinson_rademacher")  # fmt: skip
    assert res["mean"] == pytest.approx(-float(direct.logp.double().mean()), rel=1e-4, abs=1e-3)


def test_a_swapped_autoencoder_is_refused(latent_run, digits, tmp_path):
    """Another autoencoder at the stored path (retrained, other seed) would decode the latents into something else:
    loading, sampling and resuming the run refuse it; a missing file is named."""
    import shutil

    run, ae = latent_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.lock"))
    other = autoencoder_file(tmp_path / "other", digits, seed=1)
    original = ae.read_bytes()
    try:
        ae.write_bytes(other.read_bytes())
        for target in (copy, copy / "ema.safetensors"):
            with pytest.raises(CheckpointError, match="swapped or retrained"):
                load_model(target)
        with pytest.raises(CheckpointError, match="latent.autoencoder"):
            sample(tmp_path / "s", f"ckpt={copy}", "n=2")
        with pytest.raises(ConfigError, match="latent.sha256"):  # resuming it is a different experiment
            train(compose_cfg(*TINY, f"latent.autoencoder={ae}", "trainer.steps=20"), copy)
        ae.unlink()
        with pytest.raises(CheckpointError, match="does not exist"):
            load_model(copy)
    finally:
        ae.write_bytes(original)
    assert load_model(copy).is_latent


def test_a_latent_run_resumes(latent_run, tmp_path):
    """The filled-in hash and resolved path do not count as changed settings when the same command resumes."""
    run, ae = latent_run
    target = tmp_path / "run"
    overrides = [*TINY, f"latent.autoencoder={ae}", "trainer.sample_n=0"]
    train(compose_cfg(*overrides, "trainer.steps=5"), target)
    assert train(compose_cfg(*overrides, "trainer.steps=8"), target).step == 8


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["latent.autoencoder=/nonexistent/autoencoder.safetensors"], "latent.autoencoder.*does not exist"),
        (["latent.autoencoder=AE", "latent.sha256=0123"], "latent.sha256"),
        (["latent.autoencoder=AE", "task=superres"], "latent.autoencoder"),
        (["latent.autoencoder=AE", "model.centered=false"], "model.centered"),
        (["latent.autoencoder=AE", "data=toy"], "encodes images"),
        (["latent.sha256=0123"], "latent.sha256"),
        (["task=upscale"], "task"),
        (["task=superres", "superres.factor=1"], "superres.factor"),
        (["task=superres", "superres.aug_max=1.0"], "superres.aug_max"),
        (["task=superres", "superres.factor=3"], "factor 3"),
        (["task=superres", "data=toy"], "task=superres needs image data"),
    ],
)
def test_bad_family_settings_fail_before_the_run_starts(latent_run, tmp_path, overrides, match):
    _, ae = latent_run
    run = tmp_path / "run"
    overrides = [o.replace("=AE", f"={ae}") for o in overrides]
    with pytest.raises((ConfigError, ValueError), match=match):
        train(compose_cfg(*TINY, *overrides, "trainer.steps=2"), run)
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()


# --- cascaded super-resolution ---------------------------------------------------------------------------------
def test_superres_run_is_rebuilt_by_load_model(superres_run):
    loaded = load_model(superres_run)
    assert loaded.task == "superres" and loaded.low_res_shape == (1, 4, 4) and loaded.data_shape == (1, 8, 8)
    assert type(loaded.model.net).__name__ == "SuperResNet" and loaded.model.net.aug_max == 0.3
    assert loaded.model.net.net.data_shape == (3, 8, 8)  # x, the upsampled low-res image, the level plane
    # the preview super-resolves held-out images
    assert images_of(superres_run / "samples" / "final.npz").shape == (6, 8, 8, 1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_low_res_conditioning(superres_run, digits, tmp_path, name):
    """n low-resolution 4x4 inputs give n samples at twice the size with every sampler."""
    low = save_images(tmp_path / "low.npz", downsample(digits.test[:3], 2))
    paths = sample(tmp_path / "out", f"ckpt={superres_run}", f"sampler={name}", *SAMPLERS[name], "n=3",
                   f"low_res={low}")  # fmt: skip
    out = images_of(paths["npz"])
    assert out.shape == (3, 8, 8, 1) and out.dtype == np.uint8


def test_sample_k_is_conditioned_on_low_res_k(superres_run, digits, tmp_path):
    """Sample k uses image k of the file whatever its batch (first=k n=1 reproduces it exactly), and the conditioning
    reaches the network: the same seeds with the inputs in reverse order give other samples. Compared in the model's
    float space (a 15-step model depends on its input by ~1e-3 there, below the uint8 files' resolution)."""
    from scoresde.distributed import DistInfo

    loaded = load_model(superres_run)
    low = save_images(tmp_path / "low.npz", downsample(digits.test[:4], 2))

    def draw(*overrides: str, reverse: bool = False) -> torch.Tensor:
        cfg = typed_config("sample", f"ckpt={superres_run}", "sampler=dpm_solver", "sampler.steps=4", f"low_res={low}",
                           "low_res_aug=0.2", *overrides)  # fmt: skip
        inputs = sample_job.low_res_inputs(cfg, loaded)
        inputs = inputs.flip(0) if reverse else inputs
        sampler = sample_job.build_sampler(cfg.sampler)
        return sample_job.generate_superres(cfg, loaded, loaded.model, inputs, sampler, DistInfo()).samples

    full = draw("n=4", "batch_size=3")
    alone = draw("n=1", "first=3")  # sample 3 is in the second batch of the full run
    torch.testing.assert_close(alone[0], full[3], rtol=0, atol=1e-6)
    reversed_inputs = draw("n=4", "batch_size=3", reverse=True)
    assert float((reversed_inputs - full).abs().amax(dim=(1, 2, 3)).min()) > 1e-4


def test_cascade_chains_after_a_base_run(superres_run, tmp_path):
    """A base model at 4x4 (data.image_size=4), its samples.npz as low_res: the cascade's 8x8 samples."""
    base = tmp_path / "base"
    train(compose_cfg(*TINY, "data.image_size=4", "trainer.steps=10", "trainer.sample_n=0"), base)
    low = sample(tmp_path / "low", f"ckpt={base}", "sampler=dpm_solver", "sampler.steps=3", "n=4")["npz"]
    assert images_of(low).shape == (4, 4, 4, 1)
    paths = sample(tmp_path / "high", f"ckpt={superres_run}", "sampler=dpm_solver", "sampler.steps=3", "n=4",
                   f"low_res={low}")  # fmt: skip
    assert images_of(paths["npz"]).shape == (4, 8, 8, 1)


def test_bad_low_res_is_refused_naming_the_key(superres_run, latent_run, digits, tmp_path):
    ok = save_images(tmp_path / "ok.npz", downsample(digits.test[:2], 2))
    wrong = save_images(tmp_path / "wrong.npz", digits.test[:2])  # 8x8: the high resolution
    opts = [f"ckpt={superres_run}", "sampler=dpm_solver", "sampler.steps=2"]
    cases = [
        (["n=2"], "low_res: .* is a super-resolution model"),
        (["n=2", f"low_res={wrong}"], r"low_res=.*need 4x4 images"),
        (["n=3", f"low_res={ok}"], r"low_res=.*indices 0..2; the file holds 2"),
        (["n=2", f"low_res={tmp_path / 'missing.npz'}"], "low_res.*does not exist"),
        (["n=2", f"low_res={ok}", "low_res_aug=1.0"], "low_res_aug"),
    ]
    for k, (extra, match) in enumerate(cases):
        out = tmp_path / f"out{k}"
        with pytest.raises(ConfigError, match=match):
            sample(out, *opts, *extra)
        assert not (out / "samples.npz").exists()
    with pytest.raises(ConfigError, match="low_res.*only super-resolution runs"):
        sample(tmp_path / "plain", f"ckpt={latent_run[0]}", f"low_res={ok}", "n=2")
    with pytest.raises(ConfigError, match="super-resolution model"):
        likelihood_job.run(typed_config("likelihood", f"ckpt={superres_run}", "n=2"), tmp_path / "lik")


def test_training_conditioning_is_the_downsampled_batch_with_per_example_augmentation():
    """low_res = sqrt(1 - s^2) downsample(x0) + s e with s ~ U(0, aug_max) per example, drawn from the step's
    generator; the part of a rank equals its rows of the global draw. 256 examples x 16 pixels: the standardized
    noise has mean 0 and std 1 to within 0.05 (> 3 standard errors: 1/64 and 1/90)."""
    from scoresde.training.superres import SuperResTask

    task = SuperResTask(factor=2, aug_max=0.3)
    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = task.conditioning(x, x.shape, torch.Generator().manual_seed(1))
    s, low = cond["aug_level"], downsample(x, 2)
    assert s.shape == (256,) and float(s.min()) >= 0 and float(s.max()) < 0.3 and float(s.std()) > 0.05
    e = (cond["low_res"] - torch.sqrt(1 - s**2)[:, None, None, None] * low) / s[:, None, None, None]
    assert abs(float(e.mean())) < 0.05 and abs(float(e.std()) - 1) < 0.05
    mine = slice(1, None, 2)  # rank 1 of 2
    part = task.conditioning(x[mine], x.shape, torch.Generator().manual_seed(1), mine)
    torch.testing.assert_close(part["low_res"], cond["low_res"][mine])
    exact = SuperResTask(factor=2, aug_max=0.0).conditioning(x, x.shape, torch.Generator().manual_seed(1))
    torch.testing.assert_close(exact["low_res"], low)


# --- the command lines themselves ------------------------------------------------------------------------------
def script(name: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / name), f"hydra.run.dir={out}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_latent_and_superres_from_the_command_line(tmp_path):
    """train_autoencoder.py -> train.py latent.autoencoder= -> sample.py (decoded images); train.py task=superres ->
    sample.py low_res=<the latent run's samples downsampled>; the wrong low_res exits 1 with the key named."""
    ae_dir, lat, sr = tmp_path / "ae", tmp_path / "latent", tmp_path / "sr"
    r = script("train_autoencoder.py", ae_dir, "data=digits", "channels=[8]", "latent_channels=2", "steps=20")
    assert r.returncode == 0, r.stderr
    r = script("train.py", lat, *TINY, f"latent.autoencoder={ae_dir / 'autoencoder.safetensors'}", "trainer.steps=5")
    assert r.returncode == 0, r.stderr
    r = script("sample.py", tmp_path / "s1", f"ckpt={lat}", "sampler=dpm_solver", "sampler.steps=3", "n=4")
    assert r.returncode == 0, r.stderr
    images = np.load(tmp_path / "s1" / "samples.npz")["arr_0"]
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
    r = script("train.py", sr, *TINY, "task=superres", "superres.factor=2", "trainer.steps=5")
    assert r.returncode == 0, r.stderr
    low = save_images(tmp_path / "low.npz", downsample(torch.from_numpy(images).permute(0, 3, 1, 2) / 255, 2))
    r = script("sample.py", tmp_path / "s2", f"ckpt={sr}", "sampler=pc", "sampler.steps=3", "n=4", f"low_res={low}")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "s2" / "samples.npz")["arr_0"].shape == (4, 8, 8, 1)
    r = script("sample.py", tmp_path / "s3", f"ckpt={sr}", "n=4", f"low_res={tmp_path / 's1' / 'samples.npz'}")
    assert r.returncode == 1 and "low_res=" in r.stdout + r.stderr


def test_superres_grad_accumulation_keeps_each_example_with_its_conditioning(tmp_path):
    """Micro-batches see the conditioning of their own examples: grad_accum=2 trains the same weights as one batch
    (up to float summation order)."""
    runs = {}
    for accum in (1, 2):
        run = tmp_path / f"accum{accum}"
        train(compose_cfg(*TINY, "task=superres", "trainer.steps=3", "trainer.sample_n=0", "trainer.export=false",
                          f"trainer.grad_accum={accum}"), run)  # fmt: skip
        runs[accum] = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in runs[1].items():
        torch.testing.assert_close(runs[2][key], value, rtol=1e-4, atol=1e-6, msg=key)
