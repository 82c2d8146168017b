"""Data-parallel training: ``torchrun --nproc_per_node=2`` (gloo, CPU) equals one process on the same global batch.

Both runs see the same global batches (DistributedSampler deals each global batch round-robin) and the same
noise (drawn for the global batch from the step's generator and split by rank), and DDP averages the gradients,
so the results agree up to float32 summation order: Adam divides by sqrt(v), which amplifies rounding in
near-zero gradients, hence a tolerance of 1e-4 relative to each tensor's scale instead of bitwise equality.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_train_cli import TOY, checkpoint_tensors, cli


def test_two_processes_equal_one(tmp_path):
    args = [*TOY, "trainer.steps=30", "trainer.ckpt_every=30", "trainer.batch_size=64", "trainer.device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = cli(one, *args)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = cli(two, *args, nproc=2)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "x 2 processes" in p2.stdout
    # one run directory for both ranks: rank 0's
    assert (two / "checkpoints" / "last.pt").exists() and (two / "metrics.jsonl").exists()
    a, b = checkpoint_tensors(one / "checkpoints" / "last.pt"), checkpoint_tensors(two / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        scale = a[k].abs().max().clamp_min(1e-6)
        assert (a[k] - b[k]).abs().max() <= 1e-4 * scale, k
    # the logged loss is the global-batch mean on both
    import json

    la = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    lb = [json.loads(x)["loss"] for x in (two / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert len(la) == len(lb) and all(abs(u - v) <= 1e-5 * abs(u) for u, v in zip(la, lb, strict=True))


def test_slurm_tasks_give_rank_and_world_size(monkeypatch):
    """Under srun without torchrun, rank / world size / local rank come from SLURM's variables."""
    from scoresde import distributed as D

    # The library writes RANK / WORLD_SIZE / LOCAL_RANK into os.environ; register them with monkeypatch first so
    # that teardown removes them (otherwise later in-process tests would believe they run as rank 3 of 4).
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert (D.env_rank(), D.env_world_size(), os.environ["LOCAL_RANK"]) == (3, 4, "1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a single task: not distributed
    assert (D.env_rank(), D.env_world_size()) == (0, 1)


def _script(script: str, out, *overrides: str, nproc: int = 1):
    """``python <script>`` or ``torchrun --nproc_per_node=K <script>`` with ``out=`` fixed."""
    import subprocess
    import sys

    from test_train_cli import ROOT, _env

    head = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                               if nproc > 1 else [])  # fmt: skip
    cmd = [*head, str(ROOT / script), f"out={out}", f"hydra.run.dir={out}_hydra", "device=cpu", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sampling_and_likelihood_under_torchrun_equal_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 sample.py`` / ``likelihood.py`` (gloo, CPU): rank 0 writes one samples.npz /
    likelihood.json, equal to the one-process result bitwise (batches are shared out whole and every sample /
    example has its own seed), with 5 batches for 2 processes (one rank gets more)."""
    import json

    import numpy as np
    from test_train_cli import compose_cfg

    from scoresde.training import train

    run = tmp_path / "run"
    train(compose_cfg(*TOY, "trainer.steps=10", "trainer.ckpt_every=10"), run)
    common = [f"ckpt={run}", "n=9", "batch_size=2", "sampler=ancestral", "sampler.steps=5"]
    one, two = tmp_path / "s1", tmp_path / "s2"
    p1, p2 = _script("sample.py", one, *common), _script("sample.py", two, *common, nproc=2)
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr[-2000:], p2.stderr[-2000:])
    a, b = np.load(one / "samples.npz"), np.load(two / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["seeds"], b["seeds"])
    assert json.loads((two / "sample.json").read_text())["processes"] == 2
    assert p2.stdout.count("9 samples") == 1  # rank 0 alone reports and writes

    common = [f"ckpt={run}", "n=9", "batch_size=2", "divergence=hutchinson_rademacher", "rtol=1e-3", "atol=1e-3"]
    one, two = tmp_path / "l1", tmp_path / "l2"
    p1, p2 = _script("likelihood.py", one, *common), _script("likelihood.py", two, *common, nproc=2)
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr[-2000:], p2.stderr[-2000:])
    r1, r2 = json.loads((one / "likelihood.json").read_text()), json.loads((two / "likelihood.json").read_text())
    assert r1["n"] == r2["n"] == 9 and r1["nfe"] == r2["nfe"] and r2["processes"] == 2
    assert r1["mean"] == r2["mean"] and r1["stderr"] == r2["stderr"]
