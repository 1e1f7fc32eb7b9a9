"""Fused fast paths for the Adam family and momentum SGD.

``chain(*head, scale_by_adam(), [add_decayed_weights(λ)], scale_by_learning_rate(η))`` costs a
pass over memory per link, and :func:`~descend.transforms.apply_updates` one more.
:func:`fused_adam_chain` returns a Transform with exactly that chain's state tree (a checkpoint
loads into either) and two fused paths:

- ``update``: one call of torch's fused Adam kernel on an update buffer that starts as
  ``−η λ θ`` (decayed parameters) or zeros; the kernel subtracts ``η · m̂ / (√v̂ + ε)``;
- ``update.apply`` (used by :func:`~descend.transforms.update_and_apply`): the kernel runs on
  the parameters themselves, ``θ ← θ (1 − η λ) − η m̂ / (√v̂ + ε)``: the same single pass as
  ``torch.optim.AdamW(fused=True).step()``.

:func:`fused_sgd_chain` does the same for ``chain(*head, [add_l2(λ)], [trace(μ, ...)],
scale_by_learning_rate(η))`` with torch's fused SGD kernel. Where a kernel is unavailable both
paths run the chain itself (the ``_foreach_*`` path).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

from descend.transforms._adaptive import scale_by_adam
from descend.transforms._base import (
    Params,
    State,
    Transform,
    Updates,
    apply_updates,
    chain,
    inplace_transform,
)
from descend.transforms._basic import (
    add_decayed_weights,
    add_l2,
    commit_lr,
    next_lr,
    scale_by_learning_rate,
)
from descend.transforms._kernels import AdamKernel, SGDKernel
from descend.transforms._momentum import trace
from descend.transforms._util import (
    MaskCache,
    groups,
    is_sharded,
    mask_fn,
    need_params,
    present,
)

__all__ = ["fused_adam_chain", "fused_sgd_chain"]


def _inplace(t: Transform):
    fn = getattr(t.update, "inplace", None)
    if fn is not None:
        return fn

    def fallback(grads: Updates, state: State, params: Params | None, owned: bool):
        grads, state = t.update(grads, state, params)
        return grads, state, False

    return fallback


def _same(a: Any, b: list) -> bool:
    """Whether iterable ``a`` holds exactly the objects of list ``b``, in order."""
    a = list(a)
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` fills its memory without gaps or overlaps, in some order of its dims
    (contiguous, channels_last, transposed), as ``torch.empty_like`` preserves it."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=operator.itemgetter(1)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _param_groups(
    grads: Updates, params: Params, supports: Callable[[torch.Tensor], bool]
) -> tuple[list[list[str]] | None, bool]:
    """``(groups, plain)``: names grouped by the parameters' (device, dtype), or None if the
    kernel cannot write the parameters directly (no kernel here, a gradient of another
    dtype/device, or a parameter with gaps in its memory: a strided view such as
    ``w[:, ::2]``, which the kernels, walking every tensor as flat memory, would update wrongly
    and write between the gaps); ``plain``: every parameter is contiguous."""
    names = present(grads)
    plain = True
    for n in names:
        p, g = params[n], grads[n]
        if p.dtype != g.dtype or p.device != g.device or p.shape != g.shape:
            return None, plain
        if not p.is_contiguous():
            plain = False
            if not _dense(p):
                return None, plain
    grps = groups(names, params)
    if not all(supports(params[grp[0]]) for grp in grps):
        return None, plain
    return grps, plain


def _follow_layout(buffers: dict[str, torch.Tensor], names: list[str], params: Params) -> None:
    """Give each state buffer its parameter's memory layout where they differ (a model made
    ``channels_last`` after the state was): the kernels walk parameter and buffers as flat
    memory together, so they must agree element for element. Values are kept."""
    for n in names:
        b, p = buffers[n], params[n]
        if b.is_contiguous() and p.is_contiguous():  # the usual case: two flag reads
            continue
        if b.stride() != p.stride() and not is_sharded(b) and _dense(p):
            buffers[n] = torch.empty_like(
                p, dtype=b.dtype, device=b.device, memory_format=torch.preserve_format
            ).copy_(b)


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
    adam_link = scale_by_adam(b1, b2, eps, amsgrad, impl="foreach")
    tail = [adam_link]
    if weight_decay:
        tail.append(add_decayed_weights(weight_decay, mask))
    tail.append(scale_by_learning_rate(lr, schedule))
    links = [*head, *tail]
    reference = chain(*links)
    steps = [_inplace(t) for t in links]
    n_head = len(head)
    i_adam, i_lr = n_head, len(links) - 1
    kernel: AdamKernel = adam_link.update.hyper  # type: ignore[attr-defined]  # shared betas
    decide = MaskCache(mask_fn(mask, owner="add_decayed_weights")) if weight_decay else None

    def init(params: Params) -> State:
        if decide is not None:
            decide.reset()
        plans.clear()
        last[0] = None
        return reference.init(params)

    def run_head(grads: Updates, state: list, params: Params | None):
        owned = False
        for i in range(n_head):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        return grads, owned

    def run_tail(grads: Updates, state: list, params: Params | None, owned: bool):
        for i in range(n_head, len(links)):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        return grads, tuple(state), owned

    def moments(adam: State, grp: list[str]):
        return (
            [adam["exp_avg"][n] for n in grp],
            [adam["exp_avg_sq"][n] for n in grp],
            [adam["max_exp_avg_sq"][n] for n in grp] if amsgrad else [],
        )

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        state = list(state)
        for i in range(n_head):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        grps = groups(present(grads), grads)
        if not all(kernel.supports(grads[grp[0]]) for grp in grps):
            return run_tail(grads, state, params, owned)
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
                # laid out as the moments (the parameters'), which the kernel walks with it
                ms = adam["exp_avg"]
                out.update(
                    (n, torch.zeros_like(ms[n], memory_format=torch.preserve_format)) for n in rest
                )
            # ... and the kernel subtracts η · m̂ / (√v̂ + ε) from it
            kernel([out[n] for n in grp], [grads[n] for n in grp], *moments(adam, grp), t, lr_t)
        adam["count"] = t
        commit_lr(lr_state, lr_t)
        return out, tuple(state), True

    # apply's plan per set of gradient names: the kernel calls as (names, weight decay) — the
    # (device, dtype) groups split into decayed and kept parameters — or None where the kernel
    # cannot write the parameters. Rebuilt when a parameter tensor is replaced or changes
    # device/dtype; each step still checks that every gradient matches its parameter.
    plans: dict[tuple[str, ...], tuple[tuple, list[tuple[list[str], float]] | None, bool]] = {}
    moment_keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def plan(grads: Updates, state: list, params: Params):
        names = tuple(present(grads))
        ps = [params[n] for n in names]
        for p, n in zip(ps, names):
            g = grads[n]
            if p.dtype != g.dtype or p.device != g.device or p.shape != g.shape:
                return None
        # is_contiguous(): a parameter given another memory layout in place (.data swapped by
        # model.to(memory_format=...)) keeps its id; the flag tells the plan (a cached read)
        ident = tuple((id(p), p.device, p.dtype, p.is_contiguous()) for p in ps)
        hit = plans.get(names)
        if hit is None or hit[0] != ident or hit[2]:
            # a new plan, a parameter of a new layout, or one in a layout of its own
            # (channels_last: loaded moments may be laid out otherwise): the moments follow
            adam = state[i_adam]
            for key in moment_keys:
                _follow_layout(adam[key], list(names), params)
        if hit is not None and hit[0] == ident:
            return hit[1]
        grps, _ = _param_groups(grads, params, kernel.supports)
        calls: list[tuple[list[str], float]] | None = None
        if grps is not None:
            calls = []
            for grp in grps:
                if decide is None:
                    calls.append((grp, 0.0))
                    continue
                decayed = [n for n in grp if decide(n, params[n])]
                kept = [n for n in grp if not decide(n, params[n])]
                calls += [(ns, wd) for ns, wd in ((decayed, weight_decay), (kept, 0.0)) if ns]
        plans[names] = (ident, calls, not all(p.is_contiguous() for p in ps))
        return calls

    # The last step's kernel arguments, reused while every tensor in them is the same object as
    # then and each parameter is on the same storage (a ``.data`` swap changes it): a training
    # loop passes the same parameters and moments every step, and fit's plain-MLP path the same
    # gradient buffers too. A miss costs one identity test.
    last: list[Any] = [None]

    def reuse(grads: Updates, state: State, params: Params) -> list | None:
        hit = last[0]
        if hit is None:
            return None
        names, gvals, pvals, ptrs, adam_ref, mvals, args = hit
        if not _same(grads.values(), gvals) or tuple(grads) != names:
            return None
        adam = state[i_adam]
        if adam is not adam_ref:
            return None
        pv = list(map(params.__getitem__, names))
        if not _same(pv, pvals) or list(map(torch.Tensor.data_ptr, pv)) != ptrs:
            return None
        for key, vals in mvals:
            if not _same(map(adam[key].__getitem__, names), vals):
                return None
        return args

    def remember(grads: Updates, state: State, params: Params, calls) -> None:
        if n_head or calls is None or any(g is None for g in grads.values()):
            last[0] = None
            return
        names = tuple(grads)
        adam = state[i_adam]
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        pv = [params[n] for n in names]
        args = []
        for ns, wd in calls:
            ps = [params[n] for n in ns]
            args.append((ps, [grads[n] for n in ns], *moments(adam, ns), wd, ps[0].device))
        last[0] = (
            names,
            list(grads.values()),
            pv,
            [p.data_ptr() for p in pv],
            adam,
            [(k, [adam[k][n] for n in names]) for k in keys],
            args,
        )

    def apply(grads: Updates, state: State, params: Params) -> State:
        args = None if n_head else reuse(grads, state, params)
        if args is not None:  # the same tensors as the last step: straight to the kernel
            adam, lr_state = state[i_adam], state[i_lr]
            lr_t = next_lr(lr_state, lr, schedule)
            t = adam["count"] + 1
            for ps, gs, ms, vs, vmax, wd, device in args:
                kernel.run(device, ps, gs, ms, vs, vmax, t, lr_t, wd)
            adam["count"] = t
            commit_lr(lr_state, lr_t)
            return tuple(state)
        state = list(state)
        grads, owned = run_head(grads, state, params) if n_head else (grads, False)
        calls = plan(grads, state, params)
        if calls is None:
            last[0] = None
            updates, state, _ = run_tail(grads, state, params, owned)
            apply_updates(params, updates)
            return state
        adam, lr_state = state[i_adam], state[i_lr]
        lr_t = next_lr(lr_state, lr, schedule)
        t = adam["count"] + 1
        for names, wd in calls:
            ps = [params[n] for n in names]
            gs = [grads[n] for n in names]
            kernel(ps, gs, *moments(adam, names), t, lr_t, wd)
        adam["count"] = t
        commit_lr(lr_state, lr_t)
        remember(grads, state, params, calls)
        return tuple(state)

    tx = inplace_transform(init, update, apply)
    tx.update.hyper = kernel  # type: ignore[attr-defined]
    return tx


def fused_sgd_chain(
    head: Sequence[Transform],
    *,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    lr: float,
    schedule: Callable[[int], float] | None,
) -> Transform:
    """``chain(*head, [add_l2(weight_decay)], [trace(momentum, dampening, nesterov)],
    scale_by_learning_rate(lr, schedule))`` with the tail in torch's fused SGD kernel.

    ``momentum=0`` means plain SGD (no trace link, no buffers).
    """
    l2 = [add_l2(weight_decay)] if weight_decay else []
    mom = [trace(momentum, dampening, nesterov, impl="foreach")] if momentum else []
    links = [*head, *l2, *mom, scale_by_learning_rate(lr, schedule)]
    reference = chain(*links)
    steps = [_inplace(t) for t in links]
    n_head = len(head)
    i_trace = n_head + len(l2) if momentum else None
    i_lr = len(links) - 1
    # the trace link's momentum holder, shared (a torch scheduler may move it)
    hyper = mom[0].update.hyper if mom else None  # type: ignore[attr-defined]
    kernel = SGDKernel(momentum, dampening, nesterov, hyper=hyper)

    def buffers(state: list, names: list[str]) -> tuple[list[torch.Tensor], bool]:
        if i_trace is None:
            return [], False
        tr = state[i_trace]
        return [tr["momentum_buffer"][n] for n in names], tr["count"] == 0

    def finish(state: list, lr_t: float) -> State:
        if i_trace is not None:
            state[i_trace]["count"] += 1
        commit_lr(state[i_lr], lr_t)
        return tuple(state)

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        state = list(state)
        # head and the coupled decay run as links (the decay needs θ, the kernel sees a buffer)
        for i in range(n_head + len(l2)):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        grps = groups(present(grads), grads)
        if not grps or not all(kernel.supports(grads[grp[0]]) for grp in grps):
            for i in range(n_head + len(l2), len(links)):
                grads, state[i], owned = steps[i](grads, state[i], params, owned)
            return grads, tuple(state), owned
        lr_t = next_lr(state[i_lr], lr, schedule)
        out: dict[str, torch.Tensor] = {}
        for grp in grps:
            # out ← 0 − η d: the kernel writes the whole update into a fresh buffer
            # laid out as the momentum buffers (the parameters'), which the kernel walks with it
            bufs, first = buffers(state, grp)
            like = bufs or [grads[n] for n in grp]
            u = [torch.zeros_like(b, memory_format=torch.preserve_format) for b in like]
            kernel(u, [grads[n] for n in grp], bufs, first=first, lr=lr_t)
            out.update(zip(grp, u))
        return out, finish(state, lr_t), True

    seen: list[Any] = [None, False]  # the momentum buffers last checked, and whether odd

    def apply(grads: Updates, state: State, params: Params) -> State:
        state = list(state)
        owned = False
        for i in range(n_head):
            grads, state[i], owned = steps[i](grads, state[i], params, owned)
        grps, plain = _param_groups(grads, params, kernel.supports)
        if grps and i_trace is not None:
            bufs = state[i_trace]["momentum_buffer"]
            # The buffers follow their parameters' memory layout (see _follow_layout): checked
            # where a parameter is not contiguous, on new buffers (a first step, a loaded
            # state), and once after a step that had to (a layout changed back)
            if not plain or bufs is not seen[0] or seen[1]:
                _follow_layout(bufs, present(grads), params)
                seen[0], seen[1] = bufs, not plain
        if not grps:
            for i in range(n_head, len(links)):
                grads, state[i], owned = steps[i](grads, state[i], params, owned)
            apply_updates(params, grads)
            return tuple(state)
        lr_t = next_lr(state[i_lr], lr, schedule)
        for grp in grps:
            bufs, first = buffers(state, grp)
            ps = [params[n] for n in grp]
            kernel(ps, [grads[n] for n in grp], bufs, first=first, lr=lr_t, wd=weight_decay)
        return finish(state, lr_t)

    tx = inplace_transform(reference.init, update, apply)
    if hyper is not None:
        tx.update.hyper = hyper  # type: ignore[attr-defined]
    return tx
