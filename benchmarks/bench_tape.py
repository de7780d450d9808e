"""The closure tape against jax.grad and PyTorch autograd, on one model definition.

Cases: the slides' 784-100-50-20-1 ReLU MLP (batch 256; --quick: 64), jitted and eager, and a
Transformer encoder layer (B=16, T=128, D=256, 8 heads, FF 1024; --quick: B=4, T=32), jitted.
Every model is written once with funcdl.tape functions; jax.grad differentiates it as plain jnp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Row, time_fn
from funcdl import tape as T

SIZES = (784, 100, 50, 20, 1)


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
    rows = [
        Row("tape.mlp", case_jit, "funcdl tape.grad (jit)",
            time_fn(lambda: tape_jit(params, x, y), repeat=repeat)),
        Row("tape.mlp", case_jit, "jax.grad (jit)",
            time_fn(lambda: jax_jit(params, x, y), repeat=repeat)),
        Row("tape.mlp", case_eager, "funcdl tape.grad (eager)",
            time_fn(lambda: tape_eager(params, x, y), repeat=repeat)),
        Row("tape.mlp", case_eager, "jax.grad (eager)",
            time_fn(lambda: jax_eager(params, x, y), repeat=repeat)),
    ]
    try:
        import torch
    except ImportError:  # pragma: no cover
        return rows
    tparams = [(torch.tensor(np.asarray(p["W"]), requires_grad=True),
                torch.tensor(np.asarray(p["b"]), requires_grad=True)) for p in params]
    tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
    rows.append(Row("tape.mlp", case_eager, "torch autograd (eager)",
                    time_fn(lambda: torch_mlp_step(tparams, tx, ty), repeat=repeat),
                    note=f"{torch.get_num_threads()} torch threads"))
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
    return [
        Row("tape.encoder", case, "funcdl tape.grad (jit)",
            time_fn(lambda: tape_jit(params, x), repeat=repeat)),
        Row("tape.encoder", case, "jax.grad (jit)",
            time_fn(lambda: jax_jit(params, x), repeat=repeat)),
    ]


def run(quick: bool = False) -> list[Row]:
    repeat = 5 if quick else 15
    rows = mlp_rows(64 if quick else 256, repeat)
    rows += encoder_rows(4 if quick else 16, 32 if quick else 128, repeat)
    return rows
