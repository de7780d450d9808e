"""Compare two benchmark runs: ``python -m benchmarks.compare OLD.json NEW.json``.

Both files are what ``python -m benchmarks --json FILE`` (``funcdl bench --json FILE``) writes.
For every row present in both runs (matched by bench, case and implementation) it prints the
time before and after and the change of its ratio against funcdl (peer time / funcdl time: above
1 funcdl is faster); rows found in one run only are listed after. The two machines are printed
first, since a ratio moves with the load of a shared machine as well as with the code.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

MACHINE_KEYS = ("date", "cpu", "cpu_count", "load_avg_1_5_15", "jax", "torch", "torch_threads",
                "devices", "xla_flags")


def load(path: str) -> dict[str, Any]:
    data = json.loads(pathlib.Path(path).read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise SystemExit(f"{path}: not a benchmark run (expected the JSON of "
                         "`python -m benchmarks --json FILE`, with 'machine' and 'rows')")
    return data


def _key(row: dict) -> tuple[str, str, str]:
    return row["bench"], row["case"], row["impl"]


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows: bench, case, impl, old ms, new ms, time new/old, old ratio, new ratio, change
    of the ratio (new / old). For funcdl's own rows the ratio columns are empty and the time
    column says how funcdl itself moved."""
    before = {_key(r): r for r in old["rows"]}
    out = []
    for r in new["rows"]:
        o = before.get(_key(r))
        if o is None:
            continue
        own = r["impl"].startswith("funcdl")
        speed = r["seconds"] / o["seconds"] if o["seconds"] else None
        change = None
        if not own and r.get("ratio") and o.get("ratio"):
            change = r["ratio"] / o["ratio"]
        out.append((r["bench"], r["case"], r["impl"], _ms(o["seconds"]), _ms(r["seconds"]),
                    _ratio(speed), "" if own else _ratio(o.get("ratio")),
                    "" if own else _ratio(r.get("ratio")), _ratio(change)))
    return out


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the earlier run's JSON")
    parser.add_argument("new", help="the later run's JSON")
    args = parser.parse_args(argv)
    old, new = load(args.old), load(args.new)
    for label, run in (("old", old), ("new", new)):
        m = run.get("machine", {})
        print(f"{label}: " + ", ".join(f"{k}={m[k]}" for k in MACHINE_KEYS if k in m))
    header = ("bench", "case", "impl", "old ms", "new ms", "new/old time", "old ratio",
              "new ratio", "ratio change")
    print()
    print(_table(header, compare(old, new)))
    only_old = sorted(set(map(_key, old["rows"])) - set(map(_key, new["rows"])))
    only_new = sorted(set(map(_key, new["rows"])) - set(map(_key, old["rows"])))
    for label, keys in (("only in old", only_old), ("only in new", only_new)):
        for k in keys:
            print(f"{label}: {' | '.join(k)}")
    print("\nratio = peer time / funcdl time (above 1 funcdl is faster); ratio change = new ratio "
          "/ old ratio (above 1 funcdl gained on the peer); new/old time below 1: faster now.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
