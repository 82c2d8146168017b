"""benchmarks/ab_overhead.py: the side-by-side overhead script runs on two trees and refuses bad input up front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ab_overhead.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_ab_overhead_compares_two_trees():
    """One round, one rep, this tree against itself: a table row per sampler with two positive ratios."""
    res = run("--before", str(ROOT), "--after", str(ROOT), "--rounds", "1", "--reps", "1", "--points", "16",
              "--samplers", "ancestral,pc + langevin")  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "sampler" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["ancestral", "pc + langevin"]
    for r in rows:
        before, after = (float(v) for v in r.split("|")[2:4])
        assert before > 0 and after > 0


def test_ab_overhead_refuses_bad_input():
    """An unknown sampler or a tree without scoresde/ is named before any timing."""
    res = run("--before", str(ROOT), "--samplers", "euler,ddim")
    assert res.returncode == 2 and "unknown samplers ['euler']" in res.stderr
    res = run("--before", str(ROOT / "tests"))
    assert res.returncode == 2 and "has no scoresde/ package" in res.stderr
