"""Run the benchmark suite: ``python -m benchmarks [NAME ...] [--quick] [--json FILE]``.

NAME is a module suffix: ``ops`` runs ``benchmarks/bench_ops.py``. With no NAME, all run.

Before JAX starts, the suite sets its CPU backend up as a training program would
(``funcdl.cpu_devices``): one JAX device per core, which the data-parallel rows split their
batch over (the other rows run on one device, as before). ``--cpu-devices 1`` measures without
them; ``--reuse-memory`` adds ``cpu_devices``' memory reuse (faster jitted steps, slower eager
rows: it is recorded in the machine info).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import pathlib
import sys

from benchmarks.harness import add_ratios, format_table, machine

HERE = pathlib.Path(__file__).parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", metavar="FILE", help="also write rows and machine info as JSON")
    parser.add_argument("--cpu-devices", type=int, metavar="N",
                        help="JAX CPU devices for the data-parallel rows (default: one per core)")
    parser.add_argument("--reuse-memory", action="store_true",
                        help="reuse XLA's per-step buffers (see funcdl.cpu_devices)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; valid names: {', '.join(names)}")
    import funcdl  # before any module starts JAX

    setup = {"cpu_devices": funcdl.cpu_devices(args.cpu_devices,
                                               reuse_memory=args.reuse_memory),
             "reuse_memory": args.reuse_memory}
    rows = []
    for name in args.names or names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        got = add_ratios(module.run(quick=args.quick))
        print(format_table(got), end="\n\n", flush=True)
        rows += got
    info = {**machine(), **setup}
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    if args.json:
        payload = {"machine": info, "rows": [dataclasses.asdict(r) for r in rows]}
        pathlib.Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
