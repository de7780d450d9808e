"""``fit``: the training loop around the jitted steps.

The five sections of the slides' loop (initialise, forward, loss, backprop, optimise) are one
compiled step here; what stays in Python is only what must: fetching batches, the progress bar,
evaluation at the end of each epoch, early stopping, the LR scheduler and checkpoints. The host
never waits for the device except to draw the bar, to checkpoint and at the end of an epoch.
Everything a run carries from batch to batch, and to a checkpoint, is one ``RunState``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import optax
from flax import nnx

from funcdl.devices import to_host
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
    init_state,
    make_eval_step,
    make_train_step,
    split_model,
    unshare,
)


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
            scalar metrics, averaged per epoch into the history as ``train_<name>``.
        epochs: passes over ``train_loader``.
        eval_loader: batches evaluated (model in ``eval()`` mode) after each epoch.
        grad: ``"jax"`` (``jax.value_and_grad``) or ``"tape"`` (``funcdl.tape.value_and_grad``).
        seed: reseeds the model's RNG streams (dropout), so a run is a function of its inputs.
        metrics: ``{name: fn(model, batch) -> scalar}`` computed on ``eval_loader``.
        early_stopping: patience (epochs without improvement of the eval loss) or an
            ``EarlyStopping``.
        scheduler: stepped with the eval loss after each epoch, e.g.
            ``funcdl.optim.ReduceLROnPlateau``: ``scheduler.step(metric, opt_state) -> opt_state``.
        checkpoint_dir: where to write checkpoints (orbax) after each epoch and every
            ``checkpoint_every`` steps, keeping the last ``keep``.
        resume: continue from the newest valid checkpoint in ``checkpoint_dir`` (if any).
        progress: draw a progress bar (loss, samples/s) on stderr.
        log_dir: write ``history.json``, ``history.csv`` and ``history.png`` there each epoch.
        mesh: None, ``"auto"`` (every device, data parallel) or a ``jax.sharding.Mesh`` with a
            ``"data"`` axis: batches are split over it, parameters replicated.
        precision: ``"fp32"``, ``"bf16"`` (bfloat16 compute, float32 master parameters) or
            ``"fp16"`` (float16 compute with dynamic loss scaling, as torch's GradScaler).

    Raises:
        FloatingPointError: the loss (or a gradient) was not finite; the message names the step.
            The model keeps the last finite parameters and no checkpoint is written after it.
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
    bar = ProgressBar(epochs, _len(train_loader), enabled=progress)

    def check_finite() -> None:  # at each sync with the device
        _check_finite(run, model, ckpt)

    def save(every: int | None = 1) -> None:
        """Checkpoint when there is a checkpoint_dir and the step is a multiple of ``every``."""
        if ckpt is not None and every and run.step % every == 0:
            check_finite()  # a checkpoint never holds parameters from after a NaN
            run.save(ckpt)

    try:
        if resume:
            run.resume(ckpt)
        run.state, run.sums = place.replicate((run.state, run.sums))
        stop = False
        while run.epoch < epochs and not stop:
            run.begin_epoch()
            seconds, samples = _train_epoch(run, train_step, train_loader, place, bar,
                                            check_finite, after_step=lambda: save(checkpoint_every))
            row = {"epoch": run.epoch + 1, "step": run.step, **_means(run.sums, "train")}
            if eval_loader is not None:
                row.update(_evaluate(eval_step, run.state, eval_loader, place))
            if scheduler is not None and "eval_loss" in row:
                opt_state = place.replicate(scheduler.step(row["eval_loss"], run.state.opt_state))
                run.state = unshare(run.state._replace(opt_state=opt_state))
            row.update(_epoch_stats(run.state, precision, seconds, samples))
            if early_stopping is not None and "eval_loss" in row:
                stop = run.history.stopped_early = early_stopping.update(row["eval_loss"])
            run.history.append(row)
            bar.end_epoch(run.epoch, run.batch, row)
            run.end_epoch()
            if log_dir is not None and jax.process_index() == 0:
                run.history.save(log_dir)
            save()
    finally:
        if ckpt is not None:
            ckpt.close()
    nnx.update(model, run.state.params, run.state.rest)
    run.history.opt_state = run.state.opt_state  # to continue training with the same optimizer
    return run.history


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
                 bar: ProgressBar, check_finite: Callable[[], None], *,
                 after_step: Callable[[], None]) -> tuple[float, int]:
    """Train on what is left of the epoch in progress; the ``(seconds, samples)`` it took."""
    t_epoch = t_bar = time.perf_counter()
    samples = seen = 0
    for batch in _remaining(loader, run.batch):
        run.state, loss, sums = train_step(run.state, place.batch(batch))
        run.sums = _add(run.sums, sums)
        run.step, run.batch = run.step + 1, run.batch + 1
        n = batch_size(batch)
        samples, seen = samples + n, seen + n
        if bar.due():  # drawing the loss waits for the device: check for a NaN then too
            check_finite()
            now = time.perf_counter()
            bar.update(run.epoch, run.batch, float(to_host(loss)), seen / max(now - t_bar, 1e-9))
            t_bar, seen = now, 0
        after_step()
    check_finite()
    return time.perf_counter() - t_epoch, samples


def _remaining(loader: Iterable, done: int) -> Iterator:
    """The batches of the epoch after the first ``done``. A loader with ``load_state_dict`` was
    put back at its position; a plain iterable replays the whole epoch, so those are skipped."""
    batches = iter(loader)
    if done and not hasattr(loader, "load_state_dict"):
        batches = itertools.islice(batches, done, None)
    return batches


def _add(total: dict | None, sums: dict) -> dict:
    """The running sums with a batch's added; the first batch's sums start them."""
    return sums if total is None else add_sums(total, sums)


def _evaluate(eval_step: CompiledStep, state: TrainState, loader: Iterable,
              place: Placement) -> dict[str, float]:
    """Means of the loss, aux and metrics over ``loader`` as ``eval_<name>`` ({} if empty)."""
    sums = None
    for batch in loader:
        sums = _add(sums, eval_step(state.params, state.rest, place.batch(batch)))
    return {} if sums is None else _means(sums, "eval")


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


def _is_lr_holder(x: Any) -> bool:
    return isinstance(x, optax.InjectStatefulHyperparamsState) and "lr" in x.hyperparams


def _lr(opt_state: Any) -> float | None:
    """The learning rate for the history: None for an optimizer with no injected ``lr`` (a plain
    optax transformation) or with several (no one value to report)."""
    holders = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_lr_holder) if _is_lr_holder(x)]
    return get_lr(opt_state) if len(holders) == 1 else None


def _check_finite(run: RunState, model: nnx.Module, ckpt: Checkpointer | None) -> None:
    """Once a step has had a non-finite loss or gradient: give the model the last finite
    parameters and raise FloatingPointError naming the step."""
    bad = int(to_host(run.state.bad_step))
    if bad < 0:
        return
    nnx.update(model, run.state.params, run.state.rest)
    raise FloatingPointError(
        f"loss or gradients became NaN or inf at {run.where(bad)}; training stopped and the "
        "model keeps the parameters from before that step"
        + (f"; the last good checkpoint in {ckpt.directory} is untouched" if ckpt else "")
        + ". Lower the learning rate, clip gradients (funcdl.optim.clip_grad_norm) or check the "
        "data for NaN/inf.")


def _len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
