"""funcdl.tape: the closure tape, a reverse-mode autodiff engine that matches jax.grad.

The differentiable functions are polymorphic: plain arrays in, plain ``jnp`` out (so jax.grad,
jit and vmap see ordinary JAX); a `Tensor` among the inputs records a node with its backward
closure. `grad` / `value_and_grad` run a function on a fresh tape; `Tensor.backward` is PyTorch's.
Forward mode: `jvp`, `jacfwd`, `hessian` (forward over reverse) and torch's dual-tensor API,
`forward_ad`; every op carries a tangent rule beside its backward rules.

The functions live in one module per family (elementwise, activations, reductions, shape,
indexing, linalg, normalization, dropout, the losses, convolution, pooling, windows, recurrence,
ctc: the import list below), each declared once with `registry.op`; this package exports exactly
the declared ops, plus the engine below. A new family is one more name in that list.
"""

from funcdl.ops.shapes import broadcast_shapes
from funcdl.tape import (  # importing a family declares its ops
    activations,
    convolution,
    ctc,
    dropout,
    elementwise,
    forward_ad,
    indexing,
    linalg,
    losses,
    normalization,
    operators,
    pooling,
    probability_losses,
    ranking_losses,
    recurrence,
    reductions,
    registry,
    regression_losses,
    shape,
    windows,
)
from funcdl.tape.autograd import Tape, backward, grad, value_and_grad
from funcdl.tape.function import Function, FunctionCtx
from funcdl.tape.functional import hessian, jacfwd, jacrev, jvp
from funcdl.tape.gradcheck import GradcheckError, gradcheck
from funcdl.tape.graph import graph_dot, graph_text, render
from funcdl.tape.tensor import (
    AccumulateGrad,
    Node,
    Tensor,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
    tensor,
)

operators.install()
globals().update(registry.public())

ENGINE = [
    "AccumulateGrad", "backward", "broadcast_shapes", "detect_anomaly", "enable_grad",
    "forward_ad", "Function", "FunctionCtx", "grad", "gradcheck", "GradcheckError", "graph_dot",
    "graph_text", "hessian", "is_grad_enabled", "jacfwd", "jacrev", "jvp", "no_grad", "Node",
    "render", "Tape", "Tensor", "tensor", "value_and_grad",
]
__all__ = sorted(ENGINE + list(registry.public()), key=str.lower)
