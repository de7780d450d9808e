"""One encoder classifier trained twice, by jax.grad and by funcdl's tape, step for step.

The model and data are ``sequence_classifier.py``'s (the course notebook's TransformerClassifier
on random token sequences with a key-padding mask). Both runs start from the same parameters, see
the same batches and use the same jitted AdamW step; only the autodiff engine differs: ``jax.grad``
(``grad="jax"``) or ``funcdl.tape.value_and_grad`` (``grad="tape"``), which records the layers'
``propagate`` closures while JAX traces, so XLA compiles the tape's backward pass too. Each step
prints both losses, the max difference between the two runs' gradients and parameters, and both
step times; the summary gives the median step times and their ratio.

    python examples/tape_vs_jax.py            # ~30 seconds on 2 CPU cores
    python examples/tape_vs_jax.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import jax
import optax
from _common import parser, positive_int
from flax import nnx
from sequence_classifier import build_model, loss_fn, make_sequences

from funcdl import optim, tape
from funcdl.check import max_abs_diff
from funcdl.data import ArrayDataset, DataLoader

ENGINES: dict[str, Callable] = {"jax": jax.value_and_grad, "tape": tape.value_and_grad}


def make_step(graphdef, rest, optimizer: optax.GradientTransformation, engine: str) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, loss, grads)``, jitted."""
    value_and_grad = ENGINES[engine]

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            return loss_fn(nnx.merge(graphdef, p, rest), batch)

        value, grads = value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads

    return step


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "tape_vs_jax")
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-len", type=positive_int, default=128)
    p.add_argument("--dim", type=positive_int, default=32)
    p.add_argument("--heads", type=positive_int, default=2)
    p.add_argument("--layers", type=positive_int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.max_len, args.dim, args.layers = 3, 8, 16, 16, 1

    data = make_sequences(args.steps * args.batch_size, args.max_len, args.seed)
    loader = DataLoader(ArrayDataset(*data), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed, drop_last=True)
    model = build_model(args, args.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optim.adamw(1e-3)
    runs = {e: {"params": params, "opt_state": optimizer.init(params), "ms": []} for e in ENGINES}
    steps = {e: make_step(graphdef, rest, optimizer, e) for e in ENGINES}
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"TransformerClassifier: {args.layers} layers, dim {args.dim}, {n_params:,} parameters "
          f"in {len(jax.tree.leaves(params))} arrays; batches of {args.batch_size} x "
          f"{args.max_len} tokens")
    print(f"{'step':>4}  {'loss (jax)':>10}  {'loss (tape)':>11}  {'max|grad diff|':>14}  "
          f"{'max|param diff|':>15}  {'jax ms':>7}  {'tape ms':>7}")
    worst = 0.0
    for i, batch in enumerate(loader):
        out = {}
        for engine, run in runs.items():
            t0 = time.perf_counter()
            res = jax.block_until_ready(steps[engine](run["params"], run["opt_state"], batch))
            run["ms"].append((time.perf_counter() - t0) * 1e3)  # step 1 includes compilation
            run["params"], run["opt_state"] = res[0], res[1]
            out[engine] = res
        grad_diff = max_abs_diff(out["jax"][3], out["tape"][3])
        worst = max(worst, grad_diff)
        param_diff = max_abs_diff(runs["jax"]["params"], runs["tape"]["params"])
        print(f"{i + 1:>4}  {float(out['jax'][2]):10.5f}  {float(out['tape'][2]):11.5f}  "
              f"{grad_diff:14.2e}  {param_diff:15.2e}  {runs['jax']['ms'][-1]:7.1f}  "
              f"{runs['tape']['ms'][-1]:7.1f}")

    later = {e: r["ms"][1:] or r["ms"] for e, r in runs.items()}
    med = {e: statistics.median(v) for e, v in later.items()}
    print(f"\nfirst step (compilation included): jax {runs['jax']['ms'][0]:.0f} ms, "
          f"tape {runs['tape']['ms'][0]:.0f} ms")
    print(f"median step after that: jax.grad {med['jax']:.1f} ms, tape {med['tape']:.1f} ms "
          f"(tape / jax = {med['tape'] / med['jax']:.2f})")
    print(f"largest gradient difference over {len(later['jax']) + 1} steps: {worst:.2e}; "
          f"final parameters differ by at most "
          f"{max_abs_diff(runs['jax']['params'], runs['tape']['params']):.2e}")
    print("(AdamW divides by sqrt(v): where a gradient is ~0, a 1e-8 difference can move a "
          "parameter by up to lr, so parameters drift apart faster than gradients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
