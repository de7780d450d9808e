"""funcdl.train.fit against hand-written references: numpy SGD, torch's ReduceLROnPlateau and
GradScaler rules, and the bad-input paths (NaN loss, corrupt checkpoints, unknown options)."""

from __future__ import annotations

import csv
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from funcdl.train import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    EarlyStopping,
    History,
    LossScale,
    fit,
    update_loss_scale,
)

LR = 0.1
SGD = optax.sgd(LR)  # one optimizer object: fit reuses the step it compiled for it


def linear(seed: int = 0) -> nnx.Linear:
    return nnx.Linear(3, 2, rngs=nnx.Rngs(seed))


def mse(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def regression(n: int = 50, seed: int = 0, flip: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    w = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]], np.float32)
    y = (x @ w + np.array([0.3, -0.1], np.float32)) * (-1 if flip else 1)
    return x, y.astype(np.float32)


def batches(x, y, size: int = 16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def numpy_sgd(w, b, data, epochs, lr=LR):
    """Minibatch SGD on mean squared error, gradients by hand, in float64."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    epoch_losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in data:
            x, y = x.astype(np.float64), y.astype(np.float64)
            r = x @ w + b - y
            total += np.mean(r**2) * len(x)
            count += len(x)
            g = 2 * r / r.size
            w, b = w - lr * x.T @ g, b - lr * g.sum(0)
        epoch_losses.append(total / count)
    return w, b, epoch_losses


def params(model):
    return np.asarray(model.kernel.get_value()), np.asarray(model.bias.get_value())


def test_fit_follows_numpy_sgd_and_warns_once_on_the_short_last_batch():
    x, y = regression()
    data = batches(x, y)  # 16, 16, 16, 2 rows: the last batch needs a second compilation
    model = linear()
    w0, b0 = params(model)
    with pytest.warns(RuntimeWarning, match="compiling once more") as record:
        h = fit(model, SGD, data, mse, epochs=3, progress=False)
    assert len([r for r in record if "compiling once more" in str(r.message)]) == 1
    w, b, losses = numpy_sgd(w0, b0, data, 3)
    np.testing.assert_allclose(params(model)[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params(model)[1], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h["train_loss"], losses, rtol=1e-5)
    assert h["step"] == [4, 8, 12]


def test_history_files_and_eval_metrics(tmp_path):
    x, y = regression(48)
    data = batches(x, y)
    ex, ey = regression(32, seed=1)
    model = linear()
    w0, b0 = params(model)

    def mae(m, b):
        return jnp.mean(jnp.abs(m(b[0]) - b[1]))

    h = fit(model, SGD, data, mse, epochs=2, eval_loader=batches(ex, ey, 8),
            metrics={"mae": mae}, log_dir=tmp_path, progress=False)
    # eval after epoch 2 uses the parameters after 2 epochs of numpy SGD
    w, b, _ = numpy_sgd(w0, b0, data, 2)
    r = ex.astype(np.float64) @ w + b - ey
    np.testing.assert_allclose(h["eval_loss"][-1], np.mean(r**2), rtol=1e-5)
    np.testing.assert_allclose(h["eval_mae"][-1], np.mean(np.abs(r)), rtol=1e-5)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["rows"] == h.rows and History.from_json(tmp_path / "history.json").rows == h.rows
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    np.testing.assert_allclose([float(r["eval_loss"]) for r in rows], h["eval_loss"])
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert h.best_epoch == int(np.argmin(h["eval_loss"])) + 1


class DropoutNet(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(params=0, dropout=0)
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.l1(x))))


def test_fit_is_deterministic_for_a_seed_and_the_seed_drives_dropout():
    from funcdl.data import ArrayDataset, DataLoader

    adam = optax.adam(1e-2)

    def run(seed):
        model = DropoutNet()
        loader = DataLoader(ArrayDataset(*regression(64)), batch_size=16, shuffle=True, seed=5)
        fit(model, adam, loader, mse, epochs=2, seed=seed, progress=False)
        return np.asarray(model.l1.kernel.get_value())

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_counts_epochs_without_improvement():
    x, y = regression(32)
    ex, ey = regression(32, seed=1, flip=True)  # fitting the train set makes this loss grow
    model = linear()
    h = fit(model, SGD, batches(x, y), mse, epochs=10, progress=False,
            eval_loader=batches(ex, ey), early_stopping=2)
    losses = h["eval_loss"]
    assert all(b > a for a, b in zip(losses, losses[1:]))
    # epoch 1 sets the best; epochs 2 and 3 do not improve on it: patience 2 stops after epoch 3
    assert len(h) == 3 and h.stopped_early and h.best_epoch == 1
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)


def test_reduce_lr_on_plateau_follows_torch():
    from funcdl.optim import ReduceLROnPlateau, sgd

    x, y = regression(32)
    ex, ey = regression(32, seed=1, flip=True)
    h = fit(linear(), sgd(lr=LR), batches(x, y), mse, epochs=5, progress=False,
            eval_loader=batches(ex, ey),
            scheduler=ReduceLROnPlateau(factor=0.5, patience=1))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    expected = []
    for loss in h["eval_loss"]:
        sched.step(loss)
        expected.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(h["lr"], expected, rtol=1e-6)
    assert expected[-1] < LR  # the schedule did lower the lr


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = regression(64)
    data = batches(x, y)  # 4 batches per epoch
    bad = [(bx.copy(), by) for bx, by in data]
    bad[1][0][3, 0] = np.nan  # global step 5 (0-based) is epoch 2, batch 2
    epochs = [data, bad]

    class TwoEpochs:  # epoch 1 clean, epoch 2 with the NaN
        def __init__(self):
            self.epoch = 0

        def __iter__(self):
            self.epoch += 1
            return iter(epochs[self.epoch - 1])

    model = linear()
    w0, b0 = params(model)
    with pytest.raises(FloatingPointError, match=r"step 5 \(epoch 2, batch 2\)"):
        fit(model, SGD, TwoEpochs(), mse, epochs=2, progress=False,
            checkpoint_dir=tmp_path, checkpoint_every=2)
    # the model holds the parameters from before the bad step: 5 clean SGD steps
    w5, b5, _ = numpy_sgd(w0, b0, data + data[:1], 1)
    np.testing.assert_allclose(params(model)[0], w5, rtol=1e-5, atol=1e-6)
    assert np.isfinite(params(model)[0]).all()
    ck = Checkpointer(tmp_path)
    assert ck.steps() == [2, 4]  # step 6's checkpoint came after the NaN and was never written
    arrays, meta = ck.restore(4, {"params": nnx.state(linear(), nnx.Param)})
    w4, _, _ = numpy_sgd(w0, b0, data, 1)
    np.testing.assert_allclose(np.asarray(arrays["params"]["kernel"].get_value()), w4,
                               rtol=1e-5, atol=1e-6)


def _largest_file(root):
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return max(files, key=os.path.getsize)


def test_corrupt_checkpoint_is_refused_and_resume_uses_the_previous_one(tmp_path):
    x, y = regression(32)
    data = batches(x, y)  # 2 batches per epoch
    adam = optax.adam(1e-2)
    full = linear()
    fit(full, adam, data, mse, epochs=3, progress=False)

    ck_dir = tmp_path / "ck"
    fit(linear(), adam, data, mse, epochs=2, progress=False, checkpoint_dir=ck_dir)
    assert Checkpointer(ck_dir).steps() == [2, 4]
    target = _largest_file(ck_dir / "4" / "state")
    blob = bytearray(open(target, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(target, "wb").write(bytes(blob))
    (ck_dir / "9" / "state").mkdir(parents=True)  # a partial checkpoint: the newest one
    templates = {"params": nnx.state(linear(), nnx.Param)}
    with pytest.raises(CheckpointError, match="checkpoint .*4"):
        Checkpointer(ck_dir).restore(4, templates)
    with pytest.raises(CheckpointError, match="partial or unreadable"):
        Checkpointer(ck_dir).restore(9, templates)

    resumed = linear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(resumed, adam, data, mse, epochs=3, progress=False,
            checkpoint_dir=ck_dir, resume=True)
    messages = " ".join(str(r.message) for r in record)
    assert "9.corrupt" in messages and "4.corrupt" in messages
    # resumed from step 2 (end of epoch 1) and trained epochs 2 and 3 again
    assert np.array_equal(params(resumed)[0], params(full)[0])
    assert np.array_equal(params(resumed)[1], params(full)[1])


def test_resuming_with_another_optimizer_is_refused_and_the_checkpoints_stay(tmp_path):
    data = batches(*regression(32))
    fit(linear(), SGD, data, mse, epochs=2, progress=False, checkpoint_dir=tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CheckpointMismatchError, match="cannot resume: checkpoint .*different"):
        fit(linear(), optax.adam(1e-2), data, mse, epochs=3, progress=False,
            checkpoint_dir=tmp_path, resume=True)
    assert sorted(os.listdir(tmp_path)) == before  # nothing renamed .corrupt, nothing written


class _CrashOnIter:
    def __iter__(self):
        raise KeyboardInterrupt("killed during evaluation")


def test_resume_after_a_step_checkpoint_on_the_last_batch_keeps_the_epoch_loss(tmp_path):
    # killed after the epoch's last step checkpoint, before its end-of-epoch one: on resume the
    # epoch has no batch left, and its train loss must still be the one numpy computes
    x, y = regression(32)
    data = batches(x, y)  # 2 batches per epoch
    with pytest.raises(KeyboardInterrupt):
        fit(linear(), SGD, data, mse, epochs=2, progress=False, eval_loader=_CrashOnIter(),
            checkpoint_dir=tmp_path, checkpoint_every=2)
    model = linear()
    history = fit(model, SGD, data, mse, epochs=2, progress=False, eval_loader=data[:1],
                  checkpoint_dir=tmp_path, resume=True)
    w0, b0 = params(linear())
    w, b, losses = numpy_sgd(w0, b0, data, 2)
    np.testing.assert_allclose(history["train_loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(params(model)[0], w, rtol=1e-5, atol=1e-6)


def test_bad_options_are_refused_with_the_valid_names():
    data = batches(*regression(16))
    with pytest.raises(ValueError, match="unknown grad mode 'autograd'; valid modes are jax, tape"):
        fit(linear(), SGD, data, mse, epochs=1, grad="autograd")
    with pytest.raises(ValueError, match="valid precisions are fp32, bf16, fp16"):
        fit(linear(), SGD, data, mse, epochs=1, precision="half")
    with pytest.raises(ValueError, match="pass an eval_loader"):
        fit(linear(), SGD, data, mse, epochs=1, early_stopping=3)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(linear(), SGD, data, mse, epochs=1, resume=True)
    with pytest.raises(TypeError, match="aux must be a mapping"):
        fit(linear(), SGD, data, lambda m, b: (mse(m, b), 3.0), epochs=1,
            progress=False)


def test_bf16_computes_in_bfloat16_with_float32_master_params():
    x, y = regression(48)
    data = batches(x, y)
    seen = []

    def loss(model, batch):
        seen.append((batch[0].dtype, model.kernel.get_value().dtype))
        return mse(model, batch)

    ref, half = linear(), linear()
    fit(ref, SGD, data, mse, epochs=3, progress=False)
    fit(half, SGD, data, loss, epochs=3, progress=False, precision="bf16")
    assert (jnp.bfloat16, jnp.bfloat16) in seen
    assert half.kernel.get_value().dtype == jnp.float32
    np.testing.assert_allclose(params(half)[0], params(ref)[0], atol=3e-2)


def test_loss_scale_update_matches_torch_amp_update_scale():
    rng = np.random.default_rng(0)
    found = rng.random(40) < 0.2
    ts, tt = torch.tensor([2.0**16]), torch.tensor([0], dtype=torch.int32)
    ls = LossScale(jnp.float32(2.0**16), jnp.int32(0))
    for f in found:
        torch._amp_update_scale_(ts, tt, torch.tensor([float(f)]), 2.0, 0.5, 3)
        ls = update_loss_scale(ls, jnp.asarray(f), growth_interval=3)
        assert float(ls.scale) == ts.item() and int(ls.growth_tracker) == tt.item()


def test_fp16_skips_overflowing_steps_and_backs_off_the_scale():
    x, y = regression(48)
    data = [(bx * 10.0, by * 10.0) for bx, by in batches(x, y)]  # scaled grads overflow fp16
    model = linear()
    h = fit(model, optax.sgd(1e-6), data, mse, epochs=2, progress=False, precision="fp16")
    assert h["loss_scale"][-1] < 2.0**16
    assert model.kernel.get_value().dtype == jnp.float32
    assert np.isfinite(params(model)[0]).all()


def test_progress_writes_one_line_per_epoch_to_stderr_when_not_a_terminal(capsys):
    x, y = regression(32)
    h = fit(linear(), SGD, batches(x, y), mse, epochs=2, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" [")[0] for line in err] == ["epoch 1/2", "epoch 2/2"]
    assert f"train_loss {h['train_loss'][1]:.4g}" in err[1] and "samples_per_s" in err[1]


def test_aux_and_metrics_must_be_scalars_with_their_own_names():
    data = batches(*regression(16))

    def with_aux(aux):
        return lambda m, b: (mse(m, b), aux(m, b))

    with pytest.raises(TypeError, match=r"aux and metrics must be scalars; \['rows'\] are not"):
        fit(linear(), SGD, data, with_aux(lambda m, b: {"rows": m(b[0])[:, 0]}), epochs=1,
            progress=False)
    with pytest.raises(ValueError, match=r"aux and metrics may not be named \['n'\]"):
        fit(linear(), SGD, data, with_aux(lambda m, b: {"n": jnp.float32(1)}), epochs=1,
            progress=False)
    with pytest.raises(ValueError, match=r"aux and metrics may not be named \['loss'\]"):
        fit(linear(), SGD, data, mse, epochs=1, progress=False, eval_loader=data,
            metrics={"loss": mse})


def test_history_lr_is_the_injected_lr_and_none_without_one():
    from funcdl.optim import sgd

    data = batches(*regression(16))
    assert fit(linear(), sgd(lr=0.05), data, mse, epochs=1, progress=False)["lr"] == [0.05]
    assert fit(linear(), SGD, data, mse, epochs=1, progress=False)["lr"] == [None]  # plain optax
    two = optax.chain(sgd(lr=0.05), sgd(lr=0.01))  # no single lr to report
    assert fit(linear(), two, data, mse, epochs=1, progress=False)["lr"] == [None]
    with pytest.raises(TypeError, match=r"the scheduler \(object\) has no state_dict\(\)"):
        fit(linear(), SGD, data, mse, epochs=1, eval_loader=data, scheduler=object(),
            checkpoint_dir="unused")
    with pytest.raises(ValueError, match="patience must be an int >= 1, got True"):
        fit(linear(), SGD, data, mse, epochs=1, eval_loader=data, early_stopping=True)
