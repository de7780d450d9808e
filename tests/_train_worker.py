"""A small training run shared by the funcdl.train tests, and their subprocess entry point.

Not collected by pytest (no ``test_`` prefix). Run as::

    python tests/_train_worker.py kill CKPT_DIR KILL_AT        # os._exit before batch KILL_AT
    python tests/_train_worker.py mesh8 OUT.npz                # 8 host devices: mesh vs one device
    python tests/_train_worker.py dist OUT.npz PORT PROCESS_ID # one of 2 processes (gloo, loopback)
    python tests/_train_worker.py dist OUT.npz PORT PROCESS_ID CKPT_DIR KILL_AT
                                  # the same with checkpoints, killed before batch KILL_AT (-1:
                                  # resume from CKPT_DIR and finish)
    python tests/_train_worker.py save CKPT_DIR [RENAME]        # a checkpoint every step; with
                                                               # RENAME, kill -9 at that os.replace
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

EPOCHS = 3
BATCH = 16
N = 96  # 6 batches per epoch


class Net(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jnp.tanh(self.l1(x))))


def loss_fn(model, batch):
    x, y = batch
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def arrays(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (np.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1)).astype(np.int32)
    return x, y


def loader(seed: int = 1):
    from funcdl.data import ArrayDataset, DataLoader

    return DataLoader(ArrayDataset(*arrays()), batch_size=BATCH, shuffle=True, seed=seed,
                      drop_last=True)


def optimizer():
    return optax.adamw(3e-2, weight_decay=1e-2)


def params_of(model) -> dict[str, np.ndarray]:
    from funcdl.devices import to_host

    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, k)): to_host(v.get_value()) for k, v in flat}


class Before:
    """A loader that runs ``action()`` once, just before yielding batch ``at`` (counted over all
    its epochs); the faults the tests inject (a kill, a Ctrl-C, a disk turning read-only)."""

    def __init__(self, inner, at: int, action):
        self.inner, self.at, self.action, self.count = inner, at, action, 0

    def __len__(self):
        return len(self.inner)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, sd):
        self.inner.load_state_dict(sd)

    def __iter__(self):
        for b in self.inner:
            if self.count == self.at:
                self.action()
            self.count += 1
            yield b


def kill_before(inner, at: int) -> Before:
    """Ends the process (no cleanup, like a kill) before batch ``at``."""
    return Before(inner, at, lambda: os._exit(17))


def train(train_loader=None, **kw) -> tuple[nnx.Module, object]:
    from funcdl.train import fit

    model = Net()
    kw.setdefault("epochs", EPOCHS)
    h = fit(model, optimizer(), train_loader if train_loader is not None else loader(), loss_fn,
            progress=False, seed=3, **kw)
    return model, h


def _kill_at_rename(n: int) -> None:
    """SIGKILL this process at the ``n``-th rename (1-based) of a checkpoint being replaced by
    one of the same step (the swap is two renames: old aside, new into place)."""
    import signal

    real, calls = os.replace, [0]

    def replace(src, dst):
        if ".replac" in f"{src}{dst}":  # funcdl's swap, not orbax's own renames
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.replace = replace


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "kill":
        ckpt_dir, at = argv[1], int(argv[2])
        train(kill_before(loader(), at), checkpoint_dir=ckpt_dir, checkpoint_every=4)
        raise SystemExit("the run was meant to be killed before it ended")
    if mode == "mesh8":
        assert jax.device_count() == 8, jax.devices()
        sharded, _ = train(mesh="auto")
        single, _ = train()
        out = {f"mesh/{k}": v for k, v in params_of(sharded).items()}
        out.update({f"single/{k}": v for k, v in params_of(single).items()})
        np.savez(argv[1], **out)
        return
    if mode == "save":
        if len(argv) > 2:
            _kill_at_rename(int(argv[2]))
        print("training", flush=True)
        train(checkpoint_dir=argv[1], checkpoint_every=1)
        return
    if mode == "dist":
        out, port, pid = argv[1], int(argv[2]), int(argv[3])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                                   initialization_timeout=60)
        assert jax.process_count() == 2 and jax.device_count() == 2
        if len(argv) > 4:  # checkpointed: killed before batch KILL_AT, or resumed to the end
            ckpt_dir, at = argv[4], int(argv[5])
            batches = kill_before(loader(), at) if at >= 0 else loader()
            model, _ = train(batches, mesh="auto", checkpoint_dir=ckpt_dir,
                             checkpoint_every=4, resume=at < 0)
        else:
            model, _ = train(mesh="auto")
        if pid == 0:
            np.savez(out, **params_of(model))
        jax.distributed.shutdown()
        return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
