"""Training throughput: ``funcdl.train.fit`` on ``funcdl.layers.TransformerClassifier`` against a
plain PyTorch loop on the same model shape and data (vocab 1000, T=64, D=128, 2 pre-LN layers,
4 heads, ff 256, B=32, AdamW, dropout 0.1), and the loop's own overhead: the time ``fit`` spends
outside the jitted step, as a fraction of the step time. Each side is the best of a few runs.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.harness import Row, block

VOCAB, T, D, HEADS, FF, LAYERS, CLASSES, B = 1000, 64, 128, 4, 256, 2, 4, 32


def _batches(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, VOCAB, (B, T)).astype(np.int32),
             rng.integers(0, CLASSES, B).astype(np.int32)) for _ in range(steps)]


def _funcdl(batches: list, rounds: int) -> tuple[float, float]:
    """(seconds per step inside fit, seconds per step of the bare jitted step), each the best of
    ``rounds`` runs taken alternately, so that a slow spell of the shared machine does not land on
    one side only (one run of each moves by 5-10%, the size of the effect being measured)."""
    from flax import nnx

    from funcdl import layers, optim, tape
    from funcdl.train import fit, init_state, make_train_step

    def model():
        return layers.TransformerClassifier(VOCAB, CLASSES, D, HEADS, FF, LAYERS, T, dropout=0.1,
                                            rngs=nnx.Rngs(0))

    def loss_fn(m, batch):
        ids, y = batch
        return tape.cross_entropy(m(ids), y)

    opt = optim.adamw(1e-3)
    fit(model(), opt, batches[:2], loss_fn, epochs=1, progress=False)  # compiles (cached)
    # the same compiled step, driven by the simplest possible loop over the same batches
    graphdef, state = init_state(model(), opt)
    step = make_train_step(graphdef, loss_fn, opt)
    for b in batches[:2]:
        state, loss, _, _ = step(state, b)
    block(loss)

    in_fit, bare = [], []
    for _ in range(rounds):
        m = model()
        t0 = time.perf_counter()
        fit(m, opt, batches, loss_fn, epochs=1, progress=False)
        in_fit.append((time.perf_counter() - t0) / len(batches))

        t0 = time.perf_counter()
        for b in batches:
            state, loss, _, _ = step(state, b)
        block(loss)
        bare.append((time.perf_counter() - t0) / len(batches))
    return min(in_fit), min(bare)


def _torch(batches: list) -> float:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, D)
            self.pos = nn.Embedding(T, D)
            self.drop = nn.Dropout(0.1)
            layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.1, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(D),
                                                 enable_nested_tensor=False)
            self.head = nn.Linear(D, CLASSES)

        def forward(self, ids):
            x = self.drop(self.emb(ids) + self.pos(torch.arange(ids.shape[1])))
            return self.head(self.encoder(x).mean(1))

    model = Classifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = [(torch.from_numpy(x).long(), torch.from_numpy(y).long()) for x, y in batches]

    def step(ids, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ids), y)
        loss.backward()
        opt.step()
        return loss

    for ids, y in data[:2]:
        step(ids, y)
    t0 = time.perf_counter()
    for ids, y in data:
        step(ids, y)
    return (time.perf_counter() - t0) / len(data)


def run(quick: bool = False) -> list[Row]:
    import torch

    steps, rounds = (20, 1) if quick else (50, 3)
    batches = _batches(steps)
    in_fit, bare = _funcdl(batches, rounds)
    per_torch = min(_torch(batches) for _ in range(rounds))
    case = (f"TransformerClassifier B={B} T={T} D={D} L={LAYERS} H={HEADS}, {steps} AdamW steps"
            f" (best of {rounds})")
    overhead = (in_fit - bare) / bare
    return [
        Row("train.fit", case, "funcdl fit (jit, XLA CPU)", in_fit, B / in_fit, "samples/s",
            note=f"{1 / in_fit:.1f} steps/s; loop overhead {overhead:+.1%} of the bare step"),
        Row("train.fit", case, "torch loop (eager, AdamW)", per_torch, B / per_torch,
            "samples/s", note=f"{1 / per_torch:.1f} steps/s; {torch.get_num_threads()} threads"),
        Row("train.step", "bare jitted train step, same model", "funcdl step (jit)", bare,
            B / bare, "samples/s", note="the same step in a bare `for` loop over the same batches"),
    ]
