"""Prodigy (Mishchenko & Defazio 2024): Adam with a learning rate it estimates itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from descend._errors import (
    ConfigError,
    check_bool,
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
    dot,
    groups,
    mask_fn,
    need_params,
    present,
    resolve_impl,
    whole,
    zeros_like_all,
)

__all__ = ["scale_by_prodigy"]


def _scalar_like(params: Params) -> dict[str, Any]:
    """Where Prodigy's scalars live: the first parameter's device, float64 if any is."""
    first = next(iter(params.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    wide = any(p.dtype == torch.float64 for p in params.values())
    return {"device": device, "dtype": torch.float64 if wide else torch.float32}


def scale_by_prodigy(
    lr: float = 1.0,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decouple: bool = True,
    mask: Mask | str = "default",
    use_bias_correction: bool = False,
    safeguard_warmup: bool = False,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    growth_rate: float = math.inf,
    schedule: Callable[[int], float] | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Prodigy, as the ``prodigyopt`` package's ``Prodigy`` (one estimate ``d`` for all the
    parameters of the transform). It includes the learning rate.

    ``d`` estimates the distance to the solution; the step size is ``d · lr`` with ``lr`` a
    multiplier near 1 (``lr · schedule(t) · scale``; ``η_t = d_t · lr_t · bc_t`` with
    ``bc_t = sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))`` under ``use_bias_correction``, else 1)::

        m ← β1 m + d (1 − β1) g,      v ← β2 v + d² (1 − β2) g²
        s ← β3 s + (d / d0) η g,      r ← β3 r + (d / d0) η ⟨g, θ0 − θ⟩
        d̂ = d_coef · r / ‖s‖₁,       d ← min(max(d_max, d̂), d · growth_rate)  (d_max ← max(d_max, d̂))
        θ ← θ − η λ θ − η m / (sqrt(v) + d ε)

    (on the first increase ``d ← max(d, d̂)``). A step at learning rate 0 changes nothing, as in
    the reference. ``d`` lives on the device, so a step never
    waits for the host. The state is ``(prodigy, lr_state)`` with ``prodigy = {"count", "d",
    "d_max", "d_numerator", "exp_avg", "exp_avg_sq", "s", "p0"}``; ``d`` (a 0-d tensor) is the
    current estimate.

    Args:
        lr: multiplier of the estimated step size (1.0; lower it only if training is unstable).
        b1, b2: Adam's β1 (in [0, 1); 0 drops the first moment) and β2 (in [0, 1)).
        b3: decay of the estimate's running sums, default ``sqrt(b2)``.
        eps: ε > 0.
        weight_decay: λ >= 0; decoupled (AdamW style) unless ``decouple=False``.
        decouple: decoupled weight decay.
        mask: which parameters to decay (``"default"``: ndim >= 2; ``None``: all, as the
            reference package).
        use_bias_correction: Adam's bias correction of the step size.
        safeguard_warmup: leave the learning rate out of ``s`` (for warmup schedules).
        d0: initial estimate > 0.
        d_coef: multiplier of the estimate > 0 (0.5–2 typical; the preferred knob).
        growth_rate: > 1 caps the per-step growth of ``d`` (``inf``: uncapped).
        schedule: a multiplier of ``lr`` (see :mod:`descend.schedules`).
        impl: ``"foreach"`` (default under ``"auto"``) or ``"reference"``.
    """
    owner = "scale_by_prodigy"
    lr = check_positive("lr", lr, owner=owner)
    b1 = check_in_range("b1", b1, 0.0, 1.0, owner=owner, example="b1=0.9")
    b2 = check_in_range("b2", b2, 0.0, 1.0, owner=owner, example="b2=0.999")
    b3 = (
        math.sqrt(b2)
        if b3 is None
        else check_in_range("b3", b3, 0.0, 1.0, owner=owner, example="b3=None")
    )
    eps = check_positive("eps", eps, owner=owner)
    weight_decay = check_positive("weight_decay", weight_decay, owner=owner, allow_zero=True)
    decouple = check_bool("decouple", decouple, owner=owner)
    use_bias_correction = check_bool("use_bias_correction", use_bias_correction, owner=owner)
    safeguard_warmup = check_bool("safeguard_warmup", safeguard_warmup, owner=owner)
    d0 = check_positive("d0", d0, owner=owner)
    d_coef = check_positive("d_coef", d_coef, owner=owner)
    growth_rate = plain(growth_rate)
    if (
        not isinstance(growth_rate, (int, float))
        or isinstance(growth_rate, bool)
        or not growth_rate >= 1
    ):
        raise ConfigError(
            message(f"{owner}: growth_rate", "must be a number >= 1 (inf for no cap)",
                    describe(growth_rate), "pass e.g. growth_rate=1.02 or float('inf')")
        )  # fmt: skip
    growth_rate = float(growth_rate)
    if schedule is not None:
        check_callable("schedule", schedule, owner=owner, example="descend.schedules.cosine(1000)")
    path = resolve_impl(impl, owner)
    decide = MaskCache(mask_fn(mask, owner=owner)) if weight_decay else None

    def init(params: Params) -> State:
        check_real(params, owner)
        if decide is not None:
            check_mask_names(mask, params, owner=owner)
            decide.reset()
        like = _scalar_like(params)
        state = {
            "count": 0,
            "d": torch.tensor(d0, **like),
            "d_max": torch.tensor(d0, **like),
            "d_numerator": torch.tensor(0.0, **like),
            "exp_avg": zeros_like_all(params),
            "exp_avg_sq": zeros_like_all(params),
            "s": zeros_like_all(params),
            "p0": {
                n: p.detach().clone(memory_format=torch.preserve_format) for n, p in params.items()
            },
        }
        return (state, {"count": 0, "lr": lr, "scale": 1.0})

    def decayed(name: str, p: torch.Tensor) -> bool:
        return decide is not None and decide(name, p)

    def estimate(ps: dict, d, d_num, d_denom, step: torch.Tensor):
        """New (d, d_max, d_numerator); unchanged where ‖s‖₁ = 0 (the reference skips the step)."""
        d_max = ps["d_max"]
        d_hat = d_coef * d_num / d_denom
        d_new = torch.where(d == d0, torch.maximum(d, d_hat), d)
        d_max_new = torch.maximum(d_max, d_hat)
        d_new = torch.minimum(d_max_new, d_new * growth_rate)
        skip = d_denom == 0
        ps["d"] = torch.where(skip, d, d_new)
        ps["d_max"] = torch.where(skip, d_max, d_max_new)
        ps["d_numerator"] = torch.where(skip, ps["d_numerator"], d_num)
        return torch.where(skip, torch.zeros_like(step), step)

    def start(state: State, params: Params | None):
        ps, lr_state = state
        need_params(params, owner)
        lr_t = next_lr(lr_state, lr, schedule)
        k = ps["count"]
        bc = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0
        return ps, lr_state, lr_t, ps["d"] * (lr_t * bc)

    def idle(grads: Updates, state: State, lr_t: float):
        """A step at learning rate 0 changes nothing, as the reference skips it: no moment, sum,
        estimate or bias-correction count moves (a warmup from 0 would else feed them)."""
        commit_lr(state[1], lr_t)
        return {n: torch.zeros_like(grads[n]) for n in present(grads)}, state, True

    def coupled(grads: Updates, params: Params, names: list[str]) -> Updates:
        if weight_decay and not decouple:
            grads = dict(grads)
            for n in names:
                if decayed(n, params[n]):
                    grads[n] = grads[n] + weight_decay * params[n]
        return grads

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        ps, lr_state, lr_t, dlr = start(state, params)
        if lr_t == 0:
            return idle(grads, state, lr_t)
        d = ps["d"]
        names = present(grads)
        grads = coupled(grads, params, names)  # type: ignore[arg-type]
        d_num = ps["d_numerator"] * b3
        d_denom = torch.zeros_like(d)
        for n in names:
            g, p = grads[n], params[n]  # type: ignore[index]
            d_num = d_num + (d / d0) * dlr * dot(g, ps["p0"][n] - p).to(d.dtype)
            if b1 > 0:
                ps["exp_avg"][n].mul_(b1).add_(g * (d * (1 - b1)).to(g.dtype))
            ps["exp_avg_sq"][n].mul_(b2).add_(g * g * (d * d * (1 - b2)).to(g.dtype))
            alpha = (d / d0) * d if safeguard_warmup else (d / d0) * dlr
            s = ps["s"][n]
            s.mul_(b3).add_(g * alpha.to(g.dtype))
            d_denom = d_denom + whole(s.abs().sum()).to(d.dtype)
        step = estimate(ps, d, d_num, d_denom, dlr)
        d_new = ps["d"]
        updates = {}
        for n in names:
            g, p = grads[n], params[n]  # type: ignore[index]
            denom = ps["exp_avg_sq"][n].sqrt().add_((d_new * eps).to(g.dtype))
            num = ps["exp_avg"][n] if b1 > 0 else g * d_new.to(g.dtype)
            u = num / denom * (-step).to(g.dtype)
            if decouple and decayed(n, p):
                u = u - (step * weight_decay).to(g.dtype) * p
            updates[n] = u
        ps["count"] += 1
        commit_lr(lr_state, lr_t)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        ps, lr_state, lr_t, dlr = start(state, params)
        if lr_t == 0:
            return idle(grads, state, lr_t)
        d = ps["d"]
        names = present(grads)
        grads = coupled(grads, params, names)  # type: ignore[arg-type]
        grps = groups(names, grads)
        d_num = ps["d_numerator"] * b3
        dots, l1s = [], []
        alpha = (d / d0) * d if safeguard_warmup else (d / d0) * dlr
        for grp in grps:
            gs = [grads[n] for n in grp]
            like = gs[0].dtype
            diffs = torch._foreach_sub([ps["p0"][n] for n in grp], [params[n] for n in grp])  # type: ignore[index]
            dots += [dot(g, x).to(d.dtype) for g, x in zip(gs, diffs)]
            if b1 > 0:
                ms = [ps["exp_avg"][n] for n in grp]
                torch._foreach_mul_(ms, b1)
                torch._foreach_add_(ms, torch._foreach_mul(gs, (d * (1 - b1)).to(like)))
            vs = [ps["exp_avg_sq"][n] for n in grp]
            torch._foreach_mul_(vs, b2)
            gg = torch._foreach_mul(gs, gs)
            torch._foreach_mul_(gg, (d * d * (1 - b2)).to(like))
            torch._foreach_add_(vs, gg)
            ss = [ps["s"][n] for n in grp]
            torch._foreach_mul_(ss, b3)
            torch._foreach_add_(ss, torch._foreach_mul(gs, alpha.to(like)))
            l1s += [whole(x).to(d.dtype) for x in torch._foreach_norm(ss, 1)]
        if dots:
            d_num = d_num + (d / d0) * dlr * torch.stack(dots).sum()
            d_denom = torch.stack(l1s).sum()
        else:
            d_denom = torch.zeros_like(d)
        step = estimate(ps, d, d_num, d_denom, dlr)
        d_eps = ps["d"] * eps
        out: dict[str, torch.Tensor] = {}
        for grp in grps:
            gs = [grads[n] for n in grp]
            like = gs[0].dtype
            denom = torch._foreach_sqrt([ps["exp_avg_sq"][n] for n in grp])
            torch._foreach_add_(denom, d_eps.to(like))
            if b1 > 0:
                u = torch._foreach_div([ps["exp_avg"][n] for n in grp], denom)
            else:
                u = torch._foreach_div(torch._foreach_mul(gs, ps["d"].to(like)), denom)
            torch._foreach_mul_(u, (-step).to(like))
            if decouple and decide is not None:
                idx = [i for i, n in enumerate(grp) if decayed(n, params[n])]  # type: ignore[index]
                if idx:
                    decay = torch._foreach_mul(
                        [params[grp[i]] for i in idx], (-step * weight_decay).to(like)
                    )  # type: ignore[index]
                    torch._foreach_add_([u[i] for i in idx], decay)
            out.update(zip(grp, u))
        ps["count"] += 1
        commit_lr(lr_state, lr_t)
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)
