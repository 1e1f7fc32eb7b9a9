"""Stateless and bookkeeping transforms: scaling, learning rate, weight decay, clipping, masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from descend._errors import ConfigError, check_positive, describe, message
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._util import (
    Mask,
    MaskCache,
    check_callable,
    check_finite,
    check_mask_names,
    current_whole_grads,
    global_norm,
    groups,
    mask_fn,
    mul,
    need_params,
    present,
)

__all__ = [
    "add_decayed_weights",
    "add_l2",
    "clip_by_global_norm",
    "find_lr_state",
    "masked",
    "partition",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
]

LR_STATE_KEYS = frozenset({"count", "lr", "scale"})


def _empty(params: Params) -> State:
    return ()


def scale(factor: float) -> Transform:
    """Multiply every update by a constant: ``u ← factor · u``. State: ``()``.

    Example:
        >>> import torch
        >>> from descend.transforms import scale
        >>> tx = scale(-0.1)
        >>> tx.update({"w": torch.ones(2)}, tx.init({"w": torch.zeros(2)}))[0]["w"]
        tensor([-0.1000, -0.1000])
    """
    factor = check_finite("factor", factor, owner="scale")

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        return mul(grads, factor, owned), state, True

    return inplace_transform(_empty, update)


def scale_by_learning_rate(lr: float, schedule: Callable[[int], float] | None = None) -> Transform:
    """Descend: ``u ← −η_t · u`` with ``η_t = lr · schedule(t) · scale`` at 0-based step ``t``.

    Every named optimizer ends with this transform, so there is one place where the learning
    rate lives. Its state is the dict ``{"count": int, "lr": float, "scale": float}``:
    ``count`` is the number of steps taken, ``lr`` the last learning rate applied (the base
    ``lr`` before the first step) and ``scale`` an extra multiplier (1.0) that a training loop
    may change in place, e.g. to back off after a divergence. Find it in any state tree with
    :func:`find_lr_state`.

    Args:
        lr: base learning rate, > 0.
        schedule: optional multiplier ``step -> float`` (see :mod:`descend.schedules`).

    Example:
        >>> import torch
        >>> from descend.transforms import scale_by_learning_rate
        >>> tx = scale_by_learning_rate(0.1)
        >>> state = tx.init({"w": torch.zeros(2)})
        >>> tx.update({"w": torch.ones(2)}, state)[0]["w"]
        tensor([-0.1000, -0.1000])
        >>> state
        {'count': 1, 'lr': 0.1, 'scale': 1.0}
    """
    owner = "scale_by_learning_rate"
    lr = check_positive("lr", lr, owner=owner)
    if schedule is not None:
        check_callable("schedule", schedule, owner=owner, example="descend.schedules.cosine(1000)")

    def init(params: Params) -> State:
        return {"count": 0, "lr": lr, "scale": 1.0}

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        lr_t = next_lr(state, lr, schedule)
        commit_lr(state, lr_t)
        return mul(grads, -lr_t, owned), state, True

    return inplace_transform(init, update)


def next_lr(state: dict[str, Any], lr: float, schedule: Callable[[int], float] | None) -> float:
    """The learning rate of the coming step, ``lr · scale · schedule(count)``."""
    lr_t = lr * state["scale"]
    if schedule is not None:
        value = schedule(state["count"])
        try:
            lr_t *= float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                message(
                    "schedule(step)",
                    "must return a number (the multiplier of the learning rate)",
                    f"{describe(value)} at step {state['count']}",
                    "return a float, e.g. schedule=lambda step: 0.5 ** (step // 1000)",
                )
            ) from None
    return lr_t


def commit_lr(state: dict[str, Any], lr_t: float) -> None:
    state["count"] += 1
    state["lr"] = lr_t


def find_lr_state(state: Any) -> dict[str, Any] | None:
    """The ``{"count", "lr", "scale"}`` dict of :func:`scale_by_learning_rate` in a state tree.

    Returns the first one found (depth first), or ``None``. The dict is updated in place by
    every step, so a training loop can look it up once and keep it.
    """
    if isinstance(state, dict):
        if state.keys() == LR_STATE_KEYS:
            return state
        children: Any = state.values()
    elif isinstance(state, (tuple, list)):
        children = state
    else:
        return None
    for child in children:
        if isinstance(child, (dict, tuple, list)):
            found = find_lr_state(child)
            if found is not None:
                return found
    return None


def scale_by_schedule(fn: Callable[[int], float]) -> Transform:
    """Multiply by a schedule of the 0-based step: ``u ← fn(t) · u``. State: ``{"count": int}``.

    For the learning rate itself prefer ``scale_by_learning_rate(lr, schedule=fn)``, which a
    training loop can find and adjust.
    """
    check_callable("fn", fn, owner="scale_by_schedule", example="descend.schedules.cosine(1000)")

    def init(params: Params) -> State:
        return {"count": 0}

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        value = fn(state["count"])
        try:
            factor = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                message(
                    "scale_by_schedule: fn(step)",
                    "must return a number (the multiplier of the updates)",
                    f"{describe(value)} at step {state['count']}",
                    "return a float, e.g. fn=lambda step: 0.5 ** (step // 1000)",
                )
            ) from None
        state["count"] += 1
        return mul(grads, factor, owned), state, True

    return inplace_transform(init, update)


def _add_weights(weight_decay: float, mask: Any, owner: str) -> Transform:
    decide = MaskCache(mask_fn(mask, owner=owner))

    def init(params: Params) -> State:
        check_mask_names(mask, params, owner=owner)
        decide.reset()
        return ()

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        need_params(params, owner)
        names = present(grads)
        chosen = [n for n in names if decide(n, params[n])]
        if owned:
            for grp in groups(chosen, grads):
                torch._foreach_add_(
                    [grads[n] for n in grp], [params[n] for n in grp], alpha=weight_decay
                )
            return grads, state, True
        out = dict(grads)
        for grp in groups(chosen, grads):
            gs = [grads[n] for n in grp]
            ps = [params[n] for n in grp]
            out.update(zip(grp, torch._foreach_add(gs, ps, alpha=weight_decay)))
        return out, state, len(chosen) == len(names)

    return inplace_transform(init, update)


def add_decayed_weights(weight_decay: float, mask: Mask | str = "default") -> Transform:
    """Decoupled weight decay (AdamW, Loshchilov & Hutter 2019): ``u ← u + λ · θ``.

    Place it *after* the scaler (``scale_by_adam`` ...) and before ``scale_by_learning_rate``,
    so the decay is multiplied by the learning rate but never by Adam's preconditioner; the
    parameter step is then ``θ ← θ − η (adam(g) + λ θ)``, as in ``torch.optim.AdamW``.

    By default (``mask="default"``) only parameters with ``ndim >= 2`` are decayed: weight
    matrices, convolution kernels and embeddings. Biases and normalization weights (1-D) are
    not decayed, since shrinking them toward zero only hurts. ``mask`` may also be ``None``
    (decay everything, like ``torch.optim.AdamW``), a dict ``{name: bool}`` (names not listed
    are not decayed), or a callable ``(name, tensor) -> bool``. State: ``()``.

    Args:
        weight_decay: λ >= 0.
        mask: which parameters to decay.
    """
    owner = "add_decayed_weights"
    weight_decay = check_positive("weight_decay", weight_decay, owner=owner, allow_zero=True)
    return _add_weights(weight_decay, mask, owner)


def add_l2(weight_decay: float) -> Transform:
    """Coupled L2 regularization: ``u ← u + λ · θ`` on every parameter, before the scaler.

    This is ``weight_decay`` of ``torch.optim.SGD/Adam/RMSprop/Adagrad/NAdam``: the gradient of
    ``λ/2 · ‖θ‖²`` is added to the gradient, so adaptive optimizers rescale it too (for
    decoupled decay use :func:`add_decayed_weights`). State: ``()``.
    """
    weight_decay = check_positive("weight_decay", weight_decay, owner="add_l2", allow_zero=True)
    return _add_weights(weight_decay, None, "add_l2")


def clip_by_global_norm(max_norm: float, eps: float = 1e-6) -> Transform:
    """Rescale all updates together so their global L2 norm is at most ``max_norm``.

    ``u ← u · min(1, max_norm / (‖u‖₂ + eps))`` with ``‖u‖₂`` over every tensor, as
    ``torch.nn.utils.clip_grad_norm_``. The factor stays a tensor on the device (no ``.item()``,
    no host-device synchronization). A non-finite norm propagates to the updates. State: ``()``.
    In a step of ``as_torch_optimizer`` with several parameter groups, ``‖u‖₂`` is over every
    group's gradients (as ``clip_grad_norm_(model.parameters())`` before a torch optimizer's
    step), where this link gets the raw gradients.
    """
    owner = "clip_by_global_norm"
    max_norm = check_positive("max_norm", max_norm, owner=owner)
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        names = present(grads)
        if not names:
            return grads, state, owned
        device = grads[names[0]].device
        whole = current_whole_grads()
        if whole is not None and whole.covers(grads, names):
            total = whole.norm(device)
        else:
            total = global_norm(grads, names, device)
        factor = torch.clamp(max_norm / (total + eps), max=1.0)
        return mul(grads, factor, owned), state, True

    return inplace_transform(_empty, update)


def masked(inner: Transform, mask: Mask) -> Transform:
    """Apply ``inner`` only to the parameters selected by ``mask``; pass the others through.

    ``mask`` is a dict ``{name: bool}`` (unlisted names are not selected), a callable
    ``(name, tensor) -> bool`` or ``"default"`` (``ndim >= 2``). The state is ``inner``'s
    state over the selected parameters.
    """
    owner = "masked"
    if not isinstance(inner, Transform):
        from descend._errors import ConfigError, describe, message

        raise ConfigError(
            message(f"{owner}: inner", "must be a descend Transform", describe(inner), None)
        )
    if mask is None:
        from descend._errors import ConfigError, message

        raise ConfigError(
            message(
                f"{owner}: mask",
                "must select parameters",
                "None",
                "pass a dict, a callable or 'default' (or use the inner transform directly)",
            )
        )
    decide = MaskCache(mask_fn(mask, owner=owner))
    inner_inplace = getattr(inner.update, "inplace", None)

    def init(params: Params) -> State:
        check_mask_names(mask, params, owner=owner)
        decide.reset()
        return inner.init({n: p for n, p in params.items() if decide(n, p)})

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        names = present(grads)
        ref = params if params is not None else grads
        chosen = [n for n in names if decide(n, ref[n])]
        sub_g = {n: grads[n] for n in chosen}
        sub_p = None if params is None else {n: params[n] for n in chosen}
        if inner_inplace is None:
            sub_u, state = inner.update(sub_g, state, sub_p)
            fresh = False
        else:
            sub_u, state, fresh = inner_inplace(sub_g, state, sub_p, owned)
        out = dict(grads)
        out.update(sub_u)
        return out, state, fresh and (owned or len(chosen) == len(names))

    return inplace_transform(init, update)


def partition(
    transforms: Mapping[str, Transform],
    labels: Mapping[str, str] | Callable[[str, torch.Tensor], str],
) -> Transform:
    """Send each parameter to one of several transforms, chosen by a label per parameter.

    ``transforms`` maps a label (e.g. ``"muon"``, ``"adamw"``) to a Transform; ``labels`` is a
    dict ``{parameter name: label}`` covering every parameter, or a callable
    ``(name, tensor) -> label``. The state is ``{label: that transform's state over its
    parameters}``; a label with no parameters keeps an empty state. Labels are decided at
    ``init`` (a parameter's name and shape never change).

    Example:
        >>> import torch
        >>> from descend.transforms import partition, scale
        >>> tx = partition({"a": scale(1.0), "b": scale(-1.0)}, lambda n, p: "a" if p.ndim else "b")
        >>> params = {"w": torch.zeros(2), "s": torch.zeros(())}
        >>> up, _ = tx.update({"w": torch.ones(2), "s": torch.ones(())}, tx.init(params), params)
        >>> up["w"], up["s"]
        (tensor([1., 1.]), tensor(-1.))
    """
    from descend._errors import ConfigError, describe, message

    owner = "partition"
    if not isinstance(transforms, Mapping) or not transforms:
        raise ConfigError(
            message(
                f"{owner}: transforms",
                "must be a non-empty dict {label: Transform}",
                describe(transforms),
                "e.g. partition({'muon': scale_by_muon(), 'adamw': scale_by_adam()}, labels)",
            )
        )
    for label, t in transforms.items():
        if not isinstance(label, str) or not isinstance(t, Transform):
            raise ConfigError(
                message(
                    f"{owner}: transforms[{label!r}]",
                    "must be a descend Transform under a str label",
                    describe(t),
                    None,
                )
            )
    if not (isinstance(labels, Mapping) or callable(labels)):
        raise ConfigError(
            message(
                f"{owner}: labels",
                "must be a dict {parameter name: label} or a callable (name, tensor) -> label",
                describe(labels),
                None,
            )
        )
    names = list(transforms)
    inner = {k: (t, getattr(t.update, "inplace", None)) for k, t in transforms.items()}
    table: dict[str, str] = {}

    def label_of(name: str, tensor: torch.Tensor) -> str:
        hit = table.get(name)
        if hit is None:
            hit = labels.get(name) if isinstance(labels, Mapping) else labels(name, tensor)
            if hit not in transforms:
                raise ConfigError(
                    message(
                        f"{owner}: the label of {name!r}",
                        f"must be one of {names}",
                        describe(hit),
                        "label every parameter with one of the transforms' keys",
                    )
                )
            table[name] = hit
        return hit

    def init(params: Params) -> State:
        table.clear()
        if isinstance(labels, Mapping):
            check_mask_names(labels, params, owner=owner)
        return {
            k: transforms[k].init({n: p for n, p in params.items() if label_of(n, p) == k})
            for k in names
        }

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        ref = params if params is not None else grads
        chosen: dict[str, list[str]] = {k: [] for k in names}
        for n in present(grads):
            chosen[label_of(n, ref[n])].append(n)
        out = dict(grads)
        fresh = True
        new_state = state  # in place: links keep their state dicts' identity
        for k in names:
            if not chosen[k]:
                continue
            t, inplace = inner[k]
            sub_g = {n: grads[n] for n in chosen[k]}
            sub_p = None if params is None else {n: params[n] for n in chosen[k]}
            if inplace is None:
                sub_u, new_state[k] = t.update(sub_g, state[k], sub_p)
                fresh = False
            else:
                sub_u, new_state[k], f = inplace(sub_g, state[k], sub_p, owned)
                fresh = fresh and f
            out.update(sub_u)
        return out, new_state, fresh

    return inplace_transform(init, update)
