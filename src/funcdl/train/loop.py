"""``fit``: the training loop around the jitted steps.

The five sections of the slides' loop (initialise, forward, loss, backprop, optimise) are one
compiled step here; what stays in Python is only what must: fetching batches, the progress bar,
evaluation at the end of each epoch, early stopping, the LR scheduler, checkpoints and logs. The
host never waits for the device except to draw the bar, to checkpoint, to log and at the end of an
epoch. Everything a run carries from batch to batch, and to a checkpoint, is one ``RunState``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from funcdl.devices import to_host
from funcdl.ops.checks import raise_fault
from funcdl.optim import get_lr

from .checkpoint import Checkpointer
from .history import History
from .parallel import Placement, make_mesh
from .progress import ProgressBar
from .run import RunState
from .steps import (
    CompiledStep,
    TrainState,
    add_sums,
    batch_size,
    check_grad_mode,
    check_precision,
    has_one_lr,
    init_state,
    make_eval_step,
    make_train_step,
    split_model,
    unshare,
)
from .tensorboard import RunLog


@dataclasses.dataclass
class EarlyStopping:
    """Stop when the eval loss has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (Keras' rule; PyTorch has no built-in)."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    wait: int = 0

    def __post_init__(self):
        if (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                or self.patience < 1):
            raise ValueError(f"early_stopping patience must be an int >= 1, got {self.patience!r}")

    def update(self, eval_loss: float) -> bool:
        """Record one epoch's eval loss; True when training should stop."""
        if eval_loss < self.best - self.min_delta:
            self.best, self.wait = eval_loss, 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, d: Mapping) -> None:
        self.best, self.wait = float(d["best"]), int(d["wait"])


def fit(model: nnx.Module, optimizer: optax.GradientTransformation, train_loader: Iterable,
        loss_fn: Callable, *, epochs: int, eval_loader: Iterable | None = None,
        grad: str = "jax", seed: int = 0, metrics: Mapping[str, Callable] | None = None,
        early_stopping: int | EarlyStopping | None = None, scheduler: Any = None,
        checkpoint_dir: str | os.PathLike | None = None, keep: int = 3,
        checkpoint_every: int | None = None, resume: bool = False, progress: bool = True,
        log_dir: str | os.PathLike | None = None, mesh: Any = None,
        precision: str = "fp32") -> History:
    """Train ``model`` in place and return its ``History``.

    Args:
        model: a Flax NNX module; it ends holding the trained parameters (``nnx.update``).
        optimizer: an ``optax.GradientTransformation`` (e.g. ``funcdl.optim.adamw(1e-3)``).
        train_loader: an iterable of batches, one pass per epoch (a ``funcdl.data.DataLoader``,
            or a list of ``(x, y)`` numpy tuples). Resuming mid-epoch uses its ``state_dict()``
            when it has one, and otherwise skips the batches already trained on.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, aux)`` with ``aux`` a dict of
            scalar metrics, averaged per epoch into the history as ``train_<name>``. Under
            ``bf16``/``fp16`` compute the loss in float32 (funcdl.tape's losses do).
        epochs: passes over ``train_loader``.
        eval_loader: batches evaluated (model in ``eval()`` mode) after each epoch.
        grad: ``"jax"`` (``jax.value_and_grad``) or ``"tape"`` (``funcdl.tape.value_and_grad``).
        seed: reseeds the model's RNG streams (dropout), so a run is a function of its inputs.
        metrics: ``{name: fn(model, batch) -> scalar}`` computed on ``eval_loader``.
        early_stopping: patience (epochs without improvement of the eval loss; a NaN eval loss
            is no improvement, with a warning) or an ``EarlyStopping``.
        scheduler: stepped with the eval loss after each epoch, e.g.
            ``funcdl.optim.ReduceLROnPlateau``: ``scheduler.step(metric, opt_state) -> opt_state``.
        checkpoint_dir: where to write checkpoints (orbax) after each epoch, every
            ``checkpoint_every`` steps and on Ctrl-C (the step in flight finishes, the
            checkpoint is written, then KeyboardInterrupt is raised), keeping the last ``keep``.
            It is checked for writability before training starts.
        resume: continue from the newest valid checkpoint in ``checkpoint_dir``; where it resumed
            is printed with the progress, and a warning says when there was none to resume.
        progress: progress bars on a terminal or in a notebook (rich), one line per epoch in
            logs; False prints nothing.
        log_dir: write ``history.json``, ``history.csv`` and ``history.png`` there each epoch,
            and TensorBoard event files (``step/*`` scalars each step, ``epoch/*`` each epoch).
        mesh: None, ``"auto"`` (every device, data parallel) or a ``jax.sharding.Mesh`` with a
            ``"data"`` axis: batches are split over it, parameters replicated.
        precision: ``"fp32"``, ``"bf16"`` (bfloat16 compute, float32 master parameters) or
            ``"fp16"`` (float16 compute with dynamic loss scaling, as torch's GradScaler).

    Raises:
        FloatingPointError: the loss, the gradients, or the parameters or optimizer state after an
            update became NaN or inf; the message names the step and which.
        IndexError: an op's check failed (an id out of range for an embedding, a class target
            out of range), naming the value and the step.
        In both cases the model keeps the parameters from before that step and no checkpoint
        is written after it.
    """
    _check_options(epochs, grad, precision, eval_loader, early_stopping, scheduler,
                   checkpoint_dir, checkpoint_every, resume)
    early_stopping = _as_early_stopping(early_stopping)
    place = Placement(make_mesh(mesh))
    graphdef, eval_graphdef, state = _split(model, optimizer, seed, precision)
    train_step = make_train_step(graphdef, loss_fn, optimizer, grad=grad, precision=precision,
                                 **place.jit_kwargs)
    eval_step = make_eval_step(eval_graphdef, loss_fn, metrics, precision=precision,
                               **place.jit_kwargs)
    run = RunState(state, {"loader": train_loader, "early_stopping": early_stopping,
                           "scheduler": scheduler})
    ckpt = Checkpointer(checkpoint_dir, keep) if checkpoint_dir is not None else None
    log = RunLog(log_dir) if log_dir is not None and jax.process_index() == 0 else None
    bar = ProgressBar(epochs, _len(train_loader), enabled=progress)
    interrupt = _DeferredInterrupt()

    def check() -> None:  # at each sync with the device
        _check_healthy(run, train_step, model, ckpt)

    def save(every: int | None = 1) -> None:
        """Checkpoint when there is a checkpoint_dir and the step is a multiple of ``every``."""
        if ckpt is not None and every and run.step % every == 0:
            check()  # a checkpoint never holds parameters from after a failed step
            run.save(ckpt)

    def after_step() -> None:
        save(checkpoint_every)
        if interrupt.requested:
            _stop_on_interrupt(run, model, ckpt, save)

    try:
        with interrupt:
            if resume:
                _resume(run, ckpt, bar, log)
            run.state, run.sums = place.replicate((run.state, run.sums))
            stop = False
            while run.epoch < epochs and not stop:
                run.begin_epoch()
                seconds, samples = _train_epoch(run, train_step, train_loader, place, bar, check,
                                                log, after_step=after_step)
                row = {"epoch": run.epoch + 1, "step": run.step, **_means(run.sums, "train")}
                if eval_loader is not None:
                    row.update(_evaluate(eval_step, run, eval_loader, place, model))
                if scheduler is not None:
                    opt_state = place.replicate(scheduler.step(row["eval_loss"],
                                                               run.state.opt_state))
                    run.state = unshare(run.state._replace(opt_state=opt_state))
                row.update(_epoch_stats(run.state, precision, seconds, samples))
                if early_stopping is not None:
                    stop = run.history.stopped_early = early_stopping.update(row["eval_loss"])
                run.history.append(row)
                bar.end_epoch(run.epoch, run.batch, row)
                run.end_epoch()
                if log_dir is not None and jax.process_index() == 0:
                    run.history.save(log_dir)
                    log.epoch(row["epoch"], row)
                save()
                if interrupt.requested:
                    _stop_on_interrupt(run, model, ckpt, save)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if ckpt is not None:
            ckpt.close()
    nnx.update(model, run.state.params, run.state.rest)
    run.history.opt_state = run.state.opt_state  # to continue training with the same optimizer
    return run.history


class _DeferredInterrupt:
    """While active (main thread only), a first Ctrl-C only sets ``requested``: the loop finishes
    the step in flight, checkpoints and raises KeyboardInterrupt itself, so the checkpoint and the
    run's counters agree. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # the next Ctrl-C is not deferred

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


def _stop_on_interrupt(run: RunState, model: nnx.Module, ckpt: Checkpointer | None,
                       save: Callable[[], None]) -> None:
    """Checkpoint (when there is a checkpoint_dir), give the model the parameters so far and
    raise KeyboardInterrupt saying where the run stopped."""
    if ckpt is not None and run.step not in ckpt.steps():
        save()
    nnx.update(model, run.state.params, run.state.rest)
    where = f"interrupted after {run.where(run.step - 1)}"
    if ckpt is not None:
        where += f"; checkpoint {run.step} is in {ckpt.directory}: resume with resume=True"
    raise KeyboardInterrupt(where)


def _resume(run: RunState, ckpt: Checkpointer, bar: ProgressBar, log: RunLog | None) -> None:
    """Load the newest sound checkpoint, and say what happened either way."""
    if run.resume(ckpt):
        bar.note(f"resumed at epoch {run.epoch + 1}, step {run.step} (batch {run.batch} of the "
                 f"epoch) from {os.path.join(ckpt.directory, str(run.step))}")
        if log is not None:
            log.resumed(run.step)
        return
    why = "the directory did not exist" if ckpt.created else "it holds no checkpoint"
    warnings.warn(f"resume=True but there is no checkpoint in {ckpt.directory} ({why}): "
                  "starting from scratch", UserWarning, stacklevel=3)


def _check_options(epochs: Any, grad: str, precision: str, eval_loader: Any, early_stopping: Any,
                   scheduler: Any, checkpoint_dir: Any, checkpoint_every: Any,
                   resume: bool) -> None:
    """Refuse, before anything is compiled, options that cannot work together."""
    check_grad_mode(grad)
    check_precision(precision)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if (early_stopping is not None or scheduler is not None) and eval_loader is None:
        raise ValueError("early_stopping and scheduler follow the eval loss: pass an eval_loader")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if checkpoint_dir is not None and scheduler is not None and not (
            hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict")):
        raise TypeError(f"the scheduler ({type(scheduler).__name__}) has no state_dict() and "
                        "load_state_dict() for checkpoints to keep its state; add them, or pass "
                        "no checkpoint_dir")


def _as_early_stopping(early_stopping: int | EarlyStopping | None) -> EarlyStopping | None:
    if early_stopping is None or isinstance(early_stopping, EarlyStopping):
        return early_stopping
    return EarlyStopping(early_stopping)  # a patience; EarlyStopping says what is wrong with it


def _split(model: nnx.Module, optimizer: optax.GradientTransformation, seed: int,
           precision: str) -> tuple[Any, Any, TrainState]:
    """``(train graphdef, eval graphdef, first TrainState)``, the model's RNG streams reseeded
    from ``seed``; the model is left in training mode."""
    _set_mode(model, training=False)
    eval_graphdef = split_model(model)[0]
    _set_mode(model, training=True)
    _reseed(model, seed)
    graphdef, state = init_state(model, optimizer, precision=precision)
    return graphdef, eval_graphdef, state


def _reseed(model: nnx.Module, seed: int) -> None:
    """Reseed every RNG stream of the model (dropout and the like) from ``seed``."""
    tags = {s.key.tag for _, s in nnx.iter_graph(model) if isinstance(s, nnx.RngStream)}
    if tags:
        # match_shape: stacked layers (nnx.vmap) hold one key per layer
        nnx.reseed(model, policy="match_shape",
                   **{t: jax.random.fold_in(jax.random.key(seed), i)
                      for i, t in enumerate(sorted(tags))})


def _set_mode(model: nnx.Module, training: bool) -> None:
    fn = getattr(model, "train" if training else "eval", None)
    if callable(fn):
        fn()


def _train_epoch(run: RunState, train_step: CompiledStep, loader: Iterable, place: Placement,
                 bar: ProgressBar, check: Callable[[], None], log: RunLog | None, *,
                 after_step: Callable[[], None]) -> tuple[float, int]:
    """Train on what is left of the epoch in progress; the ``(seconds, samples)`` it took."""
    t_epoch = t_bar = time.perf_counter()
    samples = seen = 0
    for batch in _remaining(loader, run.batch):
        run.state, loss, sums, stats = train_step(run.state, place.batch(batch))
        run.sums = _add(run.sums, sums)
        run.step, run.batch = run.step + 1, run.batch + 1
        if log is not None:
            log.step(run.step, loss, sums, stats)
        n = batch_size(batch)
        samples, seen = samples + n, seen + n
        if bar.due():  # drawing the loss waits for the device: check the step then too
            check()
            now = time.perf_counter()
            bar.update(run.epoch, run.batch, float(to_host(loss)), seen / max(now - t_bar, 1e-9))
            t_bar, seen = now, 0
        after_step()
    if run.batch == 0:
        raise ValueError(f"train_loader yielded no batches in epoch {run.epoch + 1}; fit needs at "
                         "least one per epoch (is the dataset empty, or smaller than batch_size "
                         "with drop_last=True?)")
    check()
    return time.perf_counter() - t_epoch, samples


def _remaining(loader: Iterable, done: int) -> Iterator:
    """The batches of the epoch after the first ``done``. A loader with ``load_state_dict`` was
    put back at its position; a plain iterable replays the whole epoch, so those are skipped."""
    batches = iter(loader)
    if done and not hasattr(loader, "load_state_dict"):
        batches = itertools.islice(batches, done, None)
    return batches


def _add(total: dict | None, sums: dict) -> dict:
    """The running sums with a batch's added; a copy of the first batch's sums starts them (the
    running sums are donated to ``add_sums``, and the batch's may still be logged)."""
    return jax.tree.map(jnp.copy, sums) if total is None else add_sums(total, sums)


@jax.jit
def _first_fault(first: jax.Array, fault: jax.Array) -> jax.Array:
    return jnp.where(first[0] != 0, first, fault)


def _evaluate(eval_step: CompiledStep, run: RunState, loader: Iterable, place: Placement,
              model: nnx.Module) -> dict[str, float]:
    """Means of the loss, aux and metrics over ``loader`` as ``eval_<name>``; raises what a
    failed check raises (the model then holds the parameters trained so far)."""
    sums = fault = None
    for batch in loader:
        s, f = eval_step(run.state.params, run.state.rest, place.batch(batch))
        sums, fault = _add(sums, s), f if fault is None else _first_fault(fault, f)
    if sums is None:
        raise ValueError(f"eval_loader yielded no batches after epoch {run.epoch + 1}; pass one "
                         "with at least one batch, or eval_loader=None")
    try:
        raise_fault(fault, eval_step.checks, f"in the evaluation after epoch {run.epoch + 1}")
    except Exception:
        nnx.update(model, run.state.params, run.state.rest)
        raise
    means = _means(sums, "eval")
    if math.isnan(means["eval_loss"]):
        warnings.warn(f"eval_loss is NaN after epoch {run.epoch + 1}: it is never the best epoch, "
                      "and early stopping counts it as no improvement; check the eval data and "
                      "the model in eval mode", RuntimeWarning, stacklevel=3)
    return means


def _means(sums: dict | None, prefix: str) -> dict[str, float]:
    """``{prefix_name: sum / n}``; a NaN loss when there were no batches."""
    if sums is None:
        return {f"{prefix}_loss": math.nan}
    host = {k: float(to_host(v)) for k, v in sums.items()}
    n = host.pop("n")
    return {f"{prefix}_{k}": (v / n if n else math.nan) for k, v in host.items()}


def _epoch_stats(state: TrainState, precision: str, seconds: float,
                 samples: int) -> dict[str, Any]:
    """The end of an epoch's row: lr, loss scale (fp16), time and throughput."""
    stats: dict[str, Any] = {"lr": _lr(state.opt_state)}
    if precision == "fp16":
        stats["loss_scale"] = float(to_host(state.loss_scale.scale))
    return {**stats, "seconds": seconds, "samples_per_s": samples / max(seconds, 1e-9)}


def _lr(opt_state: Any) -> float | None:
    """The learning rate for the history: None for an optimizer with no injected ``lr`` (a plain
    optax transformation) or with several (no one value to report)."""
    return get_lr(opt_state) if has_one_lr(opt_state) else None


def _check_healthy(run: RunState, train_step: CompiledStep, model: nnx.Module,
                   ckpt: Checkpointer | None) -> None:
    """Once a step has failed (non-finite values, a failed check): give the model the
    parameters from before it and raise its error, naming the step."""
    bad = int(to_host(run.state.bad_step))
    if bad < 0:
        return
    nnx.update(model, run.state.params, run.state.rest)
    raise_fault(run.state.fault, train_step.checks, (
        f"at {run.where(bad)}; training stopped and the model keeps the parameters from before "
        "that step" + (f"; the last good checkpoint in {ckpt.directory} is untouched" if ckpt
                       else "") + "."))


def _len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
