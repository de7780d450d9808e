"""Seeing the graph behind a Tensor: indented text and Graphviz DOT (PNG when `dot` exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from funcdl.tape.tensor import AccumulateGrad, Node, Tensor


def _label(fn: Any) -> str:
    if isinstance(fn, AccumulateGrad):
        v = fn.variable
        return f"AccumulateGrad {tuple(v.shape)} {v.dtype}"
    return fn.name()


def graph_text(t: Tensor) -> str:
    """The grad_fn tree of ``t``, one node a line; a node reached twice is shown once."""
    if t.grad_fn is None:
        return f"(leaf {tuple(t.shape)}, requires_grad={t.requires_grad})"
    lines: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(t.grad_fn, 0)]
    while stack:
        fn, depth = stack.pop()
        again = id(fn) in seen
        lines.append("  " * depth + _label(fn) + ("  (see above)" if again else ""))
        if again:
            continue
        seen.add(id(fn))
        children = [c for c, _ in fn.next_functions if c is not None]
        stack.extend((c, depth + 1) for c in reversed(children))
    return "\n".join(lines)


def graph_dot(t: Tensor) -> str:
    """Graphviz DOT of the graph behind ``t``; edges follow the data (producer -> consumer)."""
    out = ["digraph tape {", '  node [shape=box, fontname="Helvetica"];']
    seen: set[int] = set()
    stack: list[Any] = [t.grad_fn] if t.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        style = ', style=filled, fillcolor="lightblue"' if isinstance(fn, AccumulateGrad) else ""
        out.append(f'  n{id(fn)} [label="{_label(fn)}"{style}];')
        if isinstance(fn, Node):
            for child, _ in fn.next_functions:
                if child is not None:
                    out.append(f"  n{id(child)} -> n{id(fn)};")
                    stack.append(child)
    out.append("}")
    return "\n".join(out)


def render(t: Tensor, path: str | Path) -> Path:
    """Write ``path`` as DOT text (``.dot``) or, when Graphviz's `dot` is installed, any format
    it knows (``.png``, ``.svg``)."""
    path = Path(path)
    dot = graph_dot(t)
    if path.suffix == ".dot":
        path.write_text(dot)
        return path
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(f"Rendering {path.suffix} needs Graphviz's `dot` program, which is "
                           "not installed; write a .dot file instead (render(t, 'graph.dot')).")
    subprocess.run([exe, f"-T{path.suffix[1:]}", "-o", str(path)], input=dot.encode(),
                   check=True)
    return path
