"""Losses: the scalar that descend minimizes.

Seven built-in losses, each a plain function of tensors that **checks its inputs before computing**
and refuses bad ones with an :class:`~descend._errors.InputError` that names the problem and the
fix (``validate=True``, the default), and computes with :mod:`torch.nn.functional`:

==========================  ==========================  ====================================
loss                        pred                        targets
==========================  ==========================  ====================================
:func:`mse`, :func:`mae`,   floats, any shape (N, ...)  floats, the same shape as ``pred``
:func:`huber`
:func:`poisson`             log expected values         counts or rates >= 0, the same shape
:func:`cross_entropy`       logits (N, C) or            class indices (N,) / (N, d1, ...),
                            (N, C, d1, ...)             or probabilities like ``pred`` with
                                                        ``probabilities=True``
:func:`binary_cross_entropy`  logits, any shape         0/1 labels or probabilities in
                                                        [0, 1], the same shape as ``pred``
:func:`nll`                 log-probabilities (N, C)    class indices (N,) / (N, d1, ...)
==========================  ==========================  ====================================

Every loss takes ``weight`` (an optional per-sample weight of shape (N,), e.g. scikit-learn's
``sample_weight``) and ``reduction`` in ``{"mean", "sum", "none"}``. With per-sample weights the
mean is the weighted mean ``sum_i w_i * l_i / sum_i w_i`` (``l_i`` averaged over a sample's own
elements), so unit weights give exactly the unweighted mean. ``"none"`` returns the elementwise
losses already multiplied by the weights.

:class:`Loss` bundles a loss with its options for the training loop, which validates the whole
target set once (:meth:`Loss.validate`) and then calls with ``validate=False`` in the hot path.
:func:`get` resolves a registry name, a :class:`Loss` or any callable ``(pred, target) -> scalar``.

Example:
    >>> import torch
    >>> from descend import losses
    >>> loss = losses.get("ce", label_smoothing=0.1)
    >>> loss.name, loss.target_kind, loss.task
    ('cross_entropy', 'index', 'classification')
    >>> value = loss(torch.zeros(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 1]))
    >>> round(value.item(), 4)  # log(3): uniform logits
    1.0986
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from descend._errors import (
    ConfigError,
    InputError,
    check_choice,
    check_in_range,
    check_positive,
    describe,
    is_int,
    message,
)

__all__ = [
    "ALIASES",
    "REGISTRY",
    "Loss",
    "Reduction",
    "TargetKind",
    "Task",
    "binary_cross_entropy",
    "cross_entropy",
    "get",
    "huber",
    "mae",
    "mse",
    "nll",
    "num_outputs_needed",
    "poisson",
]

Reduction = Literal["mean", "sum", "none"]
TargetKind = Literal["index", "float", "any"]
Task = Literal["classification", "regression", "any"]
WeightLike = Tensor | Sequence[float] | float | None

_REDUCTIONS = ("mean", "sum", "none")
# torch's own default for "no ignored label"; our validation refuses negative indices unless the
# caller opts in with ignore_index, so passing it to torch when ignore_index is None is harmless.
_TORCH_IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# Formatting helpers for messages
# ---------------------------------------------------------------------------------------------


def _shape(t: Tensor | torch.Size | tuple[int, ...]) -> str:
    return str(tuple(t.shape if isinstance(t, Tensor) else t))


def _num(x: float) -> str:
    return f"{x:.4g}"


def _first_index(mask: Tensor) -> str:
    """The first position where ``mask`` is true, as ``5`` (1-D) or ``(5, 1)``."""
    idx = mask.nonzero()[0].tolist()
    return str(idx[0]) if len(idx) == 1 else str(tuple(idx))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# ---------------------------------------------------------------------------------------------
# Checks shared by the losses. ``pred`` may be None: then only the target-only rules apply
# (Loss.validate_targets), the rules that compare targets with the model's output are skipped.
# ---------------------------------------------------------------------------------------------


def _check_tensor(loss: str, role: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise InputError(
            message(
                f"{loss} {role}",
                "must be a torch.Tensor",
                describe(value)
                if hasattr(value, "shape")
                else f"{type(value).__name__} {describe(value)}",
                f"convert it with torch.as_tensor({role})",
            )
        )


def _check_reduction(loss: str, reduction: str) -> None:
    check_choice("reduction", reduction, _REDUCTIONS, owner=loss)


def _check_pred(loss: str, pred: object) -> None:
    _check_tensor(loss, "pred", pred)
    assert isinstance(pred, Tensor)
    if not pred.is_floating_point():
        raise InputError(
            message(
                f"{loss} pred",
                "must be a floating-point tensor (the model's raw output, which gradients "
                "flow through)",
                f"dtype {pred.dtype}",
                "pass the model's output itself, not rounded or argmax'ed predictions "
                "(cast with pred.float() if needed)",
            )
        )
    _check_batch(
        loss,
        "pred",
        pred,
        "pass a batch; for a single sample use pred.reshape(1) and target.reshape(1)",
    )


def _check_batch(loss: str, role: str, t: Tensor, scalar_fix: str) -> None:
    """``t`` has a batch dimension (``scalar_fix`` says how to add one) and a sample in it."""
    if t.ndim == 0:
        raise InputError(
            message(
                f"{loss} {role}",
                "must have a batch dimension, shape (N, ...)",
                "a 0-dimensional tensor",
                scalar_fix,
            )
        )
    if t.shape[0] == 0:
        raise InputError(
            message(
                f"{loss} {role}",
                "must hold at least one sample",
                f"an empty batch of shape {_shape(t)}",
                "check the data split and the batch slicing; a batch needs N >= 1 samples",
            )
        )
    if t.numel() == 0:  # (N, 0): a mean over no element is NaN, and no class can be scored
        raise InputError(
            message(
                f"{loss} {role}",
                "must hold at least one value per sample",
                f"shape {_shape(t)}",
                "check that the data has target columns and the model's last layer has outputs",
            )
        )


def _check_target_basics(loss: str, pred: Tensor | None, target: object) -> None:
    _check_tensor(loss, "targets", target)
    assert isinstance(target, Tensor)
    if target.is_complex():
        raise InputError(
            message(
                f"{loss} targets",
                "must be real numbers",
                f"dtype {target.dtype}",
                "pass target.real or target.abs()",
            )
        )
    if pred is not None and target.device != pred.device:
        raise InputError(
            message(
                f"{loss} targets",
                "must be on the same device as pred",
                f"targets on {target.device} and pred on {pred.device}",
                "move them with targets.to(pred.device)",
            )
        )
    _check_batch(loss, "targets", target, "pass one target per sample, e.g. target.reshape(1)")


def _batch_mismatch(loss: str, pred: Tensor, target: Tensor) -> InputError:
    return InputError(
        message(
            f"{loss} pred and targets",
            "must have the same batch size (first dimension)",
            f"pred of shape {_shape(pred)} ({pred.shape[0]} samples) and targets of shape "
            f"{_shape(target)} ({target.shape[0]} samples)",
            "pass the targets that belong to this batch of inputs",
        )
    )


def _check_same_shape(loss: str, pred: Tensor, target: Tensor) -> None:
    """Elementwise losses need equal shapes: broadcasting would compute a different loss."""
    if target.shape == pred.shape:
        return
    broadcast = (
        f"which would broadcast to {_shape(torch.broadcast_shapes(pred.shape, target.shape))} "
        "and silently compare every prediction with every target"
        if _broadcastable(pred.shape, target.shape)
        else None
    )
    rule = "must have the same shape as pred"
    got = f"pred of shape {_shape(pred)} and targets of shape {_shape(target)}"
    squeeze = None  # one side has an extra trailing dimension of 1
    if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1 and pred.shape[:-1] == target.shape:
        fix_t = "target.reshape(-1, 1)" if target.ndim == 1 else "target.unsqueeze(-1)"
        squeeze = f"pass pred.squeeze(-1) or {fix_t}"
    elif target.ndim == pred.ndim + 1 and target.shape[-1] == 1 and target.shape[:-1] == pred.shape:
        fix_p = "pred.reshape(-1, 1)" if pred.ndim == 1 else "pred.unsqueeze(-1)"
        squeeze = f"pass target.squeeze(-1) or {fix_p}"
    if squeeze is not None:
        raise InputError(
            message(f"{loss} targets", rule, f"{got}, {broadcast}" if broadcast else got, squeeze)
        )
    if target.shape[0] != pred.shape[0]:
        raise _batch_mismatch(loss, pred, target)
    per_sample = math.prod(target.shape[1:])
    fix = (
        f"the model's last layer must have {per_sample} outputs, one per target column"
        if pred.ndim == 2 and target.ndim == 2
        else "reshape pred or targets so that they match"
    )
    raise InputError(message(f"{loss} targets", rule, got, fix))


def _broadcastable(a: torch.Size, b: torch.Size) -> bool:
    try:
        torch.broadcast_shapes(a, b)
    except RuntimeError:
        return False
    return True


def _check_finite(loss: str, role: str, t: Tensor) -> None:
    if not t.is_floating_point():
        return
    v = t.detach()
    finite = torch.isfinite(v)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(v).sum())
    n_inf = int(torch.isinf(v).sum())
    parts = [f"{n_nan} NaN"] if n_nan else []
    parts += [f"{n_inf} inf"] if n_inf else []
    total = n_nan + n_inf
    raise InputError(
        message(
            f"{loss} {role}",
            "must be finite (no NaN or inf)",
            f"{' and '.join(parts)} {'value' if total == 1 else 'values'} in {role} of shape "
            f"{_shape(v)}, the first at index {_first_index(~finite)}",
            "drop or impute those samples before training, e.g. keep only rows where "
            f"torch.isfinite({role}).reshape(len({role}), -1).all(1)",
        )
    )


def _check_weight(loss: str, weight: object, n: int, reduction: str, device: torch.device) -> None:
    if weight is None:
        return
    _check_tensor(loss, "weight", weight)
    assert isinstance(weight, Tensor)
    if weight.ndim != 1 or weight.shape[0] != n:
        raise InputError(
            message(
                f"{loss} weight",
                f"must be one weight per sample, shape ({n},)",
                f"shape {_shape(weight)}",
                "pass a 1-D tensor with one non-negative weight per sample, e.g. "
                "weight.reshape(-1)",
            )
        )
    if weight.is_complex():
        raise InputError(
            message(f"{loss} weight", "must be real numbers", f"dtype {weight.dtype}", None)
        )
    if weight.device != device:
        raise InputError(
            message(
                f"{loss} weight",
                "must be on the same device as pred",
                f"weight on {weight.device} and pred on {device}",
                "move it with weight.to(pred.device)",
            )
        )
    _check_finite(loss, "weight", weight)
    w = weight.detach()
    if bool((w < 0).any()):
        raise InputError(
            message(
                f"{loss} weight",
                "must be >= 0",
                f"{_n(int((w < 0).sum()), 'negative weight')}, the first at index "
                f"{_first_index(w < 0)} ({_num(float(w[w < 0][0]))})",
                "per-sample weights scale each sample's loss; use 0 to drop a sample",
            )
        )
    if reduction == "mean" and not bool((w > 0).any()):
        raise InputError(
            message(
                f"{loss} weight",
                "must have a positive sum for reduction='mean' (it divides by the sum)",
                "all weights equal to 0",
                "give at least one sample a positive weight, or use reduction='sum'",
            )
        )


def _as_float_tensor(name: str, value: object, owner: str, *, allow_scalar: bool) -> Tensor:
    """Settings given as a list/array/tensor/number -> a float tensor, refused if unusable."""
    try:
        t = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, Tensor) else value
    except (TypeError, ValueError, RuntimeError):
        t = None
    shape_ok = t is not None and (t.ndim == 1 or (allow_scalar and t.ndim == 0))
    if t is None or not shape_ok or t.is_complex() or t.dtype == torch.bool:
        rule = "must be a number or a 1-D tensor" if allow_scalar else "must be a 1-D tensor"
        raise ConfigError(
            message(f"{owner}: {name}", f"{rule} of non-negative weights", describe(value), None)
        )
    v = t.detach().to(torch.float64)
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
        raise ConfigError(
            message(
                f"{owner}: {name}",
                "must hold finite weights >= 0",
                f"values {v.tolist() if v.numel() <= 10 else describe(t)}",
                "pass non-negative numbers, e.g. inverse class frequencies",
            )
        )
    return t


def _check_class_weight(loss: str, class_weight: WeightLike, n_classes: int | None) -> None:
    if class_weight is None:
        return
    cw = _as_float_tensor("class_weight", class_weight, loss, allow_scalar=False)
    if not bool((cw > 0).any()):
        raise ConfigError(
            message(
                f"{loss}: class_weight",
                "must have at least one positive weight",
                "all weights equal to 0",
                "pass e.g. inverse class frequencies",
            )
        )
    if n_classes is not None and cw.shape[0] != n_classes:
        raise InputError(
            message(
                f"{loss} class_weight",
                f"must have one weight per class of pred, shape ({n_classes},)",
                f"shape {_shape(cw)} for pred with {n_classes} classes",
                f"pass {n_classes} weights, or make the model's last layer output "
                f"{cw.shape[0]} classes",
            )
        )


def _check_ignore_index(loss: str, ignore_index: object) -> None:
    if ignore_index is None:
        return
    if not is_int(ignore_index):  # a NumPy integer too (a label read from an array)
        raise ConfigError(
            message(
                f"{loss}: ignore_index",
                "must be an int or None",
                describe(ignore_index),
                "pass e.g. ignore_index=-100 (torch's convention for padding labels)",
            )
        )


# ---------------------------------------------------------------------------------------------
# Class-index targets (cross_entropy, nll)
# ---------------------------------------------------------------------------------------------


def _looks_one_hot(t: Tensor) -> bool:
    if t.ndim < 2 or t.shape[1] < 2:
        return False
    v = t.detach()
    if v.dtype != torch.bool and not bool(((v == 0) | (v == 1)).all()):
        return False
    return bool((v.sum(1) == 1).all())


def _looks_like_probabilities(t: Tensor) -> bool:
    if t.ndim < 2 or t.shape[1] < 2 or not t.is_floating_point():
        return False
    v = t.detach()
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()) or bool((v > 1).any()):
        return False
    return bool(((v.sum(1) - 1).abs() <= _sum_tolerance(v.dtype)).all())


def _sum_tolerance(dtype: torch.dtype) -> float:
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def _index_rule(pred: Tensor | None) -> str:
    if pred is None:
        return "expects class indices of shape (N,) with values in [0, C)"
    tail = "".join(f", {d}" for d in pred.shape[2:])
    shape = f"(N{tail})" if tail else "(N,)"
    return f"expects class indices of shape {shape} with values in [0, {pred.shape[1]})"


def _check_index_targets(
    loss: str,
    pred: Tensor | None,
    target: Tensor,
    ignore_index: int | None,
    *,
    soft_alternative: bool,
) -> None:
    """Class-index targets: shape (N, d1, ...), integral values in [0, C) (or ignore_index)."""
    rule = _index_rule(pred)
    soft = ", or use soft targets with probabilities=True" if soft_alternative else ""
    expected = None if pred is None else (pred.shape[0], *pred.shape[2:])
    if expected is None or tuple(target.shape) != expected:
        like_pred = pred is None or (
            target.ndim == pred.ndim
            and target.shape[0] == pred.shape[0]
            and target.shape[2:] == pred.shape[2:]
        )
        if target.ndim >= 2 and like_pred and _looks_one_hot(target):
            raise InputError(
                message(
                    loss,
                    rule,
                    f"targets of shape {_shape(target)} with values in {{0, 1}}",
                    f"these look one-hot; pass targets.argmax(1){soft}.",
                )
            )
        if target.ndim >= 2 and like_pred and _looks_like_probabilities(target):
            fix = (
                "these look like class probabilities; pass probabilities=True, or "
                "targets.argmax(1) for hard labels"
                if soft_alternative
                else "these look like class probabilities; pass targets.argmax(1), or use "
                "cross_entropy(..., probabilities=True) on the logits"
            )
            raise InputError(
                message(loss, rule, f"targets of shape {_shape(target)} (rows sum to 1)", fix)
            )
        if target.ndim >= 2 and target.shape[1] == 1 and (pred is None or like_pred):
            fix = "pass targets.reshape(-1)" if target.ndim == 2 else "pass targets.squeeze(1)"
            raise InputError(
                message(
                    loss,
                    rule,
                    f"targets of shape {_shape(target)}, a column of class indices",
                    fix,
                )
            )
    if pred is not None and tuple(target.shape) != expected:
        if pred.ndim >= 3 and target.shape == pred.shape[:-1]:
            raise InputError(
                message(
                    f"{loss} pred",
                    "must hold the classes in dimension 1, shape (N, C, d1, ...), as torch expects",
                    f"pred of shape {_shape(pred)} with targets of shape {_shape(target)}, which "
                    "fit classes in the last dimension",
                    "pass pred.movedim(-1, 1), or flatten both: "
                    f"pred.reshape(-1, {pred.shape[-1]}) and targets.reshape(-1)",
                )
            )
        if target.shape[0] != pred.shape[0]:
            raise _batch_mismatch(loss, pred, target)
        raise InputError(
            message(
                loss,
                rule,
                f"targets of shape {_shape(target)} for pred of shape {_shape(pred)}",
                "pass one class index per sample (and per position, for pred (N, C, d1, ...))",
            )
        )
    if target.is_floating_point():
        _check_finite(loss, "targets", target)
        frac = target.detach() != target.detach().round()
        if bool(frac.any()):
            example = float(target.detach()[frac][0])
            fix = (
                "pass probabilities=True for soft targets of shape (N, C), or targets.long() "
                "for class indices"
                if soft_alternative
                else "pass targets.long() for class indices"
            )
            raise InputError(
                message(
                    loss,
                    rule,
                    f"floating-point targets ({target.dtype}) with non-integer values such as "
                    f"{example:.9g} (the first at index {_first_index(frac)})",
                    fix,
                )
            )
    v = target.detach()
    if v.dtype == torch.bool:
        v = v.long()
    keep = v != ignore_index if ignore_index is not None else None
    valid = v[keep] if keep is not None else v.reshape(-1)
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0:
        neg = v < 0 if keep is None else (v < 0) & keep
        first = _first_index(neg)
        skip = "" if ignore_index is not None else "; or pass ignore_index=<label> to skip samples"
        raise InputError(
            message(
                loss,
                rule,
                f"{int(neg.sum())} negative class {'index' if int(neg.sum()) == 1 else 'indices'} "
                f"(the first at index {first}: "
                f"{int(v[neg][0])})",
                "class indices count from 0: remap the labels, e.g. "
                f"torch.unique(targets, return_inverse=True)[1]{skip}",
            )
        )
    if pred is None:
        return
    n_classes = pred.shape[1]
    if hi >= n_classes:
        n_out = int((valid >= n_classes).sum())
        if n_classes == 1 and hi == 1:
            fix = (
                "the model's last layer must have 2 outputs (one per class) for "
                f"{loss}; or keep 1 output and use binary_cross_entropy with float 0/1 targets"
            )
        else:
            fix = (
                f"the model's last layer must have {hi + 1} outputs (one per class), "
                f"not {n_classes}"
            )
            if lo >= 1 and hi == n_classes:
                fix += "; or, if the labels count from 1, pass targets - 1"
        raise InputError(
            message(
                loss,
                rule,
                f"targets with values up to {hi} ({n_out} of {valid.numel()} out of range) for "
                f"pred with {n_classes} {'output' if n_classes == 1 else 'outputs'} per sample",
                fix,
            )
        )


def _check_class_pred(loss: str, pred: Tensor) -> None:
    """:func:`_check_pred`, then one score per class (dimension 1)."""
    _check_pred(loss, pred)
    if pred.ndim < 2:
        raise InputError(
            message(
                f"{loss} pred",
                "must have shape (N, C), one score per class",
                f"pred of shape {_shape(pred)}",
                "the model's last layer must have one output per class; for a binary task "
                "with a single logit use binary_cross_entropy",
            )
        )


def _check_probability_targets(loss: str, pred: Tensor | None, target: Tensor) -> None:
    shape = "like pred (N, C, ...)" if pred is None else f"of shape {_shape(pred)} like pred"
    rule = f"with probabilities=True expects class probabilities {shape}"
    if not target.is_floating_point():
        index_shaped = (
            target.ndim == 1 if pred is None else target.shape == (pred.shape[0], *pred.shape[2:])
        )
        fix = (
            "these look like class indices; drop probabilities=True"
            if index_shaped
            else "pass targets.float()"
        )
        raise InputError(
            message(loss, rule, f"targets of dtype {target.dtype} and shape {_shape(target)}", fix)
        )
    if pred is not None and target.shape != pred.shape:
        if target.shape[0] != pred.shape[0]:
            raise _batch_mismatch(loss, pred, target)
        fix = (
            "these look like class indices; drop probabilities=True"
            if target.shape == (pred.shape[0], *pred.shape[2:])
            else f"pass one probability per class and sample; the model outputs {pred.shape[1]} "
            "classes"
        )
        raise InputError(message(loss, rule, f"targets of shape {_shape(target)}", fix))
    if pred is None and target.ndim < 2:
        raise InputError(
            message(
                loss,
                rule,
                f"targets of shape {_shape(target)}",
                "these look like class indices; drop probabilities=True",
            )
        )
    _check_finite(loss, "targets", target)
    v = target.detach()
    lo, hi = float(v.min()), float(v.max())
    if lo < 0 or hi > 1:
        raise InputError(
            message(
                loss,
                f"{rule}, with values in [0, 1]",
                f"values in [{_num(lo)}, {_num(hi)}]",
                "pass probabilities, e.g. targets.softmax(1) if these are scores",
            )
        )
    sums = v.sum(1)
    off = (sums - 1).abs() > _sum_tolerance(v.dtype)
    if bool(off.any()):
        raise InputError(
            message(
                loss,
                f"{rule}, summing to 1 over the classes (dimension 1)",
                f"{_n(int(off.sum()), 'row')} that do not, e.g. a sum of "
                f"{_num(float(sums[off][0]))} at index {_first_index(off)}",
                "normalize them: targets / targets.sum(1, keepdim=True)",
            )
        )


# ---------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------


def _per_sample(weight: Tensor, losses: Tensor) -> Tensor:
    """Per-sample ``weight`` (N,) shaped to broadcast over ``losses`` (N, ...)."""
    w = weight.to(dtype=losses.dtype, device=losses.device)
    return w.reshape(w.shape[:1] + (1,) * (losses.ndim - 1))


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype to sum a mean's terms in: float32 for the 16-bit floats, whose sums pass
    65504 (float16) or lose their digits (bfloat16) long before a batch's loss does."""
    return torch.promote_types(dtype, torch.float32)


def _weighted(losses: Tensor, weight: Tensor, reduction: str) -> Tensor:
    """Reduce elementwise ``losses`` (N, ...) with per-sample ``weight`` (N,)."""
    w = _per_sample(weight, losses)
    weighted = losses * w
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    acc = _acc(losses.dtype)
    mean = weighted.sum(dtype=acc) / (w.sum(dtype=acc) * math.prod(losses.shape[1:]))
    return mean.to(losses.dtype)


def _weighted_index(
    losses: Tensor,
    target: Tensor,
    weight: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
) -> Tensor:
    """Like torch's class-weighted mean, times per-sample weights (if any): the denominator is
    ``sum_i w_i * class_weight[y_i]`` over the samples not ignored. A batch that counts nothing
    (every label ignored) has mean 0 and no gradient, not torch's 0/0 = NaN, which the training
    loop would take for divergence."""
    if reduction != "mean":
        return losses if weight is None else _weighted(losses, weight, reduction)
    counted = (target != ignore_index).to(losses.dtype)
    if class_weight is not None:
        counted = counted * class_weight[target.clamp(0, class_weight.shape[0] - 1)]
    if weight is not None:
        w = _per_sample(weight, losses)
        losses, counted = losses * w, counted * w
    acc = _acc(losses.dtype)
    denom = counted.sum(dtype=acc)
    return (losses.sum(dtype=acc) / denom.masked_fill(denom == 0, 1)).to(losses.dtype)


def _to_pred(value: WeightLike, pred: Tensor) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.to(dtype=pred.dtype, device=pred.device)
    return torch.as_tensor(value, dtype=pred.dtype, device=pred.device)


def _as_index(target: Tensor) -> Tensor:
    return target if target.dtype == torch.long else target.long()


def _float_loss(
    fn: Callable[..., Tensor],
    pred: Tensor,
    target: Tensor,
    sample_weight: Tensor | None,
    reduction: str,
    **options: Any,
) -> Tensor:
    """``fn(pred, target, **options)`` (a :mod:`torch.nn.functional` loss) on targets cast to
    pred's dtype: torch's own reduction without per-sample weights, :func:`_weighted` with them.
    ``options`` go to ``fn`` as they are (its ``weight=`` is a class weight)."""
    target = target.to(pred.dtype)
    if sample_weight is None:
        return fn(pred, target, reduction=reduction, **options)
    return _weighted(fn(pred, target, reduction="none", **options), sample_weight, reduction)


def _index_loss(
    fn: Callable[..., Tensor],
    pred: Tensor,
    target: Tensor,
    class_weight: WeightLike,
    ignore_index: int | None,
    sample_weight: Tensor | None,
    reduction: str,
    **options: Any,
) -> Tensor:
    """``fn`` (``F.cross_entropy`` or ``F.nll_loss``) on class-index targets: torch's
    class-weighted reduction, or :func:`_weighted_index` with per-sample weights or ignored
    labels (whose batch may count no label at all)."""
    cw = _to_pred(class_weight, pred)
    target = _as_index(target)
    ii = _TORCH_IGNORE_INDEX if ignore_index is None else ignore_index
    if sample_weight is None and (ignore_index is None or reduction != "mean"):
        return fn(pred, target, weight=cw, ignore_index=ii, reduction=reduction, **options)
    losses = fn(pred, target, weight=cw, ignore_index=ii, reduction="none", **options)
    return _weighted_index(losses, target, sample_weight, cw, ii, reduction)


# ---------------------------------------------------------------------------------------------
# Regression losses
# ---------------------------------------------------------------------------------------------


def _check_regression(
    loss: str,
    pred: Tensor | None,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    _check_reduction(loss, reduction)
    if pred is not None:
        _check_pred(loss, pred)
    _check_target_basics(loss, pred, target)
    if not target.is_floating_point():
        raise InputError(
            message(
                f"{loss} targets",
                "must be floating-point values",
                f"dtype {target.dtype}",
                "pass targets.float()"
                if loss == "poisson"  # integer counts are its natural targets
                else "pass targets.float(); if these are class labels, use cross_entropy (or "
                "binary_cross_entropy for 0/1 labels)",
            )
        )
    if pred is not None:
        _check_same_shape(loss, pred, target)
    _check_finite(loss, "targets", target)
    if pred is not None and target.dtype != pred.dtype:
        _check_fits(loss, pred.dtype, target)
    _check_weight(loss, weight, target.shape[0], reduction, target.device)


def _check_fits(loss: str, dtype: torch.dtype, target: Tensor) -> None:
    """Targets are cast to pred's dtype: a float16 pred turns targets beyond 65504 into inf."""
    big = torch.finfo(dtype).max
    if torch.finfo(target.dtype).max <= big:
        return
    over = target.detach().abs() > big
    if bool(over.any()):
        raise InputError(
            message(
                f"{loss} targets",
                f"must fit pred's dtype {dtype} (|value| <= {_num(big)}), to which they are cast",
                f"{_n(int(over.sum()), 'value')} beyond it, e.g. "
                f"{_num(float(target.detach()[over][0]))} at index {_first_index(over)}",
                "scale the targets (e.g. divide by their standard deviation), or compute pred "
                "in float32 or bfloat16",
            )
        )


_check_mse = functools.partial(_check_regression, "mse")
_check_mae = functools.partial(_check_regression, "mae")


def _check_huber(
    pred: Tensor | None,
    target: Tensor,
    *,
    delta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    check_positive("delta", delta, owner="huber")
    _check_regression("huber", pred, target, weight=weight, reduction=reduction)


def mse(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Mean squared error, ``l = (pred - target)^2`` elementwise.

    Args:
        pred: predictions of shape (N, ...), floating point.
        target: floating-point targets of exactly the same shape (no broadcasting: pred (N, 1)
            against targets (N,) is refused, since it would compare every pair).
        weight: optional per-sample weights of shape (N,), >= 0; the mean becomes
            ``sum_i w_i l_i / sum_i w_i``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (elementwise, times the weights).
        validate: check the inputs first (one host-device sync); ``False`` in hot loops.

    Returns:
        The reduced loss (a scalar tensor), or the elementwise losses for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, NaN/inf target, empty batch, or weight.

    Example:
        >>> import torch
        >>> mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
        >>> mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), weight=torch.tensor([3.0, 1.0]))
        tensor(1.7500)
    """
    if validate:
        _check_mse(pred, target, weight=weight, reduction=reduction)
    return _float_loss(F.mse_loss, pred, target, weight, reduction)


def mae(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Mean absolute error (L1), ``l = |pred - target|`` elementwise.

    Args:
        pred: predictions of shape (N, ...), floating point.
        target: floating-point targets of exactly the same shape.
        weight: optional per-sample weights of shape (N,), >= 0 (weighted mean).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the inputs first.

    Returns:
        The reduced loss, or the elementwise losses for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, NaN/inf target, empty batch, or weight.

    Example:
        >>> import torch
        >>> mae(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]))
        tensor(1.5000)
    """
    if validate:
        _check_mae(pred, target, weight=weight, reduction=reduction)
    return _float_loss(F.l1_loss, pred, target, weight, reduction)


def huber(
    pred: Tensor,
    target: Tensor,
    *,
    delta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Huber loss: quadratic near the target, linear beyond ``delta``.

    With ``d = pred - target`` elementwise::

        l = 0.5 * d^2                   if |d| <= delta
        l = delta * (|d| - 0.5 * delta)  otherwise

    Args:
        pred: predictions of shape (N, ...), floating point.
        target: floating-point targets of exactly the same shape.
        delta: where the loss turns from quadratic to linear, > 0.
        weight: optional per-sample weights of shape (N,), >= 0 (weighted mean).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the inputs first.

    Returns:
        The reduced loss, or the elementwise losses for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, NaN/inf target, empty batch, or weight.
        ConfigError: ``delta <= 0``.

    Example:
        >>> import torch
        >>> huber(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]), delta=1.0)
        tensor(1.3125)
    """
    if validate:
        _check_huber(pred, target, delta=delta, weight=weight, reduction=reduction)
    return _float_loss(F.huber_loss, pred, target, weight, reduction, delta=delta)


def _check_poisson(
    pred: Tensor | None,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    _check_regression("poisson", pred, target, weight=weight, reduction=reduction)
    negative = target < 0
    if bool(negative.any()):
        raise InputError(
            message(
                "poisson targets",
                "must be counts or rates >= 0",
                f"{int(negative.sum())} negative value(s), the first "
                f"{_num(float(target[negative].reshape(-1)[0]))} at {_first_index(negative)}",
                "use mse, mae or huber for targets that can be negative",
            )
        )


def _poisson_elementwise(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    # exp(pred) - y·pred + (y·log y - y): the half deviance, 0 where exp(pred) = y
    losses = torch.exp(pred) - target * pred + (torch.special.xlogy(target, target) - target)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def poisson(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Poisson deviance for counts and rates, with a log link: ``pred`` is the log of the
    expected value, so the prediction is ``exp(pred)`` (always positive).

    With ``mu = exp(pred)`` elementwise, the half deviance::

        l = mu - y * log(mu) + y * log(y) - y        (y * log(y) = 0 at y = 0)

    which is 0 where ``mu = y`` and whose gradient is ``mu - y``. It is torch's
    ``poisson_nll_loss(log_input=True)`` plus a constant of the targets (``y log y - y``), so
    the loss reads 0 at a perfect fit; scikit-learn's ``MLPRegressor(loss="poisson")`` and
    ``HistGradientBoostingRegressor(loss="poisson")`` minimize the same function.

    Args:
        pred: log expected values, shape (N, ...), floating point (the model's raw output).
        target: counts or rates ``>= 0``, floating point, the same shape as ``pred``.
        weight: optional per-sample weights of shape (N,), >= 0 (weighted mean), e.g.
            exposures.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the inputs first.

    Returns:
        The reduced loss, or the elementwise losses for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, NaN/inf or negative target, empty batch, or weight.

    Example:
        >>> import math, torch
        >>> poisson(torch.tensor([math.log(2.0), 0.0]), torch.tensor([2.0, 1.0]))
        tensor(0.)
    """
    if validate:
        _check_poisson(pred, target, weight=weight, reduction=reduction)
    return _float_loss(_poisson_elementwise, pred, target, weight, reduction)


# ---------------------------------------------------------------------------------------------
# Classification losses
# ---------------------------------------------------------------------------------------------


def _check_soft_options(
    loss: str, probabilities: object, label_smoothing: object, ignore_index: object
) -> None:
    """cross_entropy's ``probabilities``, ``label_smoothing`` and ``ignore_index`` options."""
    if not isinstance(probabilities, bool):
        raise ConfigError(
            message(f"{loss}: probabilities", "must be True or False", describe(probabilities))
        )
    check_in_range(
        "label_smoothing",
        label_smoothing,
        0.0,
        1.0,
        owner=loss,
        high_inclusive=True,
        example="label_smoothing=0.1",
    )
    _check_ignore_index(loss, ignore_index)
    if probabilities and ignore_index is not None:
        raise ConfigError(
            message(
                f"{loss}: ignore_index",
                "applies to class-index targets only",
                f"ignore_index={ignore_index} with probabilities=True",
                "drop ignore_index, or give ignored samples weight 0",
            )
        )


def _check_cross_entropy(
    pred: Tensor | None,
    target: Tensor,
    *,
    probabilities: bool = False,
    label_smoothing: float = 0.0,
    class_weight: WeightLike = None,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    loss = "cross_entropy"
    _check_reduction(loss, reduction)
    _check_soft_options(loss, probabilities, label_smoothing, ignore_index)
    if pred is not None:
        _check_class_pred(loss, pred)
    _check_target_basics(loss, pred, target)
    if probabilities:
        _check_probability_targets(loss, pred, target)
    else:
        _check_index_targets(loss, pred, target, ignore_index, soft_alternative=True)
    if pred is not None and pred.shape[1] == 1:
        # (after the targets' checks, whose messages name the classes the labels need) a
        # softmax over one score is 1 whatever the score: the loss is 0 and its gradient 0,
        # so nothing would train (torch computes it without a word)
        raise InputError(
            message(
                f"{loss} pred",
                "must have at least 2 scores per sample (dimension 1), one per class",
                f"pred of shape {_shape(pred)}: a softmax over 1 score is always 1, so the "
                "loss is 0 and nothing trains",
                "give the model's last layer one output per class (2 for a binary task), "
                "or keep 1 output and use binary_cross_entropy with float 0/1 targets",
            )
        )
    _check_class_weight(loss, class_weight, None if pred is None else pred.shape[1])
    _check_weight(loss, weight, target.shape[0], reduction, target.device)


def cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    probabilities: bool = False,
    label_smoothing: float = 0.0,
    class_weight: WeightLike = None,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Cross-entropy of softmax(pred) against class indices or class probabilities.

    With ``p = softmax(pred)`` over the classes (dimension 1), ``C`` classes, smoothing ``eps``
    and class weights ``c`` (all 1 by default), for one sample with class index ``y``::

        l = (1 - eps) * c[y] * (-log p[y]) + eps / C * sum_k c[k] * (-log p[k])

    and with target probabilities ``t`` (``probabilities=True``), ``t`` is first smoothed to
    ``(1 - eps) * t + eps / C`` and ``l = -sum_k c[k] * t[k] * log p[k]``.

    The mean over class-index targets is torch's: ``sum_i w_i l_i / sum_i w_i c[y_i]`` over the
    samples that are not ignored (``w`` the per-sample weights), and 0 for a batch whose labels
    are all ignored (torch: NaN); over probabilities it is ``sum_i w_i l_i / sum_i w_i``.

    Targets: integer class indices are used as given. **Floating-point targets with integral
    values (e.g. labels read from a CSV as 0.0, 1.0, 2.0) are accepted and cast with
    ``.long()``**; non-integral floats are refused (they are probabilities or a mistake).
    One-hot targets are refused with a pointer to ``targets.argmax(1)`` or
    ``probabilities=True``, because silently accepting them hides a wrong label format.

    Args:
        pred: raw logits (no softmax) of shape (N, C), or (N, C, d1, ...) for per-position
            classes as in torch.
        target: class indices of shape (N,) / (N, d1, ...) in [0, C); or, with
            ``probabilities=True``, floats of pred's shape in [0, 1] summing to 1 over dim 1.
        probabilities: targets are class probabilities (soft labels, mixup, distillation).
        label_smoothing: ``eps`` in [0, 1].
        class_weight: optional weight per class, shape (C,), >= 0 (for imbalanced classes).
        ignore_index: a label value whose samples are skipped (e.g. -100 for padding);
            ``None`` (the default) refuses every negative index.
        weight: optional per-sample weights of shape (N,), >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample, times the weights).
        validate: check the inputs first.

    Returns:
        The reduced loss, or the per-sample losses (N, d1, ...) for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, out-of-range or one-hot target, NaN/inf, empty batch.
        ConfigError: a bad option value.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> round(cross_entropy(logits, torch.tensor([0, 1])).item(), 4)
        0.3606
        >>> soft = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.6, 0.2]])
        >>> round(cross_entropy(logits, soft, probabilities=True).item(), 4)
        0.5606
    """
    if validate:
        _check_cross_entropy(
            pred,
            target,
            probabilities=probabilities,
            label_smoothing=label_smoothing,
            class_weight=class_weight,
            ignore_index=ignore_index,
            weight=weight,
            reduction=reduction,
        )
    if probabilities:
        cw = _to_pred(class_weight, pred)
        return _float_loss(
            F.cross_entropy,
            pred,
            target,
            weight,
            reduction,
            weight=cw,  # torch's class weight; the per-sample weights are the argument above
            label_smoothing=label_smoothing,
        )
    return _index_loss(
        F.cross_entropy,
        pred,
        target,
        class_weight,
        ignore_index,
        weight,
        reduction,
        label_smoothing=label_smoothing,
    )


def _check_nll(
    pred: Tensor | None,
    target: Tensor,
    *,
    class_weight: WeightLike = None,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    loss = "nll"
    _check_reduction(loss, reduction)
    _check_ignore_index(loss, ignore_index)
    if pred is not None:
        _check_class_pred(loss, pred)
    _check_target_basics(loss, pred, target)
    _check_index_targets(loss, pred, target, ignore_index, soft_alternative=False)
    _check_class_weight(loss, class_weight, None if pred is None else pred.shape[1])
    _check_weight(loss, weight, target.shape[0], reduction, target.device)
    if pred is not None:
        # nll of raw logits or of probabilities is a number, just not the loss anyone wants:
        # log-probabilities are exactly the inputs whose exp sums to 1 over the classes.
        v = pred.detach()
        lse = torch.logsumexp(v.to(torch.float32) if v.dtype != torch.float64 else v, dim=1)
        off = ((lse.abs() > _sum_tolerance(v.dtype)) & torch.isfinite(lse)).reshape(-1)
        if bool(off.any()):
            i = int(off.nonzero()[0])
            raise InputError(
                message(
                    f"{loss} pred",
                    "must be log-probabilities (as from log_softmax: exp(pred) sums to 1 over "
                    "dimension 1)",
                    f"values in [{_num(float(v.min()))}, {_num(float(v.max()))}] whose exp sums "
                    f"to {_num(math.exp(float(lse.reshape(-1)[i])))} at position {i}",
                    "pass pred.log_softmax(1), or use cross_entropy, which takes raw logits",
                )
            )


def nll(
    pred: Tensor,
    target: Tensor,
    *,
    class_weight: WeightLike = None,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Negative log-likelihood of class indices under log-probabilities.

    For one sample with class index ``y`` and class weights ``c``: ``l = -c[y] * pred[y]``. The
    mean is ``sum_i w_i l_i / sum_i w_i c[y_i]`` over the samples not ignored (torch's), 0 if
    all are ignored.
    ``nll(log_softmax(x), y) == cross_entropy(x, y)``.

    Validation also checks that ``pred`` holds log-probabilities (``exp(pred)`` sums to 1 over
    dimension 1), which catches raw logits or probabilities passed by mistake. Integral-valued
    float targets are accepted and cast with ``.long()``, as in :func:`cross_entropy`.

    Args:
        pred: log-probabilities of shape (N, C) or (N, C, d1, ...).
        target: class indices of shape (N,) / (N, d1, ...) in [0, C).
        class_weight: optional weight per class, shape (C,), >= 0.
        ignore_index: a label value whose samples are skipped; ``None`` refuses negatives.
        weight: optional per-sample weights of shape (N,), >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the inputs first.

    Returns:
        The reduced loss, or the per-sample losses for ``"none"``.

    Raises:
        InputError: a bad shape, dtype, out-of-range target, non-log-probabilities, ...
        ConfigError: a bad option value.

    Example:
        >>> import torch
        >>> logp = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
        >>> round(nll(logp, torch.tensor([0, 1])).item(), 4)  # (log 2 + log 10) / 2
        1.4979
    """
    if validate:
        _check_nll(
            pred,
            target,
            class_weight=class_weight,
            ignore_index=ignore_index,
            weight=weight,
            reduction=reduction,
        )
    return _index_loss(F.nll_loss, pred, target, class_weight, ignore_index, weight, reduction)


def _check_binary_cross_entropy(
    pred: Tensor | None,
    target: Tensor,
    *,
    pos_weight: WeightLike = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> None:
    loss = "binary_cross_entropy"
    _check_reduction(loss, reduction)
    pw = None
    if pos_weight is not None:
        pw = _as_float_tensor("pos_weight", pos_weight, loss, allow_scalar=True)
    if pred is not None:
        _check_pred(loss, pred)
    _check_target_basics(loss, pred, target)
    if pred is not None and target.shape != pred.shape:
        if (
            pred.ndim == 2
            and target.ndim == 1
            and pred.shape[0] == target.shape[0]
            and pred.shape[1] >= 2
        ):
            raise InputError(
                message(
                    f"{loss} targets",
                    "must have the same shape as pred, one logit per target",
                    f"pred of shape {_shape(pred)} and targets of shape {_shape(target)}",
                    f"a model with {pred.shape[1]} outputs and class-index targets goes with "
                    "cross_entropy; for binary_cross_entropy give the model 1 output",
                )
            )
        _check_same_shape(loss, pred, target)
    _check_finite(loss, "targets", target)
    v = target.detach()
    if v.dtype != torch.bool:
        lo, hi = float(v.min()), float(v.max())
        if lo < 0 or hi > 1:
            if lo == -1 and hi == 1 and bool(((v == -1) | (v == 1)).all()):
                fix = "for labels in {-1, 1} pass (targets + 1) / 2"
            elif lo >= 0 and bool((v == v.round()).all()):
                fix = (
                    f"these look like class indices up to {int(hi)}: use cross_entropy with a "
                    f"model of {int(hi) + 1} outputs"
                )
            else:
                fix = "pass 0/1 labels or probabilities, e.g. targets.sigmoid() for scores"
            raise InputError(
                message(
                    f"{loss} targets",
                    "must be in [0, 1] (0/1 labels or probabilities)",
                    f"values in [{_num(lo)}, {_num(hi)}]",
                    fix,
                )
            )
    if pw is not None and pw.ndim == 1:
        # targets (N,) are one column: N weights would broadcast as one per sample instead
        columns = target.shape[-1] if target.ndim > 1 else 1
        if pw.shape[0] not in (1, columns):
            raise InputError(
                message(
                    f"{loss} pos_weight",
                    "must be a number or hold one weight per target column (the last "
                    "dimension of the targets)",
                    f"pos_weight of shape {_shape(pw)} for targets of shape {_shape(target)}",
                    f"pass {columns} weights, or one number",
                )
            )
    _check_weight(loss, weight, target.shape[0], reduction, target.device)


def binary_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    pos_weight: WeightLike = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Tensor:
    """Binary cross-entropy on logits (sigmoid inside, numerically stable).

    With ``s = sigmoid(pred)`` and positive-class weight ``p`` (1 by default), elementwise::

        l = -(p * t * log s + (1 - t) * log(1 - s))

    Targets may be 0/1 labels (bool or integer dtypes are cast to pred's dtype) or
    probabilities in [0, 1], of exactly pred's shape; several columns are several independent
    binary tasks (multi-label). The weighted mean is ``sum_i w_i l_i / sum_i w_i`` per column.

    Args:
        pred: raw logits (no sigmoid) of shape (N, ...).
        target: labels or probabilities of the same shape, in [0, 1].
        pos_weight: weight of the positive class, a number or one per column (last dim), >= 0;
            ``n_negative / n_positive`` balances an imbalanced task.
        weight: optional per-sample weights of shape (N,), >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the inputs first.

    Returns:
        The reduced loss, or the elementwise losses for ``"none"``.

    Raises:
        InputError: a bad shape, target outside [0, 1], NaN/inf, empty batch, or weight.
        ConfigError: a negative or non-finite ``pos_weight``.

    Example:
        >>> import torch
        >>> round(binary_cross_entropy(torch.tensor([0.0, 0.0]), torch.tensor([1, 0])).item(), 4)
        0.6931
    """
    if validate:
        _check_binary_cross_entropy(
            pred, target, pos_weight=pos_weight, weight=weight, reduction=reduction
        )
    pw = _to_pred(pos_weight, pred)
    return _float_loss(
        F.binary_cross_entropy_with_logits, pred, target, weight, reduction, pos_weight=pw
    )


# ---------------------------------------------------------------------------------------------
# Loss objects and the registry
# ---------------------------------------------------------------------------------------------


def _keyword_params(fn: Callable[..., Any]) -> frozenset[str]:
    """Names that ``fn`` accepts by keyword explicitly (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in kinds)


def _takes_pred_only(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes exactly one positional argument (``loss(pred)``: an objective of
    the model's output alone, for data without targets)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return False
    return sum(p.kind in kinds for p in params) == 1


@dataclass(frozen=True, eq=False)
class Loss:
    """A loss with its options, as the training loop uses it.

    Attributes:
        name: the canonical name (``"cross_entropy"``), or a custom function's ``__name__``.
        fn: the function ``fn(pred, target, **kwargs)``; the built-ins also take ``weight``
            and ``validate``.
        kwargs: options bound to every call (``label_smoothing=0.1``, ``delta=2.0``...).
        target_kind: ``"index"`` (class indices), ``"float"`` or ``"any"`` (custom losses).
        task: ``"classification"``, ``"regression"`` or ``"any"``.
        check: ``check(pred, target, *, weight=None, **kwargs)`` raising
            :class:`~descend._errors.InputError`; ``pred=None`` checks the targets alone.
            ``None`` for custom losses (nothing to check).

    A custom ``fn`` gets ``weight=`` only if it names a ``weight`` parameter, and with
    ``validate=True`` its result is checked to be a scalar tensor. A custom ``fn`` of one
    positional argument is an objective of the output alone, ``fn(pred)``, for data without
    targets (``fit(model, X, loss=lambda out: ...)``).

    Example:
        >>> import torch
        >>> loss = get("huber", delta=0.5)
        >>> loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(0.4375)
    """

    name: str
    fn: Callable[..., Tensor] = field(repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict)
    target_kind: TargetKind = "any"
    task: Task = "any"
    check: Callable[..., None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        params = _keyword_params(self.fn)
        object.__setattr__(self, "_takes_weight", "weight" in params)
        object.__setattr__(self, "_takes_validate", "validate" in params)
        object.__setattr__(self, "_pred_only", self.check is None and _takes_pred_only(self.fn))

    def __call__(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        validate: bool = True,
    ) -> Tensor:
        """The loss of ``pred`` against ``target`` (per-sample ``weight`` optional)."""
        extra: dict[str, Any] = {}
        if weight is not None:
            if not self._takes_weight:  # type: ignore[attr-defined]
                raise ConfigError(
                    message(
                        f"loss {self.name!r}",
                        "does not take per-sample weights",
                        "weight=<tensor>",
                        "add a `weight` keyword parameter to the loss function, or use a "
                        "built-in loss",
                    )
                )
            extra["weight"] = weight
        if self._takes_validate:  # type: ignore[attr-defined]
            extra["validate"] = validate
        if self._pred_only:  # type: ignore[attr-defined]
            if target is not None:
                raise InputError(
                    message(
                        f"loss {self.name!r}",
                        "takes only the model's output (one argument), so it cannot use targets",
                        "data with targets y",
                        "pass X alone, or give the loss a second parameter: "
                        "def loss(pred, target): ...",
                    )
                )
            out = self.fn(pred, **self.kwargs, **extra)
        else:
            out = self.fn(pred, target, **self.kwargs, **extra)
        if not isinstance(out, Tensor):  # (a number, None, a tuple): nothing to differentiate
            _check_scalar_result(self.name, out)
        if self.check is None and out.ndim and out.numel() == 1:
            # a custom loss of shape (1,) (a sum over dim 0 of an (N, 1) column) is one number;
            # the training loop keeps one per step and reads them back as floats
            out = out.reshape(())
        if validate and not self._takes_validate:  # type: ignore[attr-defined]
            _check_scalar_result(self.name, out)
        return out

    def validate(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        """Raise :class:`~descend._errors.InputError` if ``(pred, target)`` is unusable."""
        if self.check is not None:
            self.check(pred, target, weight=weight, **self.kwargs)

    def validate_targets(self, target: Tensor, weight: Tensor | None = None) -> None:
        """Check only what the targets alone can tell (NaN, dtype, negative or one-hot
        labels, range of BCE targets); :meth:`validate` also checks them against ``pred``."""
        if self.check is not None:
            self.check(None, target, weight=weight, **self.kwargs)


def _check_scalar_result(name: str, out: object) -> None:
    if not isinstance(out, Tensor):
        raise InputError(
            message(
                f"loss {name!r}",
                "must return a scalar torch.Tensor (so it can be differentiated)",
                describe(out),
                "compute the loss with torch operations on pred and return the tensor",
            )
        )
    if out.ndim != 0:
        raise InputError(
            message(
                f"loss {name!r}",
                "must return a scalar tensor",
                f"a tensor of shape {_shape(out)}",
                "reduce it, e.g. return losses.mean()",
            )
        )


_OPTIONS: dict[str, tuple[str, ...]] = {
    "mse": ("reduction",),
    "mae": ("reduction",),
    "huber": ("delta", "reduction"),
    "poisson": ("reduction",),
    "cross_entropy": (
        "probabilities",
        "label_smoothing",
        "class_weight",
        "ignore_index",
        "reduction",
    ),
    "binary_cross_entropy": ("pos_weight", "reduction"),
    "nll": ("class_weight", "ignore_index", "reduction"),
}

REGISTRY: dict[str, Loss] = {
    "mse": Loss("mse", mse, {}, "float", "regression", _check_mse),
    "mae": Loss("mae", mae, {}, "float", "regression", _check_mae),
    "huber": Loss("huber", huber, {}, "float", "regression", _check_huber),
    "poisson": Loss("poisson", poisson, {}, "float", "regression", _check_poisson),
    "cross_entropy": Loss(
        "cross_entropy", cross_entropy, {}, "index", "classification", _check_cross_entropy
    ),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy",
        binary_cross_entropy,
        {},
        "float",
        "classification",
        _check_binary_cross_entropy,
    ),
    "nll": Loss("nll", nll, {}, "index", "classification", _check_nll),
}
"""The built-in losses by canonical name, with default options."""

ALIASES: dict[str, str] = {
    "l2": "mse",
    "mean_squared_error": "mse",
    "squared_error": "mse",
    "l1": "mae",
    "mean_absolute_error": "mae",
    "absolute_error": "mae",
    "huber_loss": "huber",
    "poisson_deviance": "poisson",
    "poisson_nll": "poisson",
    "ce": "cross_entropy",
    "crossentropy": "cross_entropy",
    "xent": "cross_entropy",
    "bce": "binary_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "bce_with_logits": "binary_cross_entropy",
    "nll_loss": "nll",
    "negative_log_likelihood": "nll",
}
"""Other names :func:`get` accepts for the built-in losses."""

_BUILTIN_NAMES: dict[Callable[..., Tensor], str] = {loss.fn: n for n, loss in REGISTRY.items()}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _bind(loss: Loss, kwargs: dict[str, Any]) -> Loss:
    """``loss`` with ``kwargs`` merged into its options, checked eagerly for built-ins."""
    base = _BUILTIN_NAMES.get(loss.fn)
    for call_time in ("weight", "validate", "pred", "target"):
        if call_time in kwargs:
            raise ConfigError(
                message(
                    f"loss {loss.name!r}: {call_time}",
                    "is given on each call, not bound to the loss",
                    f"{call_time}={describe(kwargs[call_time])}",
                    f"call loss(pred, target, {call_time}=...)",
                )
            )
    if base is None:
        return replace(loss, kwargs={**loss.kwargs, **kwargs})
    allowed = _OPTIONS[base]
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=2)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ConfigError(
                message(
                    f"loss {base!r}",
                    f"accepts the options {', '.join(allowed)}",
                    f"{key}={describe(kwargs[key])}",
                    f"{hint}see help(descend.losses.{base})",
                )
            )
    options = {**loss.kwargs, **kwargs}
    for key in ("class_weight", "pos_weight"):
        value = options.get(key)
        if value is not None and not isinstance(value, Tensor):
            options[key] = _as_float_tensor(key, value, base, allow_scalar=key == "pos_weight")
    _check_options(base, options)
    kind: TargetKind = loss.target_kind
    if base == "cross_entropy":
        kind = "float" if options.get("probabilities") else "index"
    return replace(loss, kwargs=options, target_kind=kind)


def _check_options(base: str, options: dict[str, Any]) -> None:
    _check_reduction(base, options.get("reduction", "mean"))
    if base == "huber":
        check_positive("delta", options.get("delta", 1.0), owner="huber")
    if base == "cross_entropy":
        _check_soft_options(
            base,
            options.get("probabilities", False),
            options.get("label_smoothing", 0.0),
            options.get("ignore_index"),
        )
    if base in ("cross_entropy", "nll"):
        _check_ignore_index(base, options.get("ignore_index"))
        _check_class_weight(base, options.get("class_weight"), None)
    if base == "binary_cross_entropy" and options.get("pos_weight") is not None:
        _as_float_tensor("pos_weight", options["pos_weight"], base, allow_scalar=True)


def _callable_name(fn: Callable[..., Any]) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    return getattr(fn, "__name__", None) or type(fn).__name__


def get(spec: str | Loss | Callable[..., Tensor], **kwargs: Any) -> Loss:
    """Resolve a loss specification to a :class:`Loss`.

    Args:
        spec: a registry name or alias (case and ``-``/``_`` insensitive: ``"mse"``, ``"l1"``,
            ``"CE"``, ``"binary-cross-entropy"``...), a :class:`Loss` (returned as is, or with
            ``kwargs`` merged into its options), one of the functions of this module (its
            registry entry), or any callable ``(pred, target) -> scalar tensor`` (wrapped
            with its ``__name__``, target kind and task ``"any"``).
        **kwargs: options bound to every call, e.g. ``label_smoothing=0.1``, ``delta=2.0``,
            ``class_weight=[1.0, 5.0]``; for a custom callable, extra keyword arguments.

    Returns:
        The :class:`Loss`.

    Raises:
        ConfigError: an unknown name (with the close matches), an unknown option, or a bad
            option value.

    Example:
        >>> get("l2").name
        'mse'
        >>> get("cross_entropy", probabilities=True).target_kind
        'float'
        >>> def my_loss(pred, target):
        ...     return (pred - target).abs().max()
        >>> get(my_loss).name, get(my_loss).task
        ('my_loss', 'any')
    """
    if isinstance(spec, Loss):
        return _bind(spec, kwargs) if kwargs else spec
    if isinstance(spec, str):
        key = _normalize(spec)
        canonical = ALIASES.get(key, key)
        if canonical not in REGISTRY:
            names = [*REGISTRY, *ALIASES]
            close = difflib.get_close_matches(key, names, n=6, cutoff=0.5)
            close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))[:3]
            fix = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else "pass a callable (pred, target) -> scalar tensor for a custom loss"
            )
            raise ConfigError(message("loss", f"must be one of {list(REGISTRY)}", repr(spec), fix))
        loss = REGISTRY[canonical]
        return _bind(loss, kwargs) if kwargs else loss
    if isinstance(spec, type):
        # calling a class builds an instance (torch.nn.MSELoss(pred, target) is a module with
        # size_average=pred, reduce=target), never a loss value
        where = "torch.nn." if spec.__module__.startswith("torch.nn") else ""
        raise ConfigError(
            message(
                "loss",
                "must be a loss function, or an instance of a loss class",
                f"the class {spec.__name__}",
                f"pass an instance: loss={where}{spec.__name__}()",
            )
        )
    builtin = next((n for fn, n in _BUILTIN_NAMES.items() if fn is spec), None)
    if builtin is not None:  # (by identity: a user's callable need not be hashable)
        # the library's own function (loss=losses.cross_entropy) is its registry entry, with
        # its checks and target kind, not a custom loss the training loop knows nothing of
        loss = REGISTRY[builtin]
        return _bind(loss, kwargs) if kwargs else loss
    if callable(spec):
        return Loss(name=_callable_name(spec), fn=spec, kwargs=kwargs)
    raise ConfigError(
        message(
            "loss",
            "must be a registry name, a Loss, or a callable (pred, target) -> scalar tensor",
            describe(spec),
            f"use one of {list(REGISTRY)}",
        )
    )


def check_reduces(loss: Loss, owner: str) -> Loss:
    """``loss``, if it reduces a batch to one number (what training differentiates); a library
    loss given ``reduction="none"`` is refused, naming the fix. (A plain MLP's training step
    raised torch's "grad can be implicitly created only for scalar outputs" at the first batch.)
    """
    if loss.kwargs.get("reduction", "mean") == "none":
        raise ConfigError(
            message(
                f"{owner}: loss ({loss.name})",
                "must reduce each batch to one number",
                "reduction='none' (one loss per sample)",
                "drop reduction= (the mean), or pass reduction='sum'",
            )
        )
    return loss


def num_outputs_needed(loss: str | Loss | Callable[..., Tensor], targets: Tensor) -> int | None:
    """How many output units per sample the model needs for ``loss`` on ``targets``.

    Class-index targets (cross_entropy, nll) need ``max(targets) + 1`` outputs (one per class);
    probability targets need ``targets.shape[1]``; binary_cross_entropy and the regression
    losses need one output per target element of a sample, ``prod(targets.shape[1:])`` (1 for
    targets of shape (N,), where the model's (N, 1) output is to be squeezed to (N,)). ``None``
    for custom losses and when there is nothing to tell (no targets, all ignored).

    Raises:
        InputError: class labels the loss refuses (NaN, negative, one-hot...).

    Example:
        >>> import torch
        >>> num_outputs_needed("cross_entropy", torch.tensor([0, 3, 9]))
        10
        >>> num_outputs_needed("mse", torch.zeros(5, 2))
        2
    """
    resolved = get(loss)
    base = _BUILTIN_NAMES.get(resolved.fn)
    if base is None or not isinstance(targets, Tensor) or targets.ndim == 0:
        return None
    if targets.shape[0] == 0:
        return None
    if base in ("cross_entropy", "nll") and not resolved.kwargs.get("probabilities", False):
        # the loss's own checks first: NaN, negative or one-hot labels give no count (int(nan)
        # raised, -1 asked for 0 outputs, one-hot rows of 10 classes for 2)
        resolved.validate_targets(targets)
        v = targets.detach()
        ignore_index = resolved.kwargs.get("ignore_index")
        if ignore_index is not None:
            v = v[v != ignore_index]
        if v.numel() == 0:
            return None
        return int(v.max()) + 1
    if base == "cross_entropy":
        return int(targets.shape[1]) if targets.ndim >= 2 else None
    return math.prod(targets.shape[1:])
