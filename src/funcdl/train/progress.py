"""fit's progress display: rich's live bars on a terminal or in a notebook, one plain line per
epoch anywhere else (log files, CI), nothing with ``progress=False``.

rich (a dependency of flax, so always installed) draws two bars, epochs and the batches of the
epoch in progress, with rates and ETAs, and renders in Jupyter; it is imported only when a bar is
drawn. The loss on the bar is read from the device at most every ``interval`` seconds: reading it
waits for the step in flight.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def summary_line(epoch: int, epochs: int, done: int, total: int | None, row: dict) -> str:
    """``epoch 2/5 [12/12] train_loss 0.3121 eval_loss 0.3412 lr 0.001 ...``"""
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
             for k, v in row.items() if k != "epoch" and v is not None]
    batches = f"{done}/{total}" if total else f"{done} batches"
    return f"epoch {epoch + 1}/{epochs} [{batches}] " + " ".join(parts)


class ProgressBar:
    """The display of one ``fit`` call (see the module docstring); ``close()`` ends it."""

    def __init__(self, epochs: int, total: int | None, *, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 0.25):
        self.epochs, self.total, self.enabled, self.interval = epochs, total, enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self._last = 0.0
        self._live: Any = None
        if enabled:
            from rich.console import Console

            console = Console(file=self.stream)
            if console.is_terminal or console.is_jupyter:
                self._live = _live_bars(console, epochs, total)

    def due(self) -> bool:
        """Whether a redraw of the loss is due: the caller then syncs to read it."""
        return self._live is not None and time.perf_counter() - self._last >= self.interval

    def update(self, epoch: int, done: int, loss: float, samples_per_s: float) -> None:
        self._last = time.perf_counter()
        progress, _, batches = self._live
        progress.update(batches, description=f"epoch {epoch + 1}/{self.epochs}", completed=done,
                        info=f"loss {loss:.4f} · {samples_per_s:,.0f} samples/s", refresh=True)

    def end_epoch(self, epoch: int, done: int, row: dict) -> None:
        line = summary_line(epoch, self.epochs, done, self.total, row)
        if self._live is not None:
            progress, epochs, batches = self._live
            progress.update(epochs, completed=epoch + 1)
            progress.reset(batches, total=self.total, info="")
            progress.console.print(line, markup=False, highlight=False)
        elif self.enabled:
            self.note(line)

    def note(self, text: str) -> None:
        """A line above the bars (or in the log): resumes and the like."""
        if self._live is not None:
            self._live[0].console.print(text, markup=False, highlight=False)
        elif self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live[0].stop()
            self._live = None


def _live_bars(console: Any, epochs: int, total: int | None) -> tuple[Any, Any, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console)
    progress.start()
    epoch_task = progress.add_task("epochs", total=epochs, info="")
    batch_task = progress.add_task(f"epoch 1/{epochs}", total=total, info="")
    return progress, epoch_task, batch_task
