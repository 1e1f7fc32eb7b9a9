"""Named optimizers: short recipes of :mod:`descend.transforms`, plus the torch adapter.

Each optimizer is a function returning a chained :class:`~descend.transforms.Transform`; it adds
no new math. Every recipe reads, left to right, in the order the gradient flows::

    [clip_by_global_norm]  [add_l2]  <scaler>  [add_decayed_weights]  scale_by_learning_rate

The hyperparameters and their defaults are torch.optim's, and tests check that each recipe
follows the same trajectory as its torch.optim twin to 1e-6 in float64. Every optimizer takes:

- ``schedule``: a multiplier ``step -> float`` of the learning rate (:mod:`descend.schedules`);
- ``max_grad_norm``: clip the global gradient norm first (as ``clip_grad_norm_``);
- ``impl``: ``"foreach"`` (multi-tensor ``_foreach_*`` ops), ``"reference"`` (one tensor at a
  time, the paper's equations) or, for adam/adamw, ``"fused"`` (torch's fused Adam kernel).
  ``"auto"`` picks the fastest available (fused for Adam, else foreach). All give the same
  numbers to rounding and the same state tree, so a checkpoint from one loads into another.

``REGISTRY`` maps names to these factories and :func:`get` builds one from a name.
:func:`as_torch_optimizer` wraps any Transform as a real ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from descend._errors import (
    CheckpointError,
    ConfigError,
    check_choice,
    check_in_range,
    check_positive,
    describe,
    message,
)
from descend.transforms import (
    Params,
    Transform,
    add_decayed_weights,
    add_l2,
    apply_updates,
    chain,
    clip_by_global_norm,
    find_lr_state,
    named_params,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_nadam,
    scale_by_rms,
    trace,
)
from descend.transforms._fused import fused_adam_chain
from descend.transforms._util import (
    FUSED_IMPLS,
    IMPLS,
    Impl,
    Mask,
    check_bool,
    check_callable,
)

__all__ = [
    "REGISTRY",
    "TorchOptimizer",
    "adagrad",
    "adam",
    "adamw",
    "as_torch_optimizer",
    "get",
    "momentum",
    "nadam",
    "nesterov",
    "rmsprop",
    "sgd",
]

Schedule = Callable[[int], float]


# --------------------------------------------------------------------------- validation


def _common(
    owner: str,
    lr: float,
    schedule: Schedule | None,
    max_grad_norm: float | None,
    impl: str,
    impls: tuple[str, ...] = IMPLS,
) -> float:
    lr = check_positive("lr", lr, owner=owner)
    if schedule is not None:
        check_callable("schedule", schedule, owner=owner, example="descend.schedules.cosine(1000)")
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm, owner=owner)
    check_choice("impl", impl, impls, owner=owner)
    return lr


def _betas(betas: Any, owner: str) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ConfigError(
            message(
                f"{owner}: betas",
                "must be a pair (beta1, beta2)",
                describe(betas),
                "pass e.g. betas=(0.9, 0.999)",
            )
        )
    b1 = check_in_range("betas[0]", betas[0], 0.0, 1.0, owner=owner, example="betas=(0.9, 0.999)")
    b2 = check_in_range("betas[1]", betas[1], 0.0, 1.0, owner=owner, example="betas=(0.9, 0.999)")
    return b1, b2


def _nonneg(name: str, value: float, owner: str) -> float:
    return check_positive(name, value, owner=owner, allow_zero=True)


def _momentum(value: float, owner: str, *, allow_zero: bool = True) -> float:
    return check_in_range(
        "momentum",
        value,
        0.0,
        1.0,
        owner=owner,
        low_inclusive=allow_zero,
        example="momentum=0.9",
    )


def _recipe(
    *parts: Transform | None,
    lr: float,
    schedule: Schedule | None,
    max_grad_norm: float | None,
) -> Transform:
    links = [clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []
    links += [p for p in parts if p is not None]
    links.append(scale_by_learning_rate(lr, schedule))
    return chain(*links)


def _adam_recipe(
    head: list[Transform],
    b1: float,
    b2: float,
    eps: float,
    amsgrad: bool,
    weight_decay: float,
    mask: Any,
    lr: float,
    schedule: Schedule | None,
    max_grad_norm: float | None,
    impl: str,
) -> Transform:
    """``[clip] *head  scale_by_adam  [add_decayed_weights]  scale_by_learning_rate``.

    With ``impl`` "auto"/"fused" the last three links run as one fused kernel call (same
    state tree, same numbers; see :mod:`descend.transforms._fused`).
    """
    if max_grad_norm is not None:
        head = [clip_by_global_norm(max_grad_norm), *head]
    if impl in ("auto", "fused"):
        return fused_adam_chain(
            head,
            b1=b1,
            b2=b2,
            eps=eps,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            mask=mask,
            lr=lr,
            schedule=schedule,
        )
    return chain(
        *head,
        scale_by_adam(b1, b2, eps, amsgrad, impl=impl),
        *([add_decayed_weights(weight_decay, mask)] if weight_decay else []),
        scale_by_learning_rate(lr, schedule),
    )


# --------------------------------------------------------------------------- optimizers


def sgd(
    lr: float,
    weight_decay: float = 0.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Plain gradient descent: ``θ ← θ − η · (∇L + λ θ)``, as ``torch.optim.SGD``.

    Args:
        lr: η > 0.
        weight_decay: λ >= 0, coupled L2 (added to the gradient).
        schedule, max_grad_norm, impl: see the module docstring.

    Example:
        >>> import torch
        >>> from descend import optim
        >>> from descend.transforms import apply_updates
        >>> params = {"x": torch.tensor([3.0])}
        >>> tx = optim.sgd(lr=0.1)
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"x": 2 * params["x"]}, state, params)  # ∇ x² = 2x
        >>> apply_updates(params, updates); params["x"]
        tensor([2.4000])
    """
    owner = "sgd"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def momentum(
    lr: float,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """SGD with heavy-ball momentum, as ``torch.optim.SGD(momentum=...)``::

        b ← μ b + (1 − dampening) (g + λ θ)      (b = g + λ θ on the first step)
        θ ← θ − η b

    Args:
        lr: η > 0.
        momentum: μ in [0, 1).
        dampening: in [0, 1].
        weight_decay: λ >= 0, coupled L2.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "momentum"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    mu = _momentum(momentum, owner)
    dampening = check_in_range(
        "dampening", dampening, 0.0, 1.0, owner=owner, high_inclusive=True, example="dampening=0"
    )
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        trace(mu, dampening, impl=impl),
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def nesterov(
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """SGD with Nesterov momentum, as ``torch.optim.SGD(momentum=..., nesterov=True)``::

        b ← μ b + (g + λ θ)                     (b = g + λ θ on the first step)
        θ ← θ − η (g + λ θ + μ b)

    Args:
        lr: η > 0.
        momentum: μ in (0, 1).
        weight_decay: λ >= 0, coupled L2.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "nesterov"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    mu = _momentum(momentum, owner, allow_zero=False)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        trace(mu, 0.0, nesterov=True, impl=impl),
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def adagrad(
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Adagrad (Duchi et al. 2011), as ``torch.optim.Adagrad``::

        S ← S + g²,   θ ← θ − η / (1 + (t − 1) · lr_decay) · g / (sqrt(S) + ε)

    with ``g`` including the coupled L2 term ``λ θ``.

    Args:
        lr: η > 0.
        lr_decay: >= 0.
        weight_decay: λ >= 0.
        initial_accumulator_value: S_0 >= 0.
        eps: ε >= 0.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "adagrad"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    lr_decay = _nonneg("lr_decay", lr_decay, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    initial = _nonneg("initial_accumulator_value", initial_accumulator_value, owner)
    eps = _nonneg("eps", eps, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        scale_by_adagrad(initial, eps, lr_decay, impl=impl),
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def rmsprop(
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """RMSprop (Hinton 2012), as ``torch.optim.RMSprop``::

        s ← α s + (1 − α) g²,   r = g / (sqrt(s − a²) + ε)   (a = mean of g, centered only)
        b ← μ b + r,            θ ← θ − η b                   (b = r when momentum = 0)

    Args:
        lr: η > 0.
        alpha: α in [0, 1).
        eps: ε >= 0.
        centered: normalize by the variance estimate.
        momentum: μ in [0, 1).
        weight_decay: λ >= 0, coupled L2.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "rmsprop"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, owner=owner, example="alpha=0.99")
    eps = _nonneg("eps", eps, owner)
    centered = check_bool("centered", centered, owner=owner)
    mu = _momentum(momentum, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        scale_by_rms(alpha, eps, centered, impl=impl),
        trace(mu, impl=impl) if mu else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam``::

        m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
        θ ← θ − η · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)

    with ``g`` including the coupled L2 term ``λ θ`` (for decoupled decay use :func:`adamw`).

    Args:
        lr: η > 0.
        betas: (β1, β2), each in [0, 1).
        eps: ε >= 0.
        weight_decay: λ >= 0, coupled L2.
        amsgrad: use the running maximum of v (Reddi et al. 2018).
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "adam"
    lr = _common(owner, lr, schedule, max_grad_norm, impl, FUSED_IMPLS)
    b1, b2 = _betas(betas, owner)
    eps = _nonneg("eps", eps, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    amsgrad = check_bool("amsgrad", amsgrad, owner=owner)
    head = [add_l2(weight_decay)] if weight_decay else []
    return _adam_recipe(head, b1, b2, eps, amsgrad, 0.0, None, lr, schedule, max_grad_norm, impl)


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    mask: Mask | str = "default",
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay::

        θ ← θ − η · ( (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)  +  λ θ )

    By default (``mask="default"``) only parameters with ``ndim >= 2`` are decayed, so biases
    and normalization weights are not; ``mask=None`` decays every parameter, exactly like
    ``torch.optim.AdamW``. See :func:`descend.transforms.add_decayed_weights` for masks.

    Args:
        lr: η > 0.
        betas: (β1, β2), each in [0, 1).
        eps: ε >= 0.
        weight_decay: λ >= 0.
        amsgrad: use the running maximum of v.
        mask: which parameters to decay.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "adamw"
    lr = _common(owner, lr, schedule, max_grad_norm, impl, FUSED_IMPLS)
    b1, b2 = _betas(betas, owner)
    eps = _nonneg("eps", eps, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    amsgrad = check_bool("amsgrad", amsgrad, owner=owner)
    return _adam_recipe(
        [], b1, b2, eps, amsgrad, weight_decay, mask, lr, schedule, max_grad_norm, impl
    )


def nadam(
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """NAdam (Dozat 2016), as ``torch.optim.NAdam`` (see
    :func:`descend.transforms.scale_by_nadam` for the update rule).

    Args:
        lr: η > 0.
        betas: (β1, β2), each in [0, 1).
        eps: ε >= 0.
        weight_decay: λ >= 0, coupled L2.
        momentum_decay: ψ >= 0 of the momentum schedule ``μ_t = β1 (1 − ½ · 0.96^(t ψ))``.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "nadam"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    b1, b2 = _betas(betas, owner)
    eps = _nonneg("eps", eps, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    momentum_decay = _nonneg("momentum_decay", momentum_decay, owner)
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        scale_by_nadam(b1, b2, eps, momentum_decay, impl=impl),
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


REGISTRY: dict[str, Callable[..., Transform]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "nadam": nadam,
}


def get(spec: str | Transform, **kwargs: Any) -> Transform:
    """An optimizer from a registry name and hyperparameters, or a Transform as is.

    Example:
        >>> from descend import optim
        >>> tx = optim.get("adamw", lr=3e-4)
    """
    if isinstance(spec, Transform):
        if kwargs:
            raise ConfigError(
                message(
                    "optim.get(transform, **kwargs)",
                    "takes hyperparameters only with an optimizer name",
                    f"a Transform and {sorted(kwargs)}",
                    "build the Transform with those hyperparameters instead",
                )
            )
        return spec
    if not isinstance(spec, str):
        raise ConfigError(
            message(
                "optim.get: spec",
                "must be an optimizer name or a descend Transform",
                describe(spec),
                f"use one of {sorted(REGISTRY)}",
            )
        )
    name = spec.strip().lower()
    check_choice("optimizer", name, sorted(REGISTRY), owner="optim.get")
    factory = REGISTRY[name]
    sig = inspect.signature(factory)
    unknown = [k for k in kwargs if k not in sig.parameters]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(sig.parameters), n=2)
        fix = f"did you mean {' or '.join(map(repr, close))}?" if close else None
        raise ConfigError(
            message(
                f"optim.get({name!r}): {unknown[0]!r}",
                f"is not a hyperparameter of {name}",
                f"{unknown[0]}={describe(kwargs[unknown[0]])}",
                fix or f"valid ones are {list(sig.parameters)}",
            )
        )
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise ConfigError(
            message(
                f"optim.get({name!r})",
                f"needs {missing[0]} (it has no default)",
                "no value",
                f"pass e.g. optim.get({name!r}, {missing[0]}=0.01)",
            )
        )
    return factory(**kwargs)


# --------------------------------------------------------------------------- torch adapter


def _is_leaf_value(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _load_into(target: Any, loaded: Any, path: str) -> Any:
    """Copy ``loaded`` into the freshly built state ``target`` (same tree), keeping identities."""

    def fail(rule: str) -> CheckpointError:
        return CheckpointError(
            message(
                f"optimizer state at {path!r}",
                rule,
                describe(loaded),
                "load a state_dict saved from the same optimizer recipe and model",
            )
        )

    if isinstance(target, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or loaded.shape != target.shape:
            raise fail(f"must be a tensor of shape {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(loaded)
        return target
    if isinstance(target, dict):
        if not isinstance(loaded, Mapping) or set(loaded) != set(target):
            missing = sorted(set(target) - set(loaded)) if isinstance(loaded, Mapping) else []
            extra = sorted(set(loaded) - set(target)) if isinstance(loaded, Mapping) else []
            raise fail(f"must have keys {sorted(target)[:6]} (missing {missing}, extra {extra})")
        for key in target:
            target[key] = _load_into(target[key], loaded[key], f"{path}/{key}")
        return target
    if isinstance(target, (tuple, list)):
        if not isinstance(loaded, (tuple, list)) or len(loaded) != len(target):
            raise fail(f"must be a sequence of length {len(target)}")
        items = [_load_into(t, x, f"{path}/{i}") for i, (t, x) in enumerate(zip(target, loaded))]
        return type(target)(items)
    if isinstance(loaded, torch.Tensor) and loaded.ndim == 0:
        loaded = loaded.item()
    if not _is_leaf_value(loaded):
        raise fail("must be a number, a string or None")
    if isinstance(target, int) and not isinstance(target, bool) and isinstance(loaded, float):
        if not loaded.is_integer():
            raise fail("must be an integer")
        loaded = int(loaded)
    return loaded


class TorchOptimizer(torch.optim.Optimizer):
    """A descend Transform behind the ``torch.optim.Optimizer`` interface.

    Build it with :func:`as_torch_optimizer`. It has one parameter group whose ``"lr"`` starts
    at the transform's base learning rate; changing it (by hand or with any
    ``torch.optim.lr_scheduler``) sets the learning-rate state's ``scale`` to
    ``group lr / base lr``, on top of the transform's own schedule. The transform's state is
    ``self.tx_state``; ``state_dict()`` holds it keyed by parameter NAME, with tensors and
    plain Python values only.
    """

    def __init__(self, tx: Transform, params: Params):
        self.tx = tx
        self.named: Params = params
        self.tx_state = tx.init(params)
        self._lr_state = find_lr_state(self.tx_state)
        self.base_lr = float(self._lr_state["lr"]) if self._lr_state is not None else 1.0
        self._seen_lr = self.base_lr
        self._building = True
        super().__init__([{"params": list(params.values())}], {"lr": self.base_lr})
        self._building = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_building", False):
            raise ConfigError(
                message(
                    "as_torch_optimizer(...).add_param_group",
                    "is not supported (the optimizer has one group, keyed by parameter name)",
                    f"a group with keys {sorted(param_group)}",
                    "build one optimizer over all named parameters, or mask transforms "
                    "(descend.transforms.masked) to treat some parameters differently",
                )
            )
        super().add_param_group(param_group)

    def _sync_lr(self, lr: Any) -> None:
        lr = float(lr)
        if self._lr_state is None:
            raise ConfigError(
                message(
                    "param_groups[0]['lr']",
                    "can change only if the transform ends in scale_by_learning_rate",
                    f"lr={lr}",
                    "use a descend.optim optimizer, or chain scale_by_learning_rate(lr)",
                )
            )
        self._lr_state["scale"] = lr / self.base_lr
        self._seen_lr = lr

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update from the ``.grad`` of every named parameter (``None`` grads skipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr = self.param_groups[0]["lr"]
        if lr != self._seen_lr:
            self._sync_lr(lr)
        grads = {n: p.grad for n, p in self.named.items() if p.grad is not None}
        if grads:
            with torch.no_grad():
                updates, self.tx_state = self.tx.update(grads, self.tx_state, self.named)
                apply_updates(self.named, updates)
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"state": <tx state>, "param_groups": [{"lr", "params": [names]}], "synced_lr"}``.

        Tensors are the live state (like torch's ``state_dict``): copy them to keep a
        snapshot while training goes on.
        """
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(self.named)
        # synced_lr: the group lr last folded into the lr-state scale; a scheduler may have
        # moved group["lr"] since, and the resumed optimizer must notice that too.
        return {"state": self.tx_state, "param_groups": [group], "synced_lr": self._seen_lr}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Restore a :meth:`state_dict` (tensors are copied into this optimizer's buffers)."""
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise CheckpointError(
                message(
                    "optimizer state_dict",
                    "must have 'state' and 'param_groups'",
                    describe(state_dict),
                    "pass what TorchOptimizer.state_dict() returned",
                )
            )
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1:
            raise CheckpointError(
                message(
                    "optimizer state_dict['param_groups']",
                    "must hold exactly one group",
                    describe(groups),
                    "pass what TorchOptimizer.state_dict() returned",
                )
            )
        names = list(groups[0].get("params", []))
        if set(names) != set(self.named):
            missing = sorted(set(self.named) - set(names))
            extra = sorted(set(names) - set(self.named))
            raise CheckpointError(
                message(
                    "optimizer state_dict",
                    "must cover the same parameter names as the model",
                    f"missing {missing[:5]}, unexpected {extra[:5]}",
                    "load a state saved from the same model (names from named_parameters())",
                )
            )
        self.tx_state = _load_into(self.tx_state, state_dict["state"], "state")
        self._lr_state = find_lr_state(self.tx_state)
        group = self.param_groups[0]
        for key, value in groups[0].items():
            if key != "params":
                group[key] = value
        self._seen_lr = state_dict.get("synced_lr", group["lr"])


def as_torch_optimizer(
    tx: Transform | str,
    model_or_named_params: torch.nn.Module | Params | Iterable[tuple[str, torch.Tensor]],
) -> TorchOptimizer:
    """Wrap a descend optimizer as a ``torch.optim.Optimizer`` for hand-written torch loops.

    Example:
        >>> import torch
        >>> from descend import optim
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2), model)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        ...     opt.step()
        ...     sched.step()
    """
    tx = get(tx)
    params = named_params(model_or_named_params)
    bad = [n for n, p in params.items() if not isinstance(p, torch.Tensor)]
    if not params or bad:
        raise ConfigError(
            message(
                "as_torch_optimizer: parameters",
                "must be a module or a non-empty {name: tensor} mapping",
                describe(model_or_named_params) if not params else f"non-tensor {bad[0]!r}",
                "pass model or dict(model.named_parameters())",
            )
        )
    return TorchOptimizer(tx, params)
