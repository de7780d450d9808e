"""The slides' sigmoid neuron on funcdl's closure tape, with jax.grad's answer beside it.

``x = tensor(1.0, requires_grad=True); y = sigmoid(x); z = 2 * y; z.backward()``: the attributes
of each tensor before and after backward (data, grad, grad_fn, requires_grad, is_leaf), the
grad_fn graph that backward walks (MulBackward -> SigmoidBackward -> AccumulateGrad), the chain
rule worked by hand (dz/dy = 2, dy/dx = sigma(1)(1 - sigma(1)) = 0.1966, so x.grad = 0.39), and
the same derivative from ``jax.grad`` and from the functional ``funcdl.tape.grad``, eager and under
``jax.jit``. Then the chain rule accumulated the other way, forward mode (the slides' "Forward
Mode"): dual numbers carry dx/dx = 1 through y and z, as ``torch.autograd.forward_ad`` does. Last,
a 2-layer network's Jacobian both ways, with what each costs: forward mode takes one pass per
input, reverse mode one backward pass per output, so each wins on its own shape. The graph's
Graphviz source is written to ``--out``.

    python examples/autograd_walkthrough.py
"""

from __future__ import annotations

import math
import sys
import time

import jax
import numpy as np
from _common import parser

from funcdl import tape
from funcdl.tape import forward_ad


def attributes(name: str, t: tape.Tensor) -> str:
    grad = "None" if t.grad is None else f"{float(t.grad.data):.4f}"
    grad_fn = "None" if t.grad_fn is None else t.grad_fn.name()
    return (f"  {name}: data {float(t.data):.4f} | grad {grad} | grad_fn {grad_fn} | "
            f"requires_grad {t.requires_grad} | is_leaf {t.is_leaf}")


def neuron(x):
    """z = 2 * sigmoid(x), written once with funcdl.tape's polymorphic functions."""
    return tape.mul(2.0, tape.sigmoid(x))


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0], "autograd_walkthrough").parse_args(argv)

    print("== forward: x = tensor(1.0, requires_grad=True); y = sigmoid(x); z = 2 * y")
    x = tape.tensor(1.0, requires_grad=True)
    y = tape.sigmoid(x)
    z = 2 * y
    for name, t in (("x", x), ("y", y), ("z", z)):
        print(attributes(name, t))

    print("\n== the graph backward will walk: z.grad_fn and its next_functions, down to x")
    print(tape.graph_text(z))
    print(f"  z.grad_fn.next_functions = {z.grad_fn.next_functions}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "graph.dot").write_text(tape.graph_dot(z))
    print(f"  (Graphviz source in {args.out / 'graph.dot'})")

    print("\n== z.backward()")
    z.backward()
    for name, t in (("x", x), ("y", y), ("z", z)):
        print(attributes(name, t))
    print("  (y and z are not leaves: like PyTorch, their .grad is not kept)")

    s = 1 / (1 + math.exp(-1.0))
    print("\n== the chain rule by hand, as on the slides")
    print(f"  dz/dy = 2;  dy/dx = sigma(1) * (1 - sigma(1)) = {s:.4f} * {1 - s:.4f} = "
          f"{s * (1 - s):.4f}")
    print(f"  x.grad = dz/dy * dy/dx = 2 * {s * (1 - s):.4f} = {2 * s * (1 - s):.4f}  "
          f"(slides: 0.39)")

    print("\n== the same derivative, three more ways")
    by_jax = float(jax.grad(lambda v: 2.0 * jax.nn.sigmoid(v))(1.0))
    functional = float(tape.grad(neuron)(1.0))
    jitted = float(jax.jit(tape.grad(neuron))(1.0))
    print(f"  funcdl tape, z.backward():        {float(x.grad.data):.6f}")
    print(f"  funcdl.tape.grad(neuron)(1.0):    {functional:.6f}")
    print(f"  jax.jit(funcdl.tape.grad(...)):   {jitted:.6f}")
    print(f"  jax.grad(2 * jax.nn.sigmoid):     {by_jax:.6f}")
    np.testing.assert_allclose([float(x.grad.data), functional, jitted], by_jax, rtol=1e-6)
    print("  all four agree to float32 precision")
    forward_mode_neuron()
    modes_compared(small=args.smoke, seed=args.seed)
    return 0


def forward_mode_neuron() -> None:
    """The same derivative accumulated from x outwards: each op pushes the tangent along."""
    print("\n== forward mode: the chain rule from x outwards, with dual numbers")
    with forward_ad.dual_level():
        x = forward_ad.make_dual(tape.tensor(1.0), tape.tensor(1.0))  # dx/dx = 1
        y = tape.sigmoid(x)
        z = 2 * y
        for name, t in (("x", x), ("y", y), ("z", z)):
            primal, tangent = forward_ad.unpack_dual(t)
            print(f"  {name} = {float(primal):.4f}, d{name}/dx = {float(tangent):.4f}")
        slope = float(forward_ad.unpack_dual(z).tangent)
    print(f"  y carries dy/dx = sigma(1)(1 - sigma(1)); z multiplies it by dz/dy = 2: "
          f"dz/dx = {slope:.4f}, the same 0.39 that backward found from z inwards")


def layer_net(n_in: int, hidden: int, n_out: int, seed: int):
    """A 2-layer tanh network R^n_in -> R^n_out, as a function of its input."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(hidden, n_in)).astype(np.float32) / np.sqrt(n_in)
    w2 = rng.normal(size=(n_out, hidden)).astype(np.float32) / np.sqrt(hidden)
    return lambda x: tape.matmul(w2, tape.tanh(tape.matmul(w1, x)))


def best_ms(fn, x, rounds: int = 5) -> float:
    jax.block_until_ready(fn(x))  # compile
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def modes_compared(small: bool, seed: int) -> None:
    """The Jacobian of a 2-layer network by forward and by reverse mode, on a wide-input and a
    wide-output network: both equal jax.jacobian's; the cheaper mode is the one with fewer
    passes (inputs for forward, outputs for reverse)."""
    wide, narrow, hidden = (64, 2, 32) if small else (1024, 4, 512)
    print(f"\n== a 2-layer network's Jacobian both ways (hidden {hidden}; best of 5, jitted)")
    print(f"  {'inputs -> outputs':>18}  {'forward passes':>14}  {'backward passes':>15}  "
          f"{'jacfwd ms':>9}  {'jacrev ms':>9}  cheaper")
    for n_in, n_out in ((wide, narrow), (narrow, wide)):
        f = layer_net(n_in, hidden, n_out, seed)
        x = np.random.default_rng(seed + 1).normal(size=n_in).astype(np.float32)
        fwd, rev = jax.jit(tape.jacfwd(f)), jax.jit(tape.jacrev(f))
        np.testing.assert_allclose(np.asarray(fwd(x)), np.asarray(jax.jacobian(f)(x)),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(rev(x)), np.asarray(jax.jacobian(f)(x)),
                                   rtol=1e-4, atol=1e-5)
        t_fwd, t_rev = best_ms(fwd, x), best_ms(rev, x)
        print(f"  {f'{n_in} -> {n_out}':>18}  {n_in:>14}  {n_out:>15}  {t_fwd:9.3f}  "
              f"{t_rev:9.3f}  {'forward' if t_fwd < t_rev else 'reverse'}")
    print("  (both Jacobians equal jax.jacobian's; the passes are batched by vmap, so the time "
          "follows the work, not the number of Python calls)")


if __name__ == "__main__":
    sys.exit(main())
