"""One job per run directory: an exclusive ``fcntl.flock`` on ``<run dir>/.lock`` for as long as the job runs.

The operating system releases the lock when the process exits for any reason (also ``kill -9``), so a stale lock
file never blocks a later run; a second job that finds the lock taken stops at once, naming the directory and the PID
written into the file by the holder. (POSIX-only, like the rest of the training stack's signal handling.)
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirInUse(RuntimeError):
    """Another process holds the run directory's lock."""


class RunDirLock:
    """``with RunDirLock(run_dir): ...`` holds the directory's lock (created with the directory if needed)."""

    def __init__(self, run_dir: str | Path, what: str = "run directory"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            by = f"PID {holder}" if holder else "another process"
            raise RunDirInUse(
                f"{self.what} {str(self.run_dir)!r} is in use by {by} (lock {str(self.path)!r}); wait for that job to "
                "finish or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


__all__ = ["LOCK_NAME", "RunDirInUse", "RunDirLock"]
