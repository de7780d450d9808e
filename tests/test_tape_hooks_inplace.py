"""Tensor hooks and in-place operations, each program run in funcdl.tape and in torch side by side:
the same values, gradients, grad_fn names, version counters and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funcdl import tape as T

X = np.array([0.5, -1.0, 2.0], np.float32)


def both(program):
    """``program(lib, make)`` with funcdl and with torch; ``make(values, requires_grad)``."""
    ours = program(T, lambda v, g=False: T.tensor(np.asarray(v, np.float32), requires_grad=g))
    theirs = program(torch, lambda v, g=False: torch.tensor(np.asarray(v, np.float32),
                                                            requires_grad=g))
    return ours, theirs


def same(a, b):
    if isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, str) or a is None or isinstance(a, int):
        assert a == b, (a, b)
    else:
        a = a.data if isinstance(a, T.Tensor) else a
        np.testing.assert_allclose(np.asarray(a), np.asarray(b.detach()), rtol=1e-6, atol=1e-6)


def test_tensor_hooks_order_replacement_retain_grad_and_post_accumulate():
    def program(lib, make):
        seen = []
        x = make(X, True)
        y = x * 3
        y.register_hook(lambda g: seen.append(("first", g.clone() if lib is torch else g)))
        h = y.register_hook(lambda g: g * 10)  # replaces the gradient flowing on
        y.register_hook(lambda g: seen.append(("after", g.clone() if lib is torch else g)))
        y.retain_grad()  # sees the gradient after every hook
        x.register_hook(lambda g: g + 1)  # a leaf's hook runs before accumulation
        x.register_post_accumulate_grad_hook(lambda t: seen.append(("post", t.grad * 1)))
        (y * y).sum().backward()
        h.remove()
        x.grad = None
        (x * 3).sum().backward()
        return [v for _, v in seen], [k for k, _ in seen], y.grad, x.grad

    (ours_values, ours_kinds, *ours), (ref_values, ref_kinds, *ref) = both(program)
    assert ours_kinds == ref_kinds == ["first", "after", "post", "post"]
    same(ours_values, ref_values)
    same(ours, ref)


def test_hook_errors_as_torch():
    x = T.tensor(X)
    with pytest.raises(RuntimeError, match="cannot register a hook on a tensor that doesn't "
                                           "require gradient"):
        x.register_hook(print)
    y = T.tensor(X, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="post accumulate grad hooks cannot be registered on "
                                           "non-leaf tensors"):
        y.register_post_accumulate_grad_hook(print)
    y.register_hook(lambda g: g[:2])
    with pytest.raises(RuntimeError, match="has changed the size of value"):
        y.sum().backward()


def test_tensor_hooks_run_in_the_functional_grad_too():
    seen = []

    def loss(w):
        h = T.mul(w, 2.0)
        h.register_hook(lambda g: seen.append(g) or g * 0.5)
        return T.sum(T.mul(h, h))

    g = T.grad(loss)(X)
    np.testing.assert_allclose(np.asarray(g), 2 * 0.5 * 2 * (2 * X), rtol=1e-6)
    assert len(seen) == 1


def test_inplace_ops_rebind_history_like_torch():
    def program(lib, make):
        x = make(X, True)
        c = x * 2
        c += c + 1  # micrograd's engine test
        c.mul_(3)
        c.sub_(make([1.0, 1.0, 1.0]), alpha=2)
        c.clamp_(-4.0, 14.0)
        c.pow_(2)
        c.tanh_()
        names = c.grad_fn.name() if lib is T else type(c.grad_fn).__name__
        version = c._version
        c.sum().backward()
        return c, x.grad, names, version

    ours, theirs = both(program)
    same(ours, theirs)
    assert ours[2] == "TanhBackward0"


def test_inplace_fill_zero_copy_and_masked_fill():
    def program(lib, make):
        x = make(X, True)
        a = x * 1.0
        a.masked_fill_(lib.tensor([True, False, False]), 7.0)
        b = x * 1.0
        b.copy_(x * x)
        z = x + 0.0
        z.zero_()
        f = x + 0.0
        f.fill_(2.0)
        (a * 2 + b + z + f).sum().backward()
        return a, b, z, f, x.grad

    ours, theirs = both(program)
    same(ours, theirs)


def test_overwriting_a_value_a_rule_needs_raises_like_torch_and_others_pass():
    def needs(lib, make):  # sigmoid's backward reads its output, which mul_ overwrote
        x = make(X, True)
        y = lib.sigmoid(x)
        y.mul_(2)
        y.sum().backward()

    for lib, make in ((T, T.tensor), (torch, torch.tensor)):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            needs(lib, lambda v, g=False, make=make: make(np.asarray(v, np.float32),
                                                          requires_grad=g))

    def fine(lib, make):  # add's backward needs no value: no error in either
        x = make(X, True)
        y = x + 1
        y.mul_(2)
        y.sum().backward()
        return x.grad

    same(*both(fine))


def test_inplace_errors_and_no_grad_updates_as_torch():
    w = T.tensor(X, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in "
                                           "an in-place operation"):
        w.add_(1.0)
    with pytest.raises(RuntimeError, match=r"output with shape \[3\] doesn't match the "
                                           r"broadcast shape \[2, 3\]"):
        (w * 1.0).add_(T.tensor(np.ones((2, 3), np.float32)))
    with T.no_grad():
        w -= 0.5  # the manual SGD update: a plain data update
    np.testing.assert_allclose(np.asarray(w.data), X - 0.5)
    assert w._version == 1 and w.is_leaf
    plain = T.tensor(X)
    plain.add_(w)  # a tensor without grad that takes a grad-requiring value joins the graph
    assert plain.requires_grad and plain.grad_fn.name() == "AddBackward0"
