"""Pure, jitted train and eval steps for Flax NNX models.

A model is split once into a static ``graphdef`` and two pytrees: ``params`` (the ``nnx.Param``
variables, what the optimizer updates) and ``rest`` (everything else: RNG stream counters, batch
statistics). A step is a pure function of (state, batch); ``jax.jit`` compiles it once per batch
shape and the state's buffers are donated, so XLA updates them in place.

Non-finite losses never reach the parameters: a step whose loss (or gradients) is not finite keeps
the previous state and records its index in ``bad_step``; every later step is a no-op. The host
reads ``bad_step`` whenever it syncs and raises then (see ``funcdl.train.loop``).

Each step also returns the batch's *sums*: ``{"loss": loss * n, "n": n, <aux name>: value * n}``
for a batch of ``n`` rows. Added up over an epoch (``add_sums``) and divided by ``"n"`` they give
the epoch's means. The names are whatever ``loss_fn`` returns as aux (and the eval ``metrics``):
the host learns them from the first step's output, so nothing is traced twice.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

GRAD_MODES = ("jax", "tape")
PRECISIONS = ("fp32", "bf16", "fp16")
_COMPUTE_DTYPE = {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}


class LossScale(NamedTuple):
    """Dynamic loss scale for float16 (torch.amp.GradScaler's state)."""

    scale: jax.Array  # float32 scalar
    growth_tracker: jax.Array  # int32: clean steps since the last change


class TrainState(NamedTuple):
    """Everything a train step reads and writes; a pytree of arrays."""

    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of every other variable (RNG counters, batch stats)
    opt_state: Any  # the optax state
    step: jax.Array  # int32: batches processed so far
    bad_step: jax.Array  # int32: first step with a non-finite loss or gradient, -1 if none
    loss_scale: LossScale  # scale 1.0 and never updated unless precision == "fp16"


def check_grad_mode(grad: str) -> str:
    if grad not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {grad!r}; valid modes are {', '.join(GRAD_MODES)}")
    return grad


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; valid precisions are {', '.join(PRECISIONS)}")
    return precision


def split_model(model: nnx.Module) -> tuple[Any, Any, Any]:
    """``(graphdef, params, rest)``: the ``nnx.Param`` variables and everything else."""
    return nnx.split(model, nnx.Param, ...)


def batch_size(batch: Any) -> int:
    """Rows in a batch: the leading dimension of its first array."""
    leaves = jax.tree.leaves(batch)
    if not leaves or not getattr(leaves[0], "shape", ()):
        raise TypeError(
            "a batch must be a pytree of arrays with a leading batch dimension (an (x, y) tuple, "
            f"a dict, an array); got {type(batch).__name__}")
    return int(leaves[0].shape[0])


def batch_signature(batch: Any) -> Any:
    """Shapes and dtypes of a batch: what one compiled step is specialised to."""
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), batch)


def init_loss_scale(precision: str, init_scale: float = 2.0**16) -> LossScale:
    scale = init_scale if precision == "fp16" else 1.0
    return LossScale(jnp.asarray(scale, jnp.float32), jnp.asarray(0, jnp.int32))


def update_loss_scale(ls: LossScale, found_inf: jax.Array, *, growth_factor: float = 2.0,
                      backoff_factor: float = 0.5, growth_interval: int = 2000) -> LossScale:
    """torch's ``_amp_update_scale_``: back off on overflow, grow after ``growth_interval`` clean
    steps (keeping the old scale if the grown one would overflow float32)."""
    tracker = ls.growth_tracker + 1
    grow = tracker == growth_interval
    grown = ls.scale * growth_factor
    grown = jnp.where(jnp.isfinite(grown), grown, ls.scale)
    scale = jnp.where(found_inf, ls.scale * backoff_factor, jnp.where(grow, grown, ls.scale))
    tracker = jnp.where(found_inf | grow, 0, tracker).astype(jnp.int32)
    return LossScale(scale.astype(jnp.float32), tracker)


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation, *,
               precision: str = "fp32") -> tuple[Any, TrainState]:
    """Split ``model`` and build the first ``TrainState``; arrays are copied, so donating the
    state to a step never deletes the buffers the user's module holds."""
    graphdef, params, rest = split_model(model)
    params, rest = jax.tree.map(lambda x: x.copy(), (params, rest))
    state = unshare(TrainState(
        params=params,
        rest=rest,
        opt_state=optimizer.init(params),
        step=jnp.asarray(0, jnp.int32),
        bad_step=jnp.asarray(-1, jnp.int32),
        loss_scale=init_loss_scale(precision),
    ))
    return graphdef, state


def unshare(tree: Any) -> Any:
    """``tree`` with every array object that appears more than once copied, so the state can be
    donated (an optimizer may put one zeros array in two slots of its state)."""
    seen: set[int] = set()

    def once(x):
        if isinstance(x, jax.Array):
            if id(x) in seen:
                return x.copy()
            seen.add(id(x))
        return x

    return jax.tree.map(once, tree)


def split_loss(out: Any) -> tuple[jax.Array, dict]:
    """``loss_fn`` returns ``loss`` or ``(loss, aux)`` with ``aux`` a mapping of scalars."""
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(f"loss_fn must return loss or (loss, aux); got a {len(out)}-tuple")
        loss, aux = out
        if aux is None:
            aux = {}
        if not isinstance(aux, Mapping):
            raise TypeError(
                "loss_fn's aux must be a mapping of scalar metrics such as {'accuracy': acc}; "
                f"got {type(aux).__name__}")
        return loss, dict(aux)
    return out, {}


def _cast_floats(tree: Any, dtype: Any) -> Any:
    if dtype is None:
        return tree

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _value_and_grad(grad: str) -> Callable:
    if grad == "jax":
        return jax.value_and_grad
    from funcdl import tape  # imported lazily: the tape is only needed for grad="tape"

    return tape.value_and_grad


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def batch_sums(loss: jax.Array, aux: Mapping[str, Any], n: int, ok: jax.Array) -> dict:
    """A batch of ``n`` rows' share of the epoch sums (all zero unless ``ok``), in float32:
    ``{"loss": loss * n, "n": n, **{name: value * n}}``. Checks the aux names and shapes while
    the step is traced."""
    bad = [k for k, v in aux.items() if jnp.shape(v) != ()]
    if bad:
        raise TypeError(f"aux and metrics must be scalars; {bad} are not")
    reserved = {"loss", "n"} & set(aux)
    if reserved:
        raise ValueError(f"aux and metrics may not be named {sorted(reserved)}")
    w = jnp.where(ok, jnp.float32(n), 0.0)

    def weigh(v):
        return jnp.where(ok, jnp.asarray(v, jnp.float32), 0.0) * w

    return {"loss": weigh(loss), "n": w, **{k: weigh(v) for k, v in aux.items()}}


@functools.partial(jax.jit, donate_argnums=0)
def add_sums(total: dict, batch: dict) -> dict:
    """``total + batch``, key by key (the running sums of an epoch; ``total`` is donated)."""
    return jax.tree.map(jnp.add, total, batch)


def train_step_fn(graphdef: Any, loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                  grad: str = "jax", precision: str = "fp32") -> Callable:
    """The pure train step ``(state, batch) -> (state, loss, sums)`` (not jitted); ``sums`` are
    the batch's (see ``batch_sums``)."""
    check_grad_mode(grad)
    check_precision(precision)
    if grad == "tape" and precision != "fp32":
        raise ValueError(f"precision={precision!r} needs grad='jax'; the tape computes in float32")
    dtype = _COMPUTE_DTYPE[precision]
    value_and_grad = _value_and_grad(grad)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, jax.Array, dict]:
        def objective(params):
            # fresh Variables for `rest` at this trace level, so NNX lets the model update them
            rest = jax.tree.map(lambda x: x, state.rest)
            model = nnx.merge(graphdef, _cast_floats(params, dtype), rest)
            loss, aux = split_loss(loss_fn(model, _cast_floats(batch, dtype)))
            new_rest = split_model(model)[2]
            if dtype is not None:  # master params stay float32; the loss is reported in float32
                loss = loss.astype(jnp.float32)
                return loss * state.loss_scale.scale, (loss, aux, new_rest)
            return loss, (loss, aux, new_rest)

        (_, (loss, aux, new_rest)), grads = value_and_grad(objective, has_aux=True)(state.params)
        if precision == "fp16":
            inv = 1.0 / state.loss_scale.scale
            grads = jax.tree.map(lambda g: g * inv, grads)
        healthy = state.bad_step < 0
        loss_ok = jnp.isfinite(loss)
        grads_ok = _all_finite(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        apply = healthy & loss_ok & grads_ok
        # float16 overflow in the gradients is expected and only skips the step (GradScaler);
        # anywhere else a non-finite value is an error.
        failed = ~loss_ok if precision == "fp16" else ~(loss_ok & grads_ok)
        loss_scale = state.loss_scale
        if precision == "fp16":
            loss_scale = _select(healthy & loss_ok,
                                 update_loss_scale(loss_scale, ~grads_ok), loss_scale)
        new = TrainState(
            params=_select(apply, params, state.params),
            rest=_select(healthy & loss_ok, new_rest, state.rest),
            opt_state=_select(apply, opt_state, state.opt_state),
            step=state.step + 1,
            bad_step=jnp.where(healthy & failed, state.step, state.bad_step),
            loss_scale=loss_scale,
        )
        return new, loss, batch_sums(loss, aux, batch_size(batch), healthy & loss_ok)

    return step


def eval_step_fn(graphdef: Any, loss_fn: Callable, metrics: Mapping[str, Callable] | None = None,
                 *, precision: str = "fp32") -> Callable:
    """The pure eval step ``(params, rest, batch) -> sums`` (not jitted): the batch's sums of
    the loss, the aux entries and ``metrics[name](model, batch)`` (see ``batch_sums``)."""
    dtype = _COMPUTE_DTYPE[check_precision(precision)]
    metrics = dict(metrics or {})

    def step(params: Any, rest: Any, batch: Any) -> dict:
        model = nnx.merge(graphdef, _cast_floats(params, dtype), rest)
        b = _cast_floats(batch, dtype)
        loss, aux = split_loss(loss_fn(model, b))
        for name, fn in metrics.items():
            aux[name] = fn(model, b)
        return batch_sums(loss, aux, batch_size(batch), jnp.asarray(True))

    return step


class CompiledStep:
    """A jitted step that warns once for each batch shape it has not been compiled for.

    A new shape (typically the short last batch of an epoch) costs one more compilation; batches
    are never padded, which would change the loss.
    """

    def __init__(self, fn: Callable, *, batch_argnum: int, donate_argnums: tuple[int, ...] = (),
                 name: str = "train step", **jit_kwargs: Any):
        self._fn = jax.jit(fn, donate_argnums=donate_argnums, **jit_kwargs)
        self._batch_argnum = batch_argnum
        self._name = name
        self._seen: list = []

    def __call__(self, *args: Any) -> Any:
        sig = batch_signature(args[self._batch_argnum])
        if sig not in self._seen:
            if self._seen:
                warnings.warn(
                    f"{self._name}: batch shapes {sig} differ from the compiled {self._seen[0]}; "
                    "compiling once more for them (use drop_last=True in the DataLoader to keep "
                    "one shape)", RuntimeWarning, stacklevel=2)
            self._seen.append(sig)
        return self._fn(*args)

    def _share(self, other: CompiledStep) -> CompiledStep:
        """This step with ``other``'s compiled code and a fresh record of warned shapes."""
        self._fn, self._batch_argnum, self._name = other._fn, other._batch_argnum, other._name
        self._seen = []
        return self


# Jitted steps by what defines them, so calling ``fit`` again with the same model structure, loss
# function and optimizer object reuses the compiled code instead of compiling it again.
_STEP_CACHE: dict = {}
_STEP_CACHE_SIZE = 32


def _cached(key: Any, build: Callable[[], CompiledStep]) -> CompiledStep:
    try:
        hash(key)
    except TypeError:  # an unhashable optimizer or metric: no reuse, still correct
        return build()
    if key not in _STEP_CACHE:
        if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = build()
    step = _STEP_CACHE[key]
    return CompiledStep.__new__(CompiledStep)._share(step)


def make_train_step(graphdef: Any, loss_fn: Callable, optimizer: optax.GradientTransformation,
                    *, grad: str = "jax", precision: str = "fp32", **jit_kwargs: Any
                    ) -> CompiledStep:
    """Jitted ``(state, batch) -> (state, loss, sums)``; the state is donated."""

    def build():
        fn = train_step_fn(graphdef, loss_fn, optimizer, grad=grad, precision=precision)
        return CompiledStep(fn, batch_argnum=1, donate_argnums=(0,), **jit_kwargs)

    key = ("train", graphdef, loss_fn, optimizer, grad, precision,
           tuple(sorted(jit_kwargs.items())))
    return _cached(key, build)


def make_eval_step(graphdef: Any, loss_fn: Callable, metrics: Mapping[str, Callable] | None = None,
                   *, precision: str = "fp32", **jit_kwargs: Any) -> CompiledStep:
    """Jitted ``(params, rest, batch) -> sums``."""

    def build():
        fn = eval_step_fn(graphdef, loss_fn, metrics, precision=precision)
        return CompiledStep(fn, batch_argnum=2, name="eval step", **jit_kwargs)

    key = ("eval", graphdef, loss_fn, tuple(sorted((metrics or {}).items())), precision,
           tuple(sorted(jit_kwargs.items())))
    return _cached(key, build)
