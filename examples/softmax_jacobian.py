"""Seed 004's from-scratch Softmax backward (a Jacobian per sample) against the tape's rule.

The seed builds, for every sample, the C x C Jacobian J[m, n] = a_m (1[m == n] - a_n) of
softmax and multiplies it by the upstream gradient: O(C^2) work and memory per sample, in Python
loops. The Jacobian is symmetric, so that product is also the Jacobian-vector product the tape's
backward rule for ``softmax`` computes in O(C) without ever forming J:

    J g = a * (g - sum(a * g))        (funcdl.tape.softmax's rule; torch's SoftmaxBackward0)

This program runs the seed's class as written (numpy), the same Jacobian built without loops,
the tape's rule (eagerly and under jax.jit), jax.vjp and torch's autograd on one batch; shows J
for one sample (symmetric, rows summing to 0); checks that all the gradients agree; and times
each way. The figures are written to ``--out``/softmax_jacobian.json.

    python examples/softmax_jacobian.py            # N=256 samples, C=128 classes
    python examples/softmax_jacobian.py --smoke    # N=32, C=16
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from _common import parser, positive_int

from funcdl import tape


class Softmax:
    """Seed 004's class, as written there (forward, and backward by a Jacobian per sample)."""

    def forward(self, Z):
        expZ = np.exp(Z - np.max(Z, axis=1, keepdims=True))
        self.A = expZ / np.sum(expZ, axis=1, keepdims=True)
        return self.A

    def backward(self, dLdA):
        N = dLdA.shape[0]
        C = dLdA.shape[1]
        dLdZ = np.zeros_like(dLdA)
        for i in range(N):
            J = np.zeros((C, C))
            for m in range(C):
                for n in range(C):
                    if m == n:
                        J[m, n] = self.A[i, m] * (1 - self.A[i, m])
                    else:
                        J[m, n] = -self.A[i, m] * self.A[i, n]
            dLdZ[i, :] = np.dot(J, dLdA[i, :])
        return dLdZ


def jacobians(a: np.ndarray) -> np.ndarray:
    """Every sample's Jacobian at once, diag(a) - a a^T: (N, C, C), no Python loops."""
    return a[:, :, None] * (np.eye(a.shape[1]) - a[:, None, :])


def by_jacobians(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    a = Softmax().forward(z)
    return np.einsum("nij,nj->ni", jacobians(a), g)


def by_seed(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    s = Softmax()
    s.forward(z)
    return s.backward(g)


def by_tape(z: jax.Array, g: jax.Array) -> jax.Array:
    """dL/dz of L = sum(softmax(z) * g) on funcdl's tape: softmax's recorded rule, applied to
    the upstream gradient g."""
    return tape.grad(lambda z: tape.sum(tape.mul(tape.softmax(z, dim=1), g)))(z)


def by_torch(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    import torch

    zt = torch.tensor(z, requires_grad=True)
    torch.softmax(zt, dim=1).backward(torch.from_numpy(g))
    return zt.grad.numpy()


def timed(fn: Callable, args: tuple, rounds: int) -> tuple[np.ndarray, float]:
    """``fn(*args)`` and its best time in ms over ``rounds`` calls after a first (compiling)
    one."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out, np.float64), min(times)


def show_one_jacobian(a: np.ndarray, g: np.ndarray) -> None:
    j = jacobians(a[:1, :4] / a[:1, :4].sum())[0]  # 4 classes of sample 0, renormalised
    print("== one sample's Jacobian, 4 classes: J[m, n] = a_m (1[m == n] - a_n)")
    print("  a = " + np.array2string(a[0, :4] / a[0, :4].sum(), precision=4))
    for row in j:
        print("  [" + "  ".join(f"{v:+.4f}" for v in row) + "]")
    print(f"  symmetric: {np.allclose(j, j.T)};  each row sums to {np.abs(j.sum(1)).max():.1e} "
          "(softmax's outputs sum to 1 whatever z is)")
    rule = a[0, :4] / a[0, :4].sum() * (g[0, :4] - (a[0, :4] / a[0, :4].sum() * g[0, :4]).sum())
    print(f"  J g = {np.array2string(j @ g[0, :4], precision=4)}")
    print(f"  a * (g - sum(a g)) = {np.array2string(rule, precision=4)}  (the tape's rule)")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "softmax_jacobian")
    p.add_argument("--samples", type=positive_int, default=256, help="batch size N")
    p.add_argument("--classes", type=positive_int, default=128, help="classes C")
    args = p.parse_args(argv)
    n, c = (32, 16) if args.smoke else (args.samples, args.classes)
    rng = np.random.default_rng(args.seed)
    z = (rng.normal(size=(n, c)) * 2).astype(np.float32)
    g = rng.normal(size=(n, c)).astype(np.float32)
    show_one_jacobian(Softmax().forward(z.astype(np.float64)), g)

    zj, gj = jnp.asarray(z), jnp.asarray(g)
    jitted = jax.jit(by_tape)
    vjp = jax.jit(lambda z, g: jax.vjp(lambda z: jax.nn.softmax(z, axis=1), z)[1](g)[0])
    ways = {  # name -> (function, its arguments, timed calls after the first)
        "seed's Jacobian loop (numpy)": (by_seed, (z, g), 1),
        "all Jacobians at once (numpy)": (by_jacobians, (z, g), 3),
        "tape rule, eager": (by_tape, (zj, gj), 3),
        "tape rule, jax.jit": (jitted, (zj, gj), 3),
        "jax.vjp, jax.jit": (vjp, (zj, gj), 3),
    }
    reference = by_seed(z.astype(np.float64), g.astype(np.float64))  # float64: the yardstick
    print(f"\n== dL/dz for N={n} samples, C={c} classes: max |difference| from the seed's loop "
          "in float64; best time of 3 (the seed's: 1) after a first call")
    results = {}
    for name, (fn, fargs, rounds) in ways.items():
        out, ms = timed(fn, fargs, rounds)
        results[name] = {"max_abs_diff": float(np.abs(out - reference).max()), "ms": ms}
    torch_diff = float(np.abs(by_torch(z, g) - reference).max())
    seed_ms = results["seed's Jacobian loop (numpy)"]["ms"]
    for name, r in results.items():
        print(f"  {name:32s} diff {r['max_abs_diff']:.1e}   {r['ms']:9.3f} ms   "
              f"{seed_ms / r['ms']:8.0f}x the seed's speed")
    print(f"  {'torch autograd (SoftmaxBackward0)':32s} diff {torch_diff:.1e}")
    worst = max(r["max_abs_diff"] for r in results.values())
    assert worst < 1e-5 and torch_diff < 1e-5, "the ways disagree"
    print(f"\nall agree to {worst:.0e} (float32); the tape's rule never builds the {c}x{c} "
          f"Jacobian: {n * c * c:,} entries the seed fills one by one for {n * c:,} outputs")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "softmax_jacobian.json").write_text(json.dumps(
        {"samples": n, "classes": c, "torch_max_abs_diff": torch_diff, "ways": results},
        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
