"""What a training run reports and listens to, apart from the training itself.

* :class:`RunLog` — the loss window between log steps, ``metrics.jsonl`` (one JSON record per line, the source of
  ``metrics.png``), TensorBoard scalars (when installed and asked for) and the tqdm bar; rank 0 alone writes.
* :class:`StopRequest` — SIGTERM / SIGUSR1 (pre-emption) and SIGINT (Ctrl-C) ask the loop to checkpoint and stop;
  a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import torch

from scoresde.io import append_jsonl


class RunLog:
    """Training-loss window, metrics records, TensorBoard and progress bar of one run (a context manager)."""

    def __init__(
        self,
        run_dir: Path,
        is_main: bool,
        total_steps: int,
        start_step: int,
        device: torch.device,
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.is_main = is_main
        self.history: list[dict] = []
        self.eval_loss: float | None = None  # the latest held-out loss
        self.window = torch.zeros((), device=device)  # sum of the losses since the last log step (no sync per step)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._t0, self._n0, self._step = time.perf_counter(), start_step, start_step
        self._writer = _tensorboard(run_dir) if tensorboard and is_main else None
        self._bar = None
        if is_main and progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()

    def add(self, loss: torch.Tensor) -> None:
        """One step's (detached, local) loss."""
        self.nonfinite |= ~torch.isfinite(loss)
        self.window += loss
        self._step += 1
        if self._bar is not None:
            self._bar.update(1)

    def window_stats(self, reduce_sum) -> dict:
        """``loss`` (mean over the window and the ranks, ``reduce_sum`` summing over ranks) and ``it_s``; resets."""
        n = max(self._step - self._n0, 1)
        mean = float(reduce_sum(self.window)) / n
        rate = n / (time.perf_counter() - self._t0)
        self.window.zero_()
        self._t0, self._n0 = time.perf_counter(), self._step
        return {"loss": mean, "it_s": rate}

    def record(self, step: int, **values: float) -> None:
        """Append ``{"step": step, **values}`` to the history, ``metrics.jsonl`` and TensorBoard (rank 0)."""
        if "eval_loss" in values:
            self.eval_loss = values["eval_loss"]
        if not self.is_main:
            return
        rec = {"step": step, **values}
        self.history.append(rec)
        append_jsonl(self.path, rec)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)
        if self._bar is not None and "loss" in values:
            held = {} if self.eval_loss is None else {"eval": f"{self.eval_loss:.4f}"}
            self._bar.set_postfix(loss=f"{values['loss']:.4f}", **held)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


class StopRequest:
    """Signal handlers (a context manager) recording a request to checkpoint and stop; ``signum`` is the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"


__all__ = ["RunLog", "StopRequest"]
