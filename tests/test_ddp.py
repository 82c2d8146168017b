"""Data-parallel training: ``torchrun --nproc_per_node=2`` (gloo, CPU) equals one process on the same global batch.

Both runs see the same global batches (DistributedSampler deals each global batch round-robin) and the same
noise (drawn for the global batch from the step's generator and split by rank), and DDP averages the gradients,
so the results agree up to float32 summation order: Adam divides by sqrt(v), which amplifies rounding in
near-zero gradients, hence a tolerance of 1e-4 relative to each tensor's scale instead of bitwise equality.
"""

from __future__ import annotations

import os

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
