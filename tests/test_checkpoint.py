"""Checkpoint files, RNG states, EMA and safetensors export."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from scoresde.checkpoint import (
    CheckpointError,
    atomic_save,
    export_safetensors,
    find_checkpoint,
    load_checkpoint,
    load_safetensors,
    load_state_strict,
    rng_state,
    set_rng_state,
)
from scoresde.ema import EMA


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in run directory"):
        find_checkpoint(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.pt.*unreadable"):
        load_checkpoint(tmp_path / "bad.pt")
    # arbitrary pickles are refused by weights_only loading
    torch.save({"model": {}, "evil": object()}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "pickle.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a scoresde checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    atomic_save({"model": {}, "step": 3}, tmp_path / "run" / "checkpoints" / "last.pt")
    assert load_checkpoint(tmp_path / "run")["step"] == 3


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = rng_state()
    atomic_save({"model": {}, "rng": state}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_strict_load_names_the_mismatch():
    a, b = nn.Linear(3, 4), nn.Linear(3, 5)
    with pytest.raises(CheckpointError, match="ckpt.pt.*another architecture.*weight: checkpoint \\(5, 3\\)"):
        load_state_strict(a, b.state_dict(), "ckpt.pt")
    with pytest.raises(CheckpointError, match="missing 1 entries: bias"):
        load_state_strict(a, {"weight": a.weight.detach()}, "ckpt.pt")
    load_state_strict(a, nn.Linear(3, 4).state_dict(), "ckpt.pt")


def test_ema_update_and_warmup():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # the first update (n = 1, the reference's count): decay min(0.9, 2/11)
    for e, s in zip(ema.module.parameters(), start, strict=True):
        torch.testing.assert_close(e, s + 9 / 11)
    assert ema.num_updates == 1 and not any(p.requires_grad for p in ema.module.parameters())
    plain = EMA(model, decay=0.5, warmup=False)
    plain.module.weight.data.zero_()
    plain.update(model)
    torch.testing.assert_close(plain.module.weight, 0.5 * model.weight.detach())
    # the update count survives a state-dict round trip
    other = EMA(nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.module.weight, ema.module.weight)


def test_safetensors_export(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    path = export_safetensors(model, tmp_path / "ema.safetensors", {"config": "a: 1\n", "step": 7})
    tensors, meta = load_safetensors(path)
    assert meta == {"config": "a: 1\n", "step": "7"}
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_safetensors(tmp_path / "bad.safetensors")
