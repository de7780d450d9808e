"""``fit``: the training loop around the jitted steps.

The five sections of the slides' loop (initialise, forward, loss, backprop, optimise) are one
compiled step here; what stays in Python is only what must: fetching batches, the progress bar,
evaluation at the end of each epoch, early stopping, the LR scheduler and checkpoints. The host
never waits for the device except to draw the bar, to checkpoint and at the end of an epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import parallel
from .checkpoint import Checkpointer, CheckpointMismatchError, to_host
from .history import History
from .progress import ProgressBar
from .steps import (
    TrainState,
    check_grad_mode,
    check_precision,
    init_state,
    make_eval_step,
    make_train_step,
    split_loss,
    split_model,
    unshare,
    zero_sums,
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
        if not isinstance(self.patience, int) or self.patience < 1:
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


def _aux_names(graphdef: Any, loss_fn: Callable, metrics: Mapping, params: Any, rest: Any,
               batch: Any) -> tuple[str, ...]:
    """Names of the scalars ``loss_fn`` returns as aux (plus ``metrics``), found by tracing."""

    def aux(p, r, b):
        model = nnx.merge(graphdef, p, r)
        out = split_loss(loss_fn(model, b))[1]
        out.update({k: fn(model, b) for k, fn in metrics.items()})
        return out

    shapes = jax.eval_shape(aux, params, rest, batch)
    bad = [k for k, v in shapes.items() if v.shape != ()]
    if bad:
        raise TypeError(f"aux and metrics must be scalars; {bad} are not")
    reserved = {"loss", "n"} & set(shapes)
    if reserved:
        raise ValueError(f"aux and metrics may not be named {sorted(reserved)}")
    return tuple(shapes)


def _means(sums: dict, prefix: str) -> dict[str, float]:
    host = {k: float(to_host(v)) for k, v in sums.items()}
    n = host.pop("n")
    return {f"{prefix}_{k}": (v / n if n else math.nan) for k, v in host.items()}


def _lr(opt_state: Any) -> float | None:
    try:
        from funcdl.optim import get_lr

        return float(to_host(get_lr(opt_state)))
    except Exception:  # optimizers without an injected learning rate have none to report
        return None


class _Run:
    """Host-side position of a run: what a checkpoint must hold besides the arrays."""

    def __init__(self):
        self.epoch = 0  # epoch in progress (0-based)
        self.batch = 0  # batches of that epoch already trained on
        self.step = 0  # batches trained on in all
        self.epoch_starts: list[int] = []  # global step at which each epoch began

    def where(self, step: int) -> str:
        starts = self.epoch_starts or [0]
        e = max(i for i, s in enumerate(starts) if s <= step) if step >= starts[0] else 0
        return f"step {step} (epoch {e + 1}, batch {step - starts[e] + 1})"


def fit(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    train_loader: Iterable,
    loss_fn: Callable,
    *,
    epochs: int,
    eval_loader: Iterable | None = None,
    grad: str = "jax",
    seed: int = 0,
    metrics: Mapping[str, Callable] | None = None,
    early_stopping: int | EarlyStopping | None = None,
    scheduler: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    keep: int = 3,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    log_dir: str | os.PathLike | None = None,
    mesh: Any = None,
    precision: str = "fp32",
) -> History:
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
    check_grad_mode(grad)
    check_precision(precision)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(early_stopping)
    if (early_stopping is not None or scheduler is not None) and eval_loader is None:
        raise ValueError("early_stopping and scheduler follow the eval loss: pass an eval_loader")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    metrics = dict(metrics or {})
    mesh = parallel.make_mesh(mesh)

    _set_mode(model, training=False)
    eval_graphdef = split_model(model)[0]
    _set_mode(model, training=True)
    _reseed(model, seed)
    graphdef, state = init_state(model, optimizer, precision=precision)
    history, run = History(), _Run()
    ckpt = Checkpointer(checkpoint_dir, keep) if checkpoint_dir is not None else None

    if resume and ckpt is not None:
        try:
            found = ckpt.restore_latest(_checkpoint_arrays(state))
        except CheckpointMismatchError as e:
            ckpt.close()
            raise CheckpointMismatchError(
                f"cannot resume: {e}. Resume with the model, optimizer and precision the run "
                "started with, or start a new run in another checkpoint_dir (these checkpoints "
                "are left as they are)") from None
        if found is not None:
            arrays, meta = found
            state = state._replace(params=arrays["params"], rest=arrays["rest"],
                                   opt_state=arrays["opt_state"], **arrays["counters"])
            run.epoch, run.batch, run.step = meta["epoch"], meta["batch"], meta["step"]
            if run.batch:  # mid-epoch: the epoch's running sums go on (even with no batch left)
                state = state._replace(sums={k: jnp.asarray(v, jnp.float32)
                                             for k, v in meta["sums"].items()})
            run.epoch_starts = list(meta["epoch_starts"])
            history = History.from_dict(meta["history"])
            if isinstance(early_stopping, EarlyStopping) and meta.get("early_stopping"):
                early_stopping.load_state_dict(meta["early_stopping"])
            if scheduler is not None and meta.get("scheduler") is not None:
                scheduler.load_state_dict(meta["scheduler"])
            if hasattr(train_loader, "load_state_dict") and meta.get("loader") is not None:
                train_loader.load_state_dict(meta["loader"])

    jit_kwargs: dict = {}
    if mesh is not None:
        state = parallel.replicate(state, mesh)
        jit_kwargs = {"out_shardings": parallel.replicated_sharding(mesh)}
    train_step = make_train_step(graphdef, loss_fn, optimizer, grad=grad, precision=precision,
                                 **jit_kwargs)
    eval_step = make_eval_step(eval_graphdef, loss_fn, metrics, precision=precision, **jit_kwargs)
    put = (lambda b: parallel.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
    place = (lambda t: parallel.replicate(t, mesh)) if mesh is not None else (lambda t: t)
    bar = ProgressBar(epochs, _len(train_loader), enabled=progress)
    train_names: tuple[str, ...] | None = None
    eval_names: tuple[str, ...] | None = None

    def check_finite(st: TrainState) -> None:
        bad = int(to_host(st.bad_step))
        if bad >= 0:
            nnx.update(model, st.params, st.rest)  # the last finite parameters
            if ckpt is not None:
                ckpt.close()
            raise FloatingPointError(
                f"loss or gradients became NaN or inf at {run.where(bad)}; training stopped "
                "and the model keeps the parameters from before that step"
                + (f"; the last good checkpoint in {ckpt.directory} is untouched" if ckpt else "")
                + ". Lower the learning rate, clip gradients (funcdl.optim.clip_grad_norm) or "
                "check the data for NaN/inf.")

    def save(st: TrainState) -> None:
        check_finite(st)  # never let a checkpoint hold parameters from after a NaN
        meta = {
            "epoch": run.epoch, "batch": run.batch, "epoch_starts": run.epoch_starts,
            "history": history.to_dict(),
            "sums": {k: float(to_host(v)) for k, v in st.sums.items()},
            "loader": (train_loader.state_dict() if hasattr(train_loader, "state_dict")
                       else None),
            "early_stopping": (early_stopping.state_dict()
                               if isinstance(early_stopping, EarlyStopping) else None),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        }
        ckpt.save(run.step, _checkpoint_arrays(st), meta)

    stop = False
    while run.epoch < epochs and not stop:
        if run.batch == 0:
            run.epoch_starts = run.epoch_starts[:run.epoch] + [run.step]
        batches = iter(train_loader)
        if run.batch and not hasattr(train_loader, "load_state_dict"):
            for _ in range(run.batch):  # a plain iterable replays the epoch: skip what was done
                next(batches)
        t_epoch, t_bar, seen_bar, samples = time.perf_counter(), time.perf_counter(), 0, 0
        for batch in batches:
            if train_names is None:
                train_names = _aux_names(graphdef, loss_fn, {}, state.params, state.rest, batch)
                if run.batch == 0:  # else resumed mid-epoch: the restored sums go on
                    state = state._replace(sums=place(zero_sums(train_names)))
            elif run.batch == 0:
                state = state._replace(sums=place(zero_sums(train_names)))
            state, loss = train_step(state, put(batch))
            run.step += 1
            run.batch += 1
            n = int(np.shape(jax.tree.leaves(batch)[0])[0])
            samples += n
            seen_bar += n
            if bar.due():
                check_finite(state)
                now = time.perf_counter()
                bar.update(run.epoch, run.batch, float(to_host(loss)),
                           seen_bar / max(now - t_bar, 1e-9))
                t_bar, seen_bar = now, 0
            if ckpt is not None and checkpoint_every and run.step % checkpoint_every == 0:
                save(state)
        check_finite(state)
        seconds = time.perf_counter() - t_epoch
        row: dict[str, Any] = {"epoch": run.epoch + 1, "step": run.step}
        row.update(_means(state.sums, "train"))
        if eval_loader is not None:
            sums = None
            for batch in eval_loader:
                if eval_names is None:
                    eval_names = _aux_names(eval_graphdef, loss_fn, metrics, state.params,
                                            state.rest, batch)
                if sums is None:
                    sums = place(zero_sums(eval_names))
                sums = eval_step(state.params, state.rest, sums, put(batch))
            if sums is not None:
                row.update(_means(sums, "eval"))
        if scheduler is not None and "eval_loss" in row:
            opt_state = scheduler.step(row["eval_loss"], state.opt_state)
            state = unshare(state._replace(opt_state=place(opt_state)))
        row["lr"] = _lr(state.opt_state)
        if precision == "fp16":
            row["loss_scale"] = float(to_host(state.loss_scale.scale))
        row["seconds"] = seconds
        row["samples_per_s"] = samples / max(seconds, 1e-9)
        if "eval_loss" in row and (history.best_eval_loss is None
                                   or row["eval_loss"] < history.best_eval_loss):
            history.best_epoch, history.best_eval_loss = row["epoch"], row["eval_loss"]
        if isinstance(early_stopping, EarlyStopping) and "eval_loss" in row:
            stop = early_stopping.update(row["eval_loss"])
            history.stopped_early = stop
        history.append(row)
        bar.end_epoch(run.epoch, run.batch, row)
        run.epoch += 1
        run.batch = 0
        if log_dir is not None and jax.process_index() == 0:
            history.save(log_dir)
        if ckpt is not None:
            save(state)
    if ckpt is not None:
        ckpt.close()
    nnx.update(model, state.params, state.rest)
    history.opt_state = state.opt_state  # to continue training with the same optimizer state
    return history


def _checkpoint_arrays(st: TrainState) -> dict[str, Any]:
    return {"params": st.params, "rest": st.rest, "opt_state": st.opt_state,
            "counters": {"step": st.step, "bad_step": st.bad_step, "loss_scale": st.loss_scale}}


def _len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
