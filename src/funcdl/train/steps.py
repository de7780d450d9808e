"""Pure, jitted train and eval steps for Flax NNX models.

A model is split once into a static ``graphdef`` and two pytrees: ``params`` (the ``nnx.Param``
variables, what the optimizer updates) and ``rest`` (everything else: RNG stream counters, batch
statistics). A step is a pure function of (state, batch); ``jax.jit`` compiles it once per batch
shape and the state's buffers are donated, so XLA updates them in place.

Nothing non-finite and nothing computed from bad inputs reaches the parameters: a step whose loss,
gradients or updated parameters/optimizer state are not finite, or whose ops failed a check (an id
out of range: ``funcdl.ops.checks``), keeps the previous state and records its index in
``bad_step`` and why in ``fault``; every later step is a no-op. The host reads them whenever it
syncs and raises then (see ``funcdl.train.loop``).

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

from funcdl.ops.checks import Check, collect, first_fault
from funcdl.optim import get_lr

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
    bad_step: jax.Array  # int32: the first step that failed (non-finite, bad input), -1 if none
    fault: jax.Array  # int32 [code, value]: why it failed, a code of the step's ``checks``
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
        fault=jnp.zeros(2, jnp.int32),
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
    if isinstance(out, tuple) and len(out) != 2:
        raise TypeError(f"loss_fn must return loss or (loss, aux); got a {len(out)}-tuple")
    loss, aux = out if isinstance(out, tuple) else (out, {})
    if not (hasattr(loss, "dtype") and hasattr(loss, "shape")):
        raise TypeError(
            f"loss_fn returned a {type(loss).__name__} as the loss; return the array it was "
            "computed as (e.g. jnp.mean(...) or a funcdl.tape loss), not float(...) or .item(), "
            "which carry no gradient")
    if tuple(loss.shape) != ():
        raise TypeError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}; "
                        "reduce it (e.g. .mean())")
    aux = {} if aux is None else aux
    if not isinstance(aux, Mapping):
        raise TypeError(
            "loss_fn's aux must be a mapping of scalar metrics such as {'accuracy': acc}; "
            f"got {type(aux).__name__}")
    return loss, dict(aux)


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
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


_ADVICE = ("Lower the learning rate, clip gradients (funcdl.optim.clip_grad_norm) or check the "
           "data for NaN/inf")
_FP16_ADVICE = (". Under precision='fp16' a loss above 65504 overflows: compute it in float32 "
                "(funcdl.tape's losses do; cast the model output with .astype(jnp.float32) "
                "before a jnp or optax loss)")


def builtin_checks(precision: str) -> list[Check]:
    """The first codes of every train step's registry: 1 loss, 2 gradients, 3 update."""
    return [
        Check(FloatingPointError, "the loss became NaN or inf",
              _ADVICE + (_FP16_ADVICE if precision == "fp16" else "")),
        Check(FloatingPointError, "the gradients became NaN or inf (the loss was finite)",
              _ADVICE),
        Check(FloatingPointError, "the update made the parameters or the optimizer state NaN or "
              "inf (the loss and gradients were finite)", "Check that the learning rate (and "
              "its schedule) and the optimizer's hyperparameters are finite"),
    ]


def _is_lr_holder(x: Any) -> bool:
    return isinstance(x, optax.InjectStatefulHyperparamsState) and "lr" in x.hyperparams


def has_one_lr(opt_state: Any) -> bool:
    """Whether ``opt_state`` injects exactly one ``lr`` (``get_lr`` then reads it); a plain optax
    transformation has none, a chain of funcdl optimizers may have several."""
    return sum(map(_is_lr_holder, jax.tree.leaves(opt_state, is_leaf=_is_lr_holder))) == 1


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
    """The pure train step ``(state, batch) -> (state, loss, sums, stats)`` (not jitted);
    ``sums`` are the batch's (see ``batch_sums``), ``stats`` its ``{"grad_norm": ...}``. The
    function's ``checks`` attribute is the registry its ``fault`` codes index."""
    check_grad_mode(grad)
    check_precision(precision)
    if grad == "tape" and precision != "fp32":
        raise ValueError(f"precision={precision!r} needs grad='jax'; the tape computes in float32")
    dtype = _COMPUTE_DTYPE[precision]
    value_and_grad = _value_and_grad(grad)
    registry = builtin_checks(precision)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, jax.Array, dict, dict]:
        def objective(params):
            # fresh Variables for `rest` at this trace level, so NNX lets the model update them
            rest = jax.tree.map(lambda x: x, state.rest)
            model = nnx.merge(graphdef, _cast_floats(params, dtype), rest)
            with collect(registry) as checks:  # ids out of range and the like
                loss, aux = split_loss(loss_fn(model, _cast_floats(batch, dtype)))
            new_rest = split_model(model)[2]
            out = (loss, aux, new_rest, checks.fault())
            if dtype is not None:  # master params stay float32; the loss is reported in float32
                loss = loss.astype(jnp.float32)
                return loss * state.loss_scale.scale, (loss, *out[1:])
            return loss, out

        (_, (loss, aux, new_rest, fault)), grads = value_and_grad(
            objective, has_aux=True)(state.params)
        if precision == "fp16":
            inv = 1.0 / state.loss_scale.scale
            grads = jax.tree.map(lambda g: g * inv, grads)
        healthy = state.bad_step < 0
        grads_ok = _all_finite(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # float16 overflow in the gradients is expected and only skips the step (GradScaler);
        # anywhere else a non-finite value is an error. A NaN learning rate shows only here.
        fault = first_fault([
            (fault[0] != 0, fault[0], fault[1]),
            (~jnp.isfinite(loss), 1, 0),
            (~grads_ok & (precision != "fp16"), 2, 0),
            (grads_ok & ~_all_finite((params, opt_state)), 3, 0),
        ])
        ok = healthy & (fault[0] == 0)
        apply = ok & grads_ok
        loss_scale = state.loss_scale
        if precision == "fp16":
            loss_scale = _select(ok, update_loss_scale(loss_scale, ~grads_ok), loss_scale)
        new = TrainState(
            params=_select(apply, params, state.params),
            rest=_select(ok, new_rest, state.rest),
            opt_state=_select(apply, opt_state, state.opt_state),
            step=state.step + 1,
            bad_step=jnp.where(healthy & ~ok, state.step, state.bad_step),
            fault=jnp.where(healthy & ~ok, fault, state.fault),
            loss_scale=loss_scale,
        )
        stats = {"grad_norm": optax.tree.norm(grads)}
        if has_one_lr(new.opt_state):
            stats["lr"] = get_lr(new.opt_state)
        if precision == "fp16":
            stats["loss_scale"] = new.loss_scale.scale
        # copies: an output that is the (donated) state's own buffer dies with the next step
        stats = {k: jnp.array(v, jnp.float32, copy=True) for k, v in stats.items()}
        return new, loss, batch_sums(loss, aux, batch_size(batch), ok), stats

    step.checks = registry
    return step


def eval_step_fn(graphdef: Any, loss_fn: Callable, metrics: Mapping[str, Callable] | None = None,
                 *, precision: str = "fp32") -> Callable:
    """The pure eval step ``(params, rest, batch) -> (sums, fault)`` (not jitted): the batch's
    sums of the loss, the aux entries and ``metrics[name](model, batch)`` (see ``batch_sums``),
    and the ``[code, value]`` of a failed check (codes index the function's ``checks``)."""
    dtype = _COMPUTE_DTYPE[check_precision(precision)]
    metrics = dict(metrics or {})
    registry: list[Check] = []

    def step(params: Any, rest: Any, batch: Any) -> tuple[dict, jax.Array]:
        model = nnx.merge(graphdef, _cast_floats(params, dtype), rest)
        b = _cast_floats(batch, dtype)
        with collect(registry) as checks:
            loss, aux = split_loss(loss_fn(model, b))
            for name, fn in metrics.items():
                aux[name] = fn(model, b)
        return batch_sums(loss, aux, batch_size(batch), jnp.asarray(True)), checks.fault()

    step.checks = registry
    return step


class CompiledStep:
    """A jitted step that warns once for each batch shape it has not been compiled for.

    A new shape (typically the short last batch of an epoch) costs one more compilation; batches
    are never padded, which would change the loss.
    """

    def __init__(self, fn: Callable, *, batch_argnum: int, donate_argnums: tuple[int, ...] = (),
                 name: str = "train step", **jit_kwargs: Any):
        self._fn = jax.jit(fn, donate_argnums=donate_argnums, **jit_kwargs)
        self.checks: list[Check] = getattr(fn, "checks", [])  # what its fault codes index
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
        self.checks = other.checks
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
    """Jitted ``(state, batch) -> (state, loss, sums, stats)``; the state is donated."""

    def build():
        fn = train_step_fn(graphdef, loss_fn, optimizer, grad=grad, precision=precision)
        return CompiledStep(fn, batch_argnum=1, donate_argnums=(0,), **jit_kwargs)

    key = ("train", graphdef, loss_fn, optimizer, grad, precision,
           tuple(sorted(jit_kwargs.items())))
    return _cached(key, build)


def make_eval_step(graphdef: Any, loss_fn: Callable, metrics: Mapping[str, Callable] | None = None,
                   *, precision: str = "fp32", **jit_kwargs: Any) -> CompiledStep:
    """Jitted ``(params, rest, batch) -> (sums, fault)``."""

    def build():
        fn = eval_step_fn(graphdef, loss_fn, metrics, precision=precision)
        return CompiledStep(fn, batch_argnum=2, name="eval step", **jit_kwargs)

    key = ("eval", graphdef, loss_fn, tuple(sorted((metrics or {}).items())), precision,
           tuple(sorted(jit_kwargs.items())))
    return _cached(key, build)
