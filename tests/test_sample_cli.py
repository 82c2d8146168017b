"""sample.py end to end: a tiny trained checkpoint and the reference checkpoints; per-sample seeds; errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.jobs import sample as job
from scoresde.schema import ConfigError
from tests.configs import typed_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "official_score_sde"


def compose_sample(*overrides: str):
    return typed_config("sample", *overrides)


def run_sample(out: Path, *overrides: str) -> dict:
    return job.run(compose_sample(*overrides), out)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny MLP trained for 30 steps on two moons (the trainer's own CLI tests check quality)."""
    from scoresde.training import train
    from tests.test_train_cli import TOY, compose_cfg

    run = tmp_path_factory.mktemp("toy") / "run"
    train(compose_cfg(*TOY, "trainer.steps=30", "trainer.ckpt_every=30", "trainer.export=true"), run)
    return run


def test_sample_from_trained_run_writes_points_and_scatter(toy_run, tmp_path):
    paths = run_sample(tmp_path, f"ckpt={toy_run}", "sampler=dpm_solver", "sampler.steps=5", "n=10", "batch_size=4")
    data = np.load(paths["npz"])
    assert data["arr_0"].shape == (10, 2) and data["arr_0"].dtype == np.float32 and np.isfinite(data["arr_0"]).all()
    assert data["seeds"].shape == (10,) and paths["png"].exists()
    # the exported weights give the same samples as the run directory (both hold the EMA weights)
    again = run_sample(tmp_path / "b", f"ckpt={toy_run / 'ema.safetensors'}", "sampler=dpm_solver",
                       "sampler.steps=5", "n=10")  # fmt: skip
    np.testing.assert_allclose(np.load(again["npz"])["arr_0"], data["arr_0"], rtol=1e-5, atol=1e-5)


def test_sample_k_is_reproducible_alone(toy_run, tmp_path):
    """Per-sample seeds: sample 3 of a batch of 6 equals sample 3 drawn alone (first=3 n=1), any batch size."""
    opts = [f"ckpt={toy_run}", "sampler=ancestral", "sampler.steps=8", "seed=7"]
    full = np.load(run_sample(tmp_path / "full", *opts, "n=6", "batch_size=4")["npz"])
    alone = np.load(run_sample(tmp_path / "alone", *opts, "n=1", "first=3")["npz"])
    np.testing.assert_allclose(alone["arr_0"][0], full["arr_0"][3], rtol=1e-5, atol=1e-6)
    assert alone["seeds"][0] == full["seeds"][3]


@pytest.mark.parametrize("name", ["ve_ncsnpp_continuous", "vp_ddpmpp_continuous"])
def test_sample_from_reference_checkpoint(name, tmp_path):
    """Reference score_sde_pytorch checkpoints load strictly (config.json beside them) and give uint8 NHWC images."""
    ckpt = FIXTURES / name / "checkpoint.pth"
    assert ckpt.exists(), f"reference fixtures belong in {FIXTURES} (see its README)"
    paths = run_sample(tmp_path, f"ckpt={ckpt}", "sampler=ddim", "sampler.steps=3", "n=3", "batch_size=2")
    arr = np.load(paths["npz"])["arr_0"]
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    assert paths["png"].exists() and (tmp_path / "sample.json").exists()


def test_errors_name_the_problem(toy_run, tmp_path):
    from scoresde.checkpoint import CheckpointError

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_sample(tmp_path, f"ckpt={tmp_path / 'nope'}")
    # a reference checkpoint without a config beside it and none given
    src = FIXTURES / "vp_ddpmpp_continuous" / "checkpoint.pth"
    lonely = tmp_path / "lonely" / "checkpoint_1.pth"
    lonely.parent.mkdir()
    lonely.write_bytes(src.read_bytes())
    with pytest.raises(CheckpointError, match="official_config"):
        run_sample(tmp_path / "o", f"ckpt={lonely}")
    # ... or with the config of another architecture: strict loading lists what does not fit
    with pytest.raises(Exception, match="does not match"):
        run_sample(tmp_path / "o2", f"ckpt={lonely}", "official_config=vp/cifar10_ddpmpp_continuous")
    with pytest.raises(ValueError, match="bogus"):
        run_sample(tmp_path / "o3", f"ckpt={toy_run}", "+sampler.bogus=1")
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())


def test_guidance_refused_in_command_line_terms(toy_run, tmp_path, monkeypatch):
    """label= on an unconditional run says so and names the two ways that work (a command-line user cannot pass
    null_label); a classifier trained on another data shape is refused before sampling, naming it and both shapes."""
    import scoresde
    import scoresde.generate
    from scoresde.classifier import save_classifier
    from scoresde.nets import MLP

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the guidance settings were checked")

    monkeypatch.setattr(scoresde.generate, "generate", no_sampling)
    common = [f"ckpt={toy_run}", "sampler=ddim", "sampler.steps=3", "n=2"]
    with pytest.raises(ConfigError, match="label=3: the model .* is unconditional.*guidance.kind=classifier") as err:
        run_sample(tmp_path / "s1", *common, "label=3")
    assert "null_label" not in str(err.value)
    sde = scoresde.load_model(str(toy_run)).sde  # the toy run samples points of shape (2,)
    clf = save_classifier(MLP((1, 8, 8), hidden=8, depth=1, out_dim=10), tmp_path / "c.safetensors",
                          sde, centered=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"classifier .*c\.safetensors.*shape \(1, 8, 8\).*shape \(2,\)"):
        run_sample(tmp_path / "s2", *common, "label=3", "guidance.kind=classifier", "guidance.scale=4",
                   f"guidance.classifier={clf}")  # fmt: skip


def test_cli_runs(toy_run, tmp_path):
    """The command line itself (Hydra wrapper) writes into the given output directory."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt={toy_run}", "sampler=ddim", "sampler.steps=4", "n=5",
         f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "samples.npz").exists() and "samples" in proc.stdout
    assert torch.from_numpy(np.load(out / "samples.npz")["arr_0"]).shape == (5, 2)


def test_inpainting_and_colorization_from_the_cli(tmp_path):
    """mask= / known= and gray= with the reference VE NCSN++ fixture: the known pixels come back exactly (up to the
    uint8 rounding of the output) and the colourised samples' channel mean is the given gray image."""
    ckpt = FIXTURES / "ve_ncsnpp_continuous" / "checkpoint.pth"
    rng = np.random.default_rng(0)
    known = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[:, :8] = 1  # left half known
    np.savez(tmp_path / "known.npz", known)
    np.save(tmp_path / "mask.npy", mask)
    common = [f"ckpt={ckpt}", "sampler=pc", "sampler.steps=4", "sampler.corrector=none", "n=2"]
    out = np.load(run_sample(tmp_path / "inp", *common, f"mask={tmp_path / 'mask.npy'}",
                             f"known={tmp_path / 'known.npz'}")["npz"])["arr_0"]  # fmt: skip
    assert out.shape == (2, 16, 16, 3)
    assert np.abs(out[:, :, :8].astype(int) - known[:, :, :8].astype(int)).max() <= 1
    gray = rng.uniform(0.2, 0.8, size=(2, 16, 16)).astype(np.float32)
    np.save(tmp_path / "gray.npy", gray)
    col = np.load(run_sample(tmp_path / "col", *common, f"gray={tmp_path / 'gray.npy'}")["npz"])["arr_0"]
    assert col.shape == (2, 16, 16, 3)
    # In the model's space the channel mean is exactly the gray image (the random fixture network's colours are
    # far outside [0, 1], so the uint8 output is clipped and cannot show it).
    import scoresde

    cfg = compose_sample(*common, f"gray={tmp_path / 'gray.npy'}")
    loaded = scoresde.load_model(cfg.ckpt)
    res = job.solve_inverse(cfg, loaded, loaded.model, job.build_sampler(cfg.sampler), "cpu")
    # float32 rounding of the rotation back from the decoupled coordinates: a few ulps of the largest colour value
    atol = max(1e-5, 8 * torch.finfo(torch.float32).eps * float(res.samples.abs().max()))
    np.testing.assert_allclose(res.samples.double().mean(1).numpy(), gray, atol=atol)  # VE model: [0, 1] data
    with pytest.raises(ConfigError, match="sampler=pc"):
        run_sample(tmp_path / "bad", f"ckpt={ckpt}", "sampler=ddim", f"gray={tmp_path / 'gray.npy'}", "n=2")
    with pytest.raises(ConfigError, match="known="):
        run_sample(tmp_path / "bad2", *common, f"mask={tmp_path / 'mask.npy'}")


def test_one_sample_format_read_by_the_metrics(tmp_path):
    """samples.npz (uint8 NHWC images) goes straight into the digits metrics and read_samples, and the trainer's
    previews are written in the same format."""
    from scoresde.data import load_dataset
    from scoresde.digits_metrics import frechet_digits_distance
    from scoresde.generate import GenerateResult, read_samples, save_samples

    test = load_dataset("digits", image_size=None).test[:64]
    res = GenerateResult(test * 2 - 1, np.arange(64, dtype=np.uint64), 1)
    paths = save_samples(tmp_path, res, lambda x: (x + 1) / 2)
    arr = np.load(paths["npz"])["arr_0"]
    assert arr.shape == (64, 8, 8, 1) and arr.dtype == np.uint8
    back = read_samples(paths["npz"])
    assert back.shape == (64, 1, 8, 8) and (back - test).abs().max() <= 0.5 / 255 + 1e-6
    assert frechet_digits_distance(arr) == pytest.approx(frechet_digits_distance(back), rel=1e-5)


def test_fit_grid_fits_once_and_caches_beside_the_model(toy_run, tmp_path):
    """fit_grid=true: the first run fits the interior times (its own score calls, reported apart from the NFE) and
    caches them in the run directory; the second loads them and draws the same samples."""
    opts = [f"ckpt={toy_run}", "sampler=unipc", "sampler.steps=4", "n=6", "fit_grid=true", "fit_points=16",
            "fit_max_evals=12"]  # fmt: skip
    first = np.load(run_sample(tmp_path / "a", *opts)["npz"])["arr_0"]
    info = __import__("json").loads((tmp_path / "a" / "sample.json").read_text())
    fit = info["fitted_grid"]
    assert not fit["cached"] and fit["fit_nfe"] > 0 and info["nfe_per_sample"] == 4 + 1  # 4 steps + denoise
    times = fit["times"]
    assert len(times) == 5 and times[0] == 1.0 and all(a > b for a, b in zip(times, times[1:], strict=False))
    assert list(toy_run.glob("grid_unipc_4steps_*.pt"))
    second = np.load(run_sample(tmp_path / "b", *opts)["npz"])["arr_0"]
    again = __import__("json").loads((tmp_path / "b" / "sample.json").read_text())["fitted_grid"]
    assert again["cached"] and again["fit_nfe"] == 0 and again["times"] == times
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ConfigError, match="fixed-step"):
        run_sample(tmp_path / "c", f"ckpt={toy_run}", "sampler=ode", "fit_grid=true")
    assert fit["model_times"] is None
    # fit_model_times=true: another fit (its own cache file), whose model times are recorded when they are kept
    told = [*opts, "fit_model_times=true"]
    third = np.load(run_sample(tmp_path / "d", *told)["npz"])["arr_0"]
    rec = __import__("json").loads((tmp_path / "d" / "sample.json").read_text())["fitted_grid"]
    assert not rec["cached"] and len(list(toy_run.glob("grid_unipc_4steps_*.pt"))) == 2
    assert rec["model_times"] is None or (len(rec["model_times"]) == 5 and rec["model_times"][-1] == rec["times"][-1])
    fourth = np.load(run_sample(tmp_path / "e", *told)["npz"])["arr_0"]
    np.testing.assert_array_equal(third, fourth)
    with pytest.raises(ConfigError, match="fit_model_times"):
        run_sample(tmp_path / "f", f"ckpt={toy_run}", "fit_model_times=true")


def test_auto_sampler_is_the_sdes_own(toy_run, tmp_path):
    """``sampler=auto`` (the default) is ``sde.default_sampler`` with the given options laid over it: EDM's Heun on
    ``sde=edm`` (Karras et al. 2022, Alg. 2: 17 Heun steps to sigma = 0.002, 2 evaluations each, then the final
    denoising step: 35 NFE), pc elsewhere; inpainting always runs pc."""
    import json

    from scoresde.sde import EDMSDE, VPSDE
    from scoresde.training import train
    from tests.test_train_cli import TOY, compose_cfg

    edm_run = tmp_path / "edm"
    train(compose_cfg(*TOY, "sde=edm", "trainer.steps=2", "trainer.ckpt_every=2"), edm_run)
    run_sample(tmp_path / "a", f"ckpt={edm_run}", "n=3")
    info = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert info["sampler"] == EDMSDE.default_sampler
    assert info["nfe_per_sample"] == 35
    run_sample(tmp_path / "b", f"ckpt={edm_run}", "n=3", "+sampler.steps=5")
    assert json.loads((tmp_path / "b" / "sample.json").read_text())["sampler"]["steps"] == 5
    run_sample(tmp_path / "c", f"ckpt={toy_run}", "n=3", "+sampler.steps=4")
    assert json.loads((tmp_path / "c" / "sample.json").read_text())["sampler"] == {**VPSDE.default_sampler, "steps": 4}
    assert job.resolve_sampler_node("auto", EDMSDE(), inverse=True) == {"name": "pc"}
    with pytest.raises(ConfigError, match="sampler"):
        run_sample(tmp_path / "d", f"ckpt={edm_run}", "n=3", "+sampler.bogus=1")
