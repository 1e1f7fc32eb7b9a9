"""``descend.minimize``: minimize any differentiable scalar function of tensors.

For problems that are not "a model and a dataset": curve fitting written by hand, a physics
loss, Rosenbrock. The default method is full-batch L-BFGS with a strong-Wolfe line search
(``torch.optim.LBFGS``), the right tool for smooth deterministic objectives; any descend
optimizer (``method=descend.optim.adam(lr=1e-2)`` or a registry name) works too.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from descend import optim
from descend._errors import ConfigError, InputError, check_positive, describe, message, plain
from descend.train.result import History, Result, StopReason
from descend.transforms import Transform, apply_updates, find_lr_state

__all__ = ["minimize"]


def _as_params(params: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Normalize params to ``{name: leaf tensor requiring grad}``; return the input's kind."""
    if torch.is_tensor(params):
        items, kind = {"x": params}, "tensor"
    elif isinstance(params, np.ndarray) or (
        isinstance(params, numbers.Real) and not isinstance(params, bool)
    ):
        # scipy.optimize's habit: a numpy start (or a number) is the tensor x (float64 stays)
        items, kind = {"x": torch.as_tensor(params)}, "tensor"
    elif isinstance(params, dict):
        items, kind = dict(params), "dict"
    elif isinstance(params, (list, tuple)):
        items, kind = {str(i): p for i, p in enumerate(params)}, "list"
    else:
        raise ConfigError(
            message(
                "minimize(params)",
                "must be a tensor (or a numpy array or a number), a list of tensors or a "
                "{name: tensor} dict",
                describe(params),
                "pass e.g. torch.tensor([-1.0, 1.0])",
            )
        )
    if not items:
        raise ConfigError(
            message(
                "minimize(params)",
                "must hold at least one parameter to optimize",
                f"an empty {type(params).__name__}",
                "pass the starting point, e.g. {'a': torch.zeros(3)} or torch.zeros(3)",
            )
        )
    out = {}
    for name, p in items.items():
        try:
            if isinstance(p, (str, bytes)) or p is None:
                raise TypeError
            t = torch.as_tensor(p)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                message(
                    f"minimize(params[{name!r}])",
                    "must be a tensor, a numpy array, a number or a rectangular list of numbers",
                    describe(p),
                    "pass its starting value, e.g. torch.zeros(3)",
                )
            ) from None
        if t.is_complex():
            raise ConfigError(
                message(
                    f"minimize(params[{name!r}])",
                    "must be real (complex values would be cast to real, dropping the "
                    "imaginary part)",
                    f"a {t.dtype} tensor",
                    "optimize torch.view_as_real(z) and rebuild it inside fn with "
                    "torch.view_as_complex",
                )
            )
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        # always a copy: the caller's tensor (a leaf that requires grad, an nn.Parameter) is
        # left as it was, its .grad included
        out[name] = t.detach().clone().requires_grad_(True)
    return out, kind


#: An objective below -UNBOUNDED x its starting magnitude, with the parameters' norm above
#: UNBOUNDED x theirs, is read as unbounded below (it ran off; it did not converge).
UNBOUNDED = 1e8


def _norm(tensors: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(float(t.double().pow(2).sum()) for t in tensors)) ** 0.5


def _call(fn: Callable, params: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "tensor":
        value = fn(params["x"])
    elif kind == "list":
        value = fn(list(params.values()))
    else:
        value = fn(params)
    if not torch.is_tensor(value) or value.numel() != 1 or not value.is_floating_point():
        raise InputError(
            message(
                "minimize(fn)",
                "must return a scalar floating-point tensor",
                describe(value),
                "reduce the objective to one number, e.g. return loss.sum()",
            )
        )
    if torch.is_grad_enabled() and not value.requires_grad:
        raise InputError(
            message(
                "minimize(fn)",
                "must compute its result from the parameters with torch operations (the "
                "gradient flows back through them)",
                "a result that does not depend on them (no gradient)",
                "do not call .detach(), .item(), .numpy() or float() on the way, and use the "
                "tensors fn receives, not copies of them",
            )
        )
    return value.reshape(())


def _named(method: str) -> Transform:
    """A registry optimizer at its defaults, refused in minimize's terms: the user wrote
    ``method=``, not ``optim.get``, and ``"lbfgs"`` is a name too."""
    try:
        return optim.get(method)
    except ConfigError:
        try:
            optim.get(method, lr=1e-2)
        except ConfigError:
            rule, got, fix = (
                "must be 'lbfgs', an optimizer name or a Transform",
                repr(method),
                f"use 'lbfgs' or one of {sorted(optim.names())}",
            )
        else:
            rule = "given as a name, must name an optimizer with a default learning rate"
            got, fix = (
                f"{method!r}, which has none",
                f"pass it with its rate: method=descend.optim.get({method!r}, lr=1e-2)",
            )
        raise ConfigError(message("minimize(method)", rule, got, fix)) from None


def minimize(
    fn: Callable,
    params: Any,
    *,
    method: str | Transform = "lbfgs",
    steps: int = 1000,
    tol: float = 1e-12,
    gtol: float = 1e-9,
    patience: int = 20,
    max_time: float | None = None,
) -> Result:
    """Minimize ``fn(params)`` over ``params``.

    Args:
        fn: the objective. Called as ``fn(x)`` when ``params`` is a tensor, ``fn([a, b])`` for a
            list, ``fn({"a": a, ...})`` for a dict; must return a scalar tensor.
        params: the starting point (a tensor, a list of tensors, or a dict; a numpy array or
            a number is taken as the tensor, float64 kept, as ``scipy.optimize`` users write
            it). Never modified: the optimized values are returned in ``Result.params`` (same
            names; a single tensor is under ``"x"``).
        method: ``"lbfgs"`` (full-batch L-BFGS with strong-Wolfe line search, the default), a
            descend optimizer registry name, or a Transform such as ``descend.optim.adam(lr=1e-2)``.
        steps: the iteration budget (``Result.steps`` counts iterations; L-BFGS's history
            holds one entry per call of up to 20 iterations).
        tol: stop when the objective improves by less than ``tol`` (relative) for ``patience``
            consecutive steps; for L-BFGS, ``max(1, patience // 10)`` consecutive calls of up
            to 20 iterations (its history entries).
        gtol: stop when the gradient norm falls below ``gtol``.
        patience: see ``tol``.
        max_time: wall-clock budget in seconds.

    Returns:
        Result with ``model=None``, ``params`` the best point found, ``best_loss`` its value, and
        the per-step history (``step_loss``, ``step_grad_norm``, ``step_lr``).

    Example:
        >>> import torch, descend
        >>> rosen = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
        >>> r = descend.minimize(rosen, torch.tensor([-1.5, 2.0], dtype=torch.float64))
        >>> torch.allclose(r.params["x"], torch.ones(2, dtype=torch.float64), atol=1e-4)
        True
    """
    if not callable(fn):
        raise ConfigError(
            message(
                "minimize(fn)",
                "must be callable",
                describe(fn),
                "pass a function of the parameters",
            )
        )
    steps, patience, tol, gtol, max_time = (
        plain(v) for v in (steps, patience, tol, gtol, max_time)
    )
    for name, value, example in (("steps", steps, 500), ("patience", patience, 20)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                message(
                    f"minimize: {name}", "must be an integer >= 1", describe(value),
                    f"pass e.g. {name}={example}",
                )
            )  # fmt: skip
    check_positive("tol", tol, owner="minimize", allow_zero=True)
    check_positive("gtol", gtol, owner="minimize", allow_zero=True)
    if max_time is not None:
        check_positive("max_time", max_time, owner="minimize", example="max_time=60")
    p, kind = _as_params(params)
    plist = list(p.values())
    history = History()
    t0 = time.perf_counter()
    best_val = math.inf
    best = {k: v.detach().clone() for k, v in p.items()}
    since = 0
    reason = StopReason.MAX_EPOCHS
    desc: str
    with torch.no_grad():
        first = [float(_call(fn, p, kind))]  # the starting value
    if not math.isfinite(first[0]):
        raise InputError(
            message(
                "minimize(fn)",
                "must be finite at the starting point",
                f"{first[0]} at the start",
                "start where fn is defined (e.g. inside the domain of a log or sqrt)",
            )
        )
    best_val = first[0]  # the start is the best point until a step beats it
    start_norm = _norm(list(best.values()))
    why = ""  # what ended a converged or diverged run, for the stop sentence

    def unbounded(value: float) -> bool:
        """The objective falls without bound: its value and the point both ran off far
        beyond where they started (a linear objective, a missing penalty)."""
        if not math.isfinite(first[0]) or value >= -UNBOUNDED * max(1.0, abs(first[0])):
            return False
        return _norm(list(p.values())) > UNBOUNDED * max(1.0, start_norm)

    def record(value: float, gnorm: float, lr: float) -> bool:
        nonlocal best_val, since
        history.step_loss.append(value)
        history.step_grad_norm.append(gnorm)
        history.step_lr.append(lr)
        improved = (
            value < best_val - tol * max(abs(best_val), 1e-30)
            if math.isfinite(best_val)
            else math.isfinite(value)
        )
        if value < best_val:
            best_val = value
            for k, v in p.items():
                best[k].copy_(v.detach())
        since = 0 if improved else since + 1
        return improved

    try:
        if isinstance(method, str) and method.lower() == "lbfgs":
            desc = "lbfgs(strong_wolfe)"
            opt = torch.optim.LBFGS(
                plist,
                lr=1,
                max_iter=20,
                history_size=20,
                tolerance_grad=gtol,
                tolerance_change=0.0,
                line_search_fn="strong_wolfe",
            )

            def closure():
                opt.zero_grad()
                v = _call(fn, p, kind)
                v.backward()
                return v

            done = 0  # L-BFGS iterations (each opt.step runs up to 20 of them)
            while done < steps:
                opt.param_groups[0]["max_iter"] = min(20, steps - done)
                opt.step(closure)
                done = int(opt.state[plist[0]].get("n_iter", done + 1)) if plist else steps
                # value and gradient at the point L-BFGS ended on: the .grad it leaves is that of
                # the line search's last trial, which need not be the point it accepted
                with torch.enable_grad():
                    value = float(closure().detach())
                grads = [q.grad for q in plist if q.grad is not None]
                gn = (
                    float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                    if grads
                    else 0.0
                )
                record(value, gn, 1.0)
                if not math.isfinite(value):
                    reason = StopReason.DIVERGED
                    break
                if unbounded(value):
                    reason, why = StopReason.DIVERGED, "unbounded"
                    break
                if gn < gtol:
                    reason, why = StopReason.CONVERGED, "gradient"
                    break
                if since >= max(1, patience // 10):
                    reason, why = StopReason.CONVERGED, "stalled"
                    break
                if max_time is not None and time.perf_counter() - t0 > max_time:
                    reason = StopReason.MAX_TIME
                    break
        else:
            tx = _named(method) if isinstance(method, str) else method
            if not isinstance(tx, Transform):
                raise ConfigError(
                    message(
                        "minimize(method)",
                        "must be 'lbfgs', an optimizer name or a Transform",
                        describe(method),
                        "use e.g. method=descend.optim.adam(lr=1e-2)",
                    )
                )
            desc = (
                method
                if isinstance(method, str)
                else getattr(method.update, "desc", None) or "user optimizer"
            )
            state = tx.init(p)
            lr_state = find_lr_state(state)
            for i in range(steps):
                with torch.enable_grad():  # called under torch.no_grad(), as L-BFGS may be
                    v = _call(fn, p, kind)
                grads = torch.autograd.grad(v, plist, allow_unused=True)
                g = {k: gr for k, gr in zip(p, grads) if gr is not None}
                gn = (
                    float(torch.linalg.vector_norm(torch.stack([x.norm() for x in g.values()])))
                    if g
                    else 0.0
                )
                value = float(v.detach())
                record(value, gn, float(lr_state["lr"]) if lr_state else math.nan)
                if i == 0:  # the starting point, not a step that failed to improve on it
                    since = 0
                if not math.isfinite(value):
                    reason = StopReason.DIVERGED
                    break
                if unbounded(value):
                    reason, why = StopReason.DIVERGED, "unbounded"
                    break
                if gn < gtol:
                    reason, why = StopReason.CONVERGED, "gradient"
                    break
                if since >= patience:
                    reason, why = StopReason.CONVERGED, "stalled"
                    break
                updates, state = tx.update(g, state, p)
                apply_updates(p, updates)
                if lr_state:  # the rate this step applied (the state holds it after update)
                    lr_state = find_lr_state(state)
                    history.step_lr[-1] = float(lr_state["lr"])
                if max_time is not None and time.perf_counter() - t0 > max_time:
                    reason = StopReason.MAX_TIME
                    break
            if reason in (StopReason.MAX_EPOCHS, StopReason.MAX_TIME):
                # the budget ended on an update: its point is scored too (steps=1 returned the
                # start), though it has no step of its own in the history
                with torch.no_grad():
                    value = float(_call(fn, p, kind))
                if value < best_val:
                    best_val = value
                    for k, v in p.items():
                        best[k].copy_(v.detach())
    except KeyboardInterrupt:
        reason = StopReason.INTERRUPTED

    n = len(history.step_loss)
    if desc.startswith("lbfgs"):
        n = done  # iterations, not the 20-iteration calls the history records
    gn_last = history.step_grad_norm[-1] if history.step_grad_norm else math.nan
    stall = (
        f"{max(1, patience // 10)} L-BFGS call{'s' * (patience >= 20)} (of up to 20 iterations)"
        if desc.startswith("lbfgs")
        else f"{patience} step{'s' * (patience != 1)}"
    )
    its = f"{n} iteration{'s' * (n != 1)}"
    if why == "gradient":
        converged = f"Converged after {its}: the gradient norm fell below gtol={gtol:g}."
    else:
        converged = (
            f"Stopped after {its}: the objective improved by less than tol={tol:g} (relative) "
            f"for {stall} in a row; the gradient norm is {gn_last:.3g}."
        )
    diverged = "Diverged: the objective became non-finite; kept the best point. " + (
        "The line search stepped where fn is not defined: start farther from that region, "
        "or use a descend optimizer with a small rate (method=descend.optim.adam(lr=1e-3))."
        if desc.startswith("lbfgs")
        else "Try a smaller learning rate or method='lbfgs'."
    )
    if why == "unbounded":
        diverged = (
            f"Diverged: the objective fell without bound (from {first[0]:.6g} to {best_val:.6g}, "
            "the parameters running off with it): it has no minimum as written. Bound it — a "
            "penalty such as + 1e-3 * (x**2).sum(), or a constraint written into fn."
        )
    sentences = {
        StopReason.CONVERGED: converged,
        StopReason.MAX_EPOCHS: f"Used the whole budget of {steps} step{'s' * (steps != 1)}; "
        "the objective may still be falling.",
        StopReason.DIVERGED: diverged,
        StopReason.MAX_TIME: "Stopped at the max_time budget; kept the best point.",
        StopReason.INTERRUPTED: "Interrupted by the user; kept the best point.",
    }
    return Result(
        model=None,
        params=best,
        history=history,
        stop_reason=reason,
        stop_message=sentences[reason]
        + ("" if why == "unbounded" else f" Best value {best_val:.6g}."),
        best_epoch=0,
        best_loss=best_val,
        seed=0,
        epochs=0,
        steps=n,
        elapsed=time.perf_counter() - t0,
        device=str(plist[0].device) if plist else "cpu",
        optimizer=desc,
        monitor="objective",
    )
