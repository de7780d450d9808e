"""fit under bad input and bad luck: a NaN learning rate, NaN eval losses, empty loaders, resumes
with nothing or something to resume, loss functions that return the wrong thing, float16 losses
above 65504, Ctrl-C mid-epoch, a checkpoint of a list loader resumed with a DataLoader; and what it
tells people: TensorBoard event files (read back with tensorboard's reader) and the progress bars.
"""

from __future__ import annotations

import io
import signal

import _train_worker as worker
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from funcdl import tape as F
from funcdl.optim import adam, adamw, sgd
from funcdl.train import Checkpointer, fit

SGD = sgd(0.1)  # one object per optimizer: fit reuses the steps compiled for it


def linear() -> nnx.Linear:
    return nnx.Linear(3, 2, rngs=nnx.Rngs(0))


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def data(n: int = 48, size: int = 16, scale: float = 1.0, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]], np.float32) * scale)
    return [(x[i:i + size], y[i:i + size].astype(np.float32)) for i in range(0, n, size)]


def params(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_a_nan_learning_rate_stops_the_run_and_no_checkpoint_holds_nan(tmp_path):
    opt = adamw(lambda s: jnp.where(s >= 2, jnp.nan, 1e-2))
    model = linear()
    with pytest.raises(FloatingPointError, match=r"update made the parameters or the optimizer "
                       r"state NaN or inf \(the loss and gradients were finite\) at step 2 "
                       r"\(epoch 1, batch 3\).*untouched\. Check that the learning rate"):
        fit(model, opt, data(), mse, epochs=1, progress=False, checkpoint_dir=tmp_path / "c",
            checkpoint_every=1)
    two_steps = linear()
    fit(two_steps, opt, data()[:2], mse, epochs=1, progress=False)
    for a, b in zip(params(model), params(two_steps)):  # the model kept step 1's parameters
        np.testing.assert_array_equal(a, b)
    ckpt = Checkpointer(tmp_path / "c")
    assert ckpt.steps() == [1, 2]
    for step in ckpt.steps():
        arrays, _ = ckpt.restore(step, {"params": nnx.state(linear(), nnx.Param)})
        assert all(np.isfinite(a).all() for a in jax.tree.leaves(arrays["params"]))
    ckpt.close()


def test_a_checkpoint_of_non_finite_params_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(FloatingPointError, match=r"params\['w'\] holds NaN"):
        ckpt.save(1, {"params": {"w": np.array([1.0, np.nan], np.float32)}}, {},
                  finite=("params",))
    assert ckpt.steps() == []
    ckpt.close()


def _nan_eval(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y * jnp.nan)


def test_a_nan_eval_loss_is_never_the_best_and_is_warned_about():
    with pytest.warns(RuntimeWarning, match="eval_loss is NaN after epoch 1"):
        h = fit(linear(), SGD, data(), mse, epochs=2, progress=False,
                eval_loader=[(x, y * np.nan) for x, y in data()], early_stopping=2)
    assert h.best_eval_loss is None and h.best_epoch is None
    assert h.stopped_early and len(h) == 2  # two epochs without improvement


def test_empty_loaders_are_refused():
    with pytest.raises(ValueError, match="train_loader yielded no batches in epoch 1"):
        fit(linear(), SGD, [], mse, epochs=1, progress=False)
    with pytest.raises(ValueError, match="eval_loader yielded no batches after epoch 1"):
        fit(linear(), SGD, data(), mse, epochs=1, progress=False, eval_loader=[])


def test_resume_says_what_happened(tmp_path, capsys):
    missing = tmp_path / "typo"
    with pytest.warns(UserWarning, match=r"no checkpoint in .*typo \(the directory did not "
                                         r"exist\): starting from scratch"):
        fit(linear(), SGD, data(), mse, epochs=1, progress=False, checkpoint_dir=missing,
            resume=True)
    fit(linear(), SGD, data(), mse, epochs=2, progress=True, checkpoint_dir=missing,
        resume=True)
    err = capsys.readouterr().err
    assert "resumed at epoch 2, step 3 (batch 0 of the epoch)" in err
    assert err.count("\n") == 2  # the resume note and epoch 2's line: CI logs stay short


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    seen = []
    loader = [b for b in data() if not seen.append(1)]
    seen.clear()
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        fit(linear(), SGD, (b for b in loader if not seen.append(1)), mse, epochs=1,
            progress=False, checkpoint_dir=path)
    assert seen == []


def test_loss_fn_must_return_an_array():
    with pytest.raises(TypeError, match=r"returned a float as the loss.*not float\(\.\.\.\) or "
                                        r"\.item\(\)"):
        fit(linear(), SGD, data(), lambda m, b: 1.0, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"scalar loss, got shape \(16, 2\)"):
        fit(linear(), SGD, data(), lambda m, b: m(b[0]), epochs=1, progress=False)


def test_numpy_scalar_learning_rates_are_accepted_like_torch():
    a = fit(linear(), adam(np.float32(0.1)), data(), mse, epochs=1, progress=False)
    b = fit(linear(), adam(0.1), data(), mse, epochs=1, progress=False)
    assert a["train_loss"] == b["train_loss"] and a["lr"] == [0.1]


def test_fp16_computes_the_loss_in_float32_above_65504():
    big = data(scale=300.0)  # squared errors near 90,000: inf in float16
    model = linear()
    h = fit(model, sgd(0.0), big, mse, epochs=1, progress=False, precision="fp16")
    want = np.mean([np.mean((np.asarray(model(x.astype(np.float16).astype(np.float32)),
                                        np.float32) - y) ** 2) for x, y in big])
    assert h["train_loss"][0] > 65504
    np.testing.assert_allclose(h["train_loss"][0], want, rtol=2e-3)  # float16 forward pass


@pytest.fixture(scope="module")
def uninterrupted():
    model, history = worker.train()
    return worker.params_of(model), history


def test_ctrl_c_mid_epoch_checkpoints_and_the_resumed_run_is_bitwise_equal(tmp_path,
                                                                           uninterrupted):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt, match=r"interrupted after step 9 \(epoch 2, batch 4\); "
                                                r"checkpoint 10 is in"):
        worker.train(worker.Before(worker.loader(), 9, lambda: signal.raise_signal(signal.SIGINT)),
                     checkpoint_dir=ckpt)
    # the batch being fetched when Ctrl-C came is trained on, then checkpointed
    assert Checkpointer(ckpt).steps() == [6, 10]
    model, history = worker.train(checkpoint_dir=ckpt, resume=True)
    expected, full = uninterrupted
    got = worker.params_of(model)
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    assert history["train_loss"] == full["train_loss"]


class _CrashAt(list):
    """A list of batches (no state_dict) whose iteration fails at batch ``at``."""

    at = -1

    def __iter__(self):
        for i, b in enumerate(list.__iter__(self)):
            if i == self.at:
                raise RuntimeError("crash")
            yield b


def _unshuffled_loader():
    from funcdl.data import ArrayDataset, DataLoader

    return DataLoader(ArrayDataset(*worker.arrays()), batch_size=worker.BATCH, drop_last=True)


def test_a_list_loaders_checkpoint_resumed_with_a_dataloader_replays_nothing(tmp_path):
    expected, _ = worker.train(_unshuffled_loader())
    crash = _CrashAt(_unshuffled_loader())  # the same batches, in the same order, as a list
    crash.at = 4
    with pytest.raises(RuntimeError, match="crash"):
        worker.train(crash, checkpoint_dir=tmp_path, checkpoint_every=2)
    model, _ = worker.train(_unshuffled_loader(), checkpoint_dir=tmp_path, resume=True)
    got = worker.params_of(model)
    for k, v in worker.params_of(expected).items():
        assert np.array_equal(got[k], v), k


def test_tensorboard_reads_back_step_and_epoch_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = linear()
    x0, y0 = data()[0]
    g = jax.grad(lambda m: jnp.mean((m(x0) - y0) ** 2))(linear())
    norm0 = float(np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree.leaves(g))))

    def with_aux(m, b):
        return mse(m, b), {"mae": jnp.mean(jnp.abs(m(b[0]) - b[1]))}

    h = fit(model, SGD, data(), with_aux, epochs=2, progress=False, log_dir=tmp_path,
            eval_loader=data(seed=1))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/train_loss", "step/train_mae", "step/grad_norm", "step/lr", "epoch/train_loss",
            "epoch/eval_loss", "epoch/lr", "epoch/grad_norm"} <= tags

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert [s for s, _ in series("step/train_loss")] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in series("epoch/train_loss")], h["train_loss"],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in series("epoch/eval_loss")], h["eval_loss"],
                               rtol=1e-6)
    np.testing.assert_allclose(series("step/grad_norm")[0][1], norm0, rtol=1e-5)
    np.testing.assert_allclose([v for _, v in series("step/lr")], [0.1] * 6, rtol=1e-7)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_live_bars_on_a_terminal_and_nothing_when_off():
    from funcdl.train.progress import ProgressBar

    out = _Terminal()
    bar = ProgressBar(2, 3, stream=out, interval=0.0)
    assert bar.due()
    bar.update(0, 2, 0.5, 1000.0)
    bar.end_epoch(0, 3, {"epoch": 1, "train_loss": 0.25})
    bar.close()
    text = out.getvalue()
    assert "epoch 1/2 [3/3] train_loss 0.25" in text and "loss 0.5000" in text
    quiet = io.StringIO()
    off = ProgressBar(2, 3, enabled=False, stream=quiet)
    off.end_epoch(0, 3, {"epoch": 1})
    off.note("resumed")
    assert quiet.getvalue() == "" and not off.due()
