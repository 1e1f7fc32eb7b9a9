"""Gradient transformations (see :mod:`descend.transforms._base` for the contract).

A transform maps gradients to updates, keyed by parameter name; :func:`chain` composes them and
:func:`apply_updates` adds the result to the parameters. Named optimizers (:mod:`descend.optim`)
are short chains of these, e.g. AdamW is::

    chain(scale_by_adam(), add_decayed_weights(0.01), scale_by_learning_rate(1e-3))
"""

from descend.transforms._adaptive import (
    scale_by_adagrad,
    scale_by_adam,
    scale_by_nadam,
    scale_by_rms,
)
from descend.transforms._base import (
    InplaceUpdate,
    Params,
    State,
    Transform,
    Updates,
    apply_updates,
    chain,
    identity,
    inplace_transform,
    named_params,
)
from descend.transforms._basic import (
    add_decayed_weights,
    add_l2,
    clip_by_global_norm,
    find_lr_state,
    masked,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from descend.transforms._momentum import trace
from descend.transforms._util import default_mask

__all__ = [
    "InplaceUpdate",
    "Params",
    "State",
    "Transform",
    "Updates",
    "add_decayed_weights",
    "add_l2",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "default_mask",
    "find_lr_state",
    "identity",
    "inplace_transform",
    "masked",
    "named_params",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_rms",
    "scale_by_schedule",
    "trace",
]
