"""Shared fixtures: the SDEs under test, device parametrisation, the shared reference material, and the rule that
only CUDA tests skip.

No silent skips (issue 13): a test that cannot run here fails, naming what it needs, except a test marked ``cuda``
on a machine without CUDA. Missing shared fixtures fail with the path they belong at (``shared_path``); optional
packages the README documents are in the ``[dev]`` extra, so their tests run wherever the suite does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scoresde.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# The read-only shared/ folder beside the project root; SCORESDE_SHARED points elsewhere (e.g. for `make mutate`,
# which runs the tests from a copy of the project in mutants/).
SHARED = Path(os.environ.get("SCORESDE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")

# Skips that are deterministic exclusions of one parametrization (not a missing device, package or file). Each
# entry is the start of the skip's reason; keep this list empty where a parametrization can simply be left out.
ALLOWED_SKIP_REASONS: tuple[str, ...] = ()  # reasons (prefixes) a non-CUDA test may skip with: none today


def shared_path(*parts: str) -> Path:
    """A file or folder of the read-only ``../shared`` material, or a test failure naming where it belongs."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"shared test material missing: {path} does not exist. The read-only folder shared/ (reference "
            f"fixtures: shared/fixtures/official_score_sde/, see its README) belongs beside the project root, at "
            f"{SHARED}; tests do not skip without it.",
            pytrace=False,
        )
    return path


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


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _forbidden_skip(report, item=None) -> str | None:
    """The reason of a skip that is not allowed (anything but a CUDA test without CUDA), else ``None``."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    if item is not None and "cuda" in item.keywords:
        return None
    reason = _skip_reason(report)
    if reason.startswith(ALLOWED_SKIP_REASONS):
        return None
    return reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn a skip into a failure unless the test is marked ``cuda`` (and CUDA is missing)."""
    outcome = yield
    report = outcome.get_result()
    reason = _forbidden_skip(report, item)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped without being a CUDA test ({reason!r}): only tests marked cuda may skip; install what the test "
            "needs (pip install -e '.[dev]') or provide the file it names"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.importorskip`` at module level) fails the same way."""
    outcome = yield
    report = outcome.get_result()
    reason = _forbidden_skip(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"module skipped at collection ({reason!r}): only tests marked cuda may skip"


@pytest.fixture(autouse=True)
def _no_leaked_distributed_env():
    """A test must not leave torchrun's variables behind: later in-process runs would join a process group."""
    import os

    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    yield
    after = {k: os.environ.get(k) for k in before}
    assert after == before, f"test leaked distributed environment variables: {before} -> {after}"
