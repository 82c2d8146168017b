"""End-to-end training from the command line on CPU: a small MLP on a 2-D toy set, resume after SIGKILL (bitwise),
and clear errors for bad input that leave every file untouched."""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A small, fast toy job (about 40k parameters); every test adds its own steps / checkpoint cadence.
TOY = [
    "data=toy",
    "data.name=two_moons",
    "model=mlp",
    "model.net.hidden=64",
    "model.net.depth=2",
    "model.net.embed_dim=32",
    "trainer.batch_size=64",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "trainer.sample_n=0",
    "trainer.export=false",
    "trainer.eval_every=0",
    "trainer.log_every=20",
    "trainer.tensorboard=false",
    "optim.scheduler.lr_lambda.warmup=20",
    "optim.optimizer.lr=2e-3",
]


def cli(run_dir: Path, *overrides: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py`` (or ``torchrun``) with the run directory fixed; returns the finished process."""
    return subprocess.run(
        command(run_dir, *overrides, nproc=nproc), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def command(run_dir: Path, *overrides: str, nproc: int = 1) -> list[str]:
    head = [sys.executable]
    if nproc > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*head, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, HYDRA_FULL_ERROR="0")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (model, EMA, optimizer state), flattened to 'section/key' names."""
    state = torch.load(path, weights_only=True)
    out = {}
    for section in ("model", "ema"):
        out.update({f"{section}/{k}": v for k, v in state[section].items() if isinstance(v, torch.Tensor)})
    for idx, s in state["optimizer"]["state"].items():
        out.update({f"optim/{idx}/{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    out["step"] = torch.tensor(state["step"])
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.3) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012), biased V-statistic."""
    x, y = x.double(), y.double()

    def k(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * bandwidth**2))

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_toy_end_to_end_samples_match_data(tmp_path):
    """Train from the CLI, sample 1000 points (EMA weights), compare with the data by a two-sample MMD.

    Reference: the same statistic between independent true samples of 1000 (10 pairs; it ranges over about
    0.001-0.003). A Gaussian with the data's mean and covariance scores ~0.02, a half-trained model ~0.01.
    """
    from scoresde.data import sample_toy

    run = tmp_path / "run"
    p = cli(
        run,
        *TOY,
        "model.net.hidden=128",
        "trainer.batch_size=128",
        "trainer.steps=3000",
        "trainer.ckpt_every=1000",
        "trainer.eval_every=1000",
        "trainer.sample_n=1000",
        "sampler@trainer.sampler=euler_maruyama",
        "trainer.sampler.steps=200",
        "trainer.export=true",
        "optim.scheduler.lr_lambda.warmup=100",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    from scoresde.generate import read_samples

    samples = read_samples(run / "samples" / "final.npz")
    assert samples.shape == (1000, 2) and torch.isfinite(samples).all()
    data = [sample_toy("two_moons", 1000, torch.Generator().manual_seed(100 + k)) for k in range(11)]
    null = max(mmd(data[0], d) for d in data[1:])
    stat = mmd(samples, data[0])
    chol = torch.linalg.cholesky(torch.cov(data[1].T))
    gauss = data[1].mean(0) + torch.randn(1000, 2, generator=torch.Generator().manual_seed(7)) @ chol.T
    assert mmd(gauss, data[0]) > 2 * null  # the test has power
    assert stat < 2 * null, (stat, null)
    assert (run / "samples" / "final.png").exists() and (run / "ema.safetensors").exists()
    assert "done: 3000 steps" in p.stdout
    records = [r for r in map(eval_json, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in records] == [1000, 2000, 3000]
    assert records[-1]["eval_loss"] < records[0]["eval_loss"] + 0.01


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    """Kill a run with SIGKILL at a random moment after its first checkpoint, resume it, and compare every tensor
    of the final checkpoint with an uninterrupted run: they must be bitwise equal."""
    args = [*TOY, "trainer.steps=400", "trainer.ckpt_every=10", "trainer.eval_every=100"]
    ref = tmp_path / "reference"
    p = cli(ref, *args)
    assert p.returncode == 0, p.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(command(run, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 0 < killed_at < 400

    p = cli(run, *args)  # auto-resume from the run directory's own checkpoint
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resumed from {last}" in p.stdout and f"at step {killed_at}" in p.stdout
    a, b = checkpoint_tensors(ref / "checkpoints" / "last.pt"), checkpoint_tensors(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step {killed_at}"
    # the metrics of the killed run past its checkpoint were dropped: one record per step, no duplicates
    steps = [eval_json(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))

    # pre-emption (SIGTERM, as SLURM sends): checkpoint at the next log step, exit cleanly, resume exactly
    run = tmp_path / "terminated"
    proc = subprocess.Popen(command(run, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and b"pre-empted (SIGTERM): checkpoint at step" in out
    stopped_at = torch.load(last, weights_only=True)["step"]
    assert stopped_at < 400
    assert cli(run, *args).returncode == 0
    b = checkpoint_tensors(last)
    assert all(torch.equal(a[k], b[k]) for k in a)


def compose_cfg(*overrides: str):
    from tests.configs import compose_config

    return compose_config("train", *overrides)


def train_in_process(run_dir: Path, *overrides: str):
    """``scoresde.training.train(cfg, run_dir)`` in this process (faster than the CLI; the library call the script
    makes)."""
    from scoresde.training import train

    return train(compose_cfg(*TOY, *overrides), run_dir)


def test_resume_extends_a_finished_run(tmp_path):
    """Resuming a finished run with more steps continues it; with a schedule that does not depend on the run's length
    (trainer=small: warm-up, then constant) the same as training for the total at once."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    train_in_process(ref, "trainer.steps=60", "trainer.ckpt_every=20")
    train_in_process(run, "trainer.steps=40", "trainer.ckpt_every=20")
    res = train_in_process(run, "trainer.steps=60", "trainer.ckpt_every=20")
    assert res.step == 60
    a, b = checkpoint_tensors(ref / "checkpoints" / "last.pt"), checkpoint_tensors(run / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_another_run_directory(tmp_path):
    """trainer.resume=<file> continues that run in a new directory; the original is left untouched."""
    a, b, ref = tmp_path / "a", tmp_path / "b", tmp_path / "ref"
    train_in_process(a, "trainer.steps=20", "trainer.ckpt_every=20")
    before = digest(a / "checkpoints" / "last.pt")
    train_in_process(b, "trainer.steps=40", "trainer.ckpt_every=20", f"trainer.resume={a / 'checkpoints' / 'last.pt'}")
    train_in_process(ref, "trainer.steps=40", "trainer.ckpt_every=20")
    assert digest(a / "checkpoints" / "last.pt") == before
    x, y = checkpoint_tensors(ref / "checkpoints" / "last.pt"), checkpoint_tensors(b / "checkpoints" / "last.pt")
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_new_run_from_another_runs_weights_takes_its_own_optimizer_settings(tmp_path):
    """trainer.resume=<run> into a new directory with a new learning rate and warm-up: the logged rate follows the
    new settings from the loaded step (it kept the old run's: 2e-3 on its 100-step warm-up), while a resume of the
    run's own checkpoint keeps its schedule (the tests above)."""
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    train_in_process(a, "trainer.steps=10", "trainer.ckpt_every=10")
    train_in_process(b, "trainer.steps=20", "trainer.ckpt_every=10", "trainer.log_every=5", f"trainer.resume={a}",
                     "optim.optimizer.lr=1e-5", "optim.scheduler.lr_lambda.warmup=4")  # fmt: skip
    rows = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert lr[15] == pytest.approx(1e-5, rel=1e-12) and lr[20] == pytest.approx(1e-5, rel=1e-12), lr
    state = torch.load(b / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-5)


def test_load_model_from_checkpoint_run_dir_and_export(tmp_path):
    """Periodic samples are written; the EMA model comes back from the run directory, the checkpoint and
    ema.safetensors alike (``scoresde.load_model``)."""
    import scoresde

    run = tmp_path / "run"
    train_in_process(
        run,
        "trainer.steps=10",
        "trainer.ckpt_every=10",
        "trainer.export=true",
        "trainer.sample_every=5",
        "trainer.sample_n=8",
        "trainer.sampler.steps=5",
    )
    # periodic and final sample plots of the EMA model
    assert {p.name for p in (run / "samples").iterdir()} == {
        f"{tag}.{ext}" for tag in ("step_00000005", "final") for ext in ("png", "npz")
    }
    ema = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["ema"]
    x, t = torch.randn(5, 2), torch.rand(5)
    outs = []
    for source in (run, run / "checkpoints" / "last.pt", run / "ema.safetensors"):
        m = scoresde.load_model(source)
        assert m.config.data.name == "two_moons" and type(m.sde).__name__ == "VPSDE" and m.data_shape == (2,)
        assert all(torch.equal(v, ema[f"module.{k}"]) for k, v in m.model.state_dict().items())
        with torch.no_grad():
            outs.append(m.model(x, t))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    raw = scoresde.load_model(run, use_ema=False).model
    model_state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(v, model_state[k]) for k, v in raw.state_dict().items())


# --- clear errors that change nothing -------------------------------------------------------------------------
def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): digest(p) for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


def test_bad_override_is_refused_by_the_cli(tmp_path):
    run = tmp_path / "run"
    p = cli(run, *TOY, "trainer.steps=abc", timeout=120)
    assert p.returncode != 0
    assert "trainer.steps" in p.stderr and "abc" in p.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.steps=abc", "trainer.steps"),
        ("+trainer.stepz=3", "stepz"),
        ("trainer.stepz=3", "stepz"),
        ("data=nope", "data/nope"),
        ("trainer.precision=fp8", "precision"),
        ("model.parameterization=nope", "parameterization"),
    ],
)
def test_bad_override_is_refused(tmp_path, override, message):
    run = tmp_path / "run"
    with pytest.raises(Exception, match=message):
        train_in_process(run, "trainer.steps=5", override)
    assert not (run / "checkpoints").exists()


def test_schema_refuses_unknown_keys_and_types():
    from omegaconf import OmegaConf

    from scoresde.schema import ConfigError
    from scoresde.training import parse_train_config

    plain = OmegaConf.to_container(compose_cfg(*TOY), resolve=True)  # untyped, as a hand-written config
    plain["trainer"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        parse_train_config(plain)
    plain = OmegaConf.to_container(compose_cfg(*TOY), resolve=True)
    plain["loss"]["weighting_typo"] = 1
    with pytest.raises(ConfigError, match="weighting_typo"):
        parse_train_config(plain)


def test_missing_data_path_is_named(tmp_path):
    from scoresde.data import DataError

    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        train_in_process(tmp_path / "run", "data=npz", f"data.path={missing}", "trainer.steps=5")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupted_and_foreign_checkpoints_are_refused(tmp_path):
    from scoresde.checkpoint import CheckpointError

    base = tmp_path / "base"
    train_in_process(base, "trainer.steps=10", "trainer.ckpt_every=10")
    ckpt = base / "checkpoints" / "last.pt"

    # a checkpoint of another architecture (hidden 32 instead of 64)
    before = _snapshot(base)
    other = tmp_path / "other"
    with pytest.raises(CheckpointError, match=f"{ckpt}.*another architecture.*shape mismatches"):
        train_in_process(other, "model.net.hidden=32", "trainer.steps=20", f"trainer.resume={base}")
    assert _snapshot(base) == before and not (other / "checkpoints").exists()

    # a truncated checkpoint, given as a file
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = digest(broken)
    with pytest.raises(CheckpointError, match=f"{broken}.*unreadable"):
        train_in_process(tmp_path / "r2", "trainer.steps=20", f"trainer.resume={broken}")
    assert digest(broken) == before and not (tmp_path / "r2" / "checkpoints").exists()

    # a run directory whose own last.pt is corrupted: auto-resume refuses it and leaves it alone
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        train_in_process(base, "trainer.steps=20")
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """One NaN point in the data: the run stops with a clear error; last.pt holds finite weights from before."""
    from scoresde.training import NonFiniteLossError

    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    x[123] = 3e38  # finite (NaN data are refused when loading), but it overflows inside the network
    data = tmp_path / "points.npz"
    np.savez(data, x=x)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="NaN or infinite.*last good checkpoint"):
        # the reference recipe: EDM pieces would estimate sigma_data from the outlier and fail at step 1 instead
        reference = ["model.parameterization=eps", "model.time_input=t", "loss.name=dsm"]
        train_in_process(run, "data=npz", f"data.path={data}", "trainer.steps=50", "trainer.ckpt_every=1", *reference)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 50
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_run_dirs_do_not_collide():
    """Default run directories carry microseconds, so two runs started in the same second get different ones."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(ROOT / "conf" / "train.yaml")
    assert conf.hydra.run._get_node("dir")._value().endswith("%H-%M-%S.%f}")


def test_speed_knobs_keep_results(tmp_path):
    """Gradient accumulation (2 micro-batches) gives the same training as one batch, up to float rounding;
    channels_last and bf16 autocast run (on CPU) and train to a finite loss."""
    args = ["data=digits", "trainer.steps=4", "trainer.ckpt_every=4", "trainer.batch_size=32"]
    train_in_process(tmp_path / "a", *args)
    train_in_process(tmp_path / "b", *args, "trainer.grad_accum=2")
    a = checkpoint_tensors(tmp_path / "a" / "checkpoints" / "last.pt")
    b = checkpoint_tensors(tmp_path / "b" / "checkpoints" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    res = train_in_process(tmp_path / "c", *args, "trainer.channels_last=true", "trainer.precision=bf16")
    assert res.step == 4 and math.isfinite(res.history[-1]["loss"])


@pytest.mark.parametrize("group", ["model", "data", "sde", "optim", "trainer"])
def test_every_preset_fits_the_schema(group):
    """Each option of each config group composes, validates and names only buildable classes (nothing is built)."""
    from scoresde import registry
    from scoresde.training import parse_train_config
    from scoresde.training.build import build_preview_sampler, check_buildable

    names = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert names
    for name in names:
        extra = ["data.path=/some/where"] if group == "data" else []
        cfg = parse_train_config(compose_cfg(f"{group}={name}", *extra))
        check_buildable(cfg)
        build_preview_sampler(cfg.trainer.sampler, registry.build(cfg.sde, "sde"))  # sampler=auto needs the SDE
        assert cfg.trainer.steps > 0


def test_slurm_launcher_config_composes():
    """hydra/launcher=slurm fits hydra-submitit-launcher's schema (the plugin is in the [dev] extra)."""
    from hydra import compose, initialize_config_dir

    compose_cfg()  # registers the schema
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.additional_parameters.requeue is True and launcher.max_num_timeout > 0


def test_cosine_schedule_runs_to_the_end_of_the_run_and_stretches_on_resume(tmp_path):
    """trainer=digits' WarmupCosine (total = trainer.steps): the logged rate at step k is lr (1 + cos(pi (k - W) /
    (N - W))) / 2 after the warm-up W; a run resumed with more steps N' continues on the cosine stretched to N'."""
    import json

    lr, w = 2e-3, 20

    def logged(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows if "lr" in r}

    def cosine(k, n):  # the rate of the optimizer step after step k has been taken (LambdaLR steps after each)
        return lr * (min(k / w, 1.0) if k <= w else 0.5 * (1 + math.cos(math.pi * min(k - w, n - w) / (n - w))))

    run = tmp_path / "run"
    train_in_process(run, "trainer=digits", "trainer.steps=60", "trainer.ckpt_every=20")
    first = logged(run)
    assert {k: first[k] for k in (20, 40, 60)} == pytest.approx({k: cosine(k, 60) for k in (20, 40, 60)}, abs=1e-12)
    assert first[60] == pytest.approx(0.0, abs=1e-12)
    train_in_process(run, "trainer=digits", "trainer.steps=100", "trainer.ckpt_every=20")
    second = logged(run)
    assert {k: second[k] for k in (80, 100)} == pytest.approx({k: cosine(k, 100) for k in (80, 100)}, abs=1e-12)


FUSED_CPU = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)  # Adam's fused CPU kernel: torch 2.4


@pytest.mark.skipif(not FUSED_CPU, reason="Adam's fused step on the CPU needs torch >= 2.4")
def test_adam_is_fused_unless_the_config_says_otherwise():
    """The default optimizer factory steps fused; a config naming ``fused`` or ``foreach`` keeps its own choice."""
    from scoresde.training import parse_train_config
    from scoresde.training.build import build_setup

    def made(*overrides):
        setup = build_setup(parse_train_config(compose_cfg(*overrides)))
        return setup.make_optimizer([torch.nn.Parameter(torch.zeros(3))]).defaults

    assert made()["fused"] is True
    assert made("+optim.optimizer.foreach=false")["fused"] in (None, False)
    assert made("+optim.optimizer.fused=false")["fused"] is False


@pytest.mark.skipif(not FUSED_CPU, reason="Adam's fused step on the CPU needs torch >= 2.4")
def test_fused_adam_is_the_same_update():
    """Fused and per-parameter Adam agree to float32 round-off over 20 steps (only the implementation changes):
    the parameters move by ~lr per step, so 20 steps of 1e-2 allow a few ulps of ~0.2, well under 1e-5."""
    import functools

    from scoresde.training.build import fused_when_open

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=gen), torch.randn(11, generator=gen)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(20)]
    make = functools.partial(torch.optim.Adam, lr=1e-2, betas=(0.9, 0.999))
    runs = []
    for factory in (make, fused_when_open(make)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = factory(params)
        for g in grads:
            for p, gi in zip(params, g, strict=True):
                p.grad = gi.clone()
            opt.step()
        runs.append((opt.defaults["fused"], [p.detach() for p in params]))
    assert not runs[0][0] and runs[1][0] is True
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert (a - start[0 if a.ndim == 2 else 1]).abs().max() > 0.05  # the steps did move the parameters


@pytest.mark.skipif(not FUSED_CPU, reason="Adam's fused step on the CPU needs torch >= 2.4")
def test_a_resumed_run_keeps_its_own_step_implementation(tmp_path):
    """Loading an optimizer state overwrites the parameter groups, ``fused`` included: a checkpoint written without
    it (an older run) must not switch the resumed run back to the per-parameter loop."""
    from scoresde.training import parse_train_config
    from scoresde.training.build import build_setup
    from scoresde.training.trainer import Trainer

    run = tmp_path / "run"
    train_in_process(run, "trainer.steps=4", "trainer.ckpt_every=4")
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    assert state["optimizer"]["param_groups"][0]["fused"] is True
    for group in state["optimizer"]["param_groups"]:  # as an older run stored it
        group["fused"] = None
    torch.save(state, path)
    cfg = parse_train_config(compose_cfg(*TOY, "trainer.steps=8", "trainer.ckpt_every=4"))
    trainer = Trainer(cfg, build_setup(cfg), run)
    try:
        trainer.load(path)
        assert all(group["fused"] is True for group in trainer.optimizer.param_groups)
    finally:
        trainer.lock.release()
