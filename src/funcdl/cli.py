"""The ``funcdl`` command: ``funcdl demo`` runs the main job; ``funcdl --help`` lists the rest.

Subcommands: ``demo`` (a compact masked-language-model run ending with its accuracy against
the most-frequent-token baseline and a tape-vs-jax.grad check of the trained model),
``examples`` (list or run the programs in ``examples/``), ``check`` (tape gradients against
``jax.grad`` for every differentiable function and layer), ``bench`` (the benchmark suite),
``explain`` (the slides' strided walk of a reduction) and ``info`` (versions and devices).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import pathlib
import runpy
import subprocess
import sys
from collections.abc import Callable

INTERRUPTED = 130  # the shell's exit status for a process stopped by Ctrl-C (128 + SIGINT)
DEMO_EXAMPLE = "mlm_pretrain"


# ----------------------------------------------------------------------------- repository layout
def repo_root() -> pathlib.Path | None:
    """The source checkout holding ``examples/`` and ``benchmarks/``, or None when not found.

    An editable install (``pip install -e .``) imports this file from ``<root>/src/funcdl/cli.py``;
    otherwise a checkout in the current directory is used.
    """
    here = pathlib.Path(__file__).resolve().parents[2]
    for root in (here, pathlib.Path.cwd()):
        if (root / "examples").is_dir() and (root / "benchmarks" / "__main__.py").is_file():
            return root
    return None


def _usage_error(command: str, message: str) -> int:
    """Report a bad argument the way argparse does (exit status 2)."""
    print(f"funcdl {command}: error: {message}", file=sys.stderr)
    return 2


def _need_root(what: str) -> pathlib.Path:
    root = repo_root()
    if root is None:
        raise SystemExit(
            f"funcdl: {what} lives in the source checkout (examples/, benchmarks/), which this "
            "installation does not include. Clone the repository and install it editable "
            "(pip install -e .), or run this command from the checkout's root directory."
        )
    return root


def example_paths(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{name: path}`` of the runnable examples (``examples/NAME.py``), sorted by name."""
    paths = sorted((root / "examples").glob("*.py"))
    return {p.stem: p for p in paths if not p.stem.startswith("_")}


def describe(path: pathlib.Path) -> str:
    """The first line of a module's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def run_example(path: pathlib.Path, args: list[str]) -> int:
    """Run ``examples/NAME.py`` in this process as ``python NAME.py ARGS`` would; its exit code."""
    saved = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
    return 0


# ----------------------------------------------------------------------------- funcdl check
@dataclasses.dataclass
class GradCase:
    """One gradient comparison: ``make() -> (fn, args)``; ``fn(*args)`` is differentiated w.r.t.
    every argument. ``make`` runs only when the case is checked (building layers takes time)."""

    name: str
    make: Callable[[], tuple[Callable, tuple]]


@dataclasses.dataclass
class GradResult:
    name: str
    abs_diff: float = float("nan")
    relative: float = float("nan")
    error: str | None = None


def _weighted_sum(out):
    """A scalar that depends on every output element with a different weight, so a wrong gradient
    anywhere shows (written with funcdl.tape so tape Tensors flow through)."""
    import jax
    import numpy as np

    from funcdl import tape

    total = 0.0
    for i, leaf in enumerate(jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, tape.Tensor))):
        shape = tuple(leaf.shape)
        w = np.random.default_rng(i).uniform(0.5, 1.5, shape).astype(np.float32)
        total = tape.add(total, tape.sum(tape.mul(leaf, w)))
    return total


def compare_gradients(case: GradCase, *, eager: bool = False) -> GradResult:
    """Max difference between ``funcdl.tape.grad`` and ``jax.grad`` of the case's weighted sum,
    both under ``jax.jit`` (or op by op with ``eager=True``)."""
    import jax
    import numpy as np

    from funcdl import tape

    compile_ = (lambda f: f) if eager else jax.jit
    try:
        fn, args = case.make()

        def loss(*args):
            return _weighted_sum(fn(*args))

        argnums = tuple(range(len(args)))
        ours = jax.tree.leaves(compile_(tape.grad(loss, argnums=argnums))(*args))
        ref = jax.tree.leaves(compile_(jax.grad(loss, argnums=argnums))(*args))
    except Exception as err:  # a broken case is reported in the table, not a crash
        return GradResult(case.name, error=f"{type(err).__name__}: {err}".splitlines()[0][:120])
    if len(ours) != len(ref):
        return GradResult(case.name, error=f"{len(ours)} gradient leaves, jax.grad has {len(ref)}")
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
               for a, b in zip(ours, ref))
    scale = max(float(np.max(np.abs(np.asarray(b)), initial=0.0)) for b in ref)
    if not np.isfinite(diff):
        return GradResult(case.name, diff, diff, error="non-finite gradient")
    return GradResult(case.name, diff, diff / max(1.0, scale))


def uncovered_tape_functions(cases: list[GradCase]) -> list[str]:
    """Public differentiable functions of funcdl.tape that no case name mentions."""
    import inspect

    from funcdl import tape

    engine = {"grad", "value_and_grad", "backward", "no_grad", "enable_grad", "is_grad_enabled",
              "detect_anomaly", "gradcheck", "tensor", "broadcast_shapes"}
    named = {c.name.split(" ")[0] for c in cases}
    public = getattr(tape, "__all__", [n for n in dir(tape) if not n.startswith("_")])
    return sorted(
        n for n in public
        if n not in engine and n not in named and inspect.isfunction(getattr(tape, n, None))
        and not n[0].isupper() and not n.startswith(("to_", "draw", "render", "graph", "dot"))
    )


def gradient_cases() -> list[GradCase]:
    """Every differentiable function of funcdl.tape and every layer, on small float32 inputs."""
    return _tape_cases() + _layer_cases()


def _tape_cases() -> list[GradCase]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from funcdl import tape as T

    rng = np.random.default_rng(0)

    def x(*shape, lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    def away(*shape):  # |values| in [0.2, 1]: no kink of relu/abs nearby
        return (x(*shape, lo=0.2, hi=1.0) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)

    def pos(*shape):
        return x(*shape, lo=0.5, hi=2.0)

    mask = rng.random((3, 4)) < 0.4
    ids = np.array([[0, 2, 2], [4, 1, 0]])
    targets = np.array([0, 3, 1, 4])
    targets_ignored = np.array([0, -100, 1, 4])
    key = jax.random.key(0)
    labels01, weights = (x(3, 4) > 0).astype(np.float32), pos(4)
    def c(name: str, fn: Callable, args: tuple) -> GradCase:
        return GradCase(name, lambda: (fn, args))

    return [
        c("add (broadcast)", T.add, (x(3, 4), x(4))),
        c("sub (broadcast)", T.sub, (x(3, 4), x(3, 1))),
        c("mul (broadcast)", T.mul, (x(2, 3, 4), x(3, 1))),
        c("div (broadcast)", T.div, (x(3, 4), pos(4))),
        c("neg", T.neg, (x(3, 4),)),
        c("pow (tensor exponent)", T.pow, (pos(3, 4), x(3, 4))),
        c("pow (scalar exponent)", lambda a: T.pow(a, 3.0), (x(3, 4),)),
        c("exp", T.exp, (x(3, 4),)),
        c("log", T.log, (pos(3, 4),)),
        c("sqrt", T.sqrt, (pos(3, 4),)),
        c("abs", T.abs, (away(3, 4),)),
        c("erf", T.erf, (x(3, 4),)),
        c("maximum", T.maximum, (x(3, 4), x(4))),
        c("minimum", T.minimum, (x(3, 4), x(3, 4))),
        c("where", lambda a, b: T.where(mask, a, b), (x(3, 4), x(3, 4))),
        c("masked_fill", lambda a: T.masked_fill(a, mask, -1.0), (x(3, 4),)),
        c("clip", lambda a: T.clip(a, -0.5, 0.5), (x(3, 4),)),
        c("clamp (min only)", lambda a: T.clamp(a, min=0.1), (x(3, 4),)),
        c("sigmoid", T.sigmoid, (x(3, 4),)),
        c("tanh", T.tanh, (x(3, 4),)),
        c("relu", T.relu, (away(3, 4),)),
        c("gelu (exact)", T.gelu, (x(3, 4),)),
        c("gelu (tanh)", lambda a: T.gelu(a, approximate="tanh"), (x(3, 4),)),
        c("silu", T.silu, (x(3, 4),)),
        c("softplus (beta 2, threshold 1)",
          lambda a: T.softplus(a, beta=2.0, threshold=1.0), (away(3, 4),)),
        c("softmax (dim -1)", T.softmax, (x(3, 4),)),
        c("softmax (dim 0)", lambda a: T.softmax(a, dim=0), (x(3, 4),)),
        c("log_softmax", lambda a: T.log_softmax(a, dim=1), (x(2, 3, 4),)),
        c("matmul (2-D)", T.matmul, (x(3, 4), x(4, 5))),
        c("matmul (batched, broadcast)", T.matmul, (x(2, 1, 3, 4), x(5, 4, 2))),
        c("matmul (vector @ matrix)", T.matmul, (x(4), x(4, 5))),
        c("matmul (matrix @ vector)", T.matmul, (x(3, 4), x(4))),
        c("linear", T.linear, (x(2, 3, 4), x(5, 4), x(5))),
        c("sum (all)", T.sum, (x(2, 3, 4),)),
        c("sum (dims 0 and 2, keepdim)", lambda a: T.sum(a, dim=(0, 2), keepdim=True),
          (x(2, 3, 4),)),
        c("mean (dim 1)", lambda a: T.mean(a, dim=1), (x(2, 3, 4),)),
        c("amax (dim -1)", lambda a: T.amax(a, dim=-1), (x(2, 3, 4),)),
        c("var (dim 0)", lambda a: T.var(a, dim=0), (x(2, 3, 4),)),
        c("var (dim 2, correction 0)", lambda a: T.var(a, dim=2, correction=0), (x(2, 3, 4),)),
        c("logsumexp (dim 1)", lambda a: T.logsumexp(a, dim=1), (x(2, 3, 4),)),
        c("reshape", lambda a: T.reshape(a, (6, -1)), (x(2, 3, 4),)),
        c("view", lambda a: T.view(a, (3, 8)), (x(2, 3, 4),)),
        c("astype (float32 -> bfloat16 -> float32)",
          lambda a: T.astype(T.mul(T.astype(a, jnp.bfloat16), 2.0), jnp.float32), (x(3, 4),)),
        c("transpose", lambda a: T.transpose(a, 0, 2), (x(2, 3, 4),)),
        c("permute", lambda a: T.permute(a, (2, 0, 1)), (x(2, 3, 4),)),
        c("squeeze", lambda a: T.squeeze(a, 1), (x(2, 1, 4),)),
        c("unsqueeze", lambda a: T.unsqueeze(a, -1), (x(2, 3),)),
        c("expand", lambda a: T.expand(a, (2, 3, -1)), (x(3, 1),)),
        c("broadcast_to", lambda a: T.broadcast_to(a, (3, 4)), (x(4),)),
        c("concatenate", lambda a, b: T.concatenate([a, b], dim=0), (x(2, 3), x(4, 3))),
        c("cat", lambda a, b: T.cat([a, b], dim=1), (x(2, 3), x(2, 1))),
        c("stack", lambda a, b: T.stack([a, b], dim=1), (x(2, 3), x(2, 3))),
        c("split (size 2)", lambda a: T.split(a, 2, dim=0), (x(5, 3),)),
        c("split (sections)", lambda a: T.split(a, [1, 2], dim=1), (x(2, 3),)),
        c("getitem (int, slice, None, ...)", lambda a: T.getitem(a, (1, slice(None, None, 2),
                                                                     None, Ellipsis)),
          (x(2, 5, 3),)),
        c("getitem (integer array, repeats)", lambda a: T.getitem(a, np.array([0, 2, 2])),
          (x(3, 4),)),
        c("index_add_into (repeated rows)",
          lambda g: T.index_add_into(g, np.array([0, 2, 2]), (4, 3)), (x(3, 3),)),
        c("take", lambda a: T.take(a, np.array([3, 0, 3]), dim=1), (x(2, 4),)),
        c("embedding (repeated ids)", lambda w: T.embedding(ids, w), (x(5, 3),)),
        c("tril", lambda a: T.tril(a, diagonal=-1), (x(4, 4),)),
        c("triu", lambda a: T.triu(a, diagonal=1), (x(2, 4, 4),)),
        c("layer_norm", lambda a, w, b: T.layer_norm(a, (4,), w, b), (x(2, 3, 4), x(4), x(4))),
        c("dropout (training, p 0.3)", lambda a: T.dropout(a, 0.3, key=key, training=True),
          (x(3, 4),)),
        c("mse_loss", T.mse_loss, (x(3, 4), x(3, 4))),
        c("cross_entropy (ignore_index, label smoothing)",
          lambda a: T.cross_entropy(a, targets_ignored, label_smoothing=0.1), (x(4, 5),)),
        c("cross_entropy (class dim 1 of (B, C, T), sum)",
          lambda a: T.cross_entropy(a, ids, reduction="sum"), (x(2, 5, 3),)),
        c("cross_entropy (reduction none)",
          lambda a: T.cross_entropy(a, targets, reduction="none"), (x(4, 5),)),
        c("binary_cross_entropy_with_logits (pos_weight)",
          lambda a: T.binary_cross_entropy_with_logits(a, labels01, pos_weight=weights),
          (x(3, 4),)),
    ]


def _module_case(name: str, make: Callable, call: Callable) -> GradCase:
    """A case over every ``nnx.Param`` of ``make(rngs)`` (eval mode: dropout off)."""

    def build():
        from flax import nnx

        module = make(nnx.Rngs(0))
        module.eval()
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return (lambda p: call(nnx.merge(graphdef, p, rest))), (params,)

    return GradCase(name, build)


def _layer_cases() -> list[GradCase]:
    import numpy as np

    from funcdl import layers as L

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    kv = rng.normal(size=(2, 3, 8)).astype(np.float32)
    ids = rng.integers(0, 10, (2, 5))
    padding = np.array([[False] * 5, [False, False, False, True, True]])
    blocked = np.array([[False, True, True], [True, True, True]])  # row 2: every key masked
    q, k, v = (rng.normal(size=(2, 2, 4, 4)).astype(np.float32) for _ in range(3))
    m = _module_case
    return [
        GradCase("scaled_dot_product_attention (causal, padding)", lambda: (
            lambda q, k, v: L.scaled_dot_product_attention(
                q, k, v, is_causal=True, key_padding_mask=padding[:, :4]), (q, k, v))),
        GradCase("scaled_dot_product_attention (a fully masked row)", lambda: (
            lambda q, k, v: L.scaled_dot_product_attention(
                q[:, :, :3], k[:, :, :3], v[:, :, :3], key_padding_mask=blocked), (q, k, v))),
        m("Linear", lambda r: L.Linear(8, 6, rngs=r), lambda mod: mod(x)),
        m("Embedding", lambda r: L.Embedding(10, 8, rngs=r), lambda mod: mod(ids)),
        m("PositionalEmbedding (learned)", lambda r: L.PositionalEmbedding(6, 8, rngs=r),
          lambda mod: mod(x)),
        m("LayerNorm", lambda r: L.LayerNorm(8, rngs=r), lambda mod: mod(x)),
        m("MLP (8-16-6-3, relu)", lambda r: L.MLP((8, 16, 6, 3), rngs=r), lambda mod: mod(x)),
        m("AttentionHead", lambda r: L.AttentionHead(8, 4, rngs=r), lambda mod: mod(x)),
        m("MultiHeadAttention (self, key padding)", lambda r: L.MultiHeadAttention(8, 2, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("MultiHeadAttention (cross)", lambda r: L.MultiHeadAttention(8, 2, rngs=r),
          lambda mod: mod(x, kv)),
        m("FeedForward", lambda r: L.FeedForward(8, 16, rngs=r), lambda mod: mod(x)),
        m("TransformerEncoderLayer (pre-LN, gelu, padding)",
          lambda r: L.TransformerEncoderLayer(8, 2, 16, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("TransformerEncoderLayer (post-LN, relu, causal)",
          lambda r: L.TransformerEncoderLayer(8, 2, 16, activation="relu", norm_first=False,
                                              rngs=r),
          lambda mod: mod(x, is_causal=True)),
        m("TransformerEncoder (2 layers, padding)",
          lambda r: L.TransformerEncoder(2, 8, 2, 16, final_norm=True, rngs=r),
          lambda mod: mod(x, key_padding_mask=padding)),
        m("TransformerClassifier (mean over non-padding)",
          lambda r: L.TransformerClassifier(10, 3, 8, 2, 16, 1, 5, rngs=r),
          lambda mod: mod(ids, key_padding_mask=padding)),
        m("MLMHead (tied to an Embedding)",
          lambda r: _TiedMLM(r), lambda mod: mod(ids)),
    ]


def _TiedMLM(rngs):  # noqa: N802 (reads as the module it builds)
    """Embedding -> MLMHead tied to it: gradients reach the table by two paths."""
    from flax import nnx

    from funcdl import layers as L

    class TiedMLM(nnx.Module):
        def __init__(self, rngs):
            self.embedding = L.Embedding(10, 8, rngs=rngs)
            self.head = L.MLMHead(8, 10, embedding=self.embedding, rngs=rngs)

        def __call__(self, ids):
            return self.head(self.embedding(ids))

    return TiedMLM(rngs)


# ----------------------------------------------------------------------------- subcommands
def _demo(args: argparse.Namespace) -> int:
    root = repo_root()
    if root is not None and (root / "examples" / f"{DEMO_EXAMPLE}.py").is_file():
        again = f"funcdl demo{'' if args.out == 'runs/demo' else f' --out {args.out}'} --resume"
        extra = ["--demo", "--out", args.out, "--resume-command", again]
        extra += ["--resume"] if args.resume else []
        return run_example(root / "examples" / f"{DEMO_EXAMPLE}.py", extra)
    return _strided_walk_demo()


def _strided_walk_demo() -> int:
    """The fallback demo when the MLM example is not available: the slides' 3x3 walks."""
    import numpy as np

    from funcdl import ops

    print("(examples/mlm_pretrain.py not found: showing the slides' strided walk instead)\n")
    x = ops.from_array(np.arange(1, 10, dtype=np.float32).reshape(3, 3) / 10)
    for dim in (0, 1):
        print(ops.explain(x, "sum", dim))
        print()
    return 0


def _examples(args: argparse.Namespace) -> int:
    root = _need_root("the examples")
    found = example_paths(root)
    if args.name is None:
        width = max((len(n) for n in found), default=0)
        print(f"examples in {root / 'examples'} (run one: funcdl examples NAME [-- ARGS]):")
        for name, path in found.items():
            print(f"  {name.ljust(width)}  {describe(path)}")
        return 0
    name = args.name.removesuffix(".py")  # `funcdl examples mlp_digits.py` means the file
    if name not in found:
        return _usage_error("examples", f"unknown example {args.name!r}; valid names: "
                            f"{', '.join(found)}")
    return run_example(found[name], args.args)


def _bench(args: argparse.Namespace) -> int:
    root = _need_root("the benchmark suite")
    valid = sorted(p.stem.removeprefix("bench_") for p in (root / "benchmarks").glob("bench_*.py"))
    unknown = [n for n in args.names if n not in valid]
    if unknown:
        return _usage_error("bench", f"unknown benchmark {', '.join(map(repr, unknown))}; "
                            f"valid names: {', '.join(valid)}")
    cmd = [sys.executable, "-m", "benchmarks", *args.names]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--json", str(pathlib.Path(args.json).resolve())] if args.json else []
    return subprocess.call(cmd, cwd=root)


def _shape(text: str) -> tuple[int, ...]:
    """argparse type for ``--shape 3,3``."""
    try:
        shape = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give sizes separated by commas, e.g. 3,3 or 2,2,3,2"
        ) from None
    if not shape or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape: sizes must be positive")
    return shape


def _explain(args: argparse.Namespace) -> int:
    import numpy as np

    from funcdl import ops

    size = int(np.prod(args.shape))
    # the slides' values: 0.1, 0.2, ... in row-major order (their 3x3 holds 0.1 .. 0.9)
    x = ops.from_array((np.arange(1, size + 1, dtype=np.float32) / 10).reshape(args.shape))
    if args.transpose:
        x = ops.transpose(x, 0, -1)
    try:
        print(ops.explain(x, args.op, args.dim))
    except (IndexError, ValueError) as err:  # a dim out of range: PyTorch's words, no traceback
        return _usage_error("explain", f"argument --dim: {err}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    import jax

    import funcdl

    print(f"funcdl   {funcdl.__version__}  ({pathlib.Path(funcdl.__file__).parent})")
    for dist in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint"):
        try:
            print(f"{dist:<8} {md.version(dist)}")
        except md.PackageNotFoundError:
            print(f"{dist:<8} not installed")
    print(f"python   {platform.python_version()} ({platform.platform()})")
    print(f"backend  {jax.default_backend()}")
    print(f"devices  {jax.device_count()}: {', '.join(str(d) for d in jax.devices())}")
    print(f"cpus     {os.cpu_count()}")
    root = repo_root()
    print(f"checkout {root if root else 'none (examples and benchmarks need a source checkout)'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    cases = [c for c in gradient_cases() if args.only is None or args.only in c.name]
    if not cases:
        raise SystemExit(f"funcdl check: error: no case name contains {args.only!r}")
    rows = [compare_gradients(c, eager=args.eager) for c in cases]
    width = max(len(r.name) for r in rows)
    print(f"{'case'.ljust(width)}  {'max |tape - jax|':>16}  {'relative':>9}  verdict")
    failed = 0
    for r in rows:
        ok = r.error is None and r.relative <= args.tol
        failed += not ok
        verdict = "ok" if ok else (f"ERROR {r.error}" if r.error else f"FAIL (> {args.tol:g})")
        print(f"{r.name.ljust(width)}  {r.abs_diff:16.3e}  {r.relative:9.2e}  {verdict}")
    uncovered = uncovered_tape_functions(cases) if args.only is None else []
    if uncovered:
        print(f"\nno check case yet for: {', '.join(uncovered)}")
    mode = "eager" if args.eager else "jitted"
    print(f"\n{len(rows) - failed} of {len(rows)} cases within tolerance {args.tol:g} "
          f"(relative = max |tape - jax| / max(1, max |jax|); float32, {mode})")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funcdl", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Callable[[argparse.Namespace], int], help: str):
        # allow_abbrev=False: a prefix such as --resum is an error, not a silent --resume
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(run=run)
        return p

    demo = add("demo", _demo, "the main job: a compact masked-language-model run on the bundled "
               "Python docs, its accuracy against the most-frequent-token baseline, then tape vs "
               "jax.grad on the trained model")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    ex = add("examples", _examples, "list the examples, or run one: funcdl examples NAME [-- ARGS]")
    ex.add_argument("name", nargs="?", metavar="NAME", help="example to run (none: list them)")
    ex.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="passed to the example, e.g. -- --smoke")

    check = add("check", _check, "compare funcdl.tape gradients with jax.grad for every "
                "differentiable function and layer; exit code 1 if any exceeds the tolerance")
    check.add_argument("--tol", type=float, default=1e-5,
                       help="largest allowed |tape - jax| / max(1, max|jax|) (default: 1e-5)")
    check.add_argument("--only", metavar="SUBSTRING", help="check only cases whose name has this")
    check.add_argument("--eager", action="store_true",
                       help="differentiate op by op instead of under jax.jit (slower)")

    bench = add("bench", _bench, "run the benchmark suite (python -m benchmarks) and print ratios")
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")

    explain = add("explain", _explain, "walk a reduction offset by offset, as the slides do")
    explain.add_argument("op", choices=["sum", "mean", "prod", "amax", "amin"], help="reduction")
    explain.add_argument("--shape", type=_shape, default=(3, 3), help="e.g. 3,3 or 2,2,3,2")
    explain.add_argument("--dim", type=int, default=0, help="dimension to reduce (default: 0)")
    explain.add_argument("--transpose", action="store_true",
                         help="walk the transposed view (first and last dims swapped, no copy)")

    add("info", _info, "versions, devices and backend")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\nfuncdl: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
