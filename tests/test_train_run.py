"""RunState: the one place that spells a checkpoint, checked against a hand-written schema and
through a save/restore round trip; and funcdl.devices, the placement data and train share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from funcdl.devices import is_key, place, to_host
from funcdl.train import Checkpointer, EarlyStopping, History, init_state
from funcdl.train.run import RunState


class Counter:
    """A stand-in for a loader or scheduler: all its state is one number."""

    def __init__(self, count: int = 0):
        self.count = count

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, d):
        self.count = d["count"]


def train_state(seed: int = 0):
    return init_state(nnx.Linear(3, 2, rngs=nnx.Rngs(seed)), optax.adam(1e-2))[1]


def mid_epoch_run() -> RunState:
    history = History(rows=[{"epoch": 1, "step": 4, "train_loss": 0.5, "eval_loss": 0.75}])
    history.best_epoch, history.best_eval_loss = 1, 0.75
    return RunState(
        train_state(), {"loader": Counter(2), "early_stopping": EarlyStopping(3, best=0.75,
                                                                            wait=1),
                        "scheduler": Counter(7)},
        history=history, sums={"loss": jnp.float32(1.5), "n": jnp.float32(8.0),
                               "accuracy": jnp.float32(6.0)},
        epoch=1, batch=2, step=6, epoch_starts=[0, 4])


EXPECTED_META = {
    "epoch": 1, "batch": 2, "epoch_starts": [0, 4],
    "history": {"rows": [{"epoch": 1, "step": 4, "train_loss": 0.5, "eval_loss": 0.75}],
                "stopped_early": False, "best_epoch": 1, "best_eval_loss": 0.75},
    "sums": {"loss": 1.5, "n": 8.0, "accuracy": 6.0},
    "loader": {"count": 2}, "early_stopping": {"best": 0.75, "wait": 1},
    "scheduler": {"count": 7},
}


def test_run_state_writes_the_checkpoint_schema():
    run = mid_epoch_run()
    assert run.meta() == EXPECTED_META
    arrays = run.arrays()
    assert set(arrays) == {"params", "rest", "opt_state", "counters"}
    assert set(arrays["counters"]) == {"step", "bad_step", "fault", "loss_scale"}
    assert arrays["params"] is run.state.params and arrays["opt_state"] is run.state.opt_state


def test_run_state_round_trips_through_a_checkpoint(tmp_path):
    run = mid_epoch_run()
    run.save(Checkpointer(tmp_path))
    _, on_disk = Checkpointer(tmp_path).restore(6, {"params": run.state.params})
    assert {k: on_disk[k] for k in EXPECTED_META} == EXPECTED_META
    assert on_disk["step"] == 6

    loader, stopper, scheduler = Counter(), EarlyStopping(3), Counter()
    fresh = RunState(train_state(seed=1), {"loader": loader, "early_stopping": stopper,
                                           "scheduler": scheduler})
    assert fresh.resume(Checkpointer(tmp_path))
    assert (fresh.epoch, fresh.batch, fresh.step, fresh.epoch_starts) == (1, 2, 6, [0, 4])
    assert fresh.history == run.history
    assert {k: float(v) for k, v in fresh.sums.items()} == EXPECTED_META["sums"]
    assert all(v.dtype == jnp.float32 for v in fresh.sums.values())
    assert (loader.count, scheduler.count, stopper.best, stopper.wait) == (2, 7, 0.75, 1)
    for got, want in zip(jax.tree.leaves(fresh.arrays()), jax.tree.leaves(run.arrays())):
        assert np.array_equal(to_host(got), to_host(want))


def test_at_an_epoch_boundary_the_sums_start_afresh(tmp_path):
    run = mid_epoch_run()
    run.end_epoch()
    assert (run.epoch, run.batch, run.sums) == (2, 0, None)
    assert run.meta()["sums"] is None
    run.save(Checkpointer(tmp_path))
    fresh = RunState(train_state(), {"loader": [1, 2, 3]})  # a plain list has no state
    assert fresh.resume(Checkpointer(tmp_path))
    assert (fresh.epoch, fresh.batch, fresh.sums) == (2, 0, None)
    fresh.begin_epoch()
    assert fresh.epoch_starts == [0, 4, 6]
    assert fresh.where(5) == "step 5 (epoch 2, batch 2)"


def test_run_state_with_nothing_to_resume_and_unknown_helpers(tmp_path):
    run = RunState(train_state(), {})
    assert run.resume(Checkpointer(tmp_path)) is False
    assert (run.epoch, run.step, run.history) == (0, 0, History())
    with pytest.raises(ValueError, match="unknown stateful helpers \\['sampler'\\]"):
        RunState(train_state(), {"sampler": Counter()})


# --- funcdl.devices -------------------------------------------------------------------------------


def test_place_and_to_host_keep_values_dtypes_and_keys():
    dev = jax.devices()[0]
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    for target in (dev, NamedSharding(jax.sharding.Mesh(np.array([dev]), ("data",)),
                                      PartitionSpec("data"))):
        for local in (False, True):
            y = place(x, target, process_local=local)
            assert isinstance(y, jax.Array) and y.devices() == {dev}
            np.testing.assert_array_equal(to_host(y), x)
            assert to_host(y).dtype == np.int32
    key = jax.random.key(3)
    placed = place(key, dev)
    assert is_key(placed) and not is_key(jax.random.key_data(key))
    np.testing.assert_array_equal(to_host(placed), jax.random.key_data(key))
    assert jax.random.key_impl(placed) == jax.random.key_impl(key)
    assert to_host(x) is x  # already on the host: no copy
