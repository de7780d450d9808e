"""edit_distance and error_rate against hand-derived numbers and a brute-force reference (the
shortest path through every edit script, by breadth-first search over prefixes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcdl.data import edit_distance, error_rate


def brute_force(a: tuple, b: tuple) -> int:
    """Fewest single edits turning b into a: breadth-first over the sequences reachable from b
    (insertions only of symbols in a, so the search is finite)."""
    alphabet = set(a)
    frontier, seen, steps = {b}, {b}, 0
    while a not in frontier:
        nxt = set()
        for s in frontier:
            for i in range(len(s) + 1):
                nxt.update(s[:i] + (c,) + s[i:] for c in alphabet)
                if i < len(s):
                    nxt.add(s[:i] + s[i + 1:])
                    nxt.update(s[:i] + (c,) + s[i + 1:] for c in alphabet)
        frontier = nxt - seen
        seen |= frontier
        steps += 1
    return steps


def test_hand_derived_distances():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance([], [1, 2, 3]) == 3 and edit_distance([1, 2], []) == 2
    assert edit_distance(["AA", "B"], ["AA", "B"]) == 0
    assert edit_distance("flaw", "lawn") == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=4), st.lists(st.integers(0, 2), max_size=4))
def test_equals_brute_force_and_is_symmetric(a, b):
    d = edit_distance(a, b)
    assert d == brute_force(tuple(a), tuple(b)) == edit_distance(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))


def test_error_rates():
    # PER over token lists: (1 substitution + 1 deletion) / 5 reference phonemes
    assert error_rate([[1, 2, 3], [4, 5]], [[1, 9, 3], [4]]) == pytest.approx(2 / 5)
    # WER: "the cat sat" -> "the bat sat down": 1 substitution + 1 insertion over 3 words
    assert error_rate(["the cat sat"], ["the bat sat down"], unit="word") == pytest.approx(2 / 3)
    # CER: kitten -> sitting, 3 edits over 6 characters
    assert error_rate(["kitten"], ["sitting"], unit="char") == pytest.approx(0.5)
    # long hypotheses can exceed 1 (edits over the reference length)
    assert error_rate([[1]], [[2, 3, 4]]) == 3.0


def test_error_rate_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="got 2 references but 1 hypotheses"):
        error_rate([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="references are empty"):
        error_rate([[]], [[1]])
    with pytest.raises(ValueError, match="unit must be one of token, word, char"):
        error_rate([[1]], [[1]], unit="phone")
    with pytest.raises(TypeError, match="pass \\[reference\\], \\[hypothesis\\]"):
        error_rate("abc", "abd")
    with pytest.raises(TypeError, match="unit='word' splits strings"):
        error_rate([[1]], [[1]], unit="word")
