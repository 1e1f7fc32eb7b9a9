"""Gradient transformations (see :mod:`descend.transforms._base` for the contract).

A transform maps gradients to updates, keyed by parameter name; :func:`chain` composes them and
:func:`apply_updates` adds the result to the parameters (:func:`update_and_apply` does both, in
one fused pass where the transform has one). Named optimizers (:mod:`descend.optim`) are short
chains of these, e.g. AdamW is::

    chain(scale_by_adam(), add_decayed_weights(0.01), scale_by_learning_rate(1e-3))

Schedule-free optimizers keep an averaged point for evaluation: :func:`swap_to_eval` and
:func:`swap_to_train` move the parameters between it and the training point (no-ops for every
other transform).
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
    update_and_apply,
)
from descend.transforms._basic import (
    add_decayed_weights,
    add_l2,
    clip_by_global_norm,
    find_lr_state,
    masked,
    partition,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from descend.transforms._modern import scale_by_lion, scale_by_trust_ratio
from descend.transforms._momentum import trace
from descend.transforms._muon import newton_schulz, scale_by_muon
from descend.transforms._prodigy import scale_by_prodigy
from descend.transforms._schedule_free import (
    averaged_point_states,
    scale_by_schedule_free,
    swap_to_eval,
    swap_to_train,
)
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
    "averaged_point_states",
    "chain",
    "clip_by_global_norm",
    "default_mask",
    "find_lr_state",
    "identity",
    "inplace_transform",
    "masked",
    "named_params",
    "newton_schulz",
    "partition",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_prodigy",
    "scale_by_rms",
    "scale_by_schedule",
    "scale_by_schedule_free",
    "scale_by_trust_ratio",
    "swap_to_eval",
    "swap_to_train",
    "trace",
    "update_and_apply",
]
