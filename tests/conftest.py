"""Shared fixtures: the SDEs under test and device/dtype parametrisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scoresde.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

SDE_FACTORIES = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(),
    "vp_cosine": lambda: CosineVPSDE(),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=sorted(SDE_FACTORIES))
def sde(request):
    return SDE_FACTORIES[request.param]()


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_leaked_distributed_env():
    """A test must not leave torchrun's variables behind: later in-process runs would join a process group."""
    import os

    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    yield
    after = {k: os.environ.get(k) for k in before}
    assert after == before, f"test leaked distributed environment variables: {before} -> {after}"
