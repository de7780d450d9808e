"""Training: jitted train/eval steps for NNX models, the ``fit`` loop, checkpoints, history.

    history = fit(model, funcdl.optim.adamw(1e-3), train_loader, loss_fn, epochs=5,
                  eval_loader=eval_loader, checkpoint_dir="ckpt", log_dir="logs")
"""

from .checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from .history import History
from .loop import EarlyStopping, fit
from .parallel import make_mesh, replicate, shard_batch
from .steps import (
    GRAD_MODES,
    PRECISIONS,
    LossScale,
    TrainState,
    eval_step_fn,
    init_state,
    make_eval_step,
    make_train_step,
    split_model,
    train_step_fn,
    update_loss_scale,
)

__all__ = [
    "GRAD_MODES",
    "PRECISIONS",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "EarlyStopping",
    "History",
    "LossScale",
    "TrainState",
    "eval_step_fn",
    "fit",
    "init_state",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "replicate",
    "shard_batch",
    "split_model",
    "train_step_fn",
    "update_loss_scale",
]
