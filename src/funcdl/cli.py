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

    conv = args.op == "conv2d"
    shape = args.shape or ((1, 1, 4, 4) if conv else (3, 3))
    size = int(np.prod(shape))
    # the slides' values: 0.1, 0.2, ... in row-major order (their 3x3 holds 0.1 .. 0.9)
    x = ops.from_array((np.arange(1, size + 1, dtype=np.float32) / 10).reshape(shape))
    if args.transpose:
        x = ops.transpose(x, 0, -1)
    try:
        print(ops.explain(x, "conv2d", kernel=args.kernel) if conv
              else ops.explain(x, args.op, args.dim))
    except (IndexError, ValueError) as err:  # a dim out of range: PyTorch's words, no traceback
        return _usage_error("explain", f"argument {'--shape/--kernel' if conv else '--dim'}: "
                                       f"{err}")
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
    from funcdl import check

    cases = [c for c in check.gradient_cases() if args.only is None or args.only in c.name]
    if not cases:
        return _usage_error("check", f"argument --only: no case name contains {args.only!r}")
    rows = [check.compare_gradients(c, eager=args.eager, torch=not args.no_torch)
            for c in cases]
    width = max(len(r.name) for r in rows)
    print(f"{'case'.ljust(width)}  {'max |tape - jax|':>16}  {'relative':>9}  "
          f"{'max |vs torch|':>14}  verdict")
    failed = 0
    for r in rows:
        verdict = r.verdict(args.tol)
        failed += verdict != "ok"
        torch_col = "-" if r.torch_diff is None else f"{r.torch_diff:.3e}"
        print(f"{r.name.ljust(width)}  {r.abs_diff:16.3e}  {r.relative:9.2e}  "
              f"{torch_col:>14}  {verdict}")
    mode = "eager" if args.eager else "jitted"
    print(f"\n{len(rows) - failed} of {len(rows)} cases pass: relative <= {args.tol:g}, where "
          f"relative = max |tape - jax| / max(1, max |jax|) (float32, {mode}); and, for ops "
          "with a torch counterpart, values and gradients within the case's tolerance of "
          "PyTorch's (- : no torch counterpart, or a layer: those are compared in the tests)")
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
                "differentiable function and layer, and each function's values and gradients "
                "with PyTorch's; exit code 1 if any exceeds the tolerance")
    check.add_argument("--tol", type=float, default=1e-5,
                       help="largest allowed |tape - jax| / max(1, max|jax|) (default: 1e-5)")
    check.add_argument("--only", metavar="SUBSTRING", help="check only cases whose name has this")
    check.add_argument("--eager", action="store_true",
                       help="differentiate op by op instead of under jax.jit (slower)")
    check.add_argument("--no-torch", action="store_true",
                       help="skip the comparison with PyTorch (run without torch installed)")

    bench = add("bench", _bench, "run the benchmark suite (python -m benchmarks) and print ratios")
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")

    explain = add("explain", _explain, "walk a reduction offset by offset, as the slides do")
    explain.add_argument("op", choices=["sum", "mean", "prod", "amax", "amin", "conv2d"],
                         help="a reduction, or conv2d (the windows it reads, as a view)")
    explain.add_argument("--shape", type=_shape, default=None,
                         help="e.g. 3,3 or 2,2,3,2 (default 3,3; conv2d: N,C,H,W, default 1,1,4,4)")
    explain.add_argument("--kernel", type=_shape, default=(2, 2),
                         help="conv2d's kernel height,width (default: 2,2)")
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
