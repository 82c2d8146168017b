"""README.md's Python code blocks run as written, in order, in one namespace, on a CPU and offline: a reader copies
them into a notebook one after the other.

The rule (stated in the README): a block whose first line is ``# needs: ...`` needs files, packages or a device that
a CPU machine without downloads lacks (a reference checkpoint, a diffusers model folder, CUDA); it is compiled here,
so its syntax is checked, but not executed. Every other block runs, at the sizes the README shows.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"# needs: \S")


def readme_blocks() -> list[tuple[int, str]]:
    """``(line number, source)`` of every ```python block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def needs(source: str) -> bool:
    """Whether the block is marked as needing something a CPU offline machine lacks (first line ``# needs: ...``)."""
    return NEEDS.match(source.splitlines()[0]) is not None


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))  # the digits classifier is trained, not read
    blocks = readme_blocks()
    assert len(blocks) >= 5, f"expected the README's python examples, found {len(blocks)} blocks"
    namespace: dict = {"__name__": "__readme__"}
    ran = []
    for line, source in blocks:
        code = compile(source, f"README.md:{line}", "exec")  # line numbers in a traceback: count from this line
        if needs(source):
            continue
        try:
            exec(code, namespace)
        except Exception as err:
            raise AssertionError(f"README.md python block at line {line} fails: {type(err).__name__}: {err}") from err
        ran.append(line)
    assert len(ran) >= 5, f"only the blocks at lines {ran} ran; the others are marked '# needs:'"


def test_needs_marker_only_on_the_first_line():
    """A ``# needs:`` anywhere but the first line would not exempt the block: the rule is one visible line."""
    for line, source in readme_blocks():
        later = [s for s in source.splitlines()[1:] if NEEDS.search(s)]
        assert not later, f"README.md block at line {line}: '# needs:' must be the block's first line, not {later}"
