"""How the command-line programs end on a clear error: one line on stderr naming the problem, exit code 1.

The library raises ordinary exceptions with messages that name the key, file or value at fault (``ConfigError``,
``DataError``, ``CheckpointError``, ``RunDirInUse``, ``DiskFullError``, ...). The entry scripts wrap their one
library call in :func:`report_errors`, which prints such an error as ``[scoresde] error: ...`` instead of a
traceback. Anything else (a bug) keeps its traceback; ``SCORESDE_TRACEBACK=1`` shows it for every error.
"""

from __future__ import annotations

import contextlib
import os
import sys

# What counts as "the user's input is wrong / the environment refuses", as opposed to a bug in scoresde.
EXPECTED = (ValueError, FileNotFoundError, FloatingPointError, PermissionError)


def _expected() -> tuple[type[BaseException], ...]:
    from scoresde.checkpoint import CheckpointError
    from scoresde.rundir import RunDirInUse
    from scoresde.training.trainer import DiskFullError

    return (*EXPECTED, CheckpointError, RunDirInUse, DiskFullError)


@contextlib.contextmanager
def report_errors(exit_code: int = 1):
    """Print an expected error as one line and exit with ``exit_code``; let anything else propagate."""
    try:
        yield
    except _expected() as err:
        if os.environ.get("SCORESDE_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"[scoresde] error: {message}", file=sys.stderr, flush=True)
        sys.exit(exit_code)


__all__ = ["EXPECTED", "report_errors"]
