"""Collation: a list of samples into one batch (torch's ``default_collate`` rules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _ragged_message(shapes: list[tuple[int, ...]]) -> str:
    return (
        f"default_collate: cannot stack samples of different shapes {sorted(set(shapes))[:4]}. "
        "Sequences of different lengths need padding: pass "
        "collate_fn=funcdl.data.text.pad_collate(pad_id) to the DataLoader, or pad them yourself "
        "with funcdl.data.text.pad_batch(sequences, pad_id)")


def default_collate(samples: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch, recursing into tuples, lists and dicts.

    Arrays (numpy, JAX, anything with ``__array__``) and scalars are stacked along a new leading
    axis into numpy arrays (Python ints give int64, floats float64, as torch's default_collate);
    tuples/lists/named tuples give the same container of batches; dicts give a dict of batches;
    strings give a list of strings.
    """
    if len(samples) == 0:
        raise ValueError("default_collate got an empty list of samples")
    first = samples[0]
    if isinstance(first, str | bytes):
        return list(samples)
    if isinstance(first, Mapping):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, tuple | list):
        sizes = {len(s) for s in samples}
        if len(sizes) != 1:
            raise ValueError(
                f"default_collate: samples are sequences of different lengths {sorted(sizes)}; "
                "each element of a batch must have the same structure. If these are token "
                "sequences, pad them: collate_fn=funcdl.data.text.pad_collate(pad_id)")
        if isinstance(first, list) and all(isinstance(v, int | float | np.number) for v in first):
            return np.asarray(samples)  # a list of numbers is one 1-D sample
        columns = [default_collate(list(col)) for col in zip(*samples)]
        if hasattr(first, "_fields"):  # named tuple
            return type(first)(*columns)
        return type(first)(columns) if isinstance(first, list) else tuple(columns)
    arrays = [np.asarray(s) for s in samples]
    bad = next((type(s) for s, a in zip(samples, arrays) if a.dtype.kind not in "biufc"), None)
    if bad is not None:  # numpy would make an array of strings or objects; torch refuses
        raise TypeError("default_collate: batch must contain tensors, numpy arrays, numbers, "
                        f"dicts or lists; found {bad}")
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1:
        raise ValueError(_ragged_message(shapes))
    return np.stack(arrays)
