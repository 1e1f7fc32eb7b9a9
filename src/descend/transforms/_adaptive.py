"""Adaptive scalers: Adam (and AMSGrad), NAdam, RMSprop, Adagrad, with torch.optim semantics.

Each has two implementations behind one function: ``impl="reference"`` loops over tensors and
reads like the paper's equations; ``impl="foreach"`` (the default) does the same arithmetic
with torch's multi-tensor ``_foreach_*`` ops, one call per (device, dtype) group. Adam also has
``impl="fused"`` (the default where available): torch's fused Adam kernel, one pass over
memory. Tests check they agree. None includes the learning rate: chain with
``scale_by_learning_rate``.
"""

from __future__ import annotations

import math

import torch

from descend._errors import check_bool, check_choice, check_in_range, check_positive
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._kernels import AdamKernel
from descend.transforms._util import (
    FUSED_IMPLS,
    Impl,
    check_real,
    groups,
    present,
    resolve_impl,
    zeros_like_all,
)

__all__ = ["scale_by_adagrad", "scale_by_adam", "scale_by_nadam", "scale_by_rms"]


def _beta(name: str, value: float, owner: str, example: str) -> float:
    return check_in_range(name, value, 0.0, 1.0, owner=owner, example=example)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = False,
    *,
    impl: Impl = "auto",
) -> Transform:
    """Adam's preconditioned direction (Kingma & Ba 2015), as ``torch.optim.Adam``.

    At step ``t`` (1-based)::

        m_t = β1 · m_{t-1} + (1 − β1) · g_t
        v_t = β2 · v_{t-1} + (1 − β2) · g_t²
        v̂_t = max(v̂_{t-1}, v_t)   if amsgrad   else   v_t
        u_t = (m_t / (1 − β1^t)) / (sqrt(v̂_t / (1 − β2^t)) + ε)

    State: ``{"count": int, "exp_avg": {...}, "exp_avg_sq": {...}}`` (+ ``"max_exp_avg_sq"``
    with ``amsgrad``), buffers keyed by parameter name.

    Args:
        b1, b2: decay rates of the moment estimates, in [0, 1).
        eps: ε >= 0 added to the denominator.
        amsgrad: use the running maximum of ``v`` (Reddi et al. 2018).
        impl: ``"fused"`` (torch's fused Adam kernel, one pass over memory; the default under
            ``"auto"`` on devices that have it, else ``"foreach"``), ``"foreach"`` or
            ``"reference"``.
    """
    owner = "scale_by_adam"
    b1 = _beta("b1", b1, owner, "b1=0.9")
    b2 = _beta("b2", b2, owner, "b2=0.999")
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    amsgrad = check_bool("amsgrad", amsgrad, owner=owner)
    check_choice("impl", impl, FUSED_IMPLS, owner=owner)
    path = impl if impl != "auto" else "fused"
    kernel = AdamKernel(b1, b2, eps, amsgrad)

    def init(params: Params) -> State:
        check_real(params, owner)
        state = {
            "count": 0,
            "exp_avg": zeros_like_all(params),
            "exp_avg_sq": zeros_like_all(params),
        }
        if amsgrad:
            state["max_exp_avg_sq"] = zeros_like_all(params)
        return state

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        b1, b2 = kernel.b1, kernel.b2  # the betas of this step (a torch scheduler may move b1)
        state["count"] += 1
        t = state["count"]
        updates = {}
        for name in present(grads):
            g = grads[name]
            m, v = state["exp_avg"][name], state["exp_avg_sq"][name]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if amsgrad:
                v_max = state["max_exp_avg_sq"][name]
                torch.maximum(v_max, v, out=v_max)
                v = v_max
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            updates[name] = m_hat / (v_hat.sqrt() + eps)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        b1, b2 = kernel.b1, kernel.b2
        state["count"] += 1
        t = state["count"]
        bc1 = 1 - b1**t
        bc2_sqrt = math.sqrt(1 - b2**t)
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            ms = [state["exp_avg"][n] for n in grp]
            vs = [state["exp_avg_sq"][n] for n in grp]
            if path == "fused" and kernel.supports(gs[0]):
                # The kernel does x ← x − lr·m̂/(√v̂ + ε); on zeros with lr = −1 it writes the
                # Adam direction into a fresh buffer.
                # laid out as the moments (the parameters'), which the kernel walks with it
                u = [torch.zeros_like(m, memory_format=torch.preserve_format) for m in ms]
                v_maxes = [state["max_exp_avg_sq"][n] for n in grp] if amsgrad else []
                kernel(u, gs, ms, vs, v_maxes, t, lr=-1.0)
                out.update(zip(grp, u))
                continue
            torch._foreach_lerp_(ms, gs, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            if amsgrad:
                v_maxes = [state["max_exp_avg_sq"][n] for n in grp]
                torch._foreach_maximum_(v_maxes, vs)
                vs = v_maxes
            # u = m / (bc1 · sqrt(v) / sqrt(bc2) + bc1 · ε): one division, bias terms folded.
            denom = torch._foreach_sqrt(vs)
            torch._foreach_mul_(denom, bc1 / bc2_sqrt)
            torch._foreach_add_(denom, bc1 * eps)
            out.update(zip(grp, torch._foreach_div(ms, denom)))
        return out, state, True

    tx = inplace_transform(init, update_reference if path == "reference" else update_foreach)
    # The betas' one holder, found by descend.optim.as_torch_optimizer (param_groups "betas",
    # which schedulers such as OneCycleLR cycle): every path reads kernel.b1/b2 each step.
    tx.update.hyper = kernel  # type: ignore[attr-defined]
    return tx


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    *,
    impl: Impl = "auto",
) -> Transform:
    """Nesterov-accelerated Adam (Dozat 2016), as ``torch.optim.NAdam``.

    With the momentum schedule ``μ_t = β1 (1 − ½ · 0.96^(t·ψ))`` (ψ = ``momentum_decay``) and
    ``Π_t = μ_1 ··· μ_t``, at step ``t`` (1-based)::

        m_t = β1 · m_{t-1} + (1 − β1) · g_t
        v_t = β2 · v_{t-1} + (1 − β2) · g_t²
        d_t = sqrt(v_t / (1 − β2^t)) + ε
        u_t = (1 − μ_t) / (1 − Π_t) · g_t / d_t  +  μ_{t+1} / (1 − Π_t · μ_{t+1}) · m_t / d_t

    State: ``{"count": int, "mu_product": float, "exp_avg": {...}, "exp_avg_sq": {...}}``.

    Args:
        b1, b2: in [0, 1).
        eps: ε >= 0.
        momentum_decay: ψ >= 0.
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_nadam"
    b1 = _beta("b1", b1, owner, "b1=0.9")
    b2 = _beta("b2", b2, owner, "b2=0.999")
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    momentum_decay = check_positive("momentum_decay", momentum_decay, owner=owner, allow_zero=True)
    path = resolve_impl(impl, owner)

    def init(params: Params) -> State:
        check_real(params, owner)
        return {
            "count": 0,
            "mu_product": 1.0,
            "exp_avg": zeros_like_all(params),
            "exp_avg_sq": zeros_like_all(params),
        }

    def coefficients(state: State) -> tuple[int, float, float]:
        state["count"] += 1
        t = state["count"]
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        state["mu_product"] *= mu
        prod = state["mu_product"]
        return t, (1.0 - mu) / (1.0 - prod), mu_next / (1.0 - prod * mu_next)

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        t, c_grad, c_avg = coefficients(state)
        updates = {}
        for name in present(grads):
            g = grads[name]
            m, v = state["exp_avg"][name], state["exp_avg_sq"][name]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            d = (v / (1 - b2**t)).sqrt() + eps
            updates[name] = c_grad * g / d + c_avg * m / d
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        t, c_grad, c_avg = coefficients(state)
        bc2 = 1 - b2**t
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            ms = [state["exp_avg"][n] for n in grp]
            vs = [state["exp_avg_sq"][n] for n in grp]
            torch._foreach_lerp_(ms, gs, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            denom = torch._foreach_div(vs, bc2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            u = torch._foreach_div(gs, denom)
            torch._foreach_mul_(u, c_grad)
            torch._foreach_addcdiv_(u, ms, denom, value=c_avg)
            out.update(zip(grp, u))
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)


def scale_by_rms(
    alpha: float = 0.99,
    eps: float = 1e-8,
    centered: bool = False,
    *,
    impl: Impl = "auto",
) -> Transform:
    """RMSprop's direction (Hinton 2012), as ``torch.optim.RMSprop`` (without momentum/lr)::

        s_t = α · s_{t-1} + (1 − α) · g_t²
        a_t = α · a_{t-1} + (1 − α) · g_t               (centered only)
        u_t = g_t / (sqrt(s_t − a_t²) + ε)   if centered   else   g_t / (sqrt(s_t) + ε)

    ε is added after the square root, as torch does. For RMSprop with momentum chain
    :func:`trace` after this transform. State: ``{"square_avg": {...}}`` (+ ``"grad_avg"``).

    Args:
        alpha: smoothing constant α in [0, 1).
        eps: ε >= 0.
        centered: normalize by the estimated variance instead of the raw second moment.
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_rms"
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, owner=owner, example="alpha=0.99")
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    centered = check_bool("centered", centered, owner=owner)
    path = resolve_impl(impl, owner)

    def init(params: Params) -> State:
        check_real(params, owner)
        state = {"square_avg": zeros_like_all(params)}
        if centered:
            state["grad_avg"] = zeros_like_all(params)
        return state

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        updates = {}
        for name in present(grads):
            g = grads[name]
            s = state["square_avg"][name]
            s.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            if centered:
                a = state["grad_avg"][name]
                a.mul_(alpha).add_(g, alpha=1 - alpha)
                rms = (s - a * a).sqrt()
            else:
                rms = s.sqrt()
            updates[name] = g / (rms + eps)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            ss = [state["square_avg"][n] for n in grp]
            torch._foreach_mul_(ss, alpha)
            torch._foreach_addcmul_(ss, gs, gs, value=1 - alpha)
            if centered:
                avgs = [state["grad_avg"][n] for n in grp]
                torch._foreach_lerp_(avgs, gs, 1 - alpha)
                rms = torch._foreach_addcmul(ss, avgs, avgs, value=-1)
                torch._foreach_sqrt_(rms)
            else:
                rms = torch._foreach_sqrt(ss)
            torch._foreach_add_(rms, eps)
            if owned:
                torch._foreach_div_(gs, rms)
                out.update(zip(grp, gs))
            else:
                out.update(zip(grp, torch._foreach_div(gs, rms)))
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)


def scale_by_adagrad(
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    lr_decay: float = 0.0,
    *,
    impl: Impl = "auto",
) -> Transform:
    """Adagrad's direction (Duchi et al. 2011), as ``torch.optim.Adagrad`` (without lr)::

        S_t = S_{t-1} + g_t²                    (S_0 = initial_accumulator_value)
        u_t = g_t / (sqrt(S_t) + ε) / (1 + (t − 1) · lr_decay)

    State: ``{"count": int, "sum": {name: Tensor}}``.

    Args:
        initial_accumulator_value: S_0 >= 0.
        eps: ε >= 0.
        lr_decay: >= 0, the 1/(1 + (t-1)·lr_decay) step-size decay of torch's Adagrad.
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_adagrad"
    initial = check_positive(
        "initial_accumulator_value", initial_accumulator_value, owner=owner, allow_zero=True
    )
    eps = check_positive("eps", eps, owner=owner, allow_zero=True)
    lr_decay = check_positive("lr_decay", lr_decay, owner=owner, allow_zero=True)
    path = resolve_impl(impl, owner)

    def init(params: Params) -> State:
        check_real(params, owner)
        return {"count": 0, "sum": zeros_like_all(params, initial)}

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        state["count"] += 1
        decay = 1.0 / (1.0 + (state["count"] - 1) * lr_decay)
        updates = {}
        for name in present(grads):
            g = grads[name]
            acc = state["sum"][name]
            acc.addcmul_(g, g, value=1)
            updates[name] = decay * g / (acc.sqrt() + eps)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        state["count"] += 1
        decay = 1.0 / (1.0 + (state["count"] - 1) * lr_decay)
        out: dict[str, torch.Tensor] = {}
        for grp in groups(present(grads), grads):
            gs = [grads[n] for n in grp]
            accs = [state["sum"][n] for n in grp]
            torch._foreach_addcmul_(accs, gs, gs, value=1)
            std = torch._foreach_sqrt(accs)
            torch._foreach_add_(std, eps)
            if decay != 1.0:
                torch._foreach_div_(std, decay)
            if owned:
                torch._foreach_div_(gs, std)
                out.update(zip(grp, gs))
            else:
                out.update(zip(grp, torch._foreach_div(gs, std)))
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)
