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

Updates never alias a transform's state, so they stay valid after the next ``update``.

**In-place protocol (internal, optional).** A chain pays one pass over memory per transform.
To avoid allocating a fresh tensor at every link, a transform's ``update`` function may carry
an attribute ``inplace``: ``inplace(grads, state, params, owned) -> (updates, state, fresh)``.
``owned=True`` promises that the incoming tensors were created by an earlier link of the same
chain during this very call and are referenced nowhere else, so the transform may overwrite
them; ``fresh=True`` makes the same promise about the returned tensors. :func:`chain` threads
the flag through; the first link always gets ``owned=False`` (the caller's gradients), and a
transform without ``inplace`` resets it. Build such transforms with :func:`inplace_transform`.

**Fused apply protocol (optional).** A fused recipe (AdamW, momentum SGD) may also carry
``update.apply(grads, state, params) -> state``: the update *and* :func:`apply_updates` in one
pass over memory (torch's fused kernels writing the parameters directly). It must leave the
parameters and the state exactly as ``update`` followed by ``apply_updates`` would, up to
rounding (``descend.testing.check_transform`` checks it). Call it through
:func:`update_and_apply`, which falls back to those two calls for every other transform; with
:func:`apply_updates` it is the only place descend changes parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from descend.transforms._util import without_grad

Params = dict[str, torch.Tensor]
Updates = dict[str, torch.Tensor]
State = Any

__all__ = [
    "InplaceUpdate",
    "Params",
    "State",
    "Transform",
    "Updates",
    "apply_updates",
    "chain",
    "identity",
    "inplace_transform",
    "named_params",
    "update_and_apply",
]

InplaceUpdate = Callable[[Updates, State, "Params | None", bool], tuple[Updates, State, bool]]


class Transform(NamedTuple):
    """A gradient transformation: ``init(params) -> state`` and
    ``update(grads, state, params) -> (updates, state)``."""

    init: Callable[[Params], State]
    update: Callable[[Updates, State, Params | None], tuple[Updates, State]]

    def __repr__(self) -> str:
        # descend.optim's factories record the call that built the transform (adamw(lr=...))
        desc = getattr(self.update, "desc", None)
        if isinstance(desc, str):
            return desc
        return f"Transform(init={self.init!r}, update={self.update!r})"


def inplace_transform(
    init: Callable[[Params], State],
    update_inplace: InplaceUpdate,
    apply: Callable[[Updates, State, Params], State] | None = None,
) -> Transform:
    """A :class:`Transform` from an ``init`` and an in-place-aware update (see the module doc).

    The public ``update(grads, state, params)`` calls ``update_inplace(..., owned=False)`` under
    ``torch.no_grad()``, so it never touches the caller's tensors; :func:`chain` calls the
    ``inplace`` variant directly to let later links reuse the buffers earlier links allocated.
    ``apply``, if given, is the fused update-and-apply path (see :func:`update_and_apply`).
    """

    @torch.no_grad()
    def inplace(grads: Updates, state: State, params: Params | None, owned: bool):
        return update_inplace(grads, state, params, owned)

    @torch.no_grad()
    def update(grads: Updates, state: State, params: Params | None = None):
        updates, state, _ = update_inplace(grads, state, params, False)
        return updates, state

    update.inplace = inplace  # type: ignore[attr-defined]
    if apply is not None:
        update.apply = without_grad(apply)  # type: ignore[attr-defined]
    return Transform(init, update)


def identity() -> Transform:
    """The transform that passes gradients through unchanged (state: ``()``)."""

    def init(params: Params) -> State:
        return ()

    def update(grads: Updates, state: State, params: Params | None = None):
        return grads, state

    update.inplace = lambda grads, state, params, owned: (grads, state, owned)  # type: ignore[attr-defined]
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

    links = [(t, getattr(t.update, "inplace", None)) for t in flat]

    def update_inplace(grads: Updates, state: State, params: Params | None, owned: bool):
        new_state = []
        for (t, inplace), s in zip(links, state):
            if inplace is None:
                grads, s = t.update(grads, s, params)
                owned = False
            else:
                grads, s, owned = inplace(grads, s, params, owned)
            new_state.append(s)
        return grads, tuple(new_state), owned

    # No no_grad() here: each link decides (descend's own links run under no_grad).
    def update(grads: Updates, state: State, params: Params | None = None):
        updates, state, _ = update_inplace(grads, state, params, False)
        return updates, state

    update.inplace = update_inplace  # type: ignore[attr-defined]
    # A link's mutable hyperparameters (scale_by_adam's betas), when exactly one link has them.
    hypers = [h for t in flat if (h := getattr(t.update, "hyper", None)) is not None]
    if len(hypers) == 1:
        update.hyper = hypers[0]  # type: ignore[attr-defined]
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
    if len({(p.device, p.dtype) for p in ps}) == 1 and all(u.dtype == ps[0].dtype for u in us):
        torch._foreach_add_(ps, us)
    else:
        for p, u in zip(ps, us):
            p.add_(u.to(p.dtype))


def update_and_apply(tx: Transform, grads: Updates, state: State, params: Params) -> State:
    """One optimizer step: ``tx.update`` then :func:`apply_updates`, fused where ``tx`` can.

    Returns the new state; ``params`` change in place. For transforms with a fused apply path
    (``adam``/``adamw`` and ``sgd``/``momentum``/``nesterov`` with ``impl="auto"``/``"fused"``)
    this is one call of torch's fused kernel on the parameters, the same pass over memory as
    ``torch.optim.AdamW(fused=True).step()``; for every other transform it is exactly::

        updates, state = tx.update(grads, state, params)
        apply_updates(params, updates)

    Example:
        >>> import torch
        >>> from descend import optim
        >>> from descend.transforms import update_and_apply
        >>> params = {"x": torch.tensor([3.0])}
        >>> tx = optim.sgd(lr=0.1)
        >>> state = update_and_apply(tx, {"x": torch.tensor([2.0])}, tx.init(params), params)
        >>> params["x"]
        tensor([2.8000])
    """
    fused = getattr(tx.update, "apply", None)
    if fused is not None:
        return fused(grads, state, params)
    updates, state = tx.update(grads, state, params)
    apply_updates(params, updates)
    return state


def named_params(source: torch.nn.Module | Params | Iterable[tuple[str, torch.Tensor]]) -> Params:
    """``{name: tensor}`` of the trainable parameters of a module or a mapping."""
    if isinstance(source, torch.nn.Module):
        return {n: p for n, p in source.named_parameters() if p.requires_grad}
    return dict(source.items() if isinstance(source, dict) else source)
