"""Lion's sign direction and the layer-wise trust ratio of LAMB/LARS.

Like the adaptive scalers, none includes the learning rate: chain with
``scale_by_learning_rate`` (``descend.optim.lion/lamb/lars`` do).
"""

from __future__ import annotations

import torch

from descend._errors import check_in_range, check_positive
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._util import (
    Impl,
    Mask,
    MaskCache,
    check_mask_names,
    check_real,
    groups,
    mask_fn,
    need_params,
    present,
    resolve_impl,
    zeros_like_all,
)

__all__ = ["scale_by_lion", "scale_by_trust_ratio"]


def scale_by_lion(b1: float = 0.9, b2: float = 0.99, *, impl: Impl = "auto") -> Transform:
    """Lion's direction (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")::

        u_t = sign(β1 · m_{t-1} + (1 − β1) · g_t)
        m_t = β2 · m_{t-1} + (1 − β2) · g_t

    Every coordinate moves by exactly ±1 (0 where the interpolation is 0) before the learning
    rate, so Lion wants a learning rate 3–10× smaller than AdamW's and a weight decay as much
    larger. State: ``{"exp_avg": {name: Tensor}}``.

    Args:
        b1: interpolation weight of the update, in [0, 1).
        b2: decay of the momentum, in [0, 1).
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_lion"
    b1 = check_in_range("b1", b1, 0.0, 1.0, owner=owner, example="b1=0.9")
    b2 = check_in_range("b2", b2, 0.0, 1.0, owner=owner, example="b2=0.99")
    path = resolve_impl(impl, owner)

    def init(params: Params) -> State:
        check_real(params, owner)
        return {"exp_avg": zeros_like_all(params)}

    # The order of operations is lion-pytorch's, so the sign agrees even where the
    # interpolation is within rounding of zero.
    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        updates = {}
        for name in present(grads):
            g, m = grads[name], state["exp_avg"][name]
            updates[name] = (m * b1).add_(g, alpha=1 - b1).sign_()
            m.mul_(b2).add_(g, alpha=1 - b2)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            ms = [state["exp_avg"][n] for n in grp]
            u = torch._foreach_mul(ms, b1)
            torch._foreach_add_(u, gs, alpha=1 - b1)
            torch._foreach_sign_(u)
            torch._foreach_mul_(ms, b2)
            torch._foreach_add_(ms, gs, alpha=1 - b2)
            out.update(zip(grp, u))
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)


def scale_by_trust_ratio(
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    min_norm: float = 0.0,
    mask: Mask | str = None,
) -> Transform:
    """The layer-wise trust ratio of LARS (You et al. 2017) and LAMB (You et al. 2020).

    Each parameter tensor's update is rescaled so its norm is a fixed fraction of the
    parameter's norm::

        r = c · max(‖θ‖, m) / (max(‖u‖, m) + ε)     (c = trust_coefficient, m = min_norm)
        u ← r · u          (u unchanged where ‖θ‖ or ‖u‖ is 0, e.g. zero-initialized biases)

    Put it after the scaler and the decoupled weight decay, before ``scale_by_learning_rate``:
    ``chain(scale_by_adam(), add_decayed_weights(λ), scale_by_trust_ratio(), lr)`` is LAMB, and
    it turns any other optimizer's direction into a layer-wise one the same way. Norms stay on
    the device (no host-device synchronization). State: ``()``.

    Args:
        trust_coefficient: c > 0 (LAMB 1.0; LARS 0.001 with a large global learning rate).
        eps: ε >= 0 added to the update norm.
        min_norm: m >= 0, a floor on both norms.
        mask: which parameters get a trust ratio (``None``: all, as the papers; ``"default"``:
            ndim >= 2 only, a dict or a callable as for ``add_decayed_weights``); the others
            pass through unchanged.
    """
    owner = "scale_by_trust_ratio"
    trust_coefficient = check_positive("trust_coefficient", trust_coefficient, owner=owner)
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    min_norm = check_positive("min_norm", min_norm, owner=owner, allow_zero=True)
    decide = MaskCache(mask_fn(mask, owner=owner))

    def init(params: Params) -> State:
        check_mask_names(mask, params, owner=owner)
        decide.reset()
        return ()

    def update(grads: Updates, state: State, params: Params | None, owned: bool):
        need_params(params, owner)
        names = present(grads)
        chosen = [n for n in names if decide(n, params[n])]  # type: ignore[index]
        out = grads if owned else dict(grads)
        for grp in groups(chosen, grads):
            us = [grads[n] for n in grp]
            ps = [params[n] for n in grp]  # type: ignore[index]
            p_norms = torch.stack(torch._foreach_norm(ps, 2.0)).clamp_min(min_norm)
            u_norms = torch.stack(torch._foreach_norm(us, 2.0)).clamp_min(min_norm)
            r = trust_coefficient * p_norms / (u_norms + eps)
            r = torch.where((p_norms == 0) | (u_norms == 0), torch.ones_like(r), r)
            ratios = list(r.unbind())
            if owned:
                torch._foreach_mul_(us, ratios)
            else:
                out.update(zip(grp, torch._foreach_mul(us, ratios)))
        return out, state, owned or len(chosen) == len(names)

    return inplace_transform(init, update)
