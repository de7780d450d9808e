"""The state of a training run, and the one schema in which a checkpoint holds it.

A checkpoint (``Checkpointer.save(step, arrays, meta)``) is::

    arrays  {"params", "rest", "opt_state",                      the TrainState's arrays
             "counters": {"step", "bad_step", "fault", "loss_scale"}}
    meta    {"epoch", "batch", "epoch_starts",                   where the run is
             "history",                                         the epochs done
             "sums",                                            the epoch's running sums
             "loader", "early_stopping", "scheduler"}           their state_dict(), or None

(``Checkpointer`` adds ``step``, ``format`` and ``checksum``). ``RunState.arrays`` and
``RunState.meta`` write it, ``RunState.load`` reads it back; nothing else spells it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from funcdl.devices import to_host

from .checkpoint import Checkpointer, CheckpointMismatchError
from .history import History
from .steps import TrainState

STATEFUL = ("loader", "early_stopping", "scheduler")


@dataclasses.dataclass
class RunState:
    """Everything a run has to carry from one batch to the next, and to a checkpoint.

    ``stateful`` holds the run's helpers by the names in ``STATEFUL`` (the train loader, the
    early stopping, the scheduler; None where absent): those with ``state_dict()`` are saved, and
    restored with ``load_state_dict()``.
    """

    state: TrainState
    stateful: dict[str, Any]
    history: History = dataclasses.field(default_factory=History)
    sums: dict | None = None  # running sums of the epoch in progress; None before its first batch
    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained on
    step: int = 0  # batches trained on in all
    epoch_starts: list[int] = dataclasses.field(default_factory=list)  # global step of each epoch

    def __post_init__(self):
        unknown = set(self.stateful) - set(STATEFUL)
        if unknown:
            raise ValueError(f"unknown stateful helpers {sorted(unknown)}; known: {STATEFUL}")

    # -- the loop's position -------------------------------------------------------------------

    def begin_epoch(self) -> None:
        """Record where the epoch in progress starts, unless it was resumed part-way."""
        if self.batch == 0:
            self.epoch_starts = self.epoch_starts[:self.epoch] + [self.step]

    def end_epoch(self) -> None:
        self.epoch, self.batch, self.sums = self.epoch + 1, 0, None

    def where(self, step: int) -> str:
        """``step`` as a person finds it: "step 5 (epoch 2, batch 2)"."""
        starts = self.epoch_starts or [0]
        e = max(i for i, s in enumerate(starts) if s <= step) if step >= starts[0] else 0
        return f"step {step} (epoch {e + 1}, batch {step - starts[e] + 1})"

    # -- the checkpoint ------------------------------------------------------------------------

    def arrays(self) -> dict[str, Any]:
        st = self.state
        return {"params": st.params, "rest": st.rest, "opt_state": st.opt_state,
                "counters": {"step": st.step, "bad_step": st.bad_step, "fault": st.fault,
                             "loss_scale": st.loss_scale}}

    def meta(self) -> dict[str, Any]:
        sums = None if self.sums is None else {k: float(to_host(v)) for k, v in self.sums.items()}
        meta = {"epoch": self.epoch, "batch": self.batch, "epoch_starts": list(self.epoch_starts),
                "history": self.history.to_dict(), "sums": sums}
        for name in STATEFUL:
            helper = self.stateful.get(name)
            meta[name] = helper.state_dict() if hasattr(helper, "state_dict") else None
        return meta

    def load(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Take the position, history, arrays and helpers' state of a checkpoint (``arrays``
        shaped by ``self.arrays()``)."""
        self.state = self.state._replace(params=arrays["params"], rest=arrays["rest"],
                                         opt_state=arrays["opt_state"], **arrays["counters"])
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.epoch_starts = list(meta["epoch_starts"])
        self.history = History.from_dict(meta["history"])
        # mid-epoch, the epoch's running sums go on (even when no batch of it is left)
        self.sums = ({k: jnp.asarray(v, jnp.float32) for k, v in meta["sums"].items()}
                     if self.batch else None)
        for name in STATEFUL:
            helper = self.stateful.get(name)
            state = meta.get(name)
            if name == "loader" and state is None:
                # written with a loader that has no state (a list): put one that has at the
                # checkpoint's position, or it would replay the epoch's finished batches
                state = {"epoch": self.epoch, "position": self.batch}
            if hasattr(helper, "load_state_dict") and state is not None:
                helper.load_state_dict(state)

    def save(self, ckpt: Checkpointer) -> None:
        """Write the checkpoint; refused if the parameters or optimizer state are not finite."""
        ckpt.save(self.step, self.arrays(), self.meta(), finite=("params", "opt_state"))

    def resume(self, ckpt: Checkpointer) -> bool:
        """Load the newest sound checkpoint in ``ckpt``; False when there is none."""
        try:
            found = ckpt.restore_latest(self.arrays())
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(
                f"cannot resume: {e}. Resume with the model, optimizer and precision the run "
                "started with, or start a new run in another checkpoint_dir (these checkpoints "
                "are left as they are)") from None
        if found is not None:
            self.load(*found)
        return found is not None
