"""The core abstraction: a gradient transformation, and the one place parameters change.

A :class:`Transform` is a pair of pure-looking functions (after optax):

- ``init(params) -> state``
- ``update(grads, state, params) -> (updates, state)``

``params``, ``grads`` and ``updates`` are ``dict[str, Tensor]`` keyed by the parameter's NAME
(``model.named_parameters()``), so optimizer state is never matched to tensors by position.
An ``update`` may change its own ``state`` in place (to save memory) but never the incoming
``grads`` or ``params``. Updates are *added* to parameters: plain gradient descent's update is
``-lr * grad``. :func:`apply_updates` is the only function in descend that changes parameters.

State is a tree of ``dict``/``tuple``/``list`` whose leaves are tensors, Python numbers, strings
or ``None``; per-parameter tensors live in ``dict[str, Tensor]`` keyed by parameter name. That
keeps every state checkpointable without pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

Params = dict[str, torch.Tensor]
Updates = dict[str, torch.Tensor]
State = Any

__all__ = ["Params", "State", "Transform", "Updates", "apply_updates", "chain", "identity"]


class Transform(NamedTuple):
    """A gradient transformation: ``init(params) -> state`` and
    ``update(grads, state, params) -> (updates, state)``."""

    init: Callable[[Params], State]
    update: Callable[[Updates, State, Params | None], tuple[Updates, State]]


def identity() -> Transform:
    """The transform that passes gradients through unchanged (state: ``()``)."""

    def init(params: Params) -> State:
        return ()

    def update(grads: Updates, state: State, params: Params | None = None):
        return grads, state

    return Transform(init, update)


def chain(*transforms: Transform) -> Transform:
    """Compose transforms left to right; the state is the tuple of their states."""
    flat: list[Transform] = []
    for t in transforms:
        if not isinstance(t, Transform):
            from descend._errors import ConfigError, describe, message

            raise ConfigError(
                message(
                    "chain(...) arguments",
                    "must be descend Transforms",
                    describe(t),
                    "build them with descend.transforms (e.g. scale_by_adam()) or descend.optim",
                )
            )
        flat.append(t)

    def init(params: Params) -> State:
        return tuple(t.init(params) for t in flat)

    def update(grads: Updates, state: State, params: Params | None = None):
        new_state = []
        for t, s in zip(flat, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return Transform(init, update)


@torch.no_grad()
def apply_updates(params: Params, updates: Updates) -> None:
    """Add ``updates`` to ``params`` in place: the only place descend changes parameters.

    Parameters without an update (frozen, or no gradient this step) are left untouched.
    Uses one fused multi-tensor add where all tensors share a device and dtype.
    """
    names = [n for n in params if n in updates and updates[n] is not None]
    if not names:
        return
    ps = [params[n] for n in names]
    us = [updates[n] for n in names]
    if len({(p.device, p.dtype) for p in ps}) == 1 and all(
        u.dtype == ps[0].dtype for u in us
    ):
        torch._foreach_add_(ps, us)
    else:
        for p, u in zip(ps, us):
            p.add_(u.to(p.dtype))


def named_params(source: torch.nn.Module | Params | Iterable[tuple[str, torch.Tensor]]) -> Params:
    """``{name: tensor}`` of the trainable parameters of a module or a mapping."""
    if isinstance(source, torch.nn.Module):
        return {n: p for n, p in source.named_parameters() if p.requires_grad}
    return dict(source.items() if isinstance(source, dict) else source)
