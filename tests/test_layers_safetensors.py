"""save_safetensors / load_safetensors against torch: a file funcdl writes is the torch module's
state dict (``load_state_dict(safetensors.torch.load_file(path))``), and the reverse; bad files
are named errors that leave the module untouched."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file
from safetensors.torch import load_file as torch_load
from safetensors.torch import save_file as torch_save

from funcdl import layers as L

D, H, FF = 8, 2, 16  # the declarations' example sizes: compiled already in a full run


def _encoder():
    return L.TransformerEncoder(2, D, H, FF, final_norm=True, rngs=nnx.Rngs(0))


def _torch_encoder():
    torch.manual_seed(0)
    return torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(D, H, FF, activation="gelu", batch_first=True,
                                         norm_first=True),
        2, norm=torch.nn.LayerNorm(D), enable_nested_tensor=False).eval()


def _values(module) -> list[np.ndarray]:
    return [np.array(v) for v in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_a_funcdl_file_is_the_torch_state_dict(tmp_path):
    m = _encoder()
    L.save_safetensors(m, tmp_path / "enc.safetensors", metadata={"note": "funcdl"})
    t = _torch_encoder()
    t.load_state_dict(torch_load(tmp_path / "enc.safetensors"), strict=True)
    x = torch.randn(2, 5, D)
    m.eval()
    np.testing.assert_allclose(np.asarray(m(x.numpy())), t(x).detach().numpy(), atol=1e-5)
    assert not (tmp_path / "enc.safetensors.tmp").exists()


def test_a_torch_file_loads_into_funcdl(tmp_path):
    t = _torch_encoder()
    torch_save(t.state_dict(), tmp_path / "t.safetensors")
    m = _encoder()
    assert L.load_safetensors(m, tmp_path / "t.safetensors") == ([], [])
    back = L.to_torch_state_dict(m)
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_bfloat16_files_are_cast_to_the_parameters_dtype(tmp_path):
    t = torch.nn.Linear(D, FF)
    torch_save({k: v.bfloat16() for k, v in t.state_dict().items()}, tmp_path / "bf.safetensors")
    m = L.Linear(D, FF, rngs=nnx.Rngs(0))
    L.load_safetensors(m, tmp_path / "bf.safetensors")
    assert m.w.get_value().dtype == np.float32
    np.testing.assert_array_equal(np.asarray(m.w.get_value()).T,
                                  t.weight.detach().bfloat16().float().numpy())


@pytest.mark.parametrize("edit, error, words", [
    (lambda a: a.pop("layers.1.linear2.bias"), RuntimeError,
     'Missing key(s) in state_dict: "layers.1.linear2.bias"'),
    (lambda a: a.update({"layers.2.linear1.bias": np.zeros(FF, np.float32)}), RuntimeError,
     'Unexpected key(s) in state_dict: "layers.2.linear1.bias"'),
    (lambda a: a.update({"norm.weight": np.zeros(FF, np.float32)}), RuntimeError,
     "size mismatch for norm.weight: copying a param with shape (16,) from checkpoint, the "
     "shape in current model is (8,)"),
    (lambda a: a.update({"layers.0.self_attn.in_proj_bias": np.zeros(3 * D, np.int32)}),
     TypeError, "layers.0.self_attn.in_proj_bias: expected a floating tensor for the float32 "
                "parameter of shape (24,), got int32 of shape (24,)"),
])
def test_bad_files_are_named_and_nothing_is_half_loaded(tmp_path, edit, error, words):
    arrays = {k: v + 1 for k, v in L.to_torch_state_dict(_encoder()).items()}  # all different
    edit(arrays)
    save_file(arrays, tmp_path / "bad.safetensors")
    m = _encoder()
    before = _values(m)
    with pytest.raises(error) as caught:
        L.load_safetensors(m, tmp_path / "bad.safetensors")
    assert words in str(caught.value)
    for a, b in zip(_values(m), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_strict_loading_reports_what_it_left(tmp_path):
    t = torch.nn.Linear(D, FF)
    torch_save({"weight": t.weight.detach(), "other": torch.ones(1)}, tmp_path / "w.safetensors")
    m = L.Linear(D, FF, rngs=nnx.Rngs(0))
    assert L.load_safetensors(m, tmp_path / "w.safetensors", strict=False) == (["bias"],
                                                                               ["other"])
    np.testing.assert_array_equal(np.asarray(m.w.get_value()).T, t.weight.detach().numpy())


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no safetensors file at .*nope.safetensors"):
        L.load_safetensors(_encoder(), tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        L.load_safetensors(_encoder(), tmp_path / "junk.safetensors")
