"""The slides' sigmoid neuron on funcdl's closure tape, with jax.grad's answer beside it.

``x = tensor(1.0, requires_grad=True); y = sigmoid(x); z = 2 * y; z.backward()``: the attributes
of each tensor before and after backward (data, grad, grad_fn, requires_grad, is_leaf), the
grad_fn graph that backward walks (MulBackward -> SigmoidBackward -> AccumulateGrad), the chain
rule worked by hand (dz/dy = 2, dy/dx = sigma(1)(1 - sigma(1)) = 0.1966, so x.grad = 0.39), and
the same derivative from ``jax.grad`` and from the functional ``funcdl.tape.grad``, eager and under
``jax.jit``. The graph's Graphviz source is written to ``--out``.

    python examples/autograd_walkthrough.py
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from _common import parser

from funcdl import tape


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
