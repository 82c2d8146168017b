"""One training per run directory, nonsense refused before any work, resume that never lies about its settings,
and clean endings (signals, disk full) — issue 10, items 2-7."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.schema import ConfigError
from tests.test_train_cli import TOY, _env, _snapshot, checkpoint_tensors, cli, command, compose_cfg, train_in_process

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), "the first run never wrote its first checkpoint"


# --- item 2: one training per run directory -----------------------------------------------------------------------
@pytest.mark.slow
def test_second_training_in_a_run_directory_is_refused_at_once(tmp_path):
    """While one training runs, a second one in the same directory exits non-zero at once (before loading data or
    building anything), naming the directory and the first one's PID; the first finishes bitwise as an undisturbed
    run, and then the directory is free again (the lock dies with its process)."""
    args = [*TOY, "trainer.steps=2000", "trainer.ckpt_every=25"]
    run = tmp_path / "run"
    first = subprocess.Popen(command(run, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(run / "checkpoints" / "last.pt", first)
    second = cli(run, *args, timeout=120)
    assert second.returncode == 1, second.stderr[-2000:]
    assert "in use" in second.stderr and f"PID {first.pid}" in second.stderr and str(run) in second.stderr
    assert "starting" not in second.stdout  # refused before any work
    first.communicate(timeout=600)
    assert first.returncode == 0
    ref = tmp_path / "ref"
    train_in_process(ref, *args[len(TOY) :])
    a, b = checkpoint_tensors(ref / "checkpoints" / "last.pt"), checkpoint_tensors(run / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2000  # no lost or doubled lines
    assert train_in_process(run, "trainer.steps=2010", "trainer.ckpt_every=25").step == 2010


@pytest.mark.slow
def test_a_killed_runs_lock_does_not_block(tmp_path):
    run = tmp_path / "run"
    args = [*TOY, "trainer.steps=2000", "trainer.ckpt_every=10"]
    proc = subprocess.Popen(command(run, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(run / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").exists()  # stale lock file left behind
    res = train_in_process(run, "trainer.steps=30", "trainer.ckpt_every=10")
    assert res.step == 30


def test_lock_in_process(tmp_path):
    from scoresde.rundir import RunDirInUse, RunDirLock

    with RunDirLock(tmp_path / "d"):
        with pytest.raises(RunDirInUse, match=f"PID {os.getpid()}"):
            RunDirLock(tmp_path / "d").acquire()
    with RunDirLock(tmp_path / "d"):  # released on exit
        pass


def test_classifier_output_directory_is_locked_and_never_overwritten_by_nonsense(tmp_path):
    from scoresde.jobs import classifier as job
    from scoresde.rundir import RunDirInUse, RunDirLock
    from tests.configs import typed_config

    out = tmp_path / "clf"
    cfg = typed_config("classifier", "steps=3", "hidden=16", "depth=1")
    job.run(cfg, out)
    before = _snapshot(out)
    with RunDirLock(out):
        with pytest.raises(RunDirInUse, match="in use"):
            job.run(cfg, out)
    with pytest.raises(ConfigError, match="steps=0"):
        job.run(typed_config("classifier", "steps=0"), out)
    assert _snapshot(out) == before


# --- item 3: settings checked before the work -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.sampler=nosuch", "unknown sampler 'nosuch'"),
        ("+trainer.sampler.bogus=1", "bogus"),
        ("trainer.sampler.steps=abc", "steps='abc'"),
        ("trainer.sampler.steps=0", "steps must be >= 1"),
    ],
)
def test_preview_sampler_is_checked_before_step_one(tmp_path, override, message):
    run = tmp_path / "run"
    t0 = time.time()
    with pytest.raises(Exception, match=message):
        train_in_process(run, "trainer.steps=200", "trainer.sample_n=4", override)
    assert time.time() - t0 < 30 and not (run / "checkpoints").exists()


def test_a_null_option_the_sampler_lacks_is_dropped():
    """A preset's ``steps: 500`` set back to null fits the adaptive samplers, which choose their own steps (ode_scipy
    has no ``steps`` option at all); a value for an option the sampler lacks is still refused."""
    from scoresde.jobs.sample import build_sampler

    assert build_sampler({"name": "ode_scipy", "steps": None, "rtol": 1e-3}).rtol == 1e-3
    assert build_sampler({"name": "ode", "steps": None}).method == "dopri5"
    with pytest.raises(ConfigError, match="steps"):
        build_sampler({"name": "ode_scipy", "steps": 500})
    with pytest.raises(ConfigError, match="bogus"):
        build_sampler({"name": "ddim", "bogus": 1})


def test_preview_group_cannot_name_a_missing_sampler(tmp_path):
    p = cli(tmp_path / "run", *TOY, "sampler@trainer.sampler=nosuch", timeout=120)
    assert p.returncode != 0 and "nosuch" in p.stderr and not (tmp_path / "run").exists()


# --- item 4: no silent substitutions -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.steps=0", "trainer.steps"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.batch_size=-4", "trainer.batch_size"),
        ("trainer.log_every=0", "trainer.log_every"),
        ("trainer.ckpt_every=0", "trainer.ckpt_every"),
        ("trainer.grad_accum=0", "trainer.grad_accum"),
        ("trainer.eval_every=-1", "trainer.eval_every"),
        ("trainer.ema_rate=1.5", "trainer.ema_rate"),
        ("optim.grad_clip=0", "optim.grad_clip"),
        ("seed=-1", "seed"),
        ("model.time_scale=0", "model.time_scale"),
        # options the resolved loss would ignore (model=mlp is EDM-preconditioned, so loss.name=auto is edm)
        ("loss.weighting=likelihood", "loss.weighting"),
        ("loss.importance_sampling=true", "loss.importance_sampling"),
        ("loss.name=ddpm loss.eps=0.5", "loss.eps"),
        ("loss.name=dsm loss.p_mean=0", "loss.p_mean"),
        ("loss.weighting=bogus", "loss.weighting"),
        ("loss.p_std=-1", "loss.p_std"),
        ("loss.label_dropout=2", "loss.label_dropout"),
        ("loss.label_dropout=0.3", "loss.label_dropout"),  # an unconditional network
        ("loss.name=nope", "loss.name"),
    ],
)
def test_nonsense_training_settings_are_refused_before_anything(tmp_path, override, key):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_in_process(run, *override.split())
    assert not run.exists()


def test_a_network_torch_cannot_build_is_a_config_error(tmp_path):
    """A negative layer size fails inside torch (RuntimeError) once the data fixed the shape: it is named as the
    config's, before any step (no config.yaml, no checkpoint), and the run directory's lock is released."""
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"cannot build model\.net"):
        train_in_process(run, "model.net.hidden=-4")
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    train_in_process(run, "trainer.steps=1")  # not locked


def test_loss_options_of_the_resolved_loss_are_accepted(tmp_path):
    """The refusals above leave what each loss reads: dsm's weighting and importance sampling, edm's p_mean."""
    from scoresde.training import parse_train_config
    from scoresde.training.config import check_new_run_config

    for overrides in (("loss.name=dsm", "loss.weighting=likelihood", "loss.importance_sampling=true"),
                      ("loss.p_mean=-1.0", "loss.p_std=1.0", "loss.eps=1e-3")):  # fmt: skip
        check_new_run_config(parse_train_config(compose_cfg(*TOY, *overrides)))


def test_training_cli_refusal_is_one_line(tmp_path):
    p = cli(tmp_path / "run", *TOY, "trainer.steps=0", timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("[scoresde] error: trainer.steps=0")
    assert not _snapshot(tmp_path / "run")  # (Hydra makes the directory; nothing is written into it)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from scoresde.training import train

    run = tmp_path_factory.mktemp("toy") / "run"
    train(compose_cfg(*TOY, "trainer.steps=10", "trainer.ckpt_every=10"), run)
    return run


@pytest.mark.parametrize(
    "script, override, message",
    [
        ("sample", "n=0", "n=0"),
        ("sample", "batch_size=0", "batch_size=0"),
        ("sample", "first=-1", "first=-1"),
        ("sample", "seed=-1", "seed=-1"),
        ("likelihood", "seed=-1", "seed=-1"),
        ("sample", "label=2.7", "label"),
        ("sample", "label=-1", "label=-1"),
        ("sample", "+typo=1", "typo"),
        ("likelihood", "n=0", "n=0"),
        ("likelihood", "repeats=0", "repeats=0"),
        ("likelihood", "split=valid", "split"),
        ("likelihood", "+typo=1", "typo"),
        ("classifier", "steps=0", "steps=0"),
        ("classifier", "+typo=1", "typo"),
    ],
)
def test_nonsense_job_settings_are_refused(toy_run, tmp_path, script, override, message):
    from scoresde.jobs import classifier, likelihood, sample
    from tests.configs import typed_config

    jobs = {"sample": sample, "likelihood": likelihood, "classifier": classifier}
    ckpt = [] if script == "classifier" else [f"ckpt={toy_run}"]
    with pytest.raises(Exception, match=message):
        jobs[script].run(typed_config(script, *ckpt, override), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_complex_and_nan_data_are_refused_when_loading(tmp_path):
    from scoresde.data import DataError, load_dataset

    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(50, 2)) * (1 + 1j))
    with pytest.raises(DataError, match="complex"):
        load_dataset("npz", path=str(tmp_path / "c.npy"))
    images = np.random.default_rng(0).uniform(size=(20, 1, 8, 8)).astype(np.float32)
    images[3, 0, 2, 2] = images[5, 0, 1, 1] = np.nan
    np.savez(tmp_path / "im.npz", images=images)
    with pytest.raises(DataError, match=r"im\.npz.*2 NaN"):
        load_dataset("npz", path=str(tmp_path / "im.npz"))


def test_npy_files_are_accepted(tmp_path):
    from scoresde.data import load_dataset

    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    ds = load_dataset("npz", path=str(tmp_path / "points.npy"), test_fraction=0.1)
    assert ds.train.shape == (90, 2) and ds.test.shape == (10, 2)
    res = train_in_process(tmp_path / "run", "data=npz", f"data.path={tmp_path / 'points.npy'}", "trainer.steps=2")
    assert res.step == 2


# --- item 5: inpainting inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mask, message",
    [
        (np.ones((5, 5), np.float32), "does not fit images"),
        (np.full((16, 16), 0.5, np.float32), "must be 0 .unknown. or 1"),
        (np.where(np.eye(16) > 0, np.nan, 1).astype(np.float32), "NaN"),
        (np.ones((2, 16, 16), np.float32), "2 per-image masks"),
    ],
)
def test_bad_masks_are_refused_naming_the_file(tmp_path, mask, message):
    from scoresde.jobs import sample as job
    from tests.configs import typed_config

    ckpt = ROOT.parent / "shared" / "fixtures" / "official_score_sde" / "ve_ncsnpp_continuous" / "checkpoint.pth"
    assert ckpt.exists(), f"reference fixtures belong in {ckpt.parent.parent} (see its README)"
    np.save(tmp_path / "mask.npy", mask)
    np.savez(tmp_path / "known.npz", np.zeros((3, 16, 16, 3), np.uint8))
    files = [f"mask={tmp_path / 'mask.npy'}", f"known={tmp_path / 'known.npz'}"]
    cfg = typed_config("sample", f"ckpt={ckpt}", "sampler=pc", "sampler.steps=2", "n=3", *files)
    with pytest.raises(ValueError, match=message) as err:
        job.run(cfg, tmp_path / "out")
    assert "mask" in str(err.value) or "known" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_per_image_masks_condition_each_image(tmp_path):
    from scoresde.jobs import sample as job
    from tests.configs import typed_config

    ckpt = ROOT.parent / "shared" / "fixtures" / "official_score_sde" / "ve_ncsnpp_continuous" / "checkpoint.pth"
    known = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    mask = np.zeros((2, 16, 16), np.float32)
    mask[0, :, :8] = 1  # image 0: left half known; image 1: top half known
    mask[1, :8] = 1
    np.save(tmp_path / "mask.npy", mask)
    np.savez(tmp_path / "known.npz", known)
    cfg = typed_config("sample", f"ckpt={ckpt}", "sampler=pc", "sampler.steps=3", "sampler.corrector=none", "n=2",
                       f"mask={tmp_path / 'mask.npy'}", f"known={tmp_path / 'known.npz'}")  # fmt: skip
    out = np.load(job.run(cfg, tmp_path / "out")["npz"])["arr_0"].astype(int)
    assert np.abs(out[0, :, :8] - known[0, :, :8]).max() <= 1 and np.abs(out[1, :8] - known[1, :8]).max() <= 1


# --- item 6: resume never lies about its settings ---------------------------------------------------------------
def test_resume_with_changed_hyperparameters_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    train_in_process(run, "trainer.steps=10", "trainer.ckpt_every=10")
    before = {k: v for k, v in _snapshot(run).items() if k != ".lock"}
    with pytest.raises(ConfigError, match=r"model\.net\.depth: 2 -> 3; optim\.optimizer\.lr: 0\.002 -> 0\.01") as err:
        train_in_process(run, "trainer.steps=20", "optim.optimizer.lr=1e-2", "model.net.depth=3")
    assert "trainer.{steps" in str(err.value)  # says what may change
    assert {k: v for k, v in _snapshot(run).items() if k != ".lock"} == before
    # the documented resumable settings may change, and the stored config records them
    res = train_in_process(run, "trainer.steps=20", "trainer.ckpt_every=5", "trainer.log_every=5")
    assert res.step == 20
    from scoresde.training import parse_train_config

    stored = parse_train_config((run / "config.yaml").read_text())
    assert stored.trainer.steps == 20 and stored.trainer.ckpt_every == 5


def test_stored_config_of_an_earlier_version_still_loads(tmp_path):
    """Checkpoints written before the preview sampler became one node (trainer.sampler + sampler_options)."""
    import scoresde

    run = tmp_path / "run"
    train_in_process(run, "trainer.steps=2", "trainer.ckpt_every=2")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"] = state["config"].replace(
        "  sampler:\n    name: euler_maruyama\n", "  sampler: euler_maruyama\n  sampler_options:\n"
    )
    assert "sampler_options" in state["config"]
    torch.save(state, run / "checkpoints" / "last.pt")
    assert scoresde.load_model(run).config.trainer.sampler["name"] == "euler_maruyama"


def test_stored_ncsnpp_config_from_before_the_preconditioning_layer_migrates():
    """Configs stored when NCSN++ applied the 2x - 1 input map and the 1/sigma scaling itself (model.net.centered,
    scale_by_sigma, sigma_min/max, num_scales) parse with those options moved to the score model; a net.centered
    that disagrees with model.centered is refused naming both keys."""
    import yaml

    from scoresde.schema import ConfigError, to_yaml
    from scoresde.training.build import parse_train_config
    from tests.configs import compose_config

    tree = yaml.safe_load(to_yaml(parse_train_config(compose_config("train", "model=digits_ncsnpp", "sde=ve"))))
    del tree["model"]["scale_by_sigma"]
    old = dict(scale_by_sigma=True, centered=False, sigma_min=0.01, sigma_max=50.0, num_scales=1000)
    tree["model"]["net"].update(old)
    cfg = parse_train_config(tree)
    assert cfg.model.scale_by_sigma is True and cfg.model.centered is False
    assert not set(old) & set(cfg.model.net)
    tree["model"]["net"]["centered"] = True
    with pytest.raises(ConfigError, match="model.net.centered.*model.centered"):
        parse_train_config(tree)


# --- item 7: endings ----------------------------------------------------------------------------------------------
def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
    args = [*TOY, "trainer.steps=3000", "trainer.ckpt_every=1000"]
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"pre-empted (SIGINT)" in out
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 3000 and step % 1000 != 0  # saved where it stopped, not at a checkpoint step


def test_disk_full_ends_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    train_in_process(run, "trainer.steps=4", "trainer.ckpt_every=2")
    good = checkpoint_tensors(run / "checkpoints" / "last.pt")
    patch = (
        "import errno, builtins, scoresde.checkpoint as c\n"
        "class Full:\n"
        "    def __init__(self, *a, **k): self.f = builtins.open(*a, **k)\n"
        "    def __enter__(self): return self\n"
        "    def __exit__(self, *e): self.f.close()\n"
        "    def write(self, data): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    def __getattr__(self, name): return getattr(self.f, name)\n"
        "c.open = Full\n"
        "import runpy, sys\n"
        f"sys.argv = ['train.py'] + {command(run, *TOY, 'trainer.steps=8', 'trainer.ckpt_every=2')[2:]!r}\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
    )
    p = subprocess.run([sys.executable, "-c", patch], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("[scoresde] error:") and "ENOSPC" in last and str(run / "checkpoints") in last
    assert "Traceback" not in p.stderr
    b = checkpoint_tensors(run / "checkpoints" / "last.pt")
    assert all(torch.equal(good[k], b[k]) for k in good)  # the last good checkpoint, untouched
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert errno.ENOSPC  # (the errno the patch raises)
