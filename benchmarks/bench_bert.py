"""A BERT ported from transformers (``from_transformers``) against the same model in transformers.

``BertForSequenceClassification`` with 4 layers, hidden 256, 4 heads, FF 1024, vocab 30522,
batch 16 x 128 tokens (half the batch padded to 64-127 tokens, with the attention mask), dropout 0
on both sides (so both compute the same function); --quick: 2 layers, hidden 128, 8 x 64.
Rows: the forward pass (eval, no gradients; transformers with its default SDPA attention) and a
training step (cross-entropy, backward, AdamW lr 1e-4): funcdl jitted with ``jax.grad`` and with
``funcdl.tape``, transformers eager with ``torch.optim.AdamW``, torch on every core
(``torch.set_num_threads(cpu_count)``) and, as a contention check, on one. The implementations
take turns in each round; each figure is the best of the rounds' medians.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.bench_tape import timed
from benchmarks.harness import Row
from funcdl import layers
from funcdl import tape as F
from funcdl.optim import adamw

BENCH = "bert"


def _inputs(b: int, t: int, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (b, t))
    lengths = np.where(np.arange(b) % 2 == 0, t, rng.integers(t // 2, t, b))
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask, rng.integers(0, 2, b)


def _funcdl(hf, ids, mask, labels, value_and_grad):
    """(forward, step): jitted ``logits`` and AdamW training step of the ported model."""
    model = layers.from_transformers(hf)
    model.eval()  # dropout is 0 anyway; eval keeps the RNG state out of the step
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = adamw(lr=1e-4)
    state = [params, jax.tree.map(jnp.copy, tx.init(params))]
    ids, mask, labels = (jnp.asarray(a, jnp.int32) for a in (ids, mask, labels))

    @jax.jit
    def forward(p):
        return nnx.merge(graphdef, p, rest)(ids, mask).logits

    def loss_fn(p):
        return F.cross_entropy(nnx.merge(graphdef, p, rest)(ids, mask).logits, labels)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s):
        loss, g = value_and_grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return jax.tree.map(jnp.add, p, updates), s, loss

    def train():
        state[0], state[1], loss = step(*state)
        return loss

    return (lambda: forward(state[0])), train


def _torch(hf, ids, mask, labels):
    import torch

    ids, mask, labels = (torch.from_numpy(a) for a in (ids, mask, labels))
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def forward():
        hf.eval()
        with torch.no_grad():
            return hf(ids, attention_mask=mask).logits

    def train():
        hf.train()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(hf(ids, attention_mask=mask).logits, labels)
        loss.backward()
        opt.step()
        return loss

    return forward, train


def run(quick: bool = False) -> list[Row]:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    n_layers, d, b, t = (2, 128, 8, 64) if quick else (4, 256, 16, 128)
    vocab = 30522
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4,
        intermediate_size=4 * d, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=2))
    ids, mask, labels = _inputs(b, t, vocab)
    fwd_jax, step_jax = _funcdl(hf, ids, mask, labels, jax.value_and_grad)
    _, step_tape = _funcdl(hf, ids, mask, labels, F.value_and_grad)
    fwd_torch, step_torch = _torch(hf, ids, mask, labels)

    def one_thread(fn):
        def run():
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(os.cpu_count() or 1)
        return run

    repeat, rounds = (3, 2) if quick else (5, 3)
    best = timed({"forward funcdl": fwd_jax, "forward torch": fwd_torch,
                  "step funcdl": step_jax, "step tape": step_tape, "step torch": step_torch,
                  "step torch 1": one_thread(step_torch)}, repeat=repeat, rounds=rounds)
    case = (f"BertForSequenceClassification {n_layers} layers, hidden {d}, B={b} T={t} "
            f"(half padded), best of {rounds} rounds")
    threads = f"{torch.get_num_threads()} threads"
    return [
        Row(f"{BENCH}.forward", case, "funcdl (from_transformers, jit)", best["forward funcdl"],
            b / best["forward funcdl"], "samples/s"),
        Row(f"{BENCH}.forward", case, "transformers (eager, SDPA, no_grad)",
            best["forward torch"], b / best["forward torch"], "samples/s", note=threads),
        Row(f"{BENCH}.train_step", case, "funcdl (jit: jax.grad + funcdl.optim.adamw)",
            best["step funcdl"], b / best["step funcdl"], "samples/s"),
        Row(f"{BENCH}.train_step", case, "same step, gradients by funcdl.tape (jit)",
            best["step tape"], b / best["step tape"], "samples/s"),
        Row(f"{BENCH}.train_step", case, "transformers (eager, torch.optim.AdamW)",
            best["step torch"], b / best["step torch"], "samples/s", note=threads),
        # on a shared, oversubscribed machine torch's thread pool can lose more than XLA's
        Row(f"{BENCH}.train_step", case, "transformers, 1 thread (contention check)",
            best["step torch 1"], b / best["step torch 1"], "samples/s"),
    ]
