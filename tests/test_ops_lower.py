"""The two lowering paths on chosen layouts, and the programs they produce."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from funcdl import ops

N = 16  # storage of 12 elements 0..11: every value names its own offset


def _np_view(shape, strides, offset, n=N):
    return np.lib.stride_tricks.as_strided(np.arange(n, dtype=np.float32)[offset:], shape,
                                           [4 * s for s in strides])


LAYOUTS = {  # name: (shape, strides, offset, how it lowers: "box", "stacked" or "gather")
    "contiguous": ((3, 4), (4, 1), 0, "box"),
    "transposed": ((4, 3), (1, 4), 0, "box"),
    "stepped": ((3, 2), (4, 2), 1, "box"),
    "offset block": ((2, 2), (4, 1), 5, "box"),
    "3-d permuted, stepped": ((2, 2, 3), (1, 6, 2), 0, "box"),
    "stride not dividing": ((2, 2), (5, 2), 0, "box"),
    "overhanging box (padded)": ((2, 3), (5, 1), 8, "box"),
    "expanded": ((3, 4, 2), (0, 1, 0), 2, "box"),
    "strides 8 and 6: rows of 8, step 6": ((2, 2), (8, 6), 0, "box"),
    "strides 6, 4, 1: a (2, 3, 2) box": ((2, 2, 2), (6, 4, 1), 0, "box"),
    "overlapping windows": ((4, 3), (2, 1), 0, "stacked"),
    "equal strides": ((2, 2), (3, 3), 0, "stacked"),
    "strides 5, 3, 1": ((2, 2, 2), (5, 3, 1), 0, "stacked"),
    "all strides 1": ((3, 3, 3), (1, 1, 1), 0, "gather"),
}


def _primitives(fn, *args):
    """Names of the primitives in ``fn``'s program, nested programs included."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            yield e.primitive.name
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                yield from walk(sub)
    return set(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_path_reads_what_numpy_reads(name):
    shape, strides, offset, kind = LAYOUTS[name]
    storage = jnp.arange(N, dtype=jnp.float32)
    s = ops.as_strided(storage, shape, strides, offset)
    want = _np_view(shape, strides, offset)
    assert (ops.plan_slices(s) is not None) == (kind == "box")
    if kind != "box":
        assert (ops.plan_stacked(s) is not None) == (kind == "stacked")
    if name.endswith("(padded)"):
        assert ops.plan_slices(s).pad == 2  # elements 8-10, 13-15 as rows of 5 from 8
    lowerings = ["auto", "gather"] + (["slices"] if kind != "gather" else [])

    def everything(st):  # one program for every path, so the test compiles once
        v = ops.as_strided(st, shape, strides, offset)
        return {lw: [ops.to_array(v, lowering=lw)]
                + [ops.sum(v, d, lowering=lw) for d in (0, -1, None)]
                + [ops.amax(v, d, lowering=lw) for d in (0, -1, None)] for lw in lowerings}

    for lw, got in jax.jit(everything)(storage).items():
        wants = [want] + [want.sum(axis=d) for d in (0, -1, None)] + [
            want.max(axis=d) for d in (0, -1, None)]
        for g, w in zip(got, wants):
            np.testing.assert_allclose(g, w, err_msg=lw)
    prims = _primitives(lambda st: ops.to_array(ops.as_strided(st, shape, strides, offset)),
                        storage)
    assert ("gather" in prims) == (kind == "gather"), prims  # auto gathers only as a last resort
    assert "gather" in _primitives(
        lambda st: ops.to_array(ops.as_strided(st, shape, strides, offset), lowering="gather"),
        storage)
    if kind == "gather":
        with pytest.raises(ValueError, match="not a strided box of its storage"):
            ops.to_array(s, lowering="slices")


def test_unknown_lowering_is_refused():
    with pytest.raises(ValueError, match="lowering must be one of"):
        ops.to_array(ops.from_array(np.ones(3)), lowering="fast")
    with pytest.raises(ValueError, match="lowering must be one of"):
        ops.sum(np.ones(3), lowering="fast")  # checked even where a plain array needs none
    with pytest.raises(ValueError, match="lowering must be one of"):
        ops.argmax(np.ones(3), lowering="slice")


def test_contiguous_and_transposed_reductions_are_one_reshape_and_reduce():
    storage = jnp.ones(64 * 32)
    for strides, dim in (((32, 1), 1), ((1, 32), 0), ((1, 32), 1)):
        shape = (64, 32) if strides == (32, 1) else (32, 64)
        prims = _primitives(
            lambda st, shape=shape, strides=strides, dim=dim: ops.sum(
                ops.as_strided(st, shape, strides), dim), storage)
        assert prims <= {"reshape", "reduce_sum", "transpose"}, prims


def test_sum_over_a_stride_0_dim_never_materialises_the_broadcast():
    row = jnp.arange(4.0)
    big = ops.expand(ops.from_array(row)[None], (1000, 4))
    jaxpr = str(jax.make_jaxpr(lambda st: ops.sum(ops.as_strided(st, big.shape, big.strides),
                                                  (0, 1)))(row))
    assert "1000,4" not in jaxpr.replace(" ", "")
    assert float(ops.sum(big)) == 1000 * 6
    assert float(ops.mean(big, 0)[3]) == 3 and float(ops.amax(big)) == 3
    assert float(ops.logsumexp(ops.expand(ops.from_array(jnp.zeros(1)), (8,)))) == pytest.approx(
        np.log(8))
    np.testing.assert_allclose(ops.prod(ops.expand(ops.from_array(jnp.full(1, 2.0)), (10,))), 1024)
    v = ops.var(ops.expand(ops.from_array(row)[None], (3, 4)), (0, 1), correction=1)
    np.testing.assert_allclose(v, np.var(np.tile(np.arange(4.0), 3), ddof=1), rtol=1e-6)
    np.testing.assert_array_equal(ops.argmax(big, 0), [0, 0, 0, 0])


def test_strided_view_reduces_the_storage_box_first():
    # x[:, ::2] summed over dim 0: column sums of the whole storage, then every other one
    storage = jnp.arange(8 * 6, dtype=jnp.float32)
    s = ops.from_array(storage.reshape(8, 6))[:, ::2]
    jaxpr = jax.make_jaxpr(lambda st: ops.sum(ops.as_strided(st, s.shape, s.strides), 0))(storage)
    kinds = [e.primitive.name for e in jaxpr.eqns]
    assert kinds.index("reduce_sum") < kinds.index("slice")
    np.testing.assert_allclose(ops.sum(s, 0), np.arange(48).reshape(8, 6)[:, ::2].sum(0))


def test_offset_view_reduces_the_whole_storage_then_drops_rows():
    # x[1:] summed over dim 1: row sums of the whole storage (a free reshape), then rows 1..
    storage = jnp.arange(8 * 6, dtype=jnp.float32)
    s = ops.from_array(storage.reshape(8, 6))[1:]
    jaxpr = jax.make_jaxpr(lambda st: ops.sum(ops.as_strided(st, s.shape, s.strides, s.offset),
                                              1))(storage)
    reduced = [e for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]
    assert reduced[0].invars[0].aval.shape == (8, 6)  # the whole storage, not a copy of the view
    np.testing.assert_allclose(ops.sum(s, 1), np.arange(48).reshape(8, 6)[1:].sum(1))
    np.testing.assert_allclose(ops.amax(s[:, ::2], 1), np.arange(48).reshape(8, 6)[1:, ::2].max(1))


def test_large_column_sums_are_a_chunked_matvec_as_accurate_as_a_reduction():
    # Summing a view over the storage's leading axis is a column reduction, slow on XLA:CPU; big
    # float ones go through a matvec with ones. Reference: numpy in float64 on the same view.
    rows, cols = 1024, 24
    rng = np.random.default_rng(0)
    cases = {  # name: (shape, strides, dim, numpy reduction of the (rows, cols) storage matrix)
        "contiguous, dim 0": ((rows, cols), (cols, 1), 0, lambda a: a.sum(0)),
        "transposed view, dim 1": ((cols, rows), (1, cols), 1, lambda a: a.sum(0)),
        "mean over (0, 1) of a 3-d view": ((32, 32, cols), (32 * cols, cols, 1), (0, 1),
                                           lambda a: a.mean(0)),
    }
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        with jax.enable_x64(dtype == np.float64):
            _check_column_sums(cases, rng, rows, cols, dtype, tol)
    # 1021 rows (a prime: no chunking) and small views keep jnp's plain reduction
    prime = jnp.asarray(rng.standard_normal(1021 * 4), jnp.float32)
    f = lambda st: ops.sum(ops.as_strided(st, (1021, 4), (4, 1)), 0)  # noqa: E731
    assert "dot_general" not in _primitives(f, prime)
    np.testing.assert_allclose(f(prime), np.asarray(prime, np.float64).reshape(1021, 4).sum(0),
                               rtol=1e-5, atol=1e-4)


def _check_column_sums(cases, rng, rows, cols, dtype, tol):
    storage = jnp.asarray(rng.standard_normal(rows * cols).astype(dtype))
    want64 = np.asarray(storage, np.float64).reshape(rows, cols)
    for name, (shape, strides, dim, ref) in cases.items():
        op = ops.mean if "mean" in name else ops.sum

        def f(st, shape=shape, strides=strides, dim=dim, op=op):
            return op(ops.as_strided(st, shape, strides), dim)

        assert "dot_general" in _primitives(f, storage), name
        got = jax.jit(f)(storage)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref(want64), rtol=tol, atol=tol * 10, err_msg=name)
        # gradient: d(sum(view, dim) . w)/d storage puts w[j] on every element of column j
        w = rng.standard_normal(cols).astype(dtype)
        g = jax.grad(lambda st, f=f, w=w: jnp.dot(f(st), w))(storage)
        scale = 1 / rows if op is ops.mean else 1
        np.testing.assert_allclose(g.reshape(rows, cols), np.tile(w * scale, (rows, 1)),
                                   rtol=tol, err_msg=name)
        batch = jnp.stack([storage, -2 * storage])
        np.testing.assert_allclose(jax.vmap(f)(batch)[1], -2 * ref(want64), rtol=tol * 10,
                                   atol=tol * 10, err_msg=name)
