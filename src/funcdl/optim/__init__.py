"""PyTorch's optimizers, schedules and gradient utilities as optax transformations.

``sgd``, ``adagrad``, ``rmsprop``, ``adam`` and ``adamw`` take ``torch.optim``'s argument names and
defaults and follow its update rules step for step; each returns an ``optax.GradientTransformation``
whose state holds the learning rate (``get_lr`` / ``set_lr``). ``lr`` may be a float or a schedule
such as ``warmup_cosine`` or ``step_decay``; ``ReduceLROnPlateau`` lowers a constant lr from the
host.
``clip_grad_norm`` chains before an optimizer; ``accumulate`` wraps one.
"""

from funcdl.optim.gradients import AccumulateState, ClipGradNormState, accumulate, clip_grad_norm
from funcdl.optim.optimizers import adagrad, adam, adamw, get_lr, rmsprop, set_lr, sgd
from funcdl.optim.schedules import ReduceLROnPlateau, step_decay, warmup_cosine

__all__ = [
    "sgd",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "get_lr",
    "set_lr",
    "warmup_cosine",
    "step_decay",
    "ReduceLROnPlateau",
    "clip_grad_norm",
    "accumulate",
    "ClipGradNormState",
    "AccumulateState",
]
