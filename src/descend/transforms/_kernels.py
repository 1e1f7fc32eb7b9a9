"""torch's fused Adam kernel, used as a pure function of descend's state.

``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) updates moments and
parameters in one pass over memory. It is private torch API, so every (device type, dtype) is
probed once on a tiny tensor before it touches real state; where the probe fails descend uses
its ``_foreach_*`` path instead.
"""

from __future__ import annotations

import torch

from descend.transforms._util import fused_devices

__all__ = ["AdamKernel"]

_KERNEL = getattr(torch, "_fused_adam_", None)
_DEVICES = frozenset(fused_devices()) if _KERNEL is not None else frozenset()
_PROBED: dict[tuple[str, torch.dtype], bool] = {}


def _run(out, gs, ms, vs, v_maxes, steps, *, amsgrad, lr, b1, b2, eps) -> None:
    _KERNEL(  # type: ignore[misc]
        out, gs, ms, vs, v_maxes, steps,
        amsgrad=amsgrad, lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
        maximize=False, grad_scale=None, found_inf=None,
    )  # fmt: skip


def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    """Does the kernel run here, and compute Adam's first step (the sign of g)?"""
    try:
        like = {"device": device, "dtype": dtype}
        out = [torch.zeros(2, **like)]
        g = [torch.tensor([2.0, -3.0], **like)]
        m, v = [torch.zeros(2, **like)], [torch.zeros(2, **like)]
        step = [torch.ones((), dtype=torch.float32, device=device)]
        _run(out, g, m, v, [], step, amsgrad=False, lr=-1.0, b1=0.9, b2=0.999, eps=0.0)
        return torch.allclose(out[0].float().cpu(), torch.tensor([1.0, -1.0]), atol=1e-2)
    except Exception:  # any failure means: do not use the kernel here
        return False


class AdamKernel:
    """``out ← out − lr · (m̂ / (sqrt(v̂) + ε))`` after updating ``m`` and ``v`` in place.

    With ``out`` zeros and ``lr = −1`` it returns Adam's direction; with ``out = −η λ θ`` and
    ``lr = η`` it returns AdamW's whole update. ``out`` is a descend buffer, never a parameter.
    """

    def __init__(self, b1: float, b2: float, eps: float, amsgrad: bool):
        self.b1, self.b2, self.eps, self.amsgrad = b1, b2, eps, amsgrad
        self._steps: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def supports(tensor: torch.Tensor) -> bool:
        device = tensor.device
        if device.type not in _DEVICES or tensor.is_sparse or tensor.is_complex():
            return False
        key = (device.type, tensor.dtype)
        ok = _PROBED.get(key)
        if ok is None:
            ok = _PROBED[key] = _probe(device, tensor.dtype)
        return ok

    def __call__(self, out, gs, ms, vs, v_maxes, t: int, lr: float) -> None:
        device = gs[0].device
        step = self._steps.get(device)
        if step is None:
            # float32, as torch's fused optimizers keep their step; exact up to 2**24 steps
            step = self._steps[device] = torch.zeros((), dtype=torch.float32, device=device)
        step.fill_(t)
        _run(
            out,
            gs,
            ms,
            vs,
            v_maxes if self.amsgrad else [],
            [step] * len(gs),
            amsgrad=self.amsgrad,
            lr=lr,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
        )
