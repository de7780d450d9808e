"""The record of a training run: one row per epoch, saved as JSON and CSV and plotted to PNG."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any


@dataclasses.dataclass
class History:
    """Per-epoch rows such as ``{"epoch": 1, "step": 50, "train_loss": 0.31, "eval_loss": 0.35,
    "lr": 0.01, "seconds": 1.2, "samples_per_s": 4100.0}``, plus how the run ended.

    ``history["eval_loss"]`` is that column as a list (None where an epoch has no value).
    """

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None  # epoch with the lowest eval loss, when there is an eval loader
    best_eval_loss: float | None = None
    # the optimizer state at the end of ``fit`` (not saved to files), to continue training
    opt_state: Any = dataclasses.field(default=None, repr=False, compare=False)

    def append(self, row: dict[str, Any]) -> None:
        """Add one epoch's row; an ``eval_loss`` below the best so far (not NaN) makes it the
        best."""
        loss = row.get("eval_loss")
        if loss is None or math.isnan(loss):  # a NaN is never the best (fit warns about it)
            pass
        elif self.best_eval_loss is None or loss < self.best_eval_loss:
            self.best_epoch, self.best_eval_loss = row["epoch"], loss
        self.rows.append(dict(row))

    def __getitem__(self, key: str) -> list[Any]:
        if not any(key in r for r in self.rows):
            raise KeyError(f"{key!r} is not in the history; columns are {self.columns}")
        return [r.get(key) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "stopped_early": self.stopped_early,
                "best_epoch": self.best_epoch, "best_eval_loss": self.best_eval_loss}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(rows=[dict(r) for r in d["rows"]], stopped_early=d["stopped_early"],
                   best_epoch=d["best_epoch"], best_eval_loss=d["best_eval_loss"])

    def to_json(self, path: str | os.PathLike) -> None:
        _atomic_write(path, json.dumps(self.to_dict(), indent=1, allow_nan=True))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_csv(self, path: str | os.PathLike) -> None:
        cols = self.columns
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, restval="")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, path)

    def plot(self, path: str | os.PathLike) -> None:
        """Loss curves (train and eval), beside them every other per-epoch metric, then the lr."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
        from matplotlib.ticker import MaxNLocator

        skip = {"epoch", "step", "seconds", "samples_per_s", "train_loss", "eval_loss", "lr",
                "loss_scale"}
        cols = self.columns
        panels = [[c for c in ("train_loss", "eval_loss") if c in cols]]
        panels.append([c for c in cols if c not in skip and _plottable(self[c])])
        panels.append([c for c in ("lr", "loss_scale") if c in cols and _plottable(self[c])])
        panels = [p for p in panels if p]
        fig = Figure(figsize=(4.5 * max(len(panels), 1), 3.6))
        FigureCanvasAgg(fig)
        epochs = self["epoch"] if self.rows else []
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for col in panel:
                values = _floats(self[col])
                ax.plot(epochs, values, marker="o", label=col)
                if len(epochs) == 1:  # a lone dot says little: write its value beside it
                    ax.annotate(f"{values[0]:.4g}", (epochs[0], values[0]),
                                textcoords="offset points", xytext=(6, 6))
            if panel[0] in ("lr", "loss_scale"):
                ax.set_yscale("log")  # learning rates fall by factors
            if epochs:  # whole epochs, half an epoch of margin (not 0.96 .. 1.04 for one)
                ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss" if i == 0 and "loss" in panel[0] else "")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = f"{os.fspath(path)}.tmp.png"
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)

    def save(self, log_dir: str | os.PathLike) -> None:
        """``history.json``, ``history.csv`` and ``history.png`` in ``log_dir``."""
        os.makedirs(log_dir, exist_ok=True)
        self.to_json(os.path.join(log_dir, "history.json"))
        self.to_csv(os.path.join(log_dir, "history.csv"))
        self.plot(os.path.join(log_dir, "history.png"))


def _floats(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _plottable(values: list[Any]) -> bool:
    return any(isinstance(v, (int, float)) for v in values if v is not None)


def _atomic_write(path: str | os.PathLike, text: str) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
