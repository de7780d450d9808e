"""PyTorch's shape rules, written once in `funcdl.ops.shapes`: `funcdl.ops` and `funcdl.tape` raise
the exception type PyTorch raises, with PyTorch's message, for the same bad shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funcdl import ops, tape
from funcdl.ops import shapes

X9, X33 = np.zeros(9, np.float32), np.zeros((3, 3), np.float32)
V33 = ops.from_array(X33)

# (words torch and funcdl both say, funcdl calls making a mistake, the same mistake in torch)
CASES = [
    ("The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 0",
     [lambda: tape.add(np.zeros(3), np.zeros(4)), lambda: shapes.broadcast_shapes((3,), (4,))],
     lambda: torch.zeros(3) + torch.zeros(4)),
    ("shape '[2, 5]' is invalid for input of size 9",
     [lambda: tape.reshape(X9, (2, 5)), lambda: ops.reshape(ops.from_array(X9), (2, 5))],
     lambda: torch.zeros(9).reshape(2, 5)),
    ("only one dimension can be inferred",
     [lambda: tape.reshape(X9, (-1, -1)), lambda: ops.view(ops.from_array(X9), (-1, -1))],
     lambda: torch.zeros(9).reshape(-1, -1)),
    ("The expanded size of the tensor (4) must match the existing size (3) at non-singleton "
     "dimension 1.  Target sizes: [2, 4].  Tensor sizes: [3, 3]",
     [lambda: tape.expand(X33, (2, 4)), lambda: ops.expand(V33, (2, 4))],
     lambda: torch.zeros(3, 3).expand(2, 4)),
    ("The expanded size of the tensor (-1) isn't allowed in a leading, non-existing dimension 0",
     [lambda: tape.expand(X33, (-1, 3, 3)), lambda: ops.expand(V33, (-1, 3, 3))],
     lambda: torch.zeros(3, 3).expand(-1, 3, 3)),
    ("size=[3]): the number of sizes provided (1) must be greater or equal to the number of "
     "dimensions in the tensor (2)",
     [lambda: tape.expand(X33, (3,)), lambda: ops.expand(V33, (3,))],
     lambda: torch.zeros(3, 3).expand(3)),
    ("number of dimensions in the tensor input does not match the length of the desired "
     "ordering of dimensions i.e. input.dim() = 2 is not equal to len(dims) = 1",
     [lambda: tape.permute(X33, (0,)), lambda: ops.permute(V33, (0,))],
     lambda: torch.zeros(3, 3).permute(0)),
    ("duplicate dims are not allowed.",
     [lambda: tape.permute(X33, (1, 1)), lambda: ops.permute(V33, (1, 1))],
     lambda: torch.zeros(3, 3).permute(1, 1)),
    ("Dimension out of range (expected to be in range of [-2, 1], but got 2)",
     [lambda: tape.sum(X33, 2), lambda: ops.sum(V33, dim=2), lambda: tape.softmax(X33, 2)],
     lambda: torch.zeros(3, 3).sum(2)),
    ("appears multiple times in the list of dims",
     [lambda: tape.sum(X33, (0, 0)), lambda: ops.sum(V33, dim=(0, -2))],
     lambda: torch.zeros(3, 3).sum((0, 0))),
    ("index 5 is out of bounds for dimension 1 with size 3",
     [lambda: tape.getitem(X33, (0, 5))],
     lambda: torch.zeros(3, 3)[0, 5]),
    ("invalid index of a 0-dim tensor",
     [lambda: tape.getitem(np.float32(1.0), 0),
      lambda: ops.select(ops.from_array(np.float32(1.0)), 0, 0)],
     lambda: torch.tensor(1.0)[0]),
]


@pytest.mark.parametrize("words, ours, theirs", CASES, ids=[c[0][:40] for c in CASES])
def test_funcdl_raises_what_torch_raises(words, ours, theirs):
    with pytest.raises(Exception) as expected:
        theirs()
    assert words in str(expected.value)  # the words are torch's
    for call in ours:
        with pytest.raises(expected.type) as got:
            call()
        assert words in str(got.value)


def test_shape_errors_are_still_value_errors_for_callers_of_funcdl_ops():
    """funcdl.ops raised ValueError before the rules were shared; that still catches them."""
    with pytest.raises(ValueError):
        ops.view(ops.from_array(X9), (2, 5))
    assert issubclass(shapes.ShapeError, RuntimeError)


def test_expand_shape_and_infer_shape_by_hand():
    assert shapes.expand_shape((3, 1), (2, -1, 4)) == (2, 3, 4)
    assert shapes.infer_shape((2, -1), 12) == (2, 6)
    assert shapes.infer_shape(12, 12) == (12,)
    assert shapes.broadcast_shapes((2, 1, 3), (4, 1), ()) == (2, 4, 3)
    assert shapes.canonical_dims((-1, 0), 3) == (0, 2)
    assert shapes.permutation((-1, 0, 1), 3) == (2, 0, 1)
