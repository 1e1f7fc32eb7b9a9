"""Schedule-free learning (Defazio et al. 2024, "The Road Less Scheduled"), and the swap between
the point gradients are taken at and the averaged point that is evaluated.

Schedule-free SGD/AdamW keep two sequences besides the parameters: ``z`` (the base iterate, in
the state) and the average ``x`` of the ``z``'s. Gradients are taken at the interpolation
``y = β1 x + (1 − β1) z``, which is what the parameters hold while training. Evaluation,
checkpoints for deployment and early stopping must use ``x``:

- :func:`swap_to_eval` turns the parameters into ``x`` (``x = (y − (1 − β1) z) / β1``);
- :func:`swap_to_train` turns them back into ``y``.

Both are no-ops (returning ``False``) for states without an averaged point, and idempotent: the
mode is kept in the state (``"mode": "train" | "eval"``), so calling one twice never double-swaps,
and a checkpoint saved in either mode resumes correctly after ``swap_to_train``. An update in
eval mode is refused (the gradient was taken at the wrong point). ``descend.fit`` and
``descend.optim.as_torch_optimizer(...).train()/.eval()`` call them for you.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from descend._errors import (
    ConfigError,
    check_in_range,
    check_positive,
    describe,
    message,
    plain,
)
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._basic import commit_lr, next_lr
from descend.transforms._util import (
    Impl,
    Mask,
    MaskCache,
    check_callable,
    check_mask_names,
    check_real,
    groups,
    mask_fn,
    need_params,
    present,
    resolve_impl,
    zeros_like_all,
)

__all__ = ["averaged_point_states", "scale_by_schedule_free", "swap_to_eval", "swap_to_train"]

KIND = "schedule_free"


def scale_by_schedule_free(
    lr: float,
    *,
    b1: float = 0.9,
    b2: float | None = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Mask | str = "default",
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    schedule: Callable[[int], float] | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Schedule-free AdamW (``b2`` a number) or SGD (``b2=None``), as the ``schedulefree``
    package's ``AdamWScheduleFree`` / ``SGDScheduleFree``. It includes the learning rate.

    With ``η_t = lr · schedule(t) · scale · min(1, (t+1)/warmup_steps)`` at 0-based step ``t``,
    ``w_t = (t+1)^r · (max_{s≤t} η_s)^weight_lr_power`` and ``c_t = w_t / Σ_{s≤t} w_s``::

        v_t = β2 v_{t-1} + (1 − β2) g_t²                   (AdamW only)
        d_t = g_t / (sqrt(v_t / (1 − β2^(t+1))) + ε)        (AdamW)   or   g_t   (SGD)
        d_t ← d_t + λ y_t                                  (decayed parameters)
        y_{t+1} = (1 − c_t) y_t + c_t z_t + η_t (β1 (1 − c_t) − 1) d_t
        z_{t+1} = z_t − η_t d_t

    The update returned is ``y_{t+1} − y_t``. The state is ``(sf, lr_state)`` with
    ``sf = {"kind": "schedule_free", "mode": "train"|"eval", "b1", "count", "weight_sum",
    "lr_max", "z": {...}}`` (+ ``"exp_avg_sq"`` for AdamW) and the usual
    ``{"count", "lr", "scale"}`` learning-rate dict (``find_lr_state`` finds it).

    Args:
        lr: base learning rate η > 0.
        b1: β1 in (0, 1), the interpolation between the average and the base iterate.
        b2: β2 in [0, 1) of the second moment, or ``None`` for schedule-free SGD.
        eps: ε >= 0 (AdamW).
        weight_decay: λ >= 0, evaluated at ``y`` as the reference does.
        mask: which parameters to decay (``"default"``: ndim >= 2; ``None``: all, as the
            reference package).
        warmup_steps: linear warmup length (>= 0).
        r: >= 0, polynomial weighting of the average.
        weight_lr_power: >= 0, weight of each step in the average by η^power.
        schedule: an extra multiplier of the learning rate (rarely needed: that is the point).
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_schedule_free"
    lr = check_positive("lr", lr, owner=owner)
    b1 = check_in_range("b1", b1, 0.0, 1.0, owner=owner, low_inclusive=False, example="b1=0.9")
    adam = b2 is not None
    if adam:
        b2 = check_in_range("b2", b2, 0.0, 1.0, owner=owner, example="b2=0.999")
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    weight_decay = check_positive("weight_decay", weight_decay, owner=owner, allow_zero=True)
    warmup_steps = plain(warmup_steps)
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ConfigError(
            message(f"{owner}: warmup_steps", "must be an integer >= 0", describe(warmup_steps),
                    "pass e.g. warmup_steps=100")
        )  # fmt: skip
    r = check_positive("r", r, owner=owner, allow_zero=True)
    weight_lr_power = check_positive(
        "weight_lr_power", weight_lr_power, owner=owner, allow_zero=True
    )
    if schedule is not None:
        check_callable("schedule", schedule, owner=owner, example="descend.schedules.cosine(1000)")
    path = resolve_impl(impl, owner)
    decide = MaskCache(mask_fn(mask, owner=owner)) if weight_decay else None

    def init(params: Params) -> State:
        if adam:  # the SGD form is linear in g and takes complex parameters
            check_real(params, owner)
        if decide is not None:
            check_mask_names(mask, params, owner=owner)
            decide.reset()
        sf: dict[str, Any] = {
            "kind": KIND,
            "mode": "train",
            "b1": b1,
            "count": 0,
            "weight_sum": 0.0,
            "lr_max": -1.0,
            "z": {
                n: p.detach().clone(memory_format=torch.preserve_format) for n, p in params.items()
            },
        }
        if adam:
            sf["exp_avg_sq"] = zeros_like_all(params)
        return (sf, {"count": 0, "lr": lr, "scale": 1.0})

    def coefficients(sf: dict, lr_state: dict) -> tuple[float, float, float]:
        """(η_t, c_t, the coefficient of d_t in y) of this step; advances the average's weights."""
        k = sf["count"]
        # the swaps recover x from y with the β1 that formed y: this step's (a rebuilt
        # transform, e.g. momentum cycled by a torch scheduler, loads the state of the old one)
        sf["b1"] = b1
        lr_t = next_lr(lr_state, lr, schedule)
        if k < warmup_steps:
            lr_t *= (k + 1) / warmup_steps
        lr_max = sf["lr_max"] = max(lr_t, sf["lr_max"])
        weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
        weight_sum = sf["weight_sum"] = sf["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum else 0.0
        return lr_t, ckp1, lr_t * (b1 * (1 - ckp1) - 1)

    def start(state: State, params: Params | None):
        sf, lr_state = state
        if sf["mode"] != "train":
            raise ConfigError(
                message(
                    f"{owner}.update",
                    "needs the parameters at the training point y (train mode)",
                    "a state in eval mode (the parameters hold the averaged point x)",
                    "call descend.transforms.swap_to_train(state, params) before the forward "
                    "pass (fit and as_torch_optimizer(...).train() do it)",
                )
            )
        need_params(params, owner)
        return sf, lr_state

    def finish(sf: dict, lr_state: dict, lr_t: float) -> None:
        sf["count"] += 1
        commit_lr(lr_state, lr_t)

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        sf, lr_state = start(state, params)
        lr_t, ckp1, c_d = coefficients(sf, lr_state)
        bc2 = 1 - b2 ** (sf["count"] + 1) if adam else 1.0  # type: ignore[operator]
        updates = {}
        for name in present(grads):
            g, y, z = grads[name], params[name], sf["z"][name]  # type: ignore[index]
            if adam:
                v = sf["exp_avg_sq"][name]
                v.mul_(b2).addcmul_(g, g, value=1 - b2)  # type: ignore[operator]
                d = g / v.div(bc2).sqrt_().add_(eps)
            else:
                d = g.clone()
            if decide is not None and decide(name, y):
                d.add_(y, alpha=weight_decay)
            updates[name] = (z - y).mul_(ckp1).add_(d, alpha=c_d)
            z.sub_(d, alpha=lr_t)
        finish(sf, lr_state, lr_t)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        sf, lr_state = start(state, params)
        lr_t, ckp1, c_d = coefficients(sf, lr_state)
        bc2 = 1 - b2 ** (sf["count"] + 1) if adam else 1.0  # type: ignore[operator]
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            ys = [params[n] for n in grp]  # type: ignore[index]
            zs = [sf["z"][n] for n in grp]
            if adam:
                vs = [sf["exp_avg_sq"][n] for n in grp]
                torch._foreach_mul_(vs, b2)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)  # type: ignore[operator]
                denom = torch._foreach_div(vs, bc2)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, eps)
                ds = torch._foreach_div(gs, denom)
            else:
                ds = list(gs) if owned else torch._foreach_mul(gs, 1.0)
            if decide is not None:
                decayed = [i for i, n in enumerate(grp) if decide(n, ys[i])]
                if decayed:
                    torch._foreach_add_(
                        [ds[i] for i in decayed], [ys[i] for i in decayed], alpha=weight_decay
                    )
            u = torch._foreach_sub(zs, ys)
            torch._foreach_mul_(u, ckp1)
            torch._foreach_add_(u, ds, alpha=c_d)
            torch._foreach_add_(zs, ds, alpha=-lr_t)
            out.update(zip(grp, u))
        finish(sf, lr_state, lr_t)
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)


# --------------------------------------------------------------------------- train/eval swap


def averaged_point_states(state: Any) -> Iterator[dict[str, Any]]:
    """Every schedule-free state dict (``"kind": "schedule_free"``) in a state tree."""
    if isinstance(state, dict):
        if state.get("kind") == KIND:
            yield state
            return
        children: Any = state.values()
    elif isinstance(state, (tuple, list)):
        children = state
    else:
        return
    for child in children:
        if isinstance(child, (dict, tuple, list)):
            yield from averaged_point_states(child)


def _swap(state: Any, params: Params, to: str) -> bool:
    swapped = False
    for sf in averaged_point_states(state):
        if sf["mode"] == to:
            continue
        b1 = float(sf["b1"])
        # eval: x = y + (1 − 1/β1)(z − y);  train: y = x + (1 − β1)(z − x)
        weight = 1 - 1 / b1 if to == "eval" else 1 - b1
        names = [n for n in sf["z"] if n in params]
        with torch.no_grad():
            for grp in groups(names, params):
                torch._foreach_lerp_([params[n] for n in grp], [sf["z"][n] for n in grp], weight)
        sf["mode"] = to
        swapped = True
    return swapped


def swap_to_eval(state: Any, params: Params) -> bool:
    """Put the averaged point ``x`` into ``params`` (in place) for evaluation or saving.

    Returns ``True`` if some parameters were swapped, ``False`` when the state has no averaged
    point (any non-schedule-free optimizer) or is already in eval mode. Call it before
    evaluating, before copying the best weights, and before saving weights for deployment.

    Example:
        >>> import torch
        >>> from descend import optim
        >>> from descend.transforms import swap_to_eval, swap_to_train
        >>> params = {"w": torch.zeros(2)}
        >>> tx = optim.schedulefree_adamw(lr=0.1)
        >>> state = tx.init(params)
        >>> swap_to_eval(state, params), swap_to_eval(state, params), swap_to_train(state, params)
        (True, False, True)
    """
    return _swap(state, params, "eval")


def swap_to_train(state: Any, params: Params) -> bool:
    """Put the training point ``y`` back into ``params`` (in place) before the next step.

    Returns ``True`` if some parameters were swapped; a no-op returning ``False`` when there is
    nothing to swap (no averaged point, or already in train mode).
    """
    return _swap(state, params, "train")
