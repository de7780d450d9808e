"""Training throughput: ``funcdl.train.fit`` on ``funcdl.layers.TransformerClassifier`` against a
plain PyTorch loop on the same model shape and data (vocab 1000, T=64, D=128, 2 pre-LN layers,
4 heads, ff 256, B=32, AdamW, dropout 0.1), and the loop's own overhead: the time ``fit`` spends
outside the jitted step, as a fraction of the step time. ``fit`` also runs with
``mesh="auto"`` (the batch split over JAX's CPU devices, ``funcdl.cpu_devices``) where there are
several and with the encoder's layers scanned (``unroll=False``; by default a 2-layer encoder
runs them unrolled), and torch also on one thread (a contention check). Each figure is the best
of a few passes over the same batches, the implementations taking turns.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from benchmarks.harness import Row, block, cpu_devices, interleaved, torch_device, torch_one_thread

VOCAB, T, D, HEADS, FF, LAYERS, CLASSES, B = 1000, 64, 128, 4, 256, 2, 4, 32


def _batches(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, VOCAB, (B, T)).astype(np.int32),
             rng.integers(0, CLASSES, B).astype(np.int32)) for _ in range(steps)]


def _funcdl(batches: list, rounds: int) -> dict:
    """No-argument functions, each one pass over ``batches``: ``fit`` (one device; the same with
    the encoder's layers scanned; split over every CPU device where there are several) and the
    same compiled step driven by the simplest possible loop (the difference is fit's own
    overhead), with and without the id/target checks. Each fit pass trains a fresh model, built
    beforehand."""
    from flax import nnx

    from funcdl import layers, optim, tape
    from funcdl.train import fit

    def model(unroll: bool | None = None):
        return layers.TransformerClassifier(VOCAB, CLASSES, D, HEADS, FF, LAYERS, T, dropout=0.1,
                                            unroll=unroll, rngs=nnx.Rngs(0))

    def loss_fn(m, batch):
        ids, y = batch
        return tape.cross_entropy(m(ids), y)

    opt = optim.adamw(1e-3)
    setups = {"funcdl fit (jit, XLA CPU)": (None, None),
              "fit, TransformerClassifier(unroll=False)": (None, False)}
    n = cpu_devices()
    if n > 1 and B % n == 0:
        setups[f"fit(mesh='auto'), batch split over {n} CPU devices"] = ("auto", None)
    fns = {}
    for name, (mesh, unroll) in setups.items():
        fit(model(unroll), opt, batches[:2], loss_fn, epochs=1, progress=False,
            mesh=mesh)  # compiles
        # built outside the timed passes; time_fn calls it twice a round (sizing, then timed)
        fresh = [model(unroll) for _ in range(2 * rounds)]

        def run_fit(mesh=mesh, fresh=fresh):
            fit(fresh.pop(), opt, batches, loss_fn, epochs=1, progress=False, mesh=mesh)

        fns[name] = run_fit
    fns["bare"] = _bare_loop(model, loss_fn, opt, batches)
    with _unchecked():
        fns["bare, unchecked"] = _bare_loop(model, loss_fn, opt, batches)
    return fns


def _bare_loop(model, loss_fn, opt, batches: list):
    """The compiled train step of ``fit`` (compiled here, on the first pass) in a bare loop."""
    from funcdl.train import init_state, make_train_step

    graphdef, state = init_state(model(), opt)
    step = make_train_step(graphdef, loss_fn, opt)
    held = [state]

    def run():
        for b in batches:
            held[0], loss, _, _ = step(held[0], b)
        return loss

    block(run())
    return run


@contextlib.contextmanager
def _unchecked():
    """Steps compiled in this block leave out the checks on token ids and class targets
    (``funcdl.ops.checks``): the ops' ``require`` records nothing, so XLA drops the min/max
    reductions and the fault word. Only to measure what those checks cost."""
    from funcdl.tape import indexing, losses

    saved = indexing.require, losses.require
    indexing.require = losses.require = lambda failed, value, check: False
    try:
        yield
    finally:
        indexing.require, losses.require = saved


def _torch(batches: list):
    """One pass of a plain torch training loop over ``batches``."""
    import torch
    from torch import nn

    dev = torch_device()
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
            x = self.drop(self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))
            return self.head(self.encoder(x).mean(1))

    model = Classifier().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = [(torch.from_numpy(x).long().to(dev), torch.from_numpy(y).long().to(dev))
            for x, y in batches]

    def step(ids, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ids), y)
        loss.backward()
        opt.step()
        return loss

    for ids, y in data[:2]:
        step(ids, y)

    def run():
        for ids, y in data:
            loss = step(ids, y)
        return loss

    return run


def run(quick: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    steps, rounds = (20, 2) if quick else (50, 4)
    batches = _batches(steps)
    fns = _funcdl(batches, rounds)
    torch_loop = _torch(batches)
    fns[f"torch loop (eager, AdamW), {torch.get_num_threads()} threads"] = torch_loop
    fns["torch loop, 1 thread (contention check)"] = torch_one_thread(torch_loop)
    best = interleaved(fns, rounds, warmup=0, repeat=1, min_seconds=0.0)
    per_step = {name: sec / steps for name, sec in best.items()}
    bare, unchecked = per_step.pop("bare"), per_step.pop("bare, unchecked")
    in_fit = per_step["funcdl fit (jit, XLA CPU)"]
    case = (f"TransformerClassifier B={B} T={T} D={D} L={LAYERS} H={HEADS}, {steps} AdamW steps"
            f" (best of {rounds})")
    overhead = (in_fit - bare) / bare
    rows = [Row("train.fit", case, impl, sec, B / sec, "samples/s",
                note=f"{1 / sec:.1f} steps/s" + (f"; loop overhead {overhead:+.1%} of the bare "
                                                 "step" if impl.startswith("funcdl") else ""))
            for impl, sec in per_step.items()]
    rows.append(Row("train.step", "bare jitted train step, same model", "funcdl step (jit)", bare,
                    B / bare, "samples/s",
                    note="the same step in a bare `for` loop over the same batches"))
    rows.append(Row("train.step", "bare jitted train step, same model",
                    "same step, id and target checks left out", unchecked, B / unchecked,
                    "samples/s", note="what funcdl.ops.checks costs a step: ratio - 1"))
    return rows
