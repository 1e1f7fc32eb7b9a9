"""Shared helpers of the transforms: device/dtype grouping for multi-tensor ops, masks, checks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import torch

from descend._errors import ConfigError, check_choice, describe, message

Impl = Literal["auto", "fused", "foreach", "reference"]
Mask = Literal["default"] | Callable[[str, torch.Tensor], bool] | Mapping[str, bool] | None

IMPLS = ("auto", "foreach", "reference")
FUSED_IMPLS = ("auto", "fused", "foreach", "reference")
# momentum SGD gained its fused path later; "fused" is listed last so messages keep their shape
SGD_IMPLS = ("auto", "foreach", "reference", "fused")


def without_grad(fn: Callable) -> Callable:
    """``fn`` run with gradients off: ``torch.no_grad()``'s effect at a fifth of its cost
    (~0.8 us against ~4 us a call), for what runs once per training step (the fused optimizer
    apply, the plain-MLP step)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return fn(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(prev)

    return wrapper


def present(tensors: Mapping[str, torch.Tensor | None]) -> list[str]:
    """Names whose tensor is not ``None`` (a parameter without a gradient this step)."""
    return [n for n, t in tensors.items() if t is not None]


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor: a shard of a parameter of a model sharded with ``fully_shard``."""
    return hasattr(t, "device_mesh") and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (writes to it are writes to the DTensor), else ``t``."""
    return t.to_local() if is_sharded(t) else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """A reduction of a DTensor (a dot product, a norm) as a plain tensor, summed over the
    processes; a plain tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` over all elements, for plain tensors and DTensors (sharded unevenly too,
    which cannot be flattened) alike."""
    if is_sharded(a):
        return whole((a * b).sum())
    return torch.dot(a.flatten(), b.flatten())


def foreach_copy_(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``torch._foreach_copy_`` (which has no DTensor rule: shards are copied locally)."""
    if dst and is_sharded(dst[0]):
        dst, src = [local(t) for t in dst], [local(t) for t in src]
    torch._foreach_copy_(dst, src)


def groups(names: list[str], ref: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Split ``names`` by the device and dtype of ``ref[name]``: one multi-tensor call each."""
    if not names:
        return []
    out: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for n in names:
        t = ref[n]
        out.setdefault((t.device, t.dtype), []).append(n)
    return list(out.values())


def resolve_impl(impl: str, owner: str) -> Literal["foreach", "reference"]:
    """``"auto"`` means the multi-tensor path (torch ``_foreach_*`` ops), on every device."""
    check_choice("impl", impl, IMPLS, owner=owner)
    return "reference" if impl == "reference" else "foreach"


def fused_devices() -> tuple[str, ...]:
    """Device types with torch's fused optimizer kernels (empty if this torch has none)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
        return ()


def check_finite(name: str, value: Any, *, owner: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(
            message(f"{owner}: {name}", "must be a finite number", describe(value), None)
        )
    return float(value)


def check_callable(name: str, value: Any, *, owner: str, example: str) -> None:
    if not callable(value):
        raise ConfigError(
            message(
                f"{owner}: {name}",
                "must be a callable",
                describe(value),
                f"pass e.g. {name}={example}",
            )
        )


def default_mask(name: str, tensor: torch.Tensor) -> bool:
    """Decay weight matrices, conv kernels and embeddings (ndim >= 2); skip biases and norms."""
    return tensor.ndim >= 2


def mask_fn(mask: Any, *, owner: str) -> Callable[[str, torch.Tensor], bool]:
    """Turn a mask spec into ``(name, tensor) -> bool``."""
    if mask is None:
        return lambda name, tensor: True
    if isinstance(mask, str):
        check_choice("mask", mask, ("default",), owner=owner)
        return default_mask
    if isinstance(mask, Mapping):
        bad = [k for k, v in mask.items() if not isinstance(k, str) or not isinstance(v, bool)]
        if bad:
            raise ConfigError(
                message(
                    f"{owner}: mask",
                    "as a dict must map parameter names (str) to True/False",
                    f"entry {bad[0]!r}: {describe(mask[bad[0]])}",
                    "e.g. mask={'fc.weight': True, 'fc.bias': False}",
                )
            )
        table = dict(mask)
        return lambda name, tensor: table.get(name, False)
    if callable(mask):
        return mask
    raise ConfigError(
        message(
            f"{owner}: mask",
            "must be 'default', None, a dict {name: bool} or a callable (name, tensor) -> bool",
            describe(mask),
            "e.g. mask=lambda name, p: not name.endswith('bias')",
        )
    )


# The whole model's parameters while a transform is initialised for one part of them (a
# parameter group of as_torch_optimizer, or no parameters at all to read its defaults): a dict
# mask may name the other groups' parameters, and rules that need the whole model (muon's output
# layer) see it. None outside such an init: then the parameters given are the whole.
_WHOLE: ContextVar[Mapping[str, torch.Tensor] | None] = ContextVar("descend_whole", default=None)


@contextmanager
def whole_params(params: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within this block, ``init`` calls are for parts of ``params`` (see :func:`whole_or`)."""
    token = _WHOLE.set(params)
    try:
        yield
    finally:
        _WHOLE.reset(token)


def whole_or(params: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The whole model's parameters when ``params`` is one part of it, else ``params``."""
    whole = _WHOLE.get()
    return params if whole is None else whole


# Every parameter group's gradients during one as_torch_optimizer step with several groups:
# clip_by_global_norm clips by the norm over all of them (what clip_grad_norm_ over the model
# gives), not over its own group's. None outside such a step.
_WHOLE_GRADS: ContextVar[WholeGrads | None] = ContextVar("descend_whole_grads", default=None)


class WholeGrads:
    """The gradients of every group of one optimizer step, the group stepping now (``part``),
    and their global L2 norm (computed once, on the first device that asks)."""

    __slots__ = ("grads", "norms", "part")

    def __init__(self, grads: Mapping[str, torch.Tensor]):
        self.grads = grads
        self.part: Mapping[str, torch.Tensor] = {}
        self.norms: dict[torch.device, torch.Tensor] = {}

    def covers(self, grads: Mapping[str, torch.Tensor | None], names: list[str]) -> bool:
        """Whether ``grads`` are the raw gradients of the whole group stepping now (not
        transformed ones, nor a subset picked by ``masked``/``partition``)."""
        part = self.part
        return len(names) == len(part) and all(part.get(n) is grads[n] for n in names)

    def norm(self, device: torch.device) -> torch.Tensor:
        hit = self.norms.get(device)
        if hit is None:
            hit = self.norms[device] = global_norm(self.grads, present(self.grads), device)
        return hit


@contextmanager
def whole_grads(grads: Mapping[str, torch.Tensor]) -> Iterator[WholeGrads]:
    """Within this block, gradient-norm clipping of one group's part of ``grads`` (set as the
    yielded object's ``part``) uses the norm of all."""
    whole = WholeGrads(grads)
    token = _WHOLE_GRADS.set(whole)
    try:
        yield whole
    finally:
        _WHOLE_GRADS.reset(token)


def current_whole_grads() -> WholeGrads | None:
    return _WHOLE_GRADS.get()


def global_norm(
    tensors: Mapping[str, torch.Tensor], names: list[str], device: torch.device
) -> torch.Tensor:
    """The L2 norm over every tensor named in ``names``, as a tensor on ``device``."""
    norms = [
        norm.to(device)
        for grp in groups(names, tensors)
        for norm in torch._foreach_norm([tensors[n] for n in grp], 2.0)
    ]
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def check_mask_names(mask: Any, params: Mapping[str, torch.Tensor], *, owner: str) -> None:
    """A dict mask naming a parameter that does not exist is a typo: say so at init."""
    if not isinstance(mask, Mapping):
        return
    known = whole_or(params)
    unknown = [k for k in mask if k not in params and k not in known]
    if unknown:
        import difflib

        params = known
        close = difflib.get_close_matches(unknown[0], list(params), n=3)
        fix = f"did you mean {' or '.join(map(repr, close))}?" if close else None
        raise ConfigError(
            message(
                f"{owner}: mask",
                "must name existing parameters",
                f"unknown name {unknown[0]!r}",
                fix or f"parameter names are {list(params)[:8]}",
            )
        )


class MaskCache:
    """Per-name mask decisions, computed once (a parameter's name and ndim never change)."""

    def __init__(self, fn: Callable[[str, torch.Tensor], bool]):
        self.fn = fn
        self.table: dict[str, bool] = {}

    def reset(self) -> None:
        self.table.clear()

    def __call__(self, name: str, tensor: torch.Tensor) -> bool:
        hit = self.table.get(name)
        if hit is None:
            hit = self.table[name] = bool(self.fn(name, tensor))
        return hit


def zeros_like_all(
    params: Mapping[str, torch.Tensor], fill: float = 0.0
) -> dict[str, torch.Tensor]:
    """One state buffer per parameter, same device, dtype and layout."""
    return {
        n: torch.full_like(p, fill, memory_format=torch.preserve_format)
        if fill
        else torch.zeros_like(p, memory_format=torch.preserve_format)
        for n, p in params.items()
    }


def check_real(params: Mapping[str, torch.Tensor], owner: str) -> None:
    """Refuse complex parameters where an update squares, takes the sign of, or otherwise treats
    gradients elementwise as reals (``g·g`` is not ``|g|²`` for complex ``g``). torch.optim runs
    such a parameter as ``torch.view_as_real``; descend asks the user to do that instead, so the
    state, the checkpoint and the update all see the same real tensor. Checked once, at init."""
    for name, p in params.items():
        if isinstance(p, torch.Tensor) and p.is_complex():
            raise ConfigError(
                message(
                    f"{owner}: parameter {name!r}",
                    "must be real (this optimizer's update is defined for real numbers only)",
                    f"dtype {p.dtype}",
                    "optimize torch.view_as_real(param) in its place (a float tensor with a last "
                    "axis of 2, which is what torch.optim does inside), or use sgd, momentum or "
                    "nesterov, which take complex parameters",
                )
            )


def check_dense(grads: Mapping[str, torch.Tensor | None], owner: str) -> None:
    """Refuse a sparse gradient (``nn.Embedding(sparse=True)``) by name, before torch fails
    on it deep inside a kernel: every descend optimizer updates every element. One attribute
    read per gradient."""
    for name, g in grads.items():
        if g is not None and g.layout is not torch.strided:
            raise ConfigError(
                message(
                    f"{owner}: the gradient of {name!r}",
                    "must be dense (descend's optimizers update every element of a parameter)",
                    f"a sparse gradient ({g.layout})",
                    "build the module with sparse=False (e.g. nn.Embedding(..., sparse=False)), "
                    "or train that parameter with torch.optim.SparseAdam or torch.optim.SGD",
                )
            )


def need_params(params: Any, owner: str) -> None:
    if params is None:
        raise ConfigError(
            message(
                f"{owner}.update",
                "needs the current parameters",
                "params=None",
                "call update(grads, state, params)",
            )
        )


def mul(tensors: dict[str, torch.Tensor], factor: float | torch.Tensor, owned: bool):
    """``{n: t * factor}``; in place when the caller owns the tensors."""
    names = present(tensors)
    if owned:
        for grp in groups(names, tensors):
            ts = [tensors[n] for n in grp]
            f = factor.to(ts[0].device) if isinstance(factor, torch.Tensor) else factor
            torch._foreach_mul_(ts, f)
        return tensors
    out: dict[str, torch.Tensor] = {}
    for grp in groups(names, tensors):
        ts = [tensors[n] for n in grp]
        f = factor.to(ts[0].device) if isinstance(factor, torch.Tensor) else factor
        out.update(zip(grp, torch._foreach_mul(ts, f)))
    return out
