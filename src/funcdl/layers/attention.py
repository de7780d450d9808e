"""Scaled dot-product attention, the slides' AttentionHead, and fused-QKV MultiHeadAttention.

Masks follow PyTorch: a bool mask marks with True the positions that may NOT be attended
(``key_padding_mask`` True = padding); a float mask is added to the scores (``-inf`` blocks).
The mask logic (which positions are blocked, which rows are empty) is plain ``jnp`` on constants;
everything that carries a gradient goes through ``funcdl.tape``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from funcdl import tape as F
from funcdl.layers.basic import Dropout, Linear, check_positive, unsupported, value
from funcdl.layers.counterpart import Example, Transposed, sample, torch_layer
from funcdl.layers.module import Module
from funcdl.layers.sequential import SequenceFirst

__all__ = ["scaled_dot_product_attention", "AttentionHead", "MultiHeadAttention", "causal_mask"]


def causal_mask(t: int, s: int | None = None) -> jax.Array:
    """Bool ``(t, s)`` mask, True above the diagonal: query i may not see keys j > i.

    The complement of ``torch.tril(torch.ones(t, s))``, aligned top-left like PyTorch's
    ``is_causal``.
    """
    s = t if s is None else s
    return ~jnp.tril(jnp.ones((t, s), dtype=bool))


def _check_mask_dtype(mask, name: str) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        return mask
    if not jnp.issubdtype(mask.dtype, jnp.floating):
        raise TypeError(
            f"only bool and floating types of {name} are supported, got {mask.dtype}; pass "
            f"{name}.astype(bool) (True = masked) or an additive float mask (-inf = masked)"
        )
    if not isinstance(mask, jax.core.Tracer):
        vals = np.unique(np.asarray(mask))
        if np.isin(vals, (0.0, 1.0)).all() and (vals == 1.0).any():
            # A 0/1 float mask is almost always a bool mask in the wrong dtype; added to the
            # scores it would silently change nothing that matters.
            raise ValueError(
                f"{name} is a float mask holding only 0 and 1: a float mask is ADDED to the "
                f"attention scores, so 1 would not block anything. For a bool mask pass "
                f"{name}.astype(bool) (True = masked); for an additive mask use -inf where masked"
            )
    return mask


def _check_broadcast(mask_shape, target, names, what: str) -> None:
    """Raise ValueError naming the dimension where ``mask_shape`` does not broadcast."""
    if len(mask_shape) > len(target):
        raise ValueError(
            f"{what} of shape {tuple(mask_shape)} has more dimensions than the attention scores "
            f"{_describe(target, names)}"
        )
    for i in range(1, len(mask_shape) + 1):
        got, want = mask_shape[-i], target[-i]
        if got not in (1, want):
            raise ValueError(
                f"{what} of shape {tuple(mask_shape)} does not broadcast to the attention scores "
                f"{_describe(target, names)}: dimension {names[-i]} has size {got}, "
                f"expected {want} or 1"
            )


def _describe(shape, names) -> str:
    return "(" + ", ".join(f"{n}={s}" for n, s in zip(names, shape)) + ")"


def _score_dim_names(ndim: int) -> tuple[str, ...]:
    tail = ("T (queries)", "S (keys)")
    lead = {0: (), 1: ("B (batch)",), 2: ("B (batch)", "heads")}.get(ndim - 2)
    if lead is None:
        lead = tuple(f"dim {i}" for i in range(ndim - 2))
    return lead + tail


def scaled_dot_product_attention(q, k, v, *, attn_mask=None, key_padding_mask=None,
                                 is_causal: bool = False, dropout_rate: float = 0.0,
                                 rng: jax.Array | None = None, scale: float | None = None,
                                 need_weights: bool = False):
    """``softmax(q k^T / sqrt(d) + masks) v`` over the last two dimensions.

    Shapes: ``q (..., T, d)``, ``k (..., S, d)``, ``v (..., S, dv)`` -> ``(..., T, dv)``; the
    leading dimensions are typically ``(B,)`` or ``(B, heads)``.

    - ``key_padding_mask``: ``(B, S)`` (``(S,)`` without batch), True (or ``-inf``) = padding.
    - ``attn_mask``: broadcastable to ``(..., T, S)``; bool True = blocked, or float added.
    - ``is_causal``: block keys after the query (``tril``), combined with the masks above.
    - ``dropout_rate``/``rng``: dropout on the attention weights (rng required when rate > 0).
    - ``need_weights``: also return the attention weights ``(..., T, S)`` (after dropout, as
      torch's ``multi_head_attention_forward`` returns them): ``(out, weights)``.

    A query row whose keys are all masked returns zeros, and its gradients are finite zeros.
    ``nn.MultiheadAttention`` returns NaN there, and NaN gradients, on its default
    ``need_weights=True`` path (pytorch/pytorch#41508); funcdl never does.
    """
    t, s = q.shape[-2], k.shape[-2]
    score_shape = tuple(q.shape[:-1]) + (s,)
    names = _score_dim_names(len(score_shape))
    blocked, bias = None, None

    def add_mask(m):
        nonlocal blocked, bias
        if m.dtype == jnp.bool_:
            blocked = m if blocked is None else blocked | m
        else:
            bias = m if bias is None else bias + m

    if key_padding_mask is not None:
        kpm = _check_mask_dtype(key_padding_mask, "key_padding_mask")
        want = tuple(q.shape[:1]) + (s,) if q.ndim > 2 else (s,)
        if tuple(kpm.shape) != want:
            raise ValueError(
                f"expecting key_padding_mask shape of {want} (batch, keys), but got "
                f"{tuple(kpm.shape)}"
            )
        # (B, S) -> (B, 1, ..., 1, S): one row of keys shared by every head and query.
        add_mask(kpm.reshape(kpm.shape[:-1] + (1,) * (len(score_shape) - kpm.ndim) + (s,)))
    if attn_mask is not None:
        am = _check_mask_dtype(attn_mask, "attn_mask")
        _check_broadcast(am.shape, score_shape, names, "attn_mask")
        add_mask(am)
    if is_causal:
        add_mask(causal_mask(t, s))

    scores = F.matmul(F.mul(q, (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))),
                      F.transpose(k, -2, -1))
    if blocked is None and bias is None:
        weights = F.softmax(scores, dim=-1)
    else:
        if bias is not None:
            scores = F.add(scores, bias.astype(scores.dtype))
        dead = jnp.zeros((), bool) if bias is None else jnp.isneginf(bias)
        if blocked is not None:
            scores = F.masked_fill(scores, blocked, -jnp.inf)
            dead = dead | blocked
        # Rows with no visible key: softmax would be 0/0 = NaN (PyTorch's result). Give them
        # finite scores before the softmax and zero weights after, so both the output and the
        # gradient are exactly zero there (the double-`where` that keeps NaN out of backward).
        dead = jnp.all(jnp.broadcast_to(dead, score_shape), axis=-1, keepdims=True)
        scores = F.masked_fill(scores, dead, 0.0)
        weights = F.masked_fill(F.softmax(scores, dim=-1), dead, 0.0)
    if dropout_rate > 0.0:
        if rng is None:
            raise ValueError("dropout_rate > 0 needs rng=<a jax.random key>")
        weights = F.dropout(weights, dropout_rate, key=rng, training=True)
    out = F.matmul(weights, v)
    return (out, weights) if need_weights else out


@torch_layer(None)
class AttentionHead(Module):
    """The slides' single head: ``q``, ``k``, ``v`` projections ``embed_dim -> head_dim``, then
    scaled dot-product attention. ``head(x)`` is self-attention, ``head(x, kv)`` cross-attention."""

    def __init__(self, embed_dim: int = 512, head_dim: int = 64, *, rngs: nnx.Rngs):
        check_positive(embed_dim=embed_dim, head_dim=head_dim)
        self.q = Linear(embed_dim, head_dim, rngs=rngs)
        self.k = Linear(embed_dim, head_dim, rngs=rngs)
        self.v = Linear(embed_dim, head_dim, rngs=rngs)

    def __call__(self, x, kv=None, *, key_padding_mask=None, attn_mask=None,
                 is_causal: bool = False):
        kv = x if kv is None else kv
        return scaled_dot_product_attention(
            self.q(x), self.k(kv), self.v(kv), attn_mask=attn_mask,
            key_padding_mask=key_padding_mask, is_causal=is_causal)


def check_torch_attention(t) -> None:
    """Refuse what funcdl's MultiHeadAttention does not compute (naming it)."""
    if not t._qkv_same_embed_dim:
        raise unsupported(t, f"kdim={t.kdim}, vdim={t.vdim} != embed_dim={t.embed_dim}")
    if t.bias_k is not None:
        raise unsupported(t, "add_bias_kv=True")
    if t.add_zero_attn:
        raise unsupported(t, "add_zero_attn=True")


def _mha_from_torch(t, b):
    check_torch_attention(t)
    m = MultiHeadAttention(t.embed_dim, t.num_heads, dropout=t.dropout,
                           bias=t.in_proj_bias is not None, rngs=b.rngs)
    return m if t.batch_first else SequenceFirst(m)


@torch_layer(
    "torch.nn.MultiheadAttention",
    keys=lambda m: {"in_proj_weight": Transposed(m.in_proj.w), "in_proj_bias": m.in_proj.b,
                    "out_proj": m.out_proj},
    example=lambda torch: Example(
        MultiHeadAttention(8, 2, rngs=nnx.Rngs(0)),
        torch.nn.MultiheadAttention(8, 2, batch_first=True), sample(2, 3, 8),
        call=lambda t, x: t(x, x, x, need_weights=False)[0]),
    from_torch=_mha_from_torch,
    to_torch=lambda m, b: b.torch.nn.MultiheadAttention(
        m.embed_dim, m.num_heads, dropout=m.attn_dropout.rate, bias=m.in_proj.b is not None,
        batch_first=True),
)
class MultiHeadAttention(Module):
    """Multi-head attention with one fused projection for q, k and v.

    ``in_proj.w`` is ``[embed_dim, 3 * embed_dim]``: columns ``[q | k | v]``, each split into
    ``num_heads`` consecutive blocks of ``head_dim`` columns. That is exactly the slides'
    ``ModuleList`` of ``AttentionHead``s with their q/k/v weights side by side, and the transpose of
    ``nn.MultiheadAttention.in_proj_weight``. ``out_proj`` is the slides' ``output_linear``.
    ``dropout`` applies to the attention weights, as in ``nn.MultiheadAttention``.

    Call ``m(x)`` for self-attention, ``m(x, kv)`` for cross-attention; ``x (B, T, D)``,
    ``kv (B, S, D)``. ``attn_mask`` may be ``(T, S)``, ``(B * num_heads, T, S)`` (PyTorch's 3-D
    form) or anything broadcastable to ``(B, num_heads, T, S)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 rngs: nnx.Rngs):
        if not (isinstance(embed_dim, int) and isinstance(num_heads, int)) or (
                embed_dim <= 0 or num_heads <= 0):
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and "
                f"num_heads={num_heads} instead"
            )
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim must be divisible by num_heads (got embed_dim={embed_dim}, "
                f"num_heads={num_heads}); choose num_heads among the divisors of embed_dim"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj = Linear(embed_dim, 3 * embed_dim, bias=bias, rngs=rngs)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, rngs=rngs)
        self.attn_dropout = Dropout(dropout, rngs=rngs)

    def _heads(self, y, n: int):
        """``(B, T, n * D)`` -> ``n`` arrays ``(B, heads, T, head_dim)``."""
        b, t = y.shape[0], y.shape[1]
        y = F.reshape(y, (b, t, n, self.num_heads, self.head_dim))
        y = F.permute(y, (2, 0, 3, 1, 4))  # (n, B, heads, T, head_dim)
        return [F.getitem(y, i) for i in range(n)]

    def _project(self, x, cols: slice):
        """``x @ in_proj.w[:, cols] + in_proj.b[cols]`` as one (B*T, D) GEMM, as ``Linear``
        does: with the batch dims kept, ``jax.grad``'s weight gradient contracts over two dims
        and XLA adds a transposed copy of the (B*T, 3D) gradient and pads for the q/k/v split."""
        w, b = value(self.in_proj.w), self.in_proj.b
        b = None if b is None else value(b)
        if cols != slice(None):
            w = F.getitem(w, (slice(None), cols))
            b = None if b is None else F.getitem(b, cols)
        lead = tuple(x.shape[:-1])
        y = F.matmul(F.reshape(x, (-1, x.shape[-1])), w)
        if b is not None:
            y = F.add(y, b)
        return F.reshape(y, lead + (y.shape[-1],))

    def _attn_mask(self, attn_mask, b: int, t: int, s: int):
        if attn_mask is None:
            return None
        am = jnp.asarray(attn_mask)
        if am.ndim == 3:  # PyTorch's (B * num_heads, T, S)
            want = (b * self.num_heads, t, s)
            if tuple(am.shape) != want:
                raise ValueError(
                    f"The shape of the 3D attn_mask is {tuple(am.shape)}, but should be {want} "
                    f"(batch * num_heads, T, S)"
                )
            am = am.reshape(b, self.num_heads, t, s)
        return am

    def __call__(self, x, kv=None, *, key_padding_mask=None, attn_mask=None,
                 is_causal: bool = False, need_weights: bool = False,
                 average_attn_weights: bool = True):
        """Attention over ``x`` (or from ``x`` to ``kv``); with ``need_weights`` it returns
        ``(output, weights)`` as torch's ``MultiheadAttention`` does, the weights ``(B, T, S)``
        averaged over the heads, or ``(B, heads, T, S)`` with ``average_attn_weights=False``."""
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"MultiHeadAttention expects batch-first input (B, T, embed_dim={self.embed_dim}),"
                f" got shape {tuple(x.shape)}"
            )
        d = self.embed_dim
        if kv is None:
            q, k, v = self._heads(self._project(x, slice(None)), 3)
        else:
            if kv.ndim != 3 or kv.shape[0] != x.shape[0] or kv.shape[-1] != d:
                raise ValueError(
                    f"kv must have shape (B={x.shape[0]}, S, embed_dim={d}), got {tuple(kv.shape)}"
                )
            (q,) = self._heads(self._project(x, slice(0, d)), 1)
            k, v = self._heads(self._project(kv, slice(d, 3 * d)), 2)
        b, t, s = x.shape[0], q.shape[-2], k.shape[-2]
        key = self.attn_dropout.next_key()
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=self._attn_mask(attn_mask, b, t, s),
            key_padding_mask=key_padding_mask, is_causal=is_causal,
            dropout_rate=self.attn_dropout.rate if key is not None else 0.0, rng=key,
            need_weights=True)
        out = self.out_proj(F.reshape(F.permute(out, (0, 2, 1, 3)), (b, t, d)))  # heads joined
        if not need_weights:
            return out
        return out, (F.mean(weights, 1) if average_attn_weights else weights)
