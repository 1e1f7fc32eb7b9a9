"""Muon's direction: momentum, orthogonalized by a Newton–Schulz iteration (Jordan et al. 2024).

The iteration runs on a whole batch of matrices at once: matrices of the same shape (after
turning tall ones on their side, so a 768×3072 and a 3072×768 weight share a batch) are stacked
and orthogonalized with one ``baddbmm`` chain, instead of one chain of small matrix products per
matrix (on a GPU that loop is launch-bound: 21.7 ms for GPT-2 small's matrices one at a time).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from descend._errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_in_range,
    describe,
    is_real,
    message,
    plain,
)
from descend.transforms._base import Params, State, Transform, Updates, inplace_transform
from descend.transforms._util import (
    Impl,
    check_real,
    present,
    resolve_impl,
    zeros_like_all,
)

__all__ = ["newton_schulz", "scale_by_muon"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
AdjustLR = Literal["match_rms_adamw", "original", "none"]


def newton_schulz(
    x: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """An approximate orthogonalization ``U Vᵀ`` of ``x = U S Vᵀ`` (a matrix or a batch ``(n, A, B)``).

    Normalizes each matrix by its Frobenius norm, then iterates the quintic
    ``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ`` (Jordan et al.'s coefficients push the singular
    values into roughly [0.7, 1.2] in 5 steps, which trains as well as the exact ``U Vᵀ``). Runs in
    ``dtype`` (default ``x``'s; bfloat16 is what Muon uses on GPUs) and returns that dtype.
    """
    a, b, c = coefficients
    X = x if dtype is None else x.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / torch.linalg.matrix_norm(X, keepdim=True).clamp(min=eps)
    if X.ndim == 2:
        for _ in range(steps):
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        for _ in range(steps):
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if tall else X


def _newton_schulz_torch(g: torch.Tensor, steps: int, coefficients, eps: float, dtype):
    """One matrix, the very operations of ``torch.optim.Muon`` (its parity oracle)."""
    a, b, c = coefficients
    X = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        X = X.T
    X = X.div(X.norm().clamp(min=eps))
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def adjust_lr_ratio(shape: torch.Size | tuple[int, ...], rule: str) -> float:
    """Muon's per-matrix learning-rate multiplier for a weight of ``shape`` (rows = ``shape[0]``).

    ``"match_rms_adamw"`` (Liu et al. 2025, "Muon is Scalable for LLM Training"):
    ``0.2 · sqrt(max(A, B))``, which makes the update's RMS ``0.2 · lr``, about AdamW's, so
    Muon reuses AdamW's learning rate and weight decay. ``"original"`` (Jordan et al.):
    ``sqrt(max(1, A / B))``, for learning rates around 0.02. ``"none"``: 1.
    """
    A = shape[0]
    B = math.prod(shape[1:])
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    if rule == "original":
        return math.sqrt(max(1.0, A / B))
    return 1.0


def _ns_dtype(spec: torch.dtype | str | None, tensor: torch.Tensor) -> torch.dtype:
    if isinstance(spec, torch.dtype):
        return spec
    # bfloat16 tensor cores on accelerators; on CPUs without them bf16 matmuls are slower
    return torch.bfloat16 if tensor.device.type in ("cuda", "xpu") else tensor.dtype


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adjust_lr: AdjustLR = "match_rms_adamw",
    *,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_dtype: torch.dtype | Literal["auto"] = "auto",
    impl: Impl = "auto",
) -> Transform:
    """Muon's direction for weight matrices, as ``torch.optim.Muon`` (without lr and decay)::

        b_t = μ · b_{t-1} + (1 − μ) · g_t
        m_t = (1 − μ) · g_t + μ · b_t     if nesterov   else   b_t
        u_t = s(A, B) · NS(m_t)

    with NS the Newton–Schulz orthogonalization (:func:`newton_schulz`) and ``s`` the shape
    rule ``adjust_lr`` (:func:`adjust_lr_ratio`). A weight of more than 2 dimensions (a
    convolution kernel) is orthogonalized as the matrix ``(shape[0], rest)``. Apply it only to
    hidden weight matrices: :func:`descend.optim.muon` sends embeddings, the output layer,
    biases and gains to AdamW. State: ``{"momentum_buffer": {name: Tensor}}``.

    Args:
        momentum: μ in [0, 1).
        nesterov: use the Nesterov form.
        ns_steps: Newton–Schulz iterations, 1–99.
        adjust_lr: ``"match_rms_adamw"`` (default), ``"original"`` or ``"none"``.
        ns_coefficients: (a, b, c) of the quintic.
        eps: floor of the norm used to normalize.
        ns_dtype: dtype of the iteration; ``"auto"`` is bfloat16 on GPUs, the parameter's dtype
            on CPUs (whose bf16 matrix products are slow).
        impl: ``"foreach"`` (default under ``"auto"``: matrices of one shape orthogonalized as a
            batch) or ``"reference"`` (one matrix at a time, ``torch.optim.Muon``'s operations).
    """
    owner = "scale_by_muon"
    momentum = check_in_range("momentum", momentum, 0.0, 1.0, owner=owner, example="momentum=0.95")
    nesterov = check_bool("nesterov", nesterov, owner=owner)
    ns_steps = plain(ns_steps)
    if not isinstance(ns_steps, int) or isinstance(ns_steps, bool) or not 1 <= ns_steps < 100:
        raise ConfigError(
            message(f"{owner}: ns_steps", "must be an integer in [1, 99]", describe(ns_steps),
                    "pass e.g. ns_steps=5")
        )  # fmt: skip
    check_choice("adjust_lr", adjust_lr, ("match_rms_adamw", "original", "none"), owner=owner)
    if (
        not isinstance(ns_coefficients, (tuple, list))
        or len(ns_coefficients) != 3
        or not all(is_real(v) for v in ns_coefficients)
    ):
        raise ConfigError(
            message(f"{owner}: ns_coefficients", "must be three numbers (a, b, c)",
                    describe(ns_coefficients), f"pass e.g. ns_coefficients={NS_COEFFICIENTS}")
        )  # fmt: skip
    coeffs = tuple(float(v) for v in ns_coefficients)
    if (
        not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point)
        and ns_dtype != "auto"
    ):
        raise ConfigError(
            message(f"{owner}: ns_dtype", "must be 'auto' or a floating torch.dtype",
                    describe(ns_dtype), "pass e.g. ns_dtype=torch.bfloat16")
        )  # fmt: skip
    path = resolve_impl(impl, owner)

    def init(params: Params) -> State:
        check_real(params, owner)
        flat = [n for n, p in params.items() if p.ndim < 2]
        if flat:
            raise ConfigError(
                message(
                    f"{owner}: parameters",
                    "must be matrices (ndim >= 2)",
                    f"{flat[0]!r} of shape {tuple(params[flat[0]].shape)}",
                    "use descend.optim.muon, which sends biases, gains, embeddings and the "
                    "output layer to AdamW (see descend.optim.muon_partition)",
                )
            )
        return {"momentum_buffer": zeros_like_all(params)}

    def update_reference(grads: Updates, state: State, params: Params | None, owned: bool):
        updates = {}
        for name in present(grads):
            g, buf = grads[name], state["momentum_buffer"][name]
            buf.lerp_(g, 1 - momentum)
            m = g.lerp(buf, momentum) if nesterov else buf
            m2 = m.reshape(m.shape[0], -1) if m.ndim > 2 else m
            o = _newton_schulz_torch(m2, ns_steps, coeffs, eps, _ns_dtype(ns_dtype, g))
            updates[name] = o.to(g.dtype).reshape(g.shape) * adjust_lr_ratio(g.shape, adjust_lr)
        return updates, state, True

    def update_foreach(grads: Updates, state: State, params: Params | None, owned: bool):
        names = present(grads)
        batches: dict[tuple, list[str]] = {}
        for n in names:
            g = grads[n]
            rows, cols = g.shape[0], g.numel() // g.shape[0]
            # tall and wide matrices of one shape share a batch (the wide side last)
            key = (min(rows, cols), max(rows, cols), g.dtype, g.device)
            batches.setdefault(key, []).append(n)
        out: dict[str, torch.Tensor] = {}
        for grp in batches.values():
            gs = [grads[n] for n in grp]
            bufs = [state["momentum_buffer"][n] for n in grp]
            torch._foreach_lerp_(bufs, gs, 1 - momentum)
            ms = torch._foreach_lerp(gs, bufs, momentum) if nesterov else bufs
            wide = [m.reshape(m.shape[0], -1) for m in ms]
            wide = [m.T if m.shape[0] > m.shape[1] else m for m in wide]
            o = newton_schulz(torch.stack(wide), ns_steps, coeffs, eps, _ns_dtype(ns_dtype, gs[0]))
            for n, oi in zip(grp, o.unbind()):
                g = grads[n]
                oi = oi.T if oi.shape[0] != g.shape[0] else oi
                # a fresh tensor: never a view of the batch the next step overwrites
                out[n] = oi.to(g.dtype).reshape(g.shape) * adjust_lr_ratio(g.shape, adjust_lr)
        return out, state, True

    return inplace_transform(init, update_reference if path == "reference" else update_foreach)
