"""The slides' MLP on the bundled handwritten digits: the manual tape loop, then fit + AdamW.

The data: scikit-learn's 1,797 8x8 digits shipped with funcdl (1,437 train, 360 test), so the
slides' 28*28-100-50-20-1 network becomes 64-100-50-20-10 with ReLU and cross-entropy.

1. The slides' five sections by hand: parameters as tape tensors with ``requires_grad``, the
   forward pass, the loss, ``L.backward()``, and ``with no_grad(): W -= eta * W.grad`` followed by
   ``W.grad.zero_()``. Eager, one operation at a time, like PyTorch.
2. The same network as ``funcdl.layers.MLP``, trained by ``funcdl.train.fit`` (one jitted step
   per batch) with ``funcdl.optim.adamw``.

Both print their test accuracy (each reaches at least 95% with the default 20 epochs).

    python examples/mlp_digits.py            # ~30 seconds on 2 CPU cores
    python examples/mlp_digits.py --smoke    # 6 epochs, for the tests (~70% and ~95%)
"""

from __future__ import annotations

import math
import sys

import jax.numpy as jnp
import numpy as np
from _common import parser, positive_float, positive_int, predict_batches, stopwatch
from flax import nnx

from funcdl import optim, tape
from funcdl.data import ArrayDataset, DataLoader
from funcdl.data.datasets import digits
from funcdl.layers import MLP
from funcdl.train import fit

SIZES = (64, 100, 50, 20, 10)


# ----------------------------------------------------------------------------- 1. by hand
def init_params(sizes: tuple[int, ...], seed: int) -> list[tuple[tape.Tensor, tape.Tensor]]:
    """Section 1, parameter initialisation: ``W [in, out]`` and ``b [out]`` per layer, uniform in
    +-1/sqrt(in) like ``nn.Linear``, as leaf tensors that require grad."""
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(n_in)
        w = rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32)
        b = rng.uniform(-bound, bound, (n_out,)).astype(np.float32)
        params.append((tape.tensor(w, requires_grad=True), tape.tensor(b, requires_grad=True)))
    return params


def forward(params, x):
    """Section 2, forward propagation: ``h = relu(h @ W + b)``, no activation after the last."""
    h = x
    for i, (w, b) in enumerate(params):
        h = tape.add(tape.matmul(h, w), b)
        if i < len(params) - 1:
            h = tape.relu(h)
    return h


def train_by_hand(params, loader: DataLoader, epochs: int, eta: float) -> list[float]:
    """Sections 3-5 for every batch: loss, ``L.backward()``, ``W -= eta * W.grad``, zero grads."""
    losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            loss = tape.cross_entropy(forward(params, x), y)  # section 3: the loss
            total, count = total + loss.item(), count + 1
            loss.backward()  # section 4: backprop fills every leaf's .grad
            with tape.no_grad():  # section 5: the optimizer step, not recorded
                for w, b in params:
                    w -= eta * w.grad
                    b -= eta * b.grad
                    w.grad.zero_()
                    b.grad.zero_()
        losses.append(total / count)
    return losses


def accuracy_by_hand(params, x: np.ndarray, y: np.ndarray) -> float:
    with tape.no_grad():
        logits = forward(params, x)
    return float(np.mean(np.argmax(np.asarray(logits.data), axis=-1) == y))


# ----------------------------------------------------------------------------- 2. with fit
def loss_fn(model: MLP, batch):
    x, y = batch
    return tape.cross_entropy(model(x), y)


@nnx.jit
def predict(model: MLP, x):
    return jnp.argmax(model(x), axis=-1)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], "mlp_digits")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs of each run")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--eta", type=positive_float, default=0.1,
                   help="learning rate of the manual loop (W -= eta * W.grad)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW's learning rate")
    args = p.parse_args(argv)
    if args.smoke:  # the steps are cheap next to compiling them: fewer epochs, same data
        args.epochs = 6

    data = digits()
    x_train, y_train = data.train.arrays
    x_test, y_test = data.test.arrays
    print(f"digits: {len(x_train)} train, {len(x_test)} test images of 8x8 pixels in [0, 1]; "
          f"network {'-'.join(map(str, SIZES))} with ReLU")
    loader = DataLoader(ArrayDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed, drop_last=True)  # one batch shape: one compiled step

    print(f"\n== 1. the manual tape loop: {args.epochs} epochs of SGD, eta {args.eta}")
    params = init_params(SIZES, args.seed)
    with stopwatch() as elapsed:
        losses = train_by_hand(params, loader, args.epochs, args.eta)
    manual = accuracy_by_hand(params, x_test, y_test)
    print(f"  train loss {losses[0]:.3f} (epoch 1) -> {losses[-1]:.3f} (epoch {len(losses)}), "
          f"{elapsed():.1f} s eager")
    print(f"  test accuracy: {manual:.1%}")

    print(f"\n== 2. funcdl.layers.MLP + funcdl.train.fit + funcdl.optim.adamw(lr={args.lr:g})")
    model = MLP(SIZES, "relu", rngs=nnx.Rngs(args.seed))
    with stopwatch() as elapsed:
        history = fit(model, optim.adamw(args.lr), loader, loss_fn, epochs=args.epochs,
                      seed=args.seed, progress=False)
        history.save(args.out)  # history.json, .csv and the loss curve history.png
    fitted = float(np.mean(predict_batches(predict, model, (x_test,)) == y_test))
    train_loss = history["train_loss"]
    print(f"  train loss {train_loss[0]:.3f} (epoch 1) -> {train_loss[-1]:.3f} "
          f"(epoch {len(train_loss)}), "
          f"{elapsed():.1f} s jitted; loss curve in {args.out / 'history.png'}")
    print(f"  test accuracy: {fitted:.1%}")

    print(f"\nmanual tape loop {manual:.1%}, fit + adamw {fitted:.1%} "
          f"(chance 10%; the goal is at least 95% each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
