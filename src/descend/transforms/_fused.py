"""A fused fast path for the Adam family's tail: Adam → decoupled decay → learning rate.

``chain(*head, scale_by_adam(), [add_decayed_weights(λ)], scale_by_learning_rate(η))`` costs a
pass over memory per link. :func:`fused_adam_chain` returns a Transform with exactly that
chain's state tree (a checkpoint loads into either) whose update computes the tail in one call
of torch's fused Adam kernel: the update buffer starts as ``−η λ θ`` (decayed parameters) or
zeros, and the kernel subtracts ``η · m̂ / (√v̂ + ε)`` from it. Where the kernel is unavailable
it runs the chain itself (the ``_foreach_*`` path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from descend.transforms._adaptive import scale_by_adam
from descend.transforms._base import Params, State, Transform, Updates, chain, inplace_transform
from descend.transforms._basic import (
    add_decayed_weights,
    commit_lr,
    next_lr,
    scale_by_learning_rate,
)
from descend.transforms._kernels import AdamKernel
from descend.transforms._util import MaskCache, groups, mask_fn, need_params, present

__all__ = ["fused_adam_chain"]


def _inplace(t: Transform):
    fn = getattr(t.update, "inplace", None)
    if fn is not None:
        return fn

    def fallback(grads: Updates, state: State, params: Params | None, owned: bool):
        grads, state = t.update(grads, state, params)
        return grads, state, False

    return fallback


def fused_adam_chain(
    head: Sequence[Transform],
    *,
    b1: float,
    b2: float,
    eps: float,
    amsgrad: bool,
    weight_decay: float,
    mask: Any,
    lr: float,
    schedule: Callable[[int], float] | None,
) -> Transform:
    """``chain(*head, scale_by_adam(b1, b2, eps, amsgrad), [add_decayed_weights(weight_decay,
    mask)], scale_by_learning_rate(lr, schedule))`` with the tail in one fused kernel."""
    tail = [scale_by_adam(b1, b2, eps, amsgrad, impl="foreach")]
    if weight_decay:
        tail.append(add_decayed_weights(weight_decay, mask))
    tail.append(scale_by_learning_rate(lr, schedule))
    links = [*head, *tail]
    reference = chain(*links)
    steps = [_inplace(t) for t in links]
    n_head = len(head)
    i_adam, i_lr = n_head, len(links) - 1
    kernel = AdamKernel(b1, b2, eps, amsgrad)
    decide = MaskCache(mask_fn(mask, owner="add_decayed_weights")) if weight_decay else None

    def init(params: Params) -> State:
        if decide is not None:
            decide.reset()
        return reference.init(params)

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        state = list(state)
        for i in range(n_head):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        grps = groups(present(grads), grads)
        if not all(kernel.supports(grads[grp[0]]) for grp in grps):
            for i in range(n_head, len(links)):
                grads, state[i], owned = steps[i](grads, state[i], params, owned)
            return grads, tuple(state), owned
        if decide is not None:
            need_params(params, "add_decayed_weights")
        adam, lr_state = state[i_adam], state[i_lr]
        lr_t = next_lr(lr_state, lr, schedule)
        t = adam["count"] + 1
        out: dict[str, torch.Tensor] = {}
        for grp in grps:
            # the update buffer starts as the decay term −η λ θ (or zeros) ...
            if decide is None:
                decayed = []
            else:
                decayed = [n for n in grp if decide(n, params[n])]  # type: ignore[index]
            if decayed:
                start = torch._foreach_mul([params[n] for n in decayed], -lr_t * weight_decay)  # type: ignore[index]
                out.update(zip(decayed, start))
            if len(decayed) < len(grp):
                rest = [n for n in grp if n not in out]
                out.update(
                    (n, torch.zeros_like(grads[n], memory_format=torch.preserve_format))
                    for n in rest
                )
            # ... and the kernel subtracts η · m̂ / (√v̂ + ε) from it
            kernel(
                [out[n] for n in grp],
                [grads[n] for n in grp],
                [adam["exp_avg"][n] for n in grp],
                [adam["exp_avg_sq"][n] for n in grp],
                [adam["max_exp_avg_sq"][n] for n in grp] if amsgrad else [],
                t,
                lr=lr_t,
            )
        adam["count"] = t
        commit_lr(lr_state, lr_t)
        return out, tuple(state), True

    return inplace_transform(init, update)
