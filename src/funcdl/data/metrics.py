"""Sequence error metrics: Levenshtein `edit_distance` and `error_rate` (PER, WER, CER).

An error rate is the total number of edits (substitutions, deletions, insertions) that turn each
hypothesis into its reference, divided by the total reference length, as speech recognition
reports it (so it can exceed 1 when hypotheses are long).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["edit_distance", "error_rate"]

UNITS = ("token", "word", "char")


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """The fewest substitutions, deletions and insertions turning ``hypothesis`` into
    ``reference`` (Levenshtein; unit costs). Strings compare character by character."""
    ref, hyp = list(reference), list(hypothesis)
    if len(ref) < len(hyp):  # keep the shorter one in the row: O(min(n, m)) memory
        ref, hyp = hyp, ref
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def _units(x: Sequence[Hashable] | str, unit: str) -> Sequence[Hashable]:
    if unit == "word":
        if not isinstance(x, str):
            raise TypeError(f"unit='word' splits strings on whitespace; got {type(x).__name__}")
        return x.split()
    if unit == "char" and not isinstance(x, str):
        raise TypeError(f"unit='char' compares the characters of strings; got "
                        f"{type(x).__name__}")
    return x


def error_rate(references: Sequence, hypotheses: Sequence, unit: str = "token") -> float:
    """Total edit distance / total reference length over pairs of sequences.

    ``unit``: "token" (each item is already a sequence of labels: phonemes give the PER),
    "word" (strings split on whitespace: WER) or "char" (strings, character by character: CER).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("error_rate takes lists of references and hypotheses; for one pair, "
                        "pass [reference], [hypothesis]")
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses")
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        ref, hyp = _units(ref, unit), _units(hyp, unit)
        edits += edit_distance(ref, hyp)
        total += len(ref)
    if total == 0:
        raise ValueError("the references are empty: the error rate divides by their length")
    return edits / total
