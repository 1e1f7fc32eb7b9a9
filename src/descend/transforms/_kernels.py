"""torch's fused optimizer kernels, used as pure functions of descend's state.

``torch._fused_adam_`` / ``torch._fused_adamw_`` (what ``torch.optim.Adam(W)(fused=True)`` runs)
and ``torch._fused_sgd_`` (``torch.optim.SGD(fused=True)``) update the optimizer state and a
target tensor list in one pass over memory. descend calls them two ways:

- on a fresh *update buffer* (zeros, or the decay term), so ``update`` returns the update
  without touching the parameters;
- on the *parameters themselves*, from :func:`descend.transforms.update_and_apply`, which is
  then exactly torch's fused ``step()``.

They are private torch API, so every (kernel, device type, dtype) is probed once on a tiny tensor
before it touches real state; where the probe fails descend uses its ``_foreach_*`` path instead.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from descend.transforms._util import fused_devices, is_sharded, local

__all__ = ["AdamKernel", "SGDKernel"]

_ADAM = getattr(torch, "_fused_adam_", None)
_ADAMW = getattr(torch, "_fused_adamw_", None)
_SGD = getattr(torch, "_fused_sgd_", None)
_DEVICES = frozenset(fused_devices())
_REDUCED = frozenset({torch.bfloat16, torch.float16})
_PROBED: dict[tuple[str, str, torch.dtype], bool] = {}


def _run_adam(out, gs, ms, vs, v_maxes, steps, *, amsgrad, lr, b1, b2, eps, wd=0.0) -> None:
    # weight_decay > 0 only through _fused_adamw_ (decoupled): θ ← θ(1 − lr·wd) − lr·m̂/(√v̂+ε)
    kernel = _ADAMW if wd else _ADAM
    kernel(  # type: ignore[misc]
        out, gs, ms, vs, v_maxes, steps,
        amsgrad=amsgrad, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps,
        maximize=False, grad_scale=None, found_inf=None,
    )  # fmt: skip


def _run_sgd(out, gs, bufs, *, wd, momentum, lr, dampening, nesterov, first) -> None:
    _SGD(  # type: ignore[misc]
        out, gs, bufs,
        weight_decay=wd, momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov,
        maximize=False, is_first_step=first, grad_scale=None, found_inf=None,
    )  # fmt: skip


def _probe_adam(device: torch.device, dtype: torch.dtype) -> bool:
    """Do both Adam kernels run here and compute Adam's first step (the sign of g)?"""
    like = {"device": device, "dtype": dtype}
    step = [torch.ones((), dtype=torch.float32, device=device)]
    for wd, start, want in ((0.0, 0.0, [1.0, -1.0]), (0.5, 1.0, [2.5, 0.5])):
        out = [torch.full((2,), start, **like)]
        g = [torch.tensor([2.0, -3.0], **like)]
        m, v = [torch.zeros(2, **like)], [torch.zeros(2, **like)]
        # lr = −1: out ← out(1 + wd) + sign(g)
        _run_adam(out, g, m, v, [], step, amsgrad=False, lr=-1.0, b1=0.9, b2=0.999, eps=0.0, wd=wd)
        if not torch.allclose(out[0].float().cpu(), torch.tensor(want), atol=1e-2):
            return False
    return True


def _probe_sgd(device: torch.device, dtype: torch.dtype) -> bool:
    """Does the SGD kernel run here, with torch.optim.SGD's momentum semantics?"""
    like = {"device": device, "dtype": dtype}
    out = [torch.zeros(2, **like)]
    g = [torch.tensor([2.0, -3.0], **like)]
    buf = [torch.zeros(2, **like)]
    _run_sgd(out, g, buf, wd=0.0, momentum=0.5, lr=-1.0, dampening=0.0, nesterov=False, first=True)
    _run_sgd(out, g, buf, wd=0.0, momentum=0.5, lr=-1.0, dampening=0.0, nesterov=False, first=False)
    # b1 = g, b2 = 0.5 g + g; out = b1 + b2 = 2.5 g
    return torch.allclose(out[0].float().cpu(), torch.tensor([5.0, -7.5]), atol=1e-2)


def _supported(name: str, kernel: object, probe: Callable, tensor: torch.Tensor) -> bool:
    device = tensor.device
    if kernel is None or device.type not in _DEVICES or tensor.is_sparse or tensor.is_complex():
        return False
    key = (name, device.type, tensor.dtype)
    ok = _PROBED.get(key)
    if ok is None:
        try:
            ok = bool(probe(device, tensor.dtype))
        except Exception:  # any failure means: do not use the kernel here
            ok = False
        _PROBED[key] = ok
    return ok


class _Steps:
    """One float32 step tensor per device, as torch's fused optimizers keep their step."""

    def __init__(self) -> None:
        self._steps: dict[torch.device, tuple[torch.Tensor, list[int]]] = {}

    def __call__(self, device: torch.device, t: int, n: int) -> list[torch.Tensor]:
        hit = self._steps.get(device)
        if hit is None:
            # exact up to 2**24 steps
            hit = self._steps[device] = (torch.zeros((), dtype=torch.float32, device=device), [0])
        step, held = hit
        if held[0] != t:  # the kernels only read it: one fill per step, not one per call
            step.fill_(t)
            held[0] = t
        return [step] * n


def _laid_out_like(refs: list[torch.Tensor], gs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``gs`` with each gradient in its target's memory layout.

    The fused kernels walk every tensor of a step as flat memory in the same order, so a
    gradient laid out otherwise than its parameter (``p.grad = g.t()`` by hand, or
    ``torch.autograd.grad`` through ``W.t()``) would meet the wrong elements. One stride
    comparison per tensor; a copy only where the layouts differ (autograd's ``.grad`` never does).
    """
    out = gs
    for i, (r, g) in enumerate(zip(refs, gs)):
        if g.stride() != r.stride():
            if out is gs:
                out = list(gs)
            out[i] = torch.empty_like(r, memory_format=torch.preserve_format).copy_(g)
    return out


def _locals(*lists: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Each DTensor's local shard: torch's fused kernels are elementwise, so running them on
    the shards is running them on the whole (and ``_fused_sgd_`` has no DTensor rule)."""
    return [[local(t) for t in ts] for ts in lists]


class AdamKernel:
    """``out ← out(1 − lr·wd) − lr · (m̂ / (sqrt(v̂) + ε))`` after updating ``m``, ``v`` in place.

    With ``out`` zeros and ``lr = −1`` it returns Adam's direction; with ``out = −η λ θ`` and
    ``lr = η`` AdamW's whole update; with ``out`` the parameters and ``wd = λ`` it is torch's
    fused AdamW step.
    """

    def __init__(self, b1: float, b2: float, eps: float, amsgrad: bool):
        self.b1, self.b2, self.eps, self.amsgrad = b1, b2, eps, amsgrad
        self._steps = _Steps()

    @staticmethod
    def supports(tensor: torch.Tensor) -> bool:
        return _supported("adam", _ADAMW if _ADAM is not None else None, _probe_adam, tensor)

    def __call__(self, out, gs, ms, vs, v_maxes, t: int, lr: float, wd: float = 0.0) -> None:
        self.run(gs[0].device, out, gs, ms, vs, v_maxes, t, lr, wd)

    def run(self, device, out, gs, ms, vs, v_maxes, t: int, lr: float, wd: float) -> None:
        """``__call__`` with the device given (a caller that kept it skips the lookup)."""
        if is_sharded(gs[0]):  # a fully_shard model's DTensors: the kernel runs on the shards
            out, gs, ms, vs, v_maxes = _locals(out, gs, ms, vs, v_maxes)
        gs = _laid_out_like(out, gs)
        (_ADAMW if wd else _ADAM)(  # type: ignore[misc]
            out, gs, ms, vs, v_maxes if self.amsgrad else [], self._steps(device, t, len(gs)),
            amsgrad=self.amsgrad, lr=lr, beta1=self.b1, beta2=self.b2, weight_decay=wd,
            eps=self.eps, maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip


class SGDKernel:
    """``out ← out − lr · d`` with ``d`` torch.optim.SGD's momentum direction (coupled decay
    ``wd · out`` added to the gradient first), updating the momentum buffers in place."""

    def __init__(self, momentum: float, dampening: float, nesterov: bool, hyper: Any = None):
        # hyper: the holder of ``momentum`` shared with the trace link it fuses (a torch
        # scheduler may move it between steps); its own otherwise.
        self.hyper = hyper if hyper is not None else SimpleNamespace(momentum=momentum)
        self.dampening, self.nesterov = dampening, nesterov

    @property
    def momentum(self) -> float:
        return self.hyper.momentum

    @staticmethod
    def supports(tensor: torch.Tensor) -> bool:
        # torch's CPU fused SGD is wrong for bfloat16/float16 tensors of more than 8 elements
        # (its vectorised loop; the 2-element probe passes), and torch.optim.SGD does not use
        # it by default: the foreach path, which matches torch.optim.SGD, runs there instead.
        if tensor.device.type == "cpu" and tensor.dtype in _REDUCED:
            return False
        return _supported("sgd", _SGD, _probe_sgd, tensor)

    def __call__(self, out, gs, bufs, *, first: bool, lr: float, wd: float = 0.0) -> None:
        if is_sharded(gs[0]):  # a fully_shard model's DTensors: the kernel runs on the shards
            out, gs, bufs = _locals(out, gs, bufs)
        gs = _laid_out_like(out, gs)
        _run_sgd(
            out,
            gs,
            bufs,
            wd=wd,
            momentum=self.momentum,
            lr=lr,
            dampening=self.dampening,
            nesterov=self.nesterov,
            first=first,
        )
