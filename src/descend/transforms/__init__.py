"""Gradient transformations (see :mod:`descend.transforms._base` for the contract)."""

from descend.transforms._base import (
    Params,
    State,
    Transform,
    Updates,
    apply_updates,
    chain,
    identity,
    named_params,
)

__all__ = [
    "Params",
    "State",
    "Transform",
    "Updates",
    "apply_updates",
    "chain",
    "identity",
    "named_params",
]
