"""Public contract checks, used by descend's own tests and available for user extensions.

``check_transform(tx)`` verifies what every :class:`~descend.transforms.Transform` promises
(docs/CONTRACTS.md): ``update`` never mutates the incoming gradients or parameters, the state
tree holds only checkpointable leaves, updates have the parameters' names and shapes, and the
transform, applied as an optimizer, lowers a convex quadratic.

Example:
    >>> from descend import optim
    >>> from descend.testing import check_transform
    >>> check_transform(optim.adam(lr=1e-2))
"""

from __future__ import annotations

from typing import Any

import torch

from descend.transforms import (
    Params,
    Transform,
    apply_updates,
    averaged_point_states,
    swap_to_eval,
    swap_to_train,
    update_and_apply,
)

__all__ = ["check_state_tree", "check_transform", "quadratic_params"]

_LEAVES = (bool, int, float, str, type(None), torch.Tensor)


def check_state_tree(state: Any, path: str = "state") -> None:
    """Raise ``AssertionError`` unless ``state`` is dicts (str keys)/tuples/lists of leaves.

    Leaves may be tensors, Python numbers, strings or ``None`` — what a checkpoint can hold
    without pickle.
    """
    if isinstance(state, dict):
        for key, value in state.items():
            if not isinstance(key, str):
                raise AssertionError(f"{path}: dict keys must be str, got {key!r}")
            check_state_tree(value, f"{path}/{key}")
    elif isinstance(state, (tuple, list)):
        for i, value in enumerate(state):
            check_state_tree(value, f"{path}/{i}")
    elif not isinstance(state, _LEAVES):
        raise AssertionError(
            f"{path}: state leaves must be tensors, numbers, strings or None; "
            f"got {type(state).__name__}"
        )


def quadratic_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> Params:
    """A small parameter dict (a matrix, a bias, a scalar) for contract checks."""
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(4, 3, generator=g, dtype=dtype),
        "layer.bias": torch.randn(3, generator=g, dtype=dtype),
        "scalar": torch.randn((), generator=g, dtype=dtype),
    }


def _quadratic(params: Params, seed: int) -> tuple[Any, Any]:
    """``f(θ) = Σ ½ a ⊙ (θ − c)²`` with curvatures a in [0.5, 2]; returns (f, ∇f)."""
    g = torch.Generator().manual_seed(seed + 1)
    curv = {
        n: 0.5 + 1.5 * torch.rand(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()
    }
    center = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def f(ps: Params) -> float:
        return float(sum((0.5 * curv[n] * (p - center[n]) ** 2).sum() for n, p in ps.items()))

    def grad(ps: Params) -> Params:
        return {n: curv[n] * (p - center[n]) for n, p in ps.items()}

    return f, grad


def check_transform(tx: Transform, params: Params | None = None, *, steps: int = 100) -> None:
    """Check the public contract of a transform; raise ``AssertionError`` naming what broke.

    Beyond the basics (no mutation of the inputs, checkpointable state, updates shaped like the
    parameters, a convex quadratic lowered) it checks the optional paths: a fused
    ``update.apply`` must step the parameters as ``update`` + ``apply_updates`` does (to
    1e-9 relative in float64), and a state with an averaged point (schedule-free) must swap to
    eval and back idempotently.

    Args:
        tx: the transform (e.g. a named optimizer) to check.
        params: parameters to use (cloned, never modified); default :func:`quadratic_params`.
        steps: optimizer steps on the quadratic.
    """
    if not isinstance(tx, Transform):
        raise AssertionError(f"expected a descend Transform, got {type(tx).__name__}")
    base = params if params is not None else quadratic_params()
    params = {n: p.detach().clone() for n, p in base.items()}
    f, grad = _quadratic(params, seed=0)

    state = tx.init(params)
    check_state_tree(state)

    # update must not touch the caller's tensors: neither values nor in-place version counters
    grads = grad(params)
    incoming = [(f"gradient {n!r}", t) for n, t in grads.items()]
    incoming += [(f"parameter {n!r}", t) for n, t in params.items()]
    snapshot = [(what, t, t.clone(), t._version) for what, t in incoming]
    updates, state = tx.update(grads, state, params)
    for what, t, copy, version in snapshot:
        if t._version != version or not torch.equal(t, copy):
            raise AssertionError(f"update modified the incoming {what} in place")
    if not isinstance(updates, dict) or set(updates) - set(grads):
        raise AssertionError(
            f"updates must be a dict keyed by gradient names {sorted(grads)}, got "
            f"{sorted(updates) if isinstance(updates, dict) else type(updates).__name__}"
        )
    for name, u in updates.items():
        if u.shape != params[name].shape:
            raise AssertionError(
                f"update {name!r} has shape {tuple(u.shape)}, parameter has "
                f"{tuple(params[name].shape)}"
            )
    check_state_tree(state)

    # as an optimizer it must lower a convex quadratic
    start = f(params)
    apply_updates(params, updates)
    for _ in range(steps - 1):
        updates, state = tx.update(grad(params), state, params)
        apply_updates(params, updates)
    end = f(params)
    if not end < start:
        raise AssertionError(
            f"the transform did not lower a convex quadratic in {steps} steps: "
            f"{start:.4g} -> {end:.4g}"
        )
    check_state_tree(state)
    if getattr(tx.update, "apply", None) is not None:
        _check_fused_apply(tx, base, grad)
    if any(True for _ in averaged_point_states(state)):
        _check_swap(state, params)


def _check_fused_apply(tx: Transform, base: Params, grad: Any, steps: int = 5) -> None:
    """``update.apply`` (via update_and_apply) must equal update + apply_updates."""
    plain = {n: p.detach().clone() for n, p in base.items()}
    fused = {n: p.detach().clone() for n, p in base.items()}
    s_plain, s_fused = tx.init(plain), tx.init(fused)
    for _ in range(steps):
        updates, s_plain = tx.update(grad(plain), s_plain, plain)
        apply_updates(plain, updates)
        s_fused = update_and_apply(tx, grad(fused), s_fused, fused)
    check_state_tree(s_fused)
    for name in plain:
        a, b = plain[name], fused[name]
        tol = 1e-9 if a.dtype == torch.float64 else 1e-5
        if not torch.allclose(a, b, rtol=tol, atol=tol):
            diff = (a - b).abs().max().item()
            raise AssertionError(
                f"the fused update.apply path moved {name!r} differently from update + "
                f"apply_updates (max difference {diff:.3g} after {steps} steps)"
            )


def _check_swap(state: Any, params: Params) -> None:
    """swap_to_eval/swap_to_train: idempotent, and eval → train restores the training point."""
    before = {n: p.detach().clone() for n, p in params.items()}
    if not swap_to_eval(state, params):
        raise AssertionError("swap_to_eval did not swap a state that has an averaged point")
    if swap_to_eval(state, params):
        raise AssertionError("swap_to_eval swapped twice (it must be idempotent)")
    check_state_tree(state)
    if not swap_to_train(state, params) or swap_to_train(state, params):
        raise AssertionError("swap_to_train must swap once, then be a no-op")
    for name, p in params.items():
        tol = 1e-9 if p.dtype == torch.float64 else 1e-4
        if not torch.allclose(p, before[name], rtol=tol, atol=tol):
            raise AssertionError(f"swap_to_eval then swap_to_train did not restore {name!r}")
