"""The closure tape against jax.grad and PyTorch autograd, on one model definition.

Cases: the slides' 784-100-50-20-1 ReLU MLP (batch 256; --quick: 64), jitted and eager, and a
Transformer encoder layer (B=16, T=128, D=256, 8 heads, FF 1024; --quick: B=4, T=32), jitted;
forward mode (tape.jvp vs jax.jvp on the MLP) and forward vs reverse mode on a wide-input and a
wide-output Jacobian; the cost of module hooks on a jitted TransformerEncoder training gradient
(no hook ever registered, a hook registered then removed, an identity forward hook on every layer).
Every model is written once with funcdl.tape functions; jax.grad differentiates it as plain jnp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Row, time_fn
from funcdl import tape as T

SIZES = (784, 100, 50, 20, 1)


def timed(fns: dict[str, object], repeat: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per call of each fn: the best of ``rounds`` medians, the fns taking turns, so a
    burst of load on this shared machine does not land on one side of a comparison only."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], time_fn(fn, repeat=repeat))
    return best


def init_mlp(seed: int = 0) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(jax.random.key(seed), len(SIZES) - 1)
    return [{"W": jax.random.normal(k, (n_out, n_in)) * np.sqrt(2.0 / n_in),
             "b": jnp.zeros((n_out,))} for k, n_in, n_out in zip(keys, SIZES[:-1], SIZES[1:])]


def mlp_loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = T.relu(T.linear(h, layer["W"], layer["b"]))
    logits = T.squeeze(T.linear(h, params[-1]["W"], params[-1]["b"]), -1)
    return T.binary_cross_entropy_with_logits(logits, y)


def torch_mlp_step(params, x, y):
    """The same MLP in PyTorch eager mode: forward and autograd backward."""
    import torch
    import torch.nn.functional as F

    h = x
    for w, b in params[:-1]:
        h = torch.relu(F.linear(h, w, b))
    logits = F.linear(h, *params[-1]).squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    return torch.autograd.grad(loss, [p for layer in params for p in layer])


def mlp_rows(batch: int, repeat: int) -> list[Row]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, SIZES[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=batch), jnp.float32)
    params = init_mlp()
    case_jit = f"MLP 784-100-50-20-1, batch {batch}, grad, jitted"
    case_eager = f"MLP 784-100-50-20-1, batch {batch}, grad, eager"
    tape_jit, jax_jit = jax.jit(T.grad(mlp_loss)), jax.jit(jax.grad(mlp_loss))
    tape_eager, jax_eager = T.grad(mlp_loss), jax.grad(mlp_loss)
    t = timed({"tape_jit": lambda: tape_jit(params, x, y),
               "jax_jit": lambda: jax_jit(params, x, y)}, repeat)
    t |= timed({"tape_eager": lambda: tape_eager(params, x, y),
                "jax_eager": lambda: jax_eager(params, x, y)}, repeat)
    rows = [
        Row("tape.mlp", case_jit, "funcdl tape.grad (jit)", t["tape_jit"]),
        Row("tape.mlp", case_jit, "jax.grad (jit)", t["jax_jit"]),
        Row("tape.mlp", case_eager, "funcdl tape.grad (eager)", t["tape_eager"]),
        Row("tape.mlp", case_eager, "jax.grad (eager)", t["jax_eager"]),
    ]
    try:
        import torch
    except ImportError:  # pragma: no cover
        return rows
    tparams = [(torch.tensor(np.asarray(p["W"]), requires_grad=True),
                torch.tensor(np.asarray(p["b"]), requires_grad=True)) for p in params]
    tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
    threads = torch.get_num_threads()

    def torch_one_thread():
        torch.set_num_threads(1)  # OpenMP spin-waits badly on a busy shared machine
        try:
            return torch_mlp_step(tparams, tx, ty)
        finally:
            torch.set_num_threads(threads)

    t = timed({"tape_eager": lambda: tape_eager(params, x, y),
               "torch": lambda: torch_mlp_step(tparams, tx, ty),
               "torch1": torch_one_thread}, repeat)
    rows[2].seconds = min(rows[2].seconds, t["tape_eager"])
    rows.append(Row("tape.mlp", case_eager, f"torch autograd (eager, {threads} threads)",
                    t["torch"]))
    rows.append(Row("tape.mlp", case_eager, "torch autograd (eager, 1 thread)", t["torch1"]))
    return rows


def encoder_rows(batch: int, length: int, repeat: int) -> list[Row]:
    try:
        from flax import nnx

        from funcdl.layers import TransformerEncoderLayer
    except ImportError:  # pragma: no cover - the layers package is optional here
        return []
    dim, heads, ff = 256, 8, 1024
    layer = TransformerEncoderLayer(dim, heads, ff, dropout=0.0, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (batch, length, dim))

    def loss(params, x):
        out = nnx.merge(graphdef, params)(x)
        return T.mean(T.mul(out, out))

    case = f"encoder layer B={batch} T={length} D={dim} h={heads} ff={ff}, grad, jitted"
    tape_jit, jax_jit = jax.jit(T.grad(loss)), jax.jit(jax.grad(loss))
    t = timed({"tape": lambda: tape_jit(params, x), "jax": lambda: jax_jit(params, x)},
              repeat)
    return [Row("tape.encoder", case, "funcdl tape.grad (jit)", t["tape"]),
            Row("tape.encoder", case, "jax.grad (jit)", t["jax"])]


def hook_rows(batch: int, length: int, repeat: int) -> list[Row]:
    """A 2-layer TransformerEncoder's jitted gradient with and without forward hooks. Hooks run
    while the step is traced, so an inactive hook system (none registered, or one removed) must
    compile to the same program, and an identity hook costs nothing at run time either."""
    from flax import nnx

    from funcdl.layers import TransformerEncoder

    dim, heads, ff = 128, 4, 512
    x = jax.random.normal(jax.random.key(1), (batch, length, dim))

    def gradient(setup):
        encoder = TransformerEncoder(2, dim, heads, ff, dropout=0.0, rngs=nnx.Rngs(0))
        setup(encoder.layers)
        graphdef, params, rest = nnx.split(encoder, nnx.Param, ...)
        grad = jax.jit(jax.grad(lambda p: T.mean(nnx.merge(graphdef, p, rest)(x) ** 2)))
        return lambda: grad(params)

    def removed(stack):
        stack.register_forward_hook(lambda module, args, out: out).remove()

    def identity(stack):
        stack.register_forward_hook(lambda module, args, out: out)
        stack.attention.register_forward_pre_hook(lambda module, args: args)

    t = timed({"none": gradient(lambda stack: None), "removed": gradient(removed),
               "identity": gradient(identity)}, repeat)
    case = f"TransformerEncoder 2 layers B={batch} T={length} D={dim}, jax.grad, jitted"
    return [Row("tape.hooks", case, "funcdl, no hook registered", t["none"]),
            Row("tape.hooks", case, "a forward hook registered, then removed", t["removed"]),
            Row("tape.hooks", case, "identity forward (pre-)hooks on every layer",
                t["identity"])]


def mlp_logits(params, x):
    h = x
    for layer in params[:-1]:
        h = T.relu(T.linear(h, layer["W"], layer["b"]))
    return T.linear(h, params[-1]["W"], params[-1]["b"])


def jvp_rows(batch: int, repeat: int) -> list[Row]:
    """Forward mode on the MLP: the logits' directional derivative along a parameter direction,
    tape.jvp against jax.jvp, jitted and eager."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(batch, SIZES[0])), jnp.float32)
    params = init_mlp()
    direction = jax.tree.map(lambda p: jnp.ones_like(p) * 1e-2, params)
    case_jit = f"MLP 784-100-50-20-1, batch {batch}, jvp along the parameters, jitted"
    case_eager = f"MLP 784-100-50-20-1, batch {batch}, jvp along the parameters, eager"

    def ours(params, t):
        return T.jvp(lambda p: mlp_logits(p, x), (params,), (t,))

    def ref(params, t):
        return jax.jvp(lambda p: mlp_logits(p, x), (params,), (t,))

    ours_jit, ref_jit = jax.jit(ours), jax.jit(ref)
    t = timed({"ours_jit": lambda: ours_jit(params, direction),
               "ref_jit": lambda: ref_jit(params, direction)}, repeat)
    t |= timed({"ours": lambda: ours(params, direction),
                "ref": lambda: ref(params, direction)}, repeat)
    return [Row("tape.jvp", case_jit, "funcdl tape.jvp (jit)", t["ours_jit"]),
            Row("tape.jvp", case_jit, "jax.jvp (jit)", t["ref_jit"]),
            Row("tape.jvp", case_eager, "funcdl tape.jvp (eager)", t["ours"]),
            Row("tape.jvp", case_eager, "jax.jvp (eager)", t["ref"])]


def mode_rows(wide: int, narrow: int, repeat: int) -> list[Row]:
    """Forward against reverse mode for a full Jacobian: forward mode costs one pass per input,
    reverse one per output, so each wins on its own shape. The ratio is reverse / forward time:
    above 1 forward mode wins (few inputs), below 1 reverse mode wins (few outputs)."""
    rng = np.random.default_rng(2)
    rows = []
    for n_in, n_out in ((wide, narrow), (narrow, wide)):
        w = jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), jnp.float32)
        x = jnp.asarray(rng.normal(size=(n_in,)), jnp.float32)

        def f(x, w=w):
            return T.tanh(T.matmul(w, T.tanh(x)))

        fwd, rev = jax.jit(T.jacfwd(f)), jax.jit(T.jacrev(f))
        t = timed({"fwd": lambda fwd=fwd, x=x: fwd(x), "rev": lambda rev=rev, x=x: rev(x)},
                  repeat)
        case = f"Jacobian of tanh(W tanh(x)), {n_in} inputs -> {n_out} outputs, jitted"
        rows += [Row("tape.modes", case, "funcdl tape.jacfwd (forward mode)", t["fwd"]),
                 Row("tape.modes", case, "tape.jacrev (reverse mode)", t["rev"])]
    return rows


def run(quick: bool = False) -> list[Row]:
    repeat = 3 if quick else 7
    rows = mlp_rows(64 if quick else 256, repeat)
    rows += encoder_rows(4 if quick else 16, 32 if quick else 128, repeat)
    rows += jvp_rows(64 if quick else 256, repeat)
    rows += mode_rows(256 if quick else 1024, 4, repeat)
    rows += hook_rows(4 if quick else 16, 32 if quick else 128, repeat)
    return rows
