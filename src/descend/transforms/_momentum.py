"""Momentum: the trace of past gradients (heavy ball, Nesterov), with torch.optim.SGD semantics."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from descend._errors import ConfigError, check_bool, check_in_range, message
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._util import (
    Impl,
    foreach_copy_,
    groups,
    present,
    resolve_impl,
    zeros_like_all,
)

__all__ = ["trace"]


def trace(
    momentum: float,
    dampening: float = 0.0,
    nesterov: bool = False,
    *,
    impl: Impl = "auto",
) -> Transform:
    """Momentum with ``torch.optim.SGD`` semantics (Polyak heavy ball; Sutskever et al. 2013).

    With buffer ``b`` and momentum ``μ``, at step ``t`` (1-based)::

        b_1 = g_1                           (the first step copies the gradient)
        b_t = μ · b_{t-1} + (1 − dampening) · g_t
        u_t = g_t + μ · b_t   if nesterov   else   b_t

    While ``μ = 0`` dampening is ignored (``u_t = g_t``), as ``torch.optim.SGD`` does.

    State: ``{"count": int, "momentum_buffer": {name: Tensor}}``.

    Args:
        momentum: μ in [0, 1).
        dampening: in [0, 1]; must be 0 with ``nesterov``.
        nesterov: use Nesterov's look-ahead form.
        impl: ``"foreach"`` (multi-tensor ops, the default under ``"auto"``) or
            ``"reference"`` (one tensor at a time, the equations above).
    """
    owner = "trace"
    momentum = check_in_range("momentum", momentum, 0.0, 1.0, owner=owner, example="momentum=0.9")
    dampening = check_in_range(
        "dampening", dampening, 0.0, 1.0, owner=owner, high_inclusive=True, example="dampening=0"
    )
    nesterov = check_bool("nesterov", nesterov, owner=owner)
    if nesterov and dampening != 0:
        raise ConfigError(
            message(
                f"{owner}: nesterov=True",
                "requires dampening=0",
                f"dampening={dampening}",
                "set dampening=0 or nesterov=False",
            )
        )
    path = resolve_impl(impl, owner)
    # The momentum's one holder (as_torch_optimizer shows it as the group's "momentum", which
    # schedulers such as OneCycleLR cycle): both paths read it each step.
    hyper = SimpleNamespace(momentum=momentum)

    def init(params: Params) -> State:
        return {"count": 0, "momentum_buffer": zeros_like_all(params)}

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        momentum = hyper.momentum
        # torch.optim.SGD ignores dampening while momentum is 0 (its update is then the gradient)
        damp = dampening if momentum else 0.0
        first = state["count"] == 0
        state["count"] += 1
        updates = {}
        for name in present(grads):
            g, buf = grads[name], state["momentum_buffer"][name]
            if first:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1 - damp)
            updates[name] = g + momentum * buf if nesterov else buf.clone()
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        momentum = hyper.momentum
        # torch.optim.SGD ignores dampening while momentum is 0 (its update is then the gradient)
        damp = dampening if momentum else 0.0
        first = state["count"] == 0
        state["count"] += 1
        bufs = state["momentum_buffer"]
        names = present(grads)
        out: dict[str, torch.Tensor] = {}
        for grp in groups(names, grads):
            gs = [grads[n] for n in grp]
            bs = [bufs[n] for n in grp]
            if first:
                foreach_copy_(bs, gs)
            else:
                torch._foreach_mul_(bs, momentum)
                torch._foreach_add_(bs, gs, alpha=1 - damp)
            if not nesterov:
                # A copy, so that updates never alias the buffer the next step overwrites.
                out.update(zip(grp, torch._foreach_mul(bs, 1.0)))
            elif owned:
                torch._foreach_add_(gs, bs, alpha=momentum)
                out.update(zip(grp, gs))
            else:
                out.update(zip(grp, torch._foreach_add(gs, bs, alpha=momentum)))
        return out, state, True

    tx = inplace_transform(init, update_reference if path == "reference" else update_foreach)
    tx.update.hyper = hyper  # type: ignore[attr-defined]
    return tx
