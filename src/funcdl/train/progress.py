"""A dependency-free progress bar on stderr: epoch, batches, running loss, samples/s."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redrawn in place (``\\r``) at most every ``interval`` seconds on a terminal; one line per
    epoch otherwise (logs, CI)."""

    def __init__(self, epochs: int, total: int | None, *, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 0.25, width: int = 24):
        self.epochs, self.total, self.enabled = epochs, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.width = interval, width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0

    def due(self) -> bool:
        """Whether a redraw is due: the caller then syncs to read the loss."""
        return self.enabled and self.tty and time.perf_counter() - self._last >= self.interval

    def _bar(self, done: int) -> str:
        if not self.total:
            return f"{done} batches"
        filled = int(self.width * min(done, self.total) / self.total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}"

    def update(self, epoch: int, done: int, loss: float, samples_per_s: float) -> None:
        self._last = time.perf_counter()
        line = (f"epoch {epoch + 1}/{self.epochs} {self._bar(done)} loss {loss:.4f} "
                f"{samples_per_s:,.0f} samples/s")
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def end_epoch(self, epoch: int, done: int, summary: dict) -> None:
        if not self.enabled:
            return
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                 for k, v in summary.items() if k not in ("epoch",) and v is not None]
        line = f"epoch {epoch + 1}/{self.epochs} {self._bar(done)} " + " ".join(parts)
        self.stream.write(("\r" if self.tty else "") + line + ("\x1b[K" if self.tty else "") + "\n")
        self.stream.flush()
