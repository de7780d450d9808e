"""Convolutions, a CNN training step and windowed sums against their peers, in one process.

* ``conv.conv2d``: forward and backward (input and weight gradients) of a 3x3 convolution, batch
  32, 32 -> 64 channels, 32x32, padding 1: funcdl.tape's gradient (the base row), jax.grad of the
  same ``funcdl.tape.conv2d``, jax.grad of ``lax.conv_general_dilated`` on NCHW arrays, and
  ``torch.nn.functional.conv2d`` with autograd. All jitted but torch.
* ``conv.cnn_step``: examples/cnn_digits.py's CNN, one AdamW training step of fit (batch 32 of
  1x8x8 digits) by jax.grad and by the tape (and, where JAX has several CPU devices, by jax.grad
  with the batch split over them as ``fit(mesh="auto")`` splits it), against the same model and
  weights in torch (``layers.to_torch``) with ``torch.optim.AdamW``.
* ``conv.windowed_sum``: sums over ``ops.unfold`` windows (one ``lax.reduce_window`` over the
  storage) against torch's ``unfold(...).sum(...)`` on the same views: 1-D windows of 8 summed
  over the window (dim -1) and over the positions (dim 0, the case that ran at 0.03x torch before
  windows lowered to reduce_window), and the 3x3 windows of a 16x32x64x64 image.

Each time is the best of a few medians taken in interleaved rounds (the machine is shared); torch
uses every core (``torch.set_num_threads(os.cpu_count())``), as XLA's CPU client does.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from benchmarks.harness import (
    Row,
    cpu_devices,
    data_parallel,
    interleaved,
    torch_device,
    torch_one_thread,
)
from funcdl import layers as L
from funcdl import ops, optim
from funcdl import tape as T
from funcdl.train.parallel import Placement, make_mesh
from funcdl.train.steps import init_state, make_train_step

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _best(fns: dict, rounds: int) -> dict[str, float]:
    """``harness.interleaved`` over ``fns``, each torch fn also on one thread (a contention
    check: on a shared, oversubscribed machine torch's OpenMP pool loses far more than XLA's)."""
    fns = dict(fns)
    for name, fn in list(fns.items()):
        if name.startswith("torch"):
            fns[name.split(" (")[0] + ", 1 thread (contention check)"] = torch_one_thread(fn)
    return interleaved(fns, rounds, repeat=3)


def _conv2d(quick: bool, rounds: int) -> list[Row]:
    b, c_in, c_out, n = (8, 16, 32, 16) if quick else (32, 32, 64, 32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, c_in, n, n), np.float32))
    w = jnp.asarray(rng.standard_normal((c_out, c_in, 3, 3), np.float32) * 0.1)
    g = jnp.asarray(rng.standard_normal((b, c_out, n, n), np.float32))

    def ours(x, w):
        return T.sum(T.mul(T.conv2d(x, w, padding=1), g))

    def reference(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return jnp.sum(y * g)

    tape_fn = jax.jit(T.grad(ours, (0, 1)))
    jax_fn = jax.jit(jax.grad(ours, (0, 1)))
    lax_fn = jax.jit(jax.grad(reference, (0, 1)))
    for got in (tape_fn(x, w), jax_fn(x, w)):  # the same gradients before timing them
        for a, r in zip(got, lax_fn(x, w)):
            np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3)
    dev = torch_device()
    tx = torch.from_numpy(np.array(x)).to(dev).requires_grad_()
    tw = torch.from_numpy(np.array(w)).to(dev).requires_grad_()
    tg = torch.from_numpy(np.array(g)).to(dev)

    def torch_fn():
        y = torch.nn.functional.conv2d(tx, tw, padding=1)
        return torch.autograd.grad(y, (tx, tw), tg)

    times = _best({"funcdl.tape (jit)": lambda: tape_fn(x, w),
                   "jax.grad of funcdl.tape.conv2d (jit)": lambda: jax_fn(x, w),
                   "jax.grad of lax.conv_general_dilated, NCHW (jit)": lambda: lax_fn(x, w),
                   "torch.nn.functional.conv2d + autograd": torch_fn}, rounds)
    flops = 3 * 2 * b * c_out * c_in * 9 * n * n  # forward, input and weight gradients
    case = f"forward+backward B={b} {c_in}->{c_out} {n}x{n} 3x3 pad 1"
    return [Row("conv.conv2d", case, impl, sec, flops / sec / 1e9, "GFLOP/s")
            for impl, sec in times.items()]


def _cnn_step(quick: bool, rounds: int) -> list[Row]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from cnn_digits import build_model, loss_fn
    finally:
        sys.path.remove(str(EXAMPLES))
    rng = np.random.default_rng(0)
    batch = (rng.random((32, 1, 8, 8), np.float32), rng.integers(0, 10, 32).astype(np.int32))
    fns = {}
    n = cpu_devices()
    split = f"same step, batch split over {n} CPU devices"
    for grad, name in (("jax", "funcdl fit step, jax.grad (jit)"),
                       ("tape", "same step, tape gradients"), ("jax", split)):
        if name == split and (n == 1 or len(batch[0]) % n):
            continue
        model = build_model(0)
        tx = optim.adamw(2e-3)
        graphdef, state = init_state(model, tx)
        jit_kwargs = Placement(make_mesh("auto")).jit_kwargs if name == split else {}
        step = make_train_step(graphdef, loss_fn, tx, grad=grad, **jit_kwargs)
        args = data_parallel(state, batch) if name == split else (state, batch)
        holder = list(args)

        def run(step=step, holder=holder):
            holder[0], loss, _, _ = step(holder[0], holder[1])
            return loss

        fns[name] = run
    twin = L.to_torch(build_model(0)).to(torch_device())
    opt = torch.optim.AdamW(twin.parameters(), lr=2e-3, weight_decay=0.01)
    tb = tuple(torch.from_numpy(a).to(torch_device()) for a in batch)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(twin(tb[0]), tb[1].long())
        loss.backward()
        opt.step()
        return loss

    fns["torch (to_torch of the same model) + AdamW"] = torch_step
    times = _best(fns, rounds)
    return [Row("conv.cnn_step", "cnn_digits train step, batch 32 of 1x8x8", impl, sec,
                32 / sec, "samples/s") for impl, sec in times.items()]


def _windows(quick: bool) -> list[tuple]:
    """(case, funcdl view over the storage, torch view, reduced dims, logical bytes)."""
    rng = np.random.default_rng(1)
    m = 2**18 if quick else 2**21
    flat = rng.standard_normal(m + 7).astype(np.float32)
    t = torch.from_numpy(flat)
    image = rng.standard_normal((4, 8, 32, 32) if quick else (16, 32, 64, 64)).astype(np.float32)
    ti = torch.from_numpy(image)
    return [
        (f"{m}x8 sliding windows, sum over dim -1", flat, lambda s: ops.unfold(s, 0, 8, 1),
         t.unfold(0, 8, 1), (-1,)),
        (f"{m}x8 sliding windows, sum over dim 0", flat, lambda s: ops.unfold(s, 0, 8, 1),
         t.unfold(0, 8, 1), (0,)),
        (f"{'x'.join(map(str, image.shape))} 3x3 windows, sum over the window", image,
         lambda s: ops.unfold(ops.unfold(s, 2, 3, 1), 3, 3, 1), ti.unfold(2, 3, 1).unfold(3, 3, 1),
         (-2, -1)),
    ]


def _windowed_sums(quick: bool, rounds: int) -> list[Row]:
    rows = []
    for case, data, view, tview, dims in _windows(quick):
        fn = jax.jit(lambda a, view=view, dims=dims: ops.sum(view(ops.from_array(a)), dims))
        storage = jnp.asarray(data)
        np.testing.assert_allclose(fn(storage), tview.sum(dims).numpy(), rtol=1e-3, atol=1e-3)
        times = _best({"funcdl ops.sum over ops.unfold (jit)": lambda f=fn, s=storage: f(s),
                       "torch unfold(...).sum (view)": lambda v=tview, d=dims: v.sum(d)}, rounds)
        gb = tview.numel() * 4 / 1e9
        rows += [Row("conv.windowed_sum", case, impl, sec, gb / sec, "GB/s")
                 for impl, sec in times.items()]
    return rows


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(os.cpu_count() or 1)
    rounds = 2 if quick else 5
    return _conv2d(quick, rounds) + _cnn_step(quick, rounds) + _windowed_sums(quick, rounds)

