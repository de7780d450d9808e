"""Every public layer declares its torch counterpart and key mapping (funcdl.layers.counterpart);
the key, shape and forward parity of each layer with a counterpart is derived from its declaration.

The forward checks here run each declaration's one small example, without masks or cross-attention;
tests/test_layers_parity.py covers those per layer against torch, more thoroughly.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from funcdl import check
from funcdl import layers as L
from funcdl.layers.counterpart import Row, Transposed, declaration, torch_layer

PUBLIC = [obj for name in L.__all__  # every layer (Module itself is their base, not a layer)
          if isinstance(obj := getattr(L, name), type) and issubclass(obj, nnx.Module)
          and obj is not L.Module]
PAIRED = [cls for cls in PUBLIC if getattr(declaration(cls, inherit=False), "torch", None)]


def _torch_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _example(cls):
    ex = declaration(cls).example(torch)
    ex.module.eval()
    ex.torch_module.eval()
    return ex


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def test_every_public_layer_has_a_declaration():
    assert L.Linear in PUBLIC and L.TransformerClassifier in PUBLIC
    undeclared = [cls.__name__ for cls in PUBLIC if declaration(cls, inherit=False) is None]
    assert not undeclared, f"declare with @torch_layer beside the class: {undeclared}"


def test_declared_counterparts_are_real_torch_classes_with_an_example():
    assert {c.__name__ for c in PAIRED} >= {"Linear", "MultiHeadAttention", "TransformerEncoder"}
    for cls in PAIRED:
        decl = declaration(cls)
        assert decl.keys is not None and decl.example is not None, (
            f"{cls.__name__}: a torch counterpart needs keys= and example= in its declaration")
        ex = decl.example(torch)
        assert type(ex.module) is cls
        assert type(ex.torch_module) is _torch_class(decl.torch), cls.__name__


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.__name__)
def test_keys_and_shapes_equal_the_torch_state_dict(cls):
    ex = _example(cls)
    want = [(k, tuple(v.shape)) for k, v in ex.torch_module.state_dict().items()]
    assert [(k, v.shape) for k, v in L.to_torch_state_dict(ex.module).items()] == want
    assert L.torch_state_dict_keys(ex.module) == [k for k, _ in want]


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.__name__)
def test_torch_loaded_with_funcdl_weights_computes_the_same(cls):
    ex = _example(cls)
    # Move every parameter off its initial value (LayerNorm's ones and zeros, say), so that a key
    # mapped to the wrong tensor changes the output.
    rng = np.random.default_rng(1)
    params = nnx.state(ex.module, nnx.Param)
    nnx.update(ex.module, jax.tree.map(
        lambda a: a + 0.5 * rng.standard_normal(a.shape).astype(a.dtype), params))
    ex.torch_module.load_state_dict(
        {k: torch.from_numpy(v) for k, v in L.to_torch_state_dict(ex.module).items()})
    call = ex.call or (lambda t, x: t(x))
    with torch.no_grad():  # every output: (output, (h_n, c_n)) for an LSTM
        want = jax.tree.leaves(call(ex.torch_module, torch.from_numpy(ex.input)),
                               is_leaf=torch.is_tensor)
    got = jax.tree.leaves(_apply(*nnx.split(ex.module), jnp.asarray(ex.input)))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.__name__)
def test_loading_torch_weights_puts_each_tensor_where_torch_has_it(cls):
    ex = _example(cls)
    sd = ex.torch_module.state_dict()
    assert L.load_torch_state_dict(ex.module, sd) == ([], [])
    back = L.to_torch_state_dict(ex.module)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_mlm_head_keys_tied_and_untied():
    d, v = 4, 7
    untied = L.MLMHead(d, v, rngs=nnx.Rngs(0))
    tied = L.MLMHead(d, v, embedding=L.Embedding(v, d, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(0))
    head = ["dense.weight", "dense.bias", "norm.weight", "norm.bias"]
    assert L.torch_state_dict_keys(untied) == head + ["decoder.weight", "decoder.bias"]
    # Tied: the decoder weight is the embedding's, saved (and loaded) under the embedding's key.
    assert L.torch_state_dict_keys(tied) == head + ["decoder.bias"]
    L.load_torch_state_dict(tied, {**L.to_torch_state_dict(tied), "decoder.bias": np.arange(v)})
    np.testing.assert_array_equal(tied.bias.get_value(), np.arange(v))


class _User(nnx.Module):
    """A user's model: no declaration, so its children map by attribute name."""

    def __init__(self):
        self.scale = nnx.Param(jnp.ones(()))
        self.blocks = nnx.List([L.Linear(2, 3, rngs=nnx.Rngs(0)), L.Dropout(0.1)])
        self.mlp = L.MLP((3, 2), rngs=nnx.Rngs(1))
        self.note = "not a parameter"


def test_undeclared_module_maps_children_by_attribute_name():
    assert L.torch_state_dict_keys(_User()) == [
        "scale", "blocks.0.weight", "blocks.0.bias", "mlp.0.weight", "mlp.0.bias"]


@torch_layer(None, keys=lambda m: {"proj.weight": Transposed(m.w), "head": m.head})
class _Renamed(nnx.Module):
    """A user's module whose torch names differ from its attribute names."""

    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(2, 3))
        self.head = L.Linear(3, 1, rngs=nnx.Rngs(0))


def test_a_user_declaration_drives_the_loader():
    m = _Renamed()
    sd = L.to_torch_state_dict(m)
    assert list(sd) == ["proj.weight", "head.weight", "head.bias"]
    np.testing.assert_array_equal(sd["proj.weight"], [[0, 3], [1, 4], [2, 5]])
    L.load_torch_state_dict(m, {**sd, "proj.weight": np.arange(6.0).reshape(3, 2)})
    np.testing.assert_array_equal(m.w.get_value(), [[0, 2, 4], [1, 3, 5]])


@torch_layer(None, keys=lambda m: {"stack": Row(m.encoder, 0)})
class _StackOfStacks(nnx.Module):
    def __init__(self):
        self.encoder = L.TransformerEncoder(1, 4, 2, 8, rngs=nnx.Rngs(0))  # itself stacked


@torch_layer(None, keys=lambda m: {"weight": "w"})  # a name where the Variable belongs
class _Typo(nnx.Module):
    pass


def test_bad_declarations_are_named():
    with pytest.raises(TypeError, match="stack.layers.0: a stacked module inside a stacked"):
        L.torch_state_dict_keys(_StackOfStacks())
    with pytest.raises(TypeError, match="weight: a declared key maps to a str"):
        L.torch_state_dict_keys(_Typo())
    with pytest.raises(TypeError, match="expected an nnx.Module, got dict"):
        L.torch_state_dict_keys({"weight": np.ones(2)})


DECLARED_CASES = check.declared_layer_cases()


@pytest.mark.parametrize("case", DECLARED_CASES, ids=[c.name.split()[0] for c in DECLARED_CASES])
def test_every_declared_layer_is_differentiated_alike_by_the_tape_and_jax_grad(case):
    """Derived from the declarations, as the ops' checks are from theirs: each declared layer's
    example, its parameters' gradients by the tape and by jax.grad (jitted)."""
    result = check.compare_gradients(case)
    assert result.error is None and result.relative <= 1e-5, result
