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
