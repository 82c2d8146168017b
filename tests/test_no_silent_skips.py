"""No silent skips: a missing ``../shared`` fails naming the path it needs, and only CUDA tests may skip.

The rule lives in ``tests/conftest.py`` (``shared_path`` and the report hooks); these tests run it on a throw-away
test directory in a subprocess, so the outcome pytest itself reports is what is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tests.conftest as conftest
from scoresde.sde import VESDE, VPSDE, SubVPSDE

ROOT = Path(__file__).resolve().parents[1]


def test_missing_shared_material_fails_naming_the_path(monkeypatch, tmp_path):
    nowhere = tmp_path / "no_shared_here"
    monkeypatch.setattr(conftest, "SHARED", nowhere)
    wanted = nowhere / "fixtures" / "official_score_sde" / "vp_ddpmpp_continuous" / "io.pt"
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(wanted))):
        conftest.shared_path("fixtures", "official_score_sde", "vp_ddpmpp_continuous", "io.pt")


def test_reference_fixtures_are_present():
    """The reference fixtures that pin the SDE defaults, the loss and the networks to score_sde_pytorch are there."""
    for name in ("ve_ncsnpp_continuous", "vp_ddpmpp_continuous", "subvp_ddpmpp_continuous"):
        for f in ("checkpoint.pth", "config.json", "io.pt"):
            assert conftest.shared_path("fixtures", "official_score_sde", name, f).is_file()


def test_sde_defaults_are_the_reference_configs():
    """The SDE defaults equal the reference configs' (fixtures' config.json: beta 0.1 / 20, sigma 0.01 / 50,
    N = 1000), without any skip when the fixtures are missing (``shared_path`` fails instead)."""
    import json

    for name, make in (("vp", VPSDE), ("subvp", SubVPSDE)):
        cfg = json.loads(conftest.shared_path("fixtures", "official_score_sde", f"{name}_ddpmpp_continuous",
                                              "config.json").read_text())  # fmt: skip
        sde = make()
        assert (sde.beta_min, sde.beta_max, sde.N) == (cfg["model"]["beta_min"], cfg["model"]["beta_max"],
                                                   cfg["model"]["num_scales"])  # fmt: skip
    cfg = json.loads(conftest.shared_path("fixtures", "official_score_sde", "ve_ncsnpp_continuous",
                                          "config.json").read_text())  # fmt: skip
    sde = VESDE()
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (cfg["model"]["sigma_min"], cfg["model"]["sigma_max"],
                                                     cfg["model"]["num_scales"])  # fmt: skip


SAMPLE_TESTS = """
import pytest
from tests.conftest import ALLOWED_SKIP_REASONS

ALLOWED = ALLOWED_SKIP_REASONS[0] if ALLOWED_SKIP_REASONS else None

def test_plain_skip():
    pytest.skip("some optional thing is missing")

def test_importorskip():
    pytest.importorskip("no_such_module_for_scoresde_tests")

@pytest.mark.cuda
def test_cuda_only():
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False

def test_allowed_exclusion():
    pytest.skip(ALLOWED or "not an allowed reason")

def test_passes():
    pass
"""


def test_only_cuda_tests_may_skip(tmp_path):
    """Run a small suite under the project's conftest: a plain skip and an ``importorskip`` fail with a message, a
    module skipped at import is an error, a CUDA-marked skip, a strict xfail and a listed deterministic exclusion
    (``ALLOWED_SKIP_REASONS``) keep their outcome."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs CUDA\naddopts = --strict-markers\n")
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_for_scoresde_tests')\n\ndef test_x():\n    pass\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-p", "no:cacheprovider", "-rA", "-q", "--continue-on-collection-errors", str(tmp_path)]
    p = subprocess.run(
        [sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    out = p.stdout
    assert p.returncode == 1, out
    assert re.search(r"FAILED .*test_plain_skip", out) and re.search(r"FAILED .*test_importorskip", out), out
    assert "only tests marked cuda may skip" in out
    assert re.search(r"ERROR .*test_module_skip", out), out
    assert re.search(r"PASSED .*test_passes", out) and re.search(r"XFAIL .*test_known_bug", out), out
    if conftest.ALLOWED_SKIP_REASONS:  # a listed deterministic exclusion keeps its skip
        assert re.search(r"SKIPPED .*" + re.escape(conftest.ALLOWED_SKIP_REASONS[0][:30]), out), out
    else:
        assert re.search(r"FAILED .*test_allowed_exclusion", out), out
    import torch

    cuda = r"PASSED .*test_cuda_only" if torch.cuda.is_available() else r"SKIPPED .*no CUDA device"
    assert re.search(cuda, out), out
