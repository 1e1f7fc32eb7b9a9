"""Named optimizers: short recipes of :mod:`descend.transforms`, plus the torch adapter.

Each optimizer is a function returning a chained :class:`~descend.transforms.Transform`; it adds
no new math. Every recipe reads, left to right, in the order the gradient flows::

    [clip_by_global_norm]  [add_l2]  <scaler>  [add_decayed_weights]  scale_by_learning_rate

The hyperparameters and their defaults are torch.optim's, and tests check that each recipe
follows the same trajectory as its torch.optim twin to 1e-6 in float64. Every optimizer takes:

- ``schedule``: a multiplier ``step -> float`` of the learning rate (:mod:`descend.schedules`);
- ``max_grad_norm``: clip the global gradient norm first (as ``clip_grad_norm_``);
- ``impl``: ``"foreach"`` (multi-tensor ``_foreach_*`` ops), ``"reference"`` (one tensor at a
  time, the paper's equations) or, for adam/adamw and sgd/momentum/nesterov, ``"fused"``
  (torch's fused Adam/SGD kernels). ``"auto"`` picks the fastest available (fused where there
  is a kernel, else foreach). All give the same numbers to rounding and the same state tree, so
  a checkpoint from one loads into another. The fused recipes also step the parameters in one
  pass through :func:`descend.transforms.update_and_apply`.

The modern optimizers (:func:`schedulefree_adamw`, :func:`schedulefree_sgd`, :func:`muon`,
:func:`lion`, :func:`prodigy`, :func:`lamb`, :func:`lars`) follow their reference
implementations (tests check the trajectories against the ``schedulefree``, ``prodigyopt`` and
``lion-pytorch`` packages and ``torch.optim.Muon``) and take the same common arguments.

``REGISTRY`` maps the classic names (the torch.optim twins) to their factories and
``MODERN_REGISTRY`` the modern ones; :func:`get` builds one from a name in either and
:func:`names` lists them all. :func:`as_torch_optimizer` wraps any Transform as a real
``torch.optim.Optimizer`` (with ``.train()``/``.eval()`` for schedule-free optimizers).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from descend._errors import (
    CheckpointError,
    ConfigError,
    check_bool,
    check_choice,
    check_in_range,
    check_positive,
    describe,
    message,
    plain,
)
from descend.transforms import (
    Params,
    State,
    Transform,
    add_decayed_weights,
    add_l2,
    apply_updates,
    chain,
    clip_by_global_norm,
    find_lr_state,
    named_params,
    scale,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_muon,
    scale_by_nadam,
    scale_by_prodigy,
    scale_by_rms,
    scale_by_schedule_free,
    scale_by_trust_ratio,
    swap_to_eval,
    swap_to_train,
    trace,
    update_and_apply,
)
from descend.transforms import (
    partition as partition_transform,
)
from descend.transforms._fused import fused_adam_chain, fused_sgd_chain
from descend.transforms._util import (
    FUSED_IMPLS,
    IMPLS,
    SGD_IMPLS,
    Impl,
    Mask,
    WholeGrads,
    check_callable,
    check_dense,
    whole_grads,
    whole_or,
    whole_params,
)

__all__ = [
    "MODERN_REGISTRY",
    "REGISTRY",
    "TorchOptimizer",
    "adagrad",
    "adam",
    "adamw",
    "as_torch_optimizer",
    "get",
    "lamb",
    "lars",
    "lion",
    "momentum",
    "muon",
    "muon_partition",
    "nadam",
    "names",
    "nesterov",
    "prodigy",
    "rmsprop",
    "schedulefree_adamw",
    "schedulefree_sgd",
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


def _head(max_grad_norm: float | None) -> list[Transform]:
    return [clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []


def _recipe(
    *parts: Transform | None,
    lr: float,
    schedule: Schedule | None,
    max_grad_norm: float | None,
) -> Transform:
    """``[clip] *parts scale_by_learning_rate``, leaving out the parts that are None."""
    links = _head(max_grad_norm)
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
    if impl in ("auto", "fused"):
        return fused_adam_chain(
            [*_head(max_grad_norm), *head],
            b1=b1,
            b2=b2,
            eps=eps,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            mask=mask,
            lr=lr,
            schedule=schedule,
        )
    return _recipe(
        *head,
        scale_by_adam(b1, b2, eps, amsgrad, impl=impl),
        add_decayed_weights(weight_decay, mask) if weight_decay else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


def _sgd_recipe(
    weight_decay: float,
    mu: float,
    dampening: float,
    nesterov: bool,
    lr: float,
    schedule: Schedule | None,
    max_grad_norm: float | None,
    impl: str,
) -> Transform:
    """``[clip]  [add_l2]  [trace]  scale_by_learning_rate``; with ``impl`` "auto"/"fused" the
    tail runs as torch's fused SGD kernel (same state tree, same numbers)."""
    if impl in ("auto", "fused"):
        return fused_sgd_chain(
            _head(max_grad_norm),
            weight_decay=weight_decay,
            momentum=mu,
            dampening=dampening,
            nesterov=nesterov,
            lr=lr,
            schedule=schedule,
        )
    return _recipe(
        add_l2(weight_decay) if weight_decay else None,
        trace(mu, dampening, nesterov=nesterov, impl=impl) if mu else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


# --------------------------------------------------------------------------- optimizers


def _fmt_arg(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_fmt_arg(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if inspect.isfunction(value) or inspect.ismethod(value):
        return value.__name__  # a lambda shows as <lambda>
    return repr(value)  # numbers, strings, descend.schedules' readable objects


def _described(factory: Callable[..., Transform]) -> Callable[..., Transform]:
    """Give the built transform the call that built it, e.g. ``adamw(lr=0.003,
    weight_decay=0.1)`` — its ``repr``, and what ``fit`` records and prints for it."""
    sig = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Transform:
        tx = factory(*args, **kwargs)
        try:
            given = sig.bind(*args, **kwargs).arguments
        except TypeError:  # pragma: no cover - the factory call above raised already
            return tx
        args_text = ", ".join(f"{k}={_fmt_arg(v)}" for k, v in given.items())
        tx.update.desc = f"{factory.__name__}({args_text})"  # type: ignore[attr-defined]
        # every argument, defaults too: as_torch_optimizer shows them in its param groups
        # and builds a group with options of its own by calling the factory again
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        tx.update.built_with = (build, dict(bound.arguments))  # type: ignore[attr-defined]
        return tx

    return build


@_described
def sgd(
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Gradient descent, as ``torch.optim.SGD``: plain ``θ ← θ − η · (∇L + λ θ)``, or with
    ``momentum`` (and ``dampening``, ``nesterov``) exactly :func:`momentum` and
    :func:`nesterov` — the keywords torch's and optax's ``sgd`` take, in ``torch.optim.SGD``'s
    order (``sgd(0.1, 0.9)`` is momentum 0.9, as in torch).

    Args:
        lr: η > 0.
        momentum: μ in [0, 1); 0 keeps no momentum buffer.
        dampening: in [0, 1], for ``momentum > 0``.
        weight_decay: λ >= 0, coupled L2 (added to the gradient).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening=0``, as in torch).
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
    lr = _common(owner, lr, schedule, max_grad_norm, impl, SGD_IMPLS)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    mu = _momentum(momentum, owner)
    dampening = check_in_range(
        "dampening", dampening, 0.0, 1.0, owner=owner, high_inclusive=True, example="dampening=0"
    )
    nesterov = check_bool("nesterov", nesterov, owner=owner)
    if nesterov and (mu == 0 or dampening != 0):
        raise ConfigError(
            message(
                f"{owner}: nesterov=True",
                "needs momentum > 0 and dampening=0 (as torch.optim.SGD)",
                f"momentum={mu:g}, dampening={dampening:g}",
                "pass e.g. sgd(lr, momentum=0.9, nesterov=True)",
            )
        )
    return _sgd_recipe(
        weight_decay, mu, dampening if mu else 0.0, nesterov, lr, schedule, max_grad_norm, impl
    )


@_described
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
        dampening: in [0, 1]; ignored while μ = 0 (as torch.optim.SGD).
        weight_decay: λ >= 0, coupled L2.
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "momentum"
    lr = _common(owner, lr, schedule, max_grad_norm, impl, SGD_IMPLS)
    mu = _momentum(momentum, owner)
    dampening = check_in_range(
        "dampening", dampening, 0.0, 1.0, owner=owner, high_inclusive=True, example="dampening=0"
    )
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    if mu == 0:
        # torch.optim.SGD(momentum=0) ignores dampening; keep the trace link (and its state)
        return _recipe(
            add_l2(weight_decay) if weight_decay else None,
            trace(mu, dampening, impl="reference" if impl == "reference" else "foreach"),
            lr=lr,
            schedule=schedule,
            max_grad_norm=max_grad_norm,
        )
    return _sgd_recipe(weight_decay, mu, dampening, False, lr, schedule, max_grad_norm, impl)


@_described
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
    lr = _common(owner, lr, schedule, max_grad_norm, impl, SGD_IMPLS)
    mu = _momentum(momentum, owner, allow_zero=False)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _sgd_recipe(weight_decay, mu, 0.0, True, lr, schedule, max_grad_norm, impl)


@_described
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


@_described
def rmsprop(
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """RMSprop (Hinton 2012), as ``torch.optim.RMSprop``::

        s ← α s + (1 − α) g²,   r = g / (sqrt(s − a²) + ε)   (a = mean of g, centered only)
        b ← μ b + r,            θ ← θ − η b                   (b = r when momentum = 0)

    Args (in ``torch.optim.RMSprop``'s order):
        lr: η > 0.
        alpha: α in [0, 1).
        eps: ε >= 0.
        weight_decay: λ >= 0, coupled L2.
        momentum: μ in [0, 1).
        centered: normalize by the variance estimate.
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


@_described
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


@_described
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


@_described
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


# --------------------------------------------------------------------------- modern optimizers


def _int(name: str, value: Any, owner: str, low: int = 0) -> int:
    value = plain(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(
            message(f"{owner}: {name}", f"must be an integer >= {low}", describe(value),
                    f"pass e.g. {name}={max(low, 100)}")
        )  # fmt: skip
    return value


@_described
def schedulefree_adamw(
    lr: float = 2.5e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Mask | str = "default",
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Schedule-free AdamW (Defazio et al. 2024), as ``schedulefree.AdamWScheduleFree``.

    No learning-rate schedule is needed: the parameters follow an interpolation ``y`` between
    a running average ``x`` and a base AdamW-like iterate ``z``, and the average is what you
    evaluate (see :func:`descend.transforms.scale_by_schedule_free` for the equations).

    **Evaluate at the average.** While training the parameters hold ``y``; call
    ``descend.transforms.swap_to_eval(state, params)`` before evaluating or saving weights and
    ``swap_to_train(state, params)`` before the next step. ``descend.fit`` does it for you
    (evaluation, best weights and checkpoints use the averaged point), and so do
    ``as_torch_optimizer(...).eval()`` / ``.train()``. Models with BatchNorm should recompute its
    running statistics at the averaged point (``torch.optim.swa_utils.update_bn``).

    Args:
        lr: η > 0 (the reference default 2.5e-3; typically 1–10× AdamW's).
        betas: (β1 in (0, 1), β2 in [0, 1)).
        eps: ε >= 0.
        weight_decay: λ >= 0 (at ``y``, decoupled from the second moment).
        mask: which parameters to decay (``"default"``: ndim >= 2; ``None``: all, as the
            reference).
        warmup_steps: linear warmup (the reference's way to warm up; >= 0).
        r, weight_lr_power: weighting of the average (see the transform).
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach/reference).
    """
    owner = "schedulefree_adamw"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    b1, b2 = _betas(betas, owner)
    if b1 == 0:
        _momentum(b1, owner, allow_zero=False)
    warmup_steps = _int("warmup_steps", warmup_steps, owner)
    core = scale_by_schedule_free(
        lr,
        b1=b1,
        b2=b2,
        eps=_nonneg("eps", eps, owner),
        weight_decay=_nonneg("weight_decay", weight_decay, owner),
        mask=mask,
        warmup_steps=warmup_steps,
        r=_nonneg("r", r, owner),
        weight_lr_power=_nonneg("weight_lr_power", weight_lr_power, owner),
        schedule=schedule,
        impl=impl,
    )
    return chain(*_head(max_grad_norm), core)


@_described
def schedulefree_sgd(
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    mask: Mask | str = "default",
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Schedule-free SGD (Defazio et al. 2024), as ``schedulefree.SGDScheduleFree``.

    :func:`schedulefree_adamw` without the second moment: the direction is the gradient
    (plus ``λ y``). Evaluate at the averaged point exactly as described there.

    Args:
        lr: η > 0 (the reference default 1.0 suits normalized networks; start lower otherwise).
        momentum: β1 in (0, 1), the interpolation between the average and the base iterate.
        weight_decay: λ >= 0 (coupled, at ``y``).
        mask, warmup_steps, r, weight_lr_power: as :func:`schedulefree_adamw`.
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach/reference).
    """
    owner = "schedulefree_sgd"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    mu = _momentum(momentum, owner, allow_zero=False)
    core = scale_by_schedule_free(
        lr,
        b1=mu,
        b2=None,
        weight_decay=_nonneg("weight_decay", weight_decay, owner),
        mask=mask,
        warmup_steps=_int("warmup_steps", warmup_steps, owner),
        r=_nonneg("r", r, owner),
        weight_lr_power=_nonneg("weight_lr_power", weight_lr_power, owner),
        schedule=schedule,
        impl=impl,
    )
    return chain(*_head(max_grad_norm), core)


@_described
def lion(
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    mask: Mask | str = "default",
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Lion (Chen et al. 2023), as ``lion_pytorch.Lion``::

        θ ← θ − η · ( sign(β1 m + (1 − β1) g) + λ θ ),     m ← β2 m + (1 − β2) g

    Every coordinate moves by ±η, so use a learning rate 3–10× smaller than AdamW's and a
    weight decay 3–10× larger. One state buffer (half of Adam's memory).

    Args:
        lr: η > 0.
        betas: (β1, β2), each in [0, 1).
        weight_decay: λ >= 0, decoupled.
        mask: which parameters to decay (``"default"``: ndim >= 2; ``None``: all, as the
            reference).
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach/reference).
    """
    owner = "lion"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    b1, b2 = _betas(betas, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        scale_by_lion(b1, b2, impl=impl),
        add_decayed_weights(weight_decay, mask) if weight_decay else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


@_described
def prodigy(
    lr: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decouple: bool = True,
    mask: Mask | str = "default",
    use_bias_correction: bool = False,
    safeguard_warmup: bool = False,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    growth_rate: float = float("inf"),
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Prodigy (Mishchenko & Defazio 2024), as ``prodigyopt.Prodigy``: Adam whose step size
    ``d · lr`` is estimated on the fly, so ``lr`` stays at 1.0 (see
    :func:`descend.transforms.scale_by_prodigy` for the update). One estimate ``d`` covers all
    the parameters (as the reference's single estimate over its groups); it is in the state as
    a tensor, and never synchronizes with the host.

    Args:
        lr: multiplier of the estimated step (1.0; lower it only if training is unstable).
        betas: (β1, β2), each in [0, 1).
        beta3: decay of the estimate's sums, in [0, 1) (default sqrt(β2)).
        eps: ε > 0.
        weight_decay: λ >= 0 (decoupled unless ``decouple=False``).
        decouple: AdamW-style decay.
        mask: which parameters to decay (``"default"``: ndim >= 2; ``None``: all, as the
            reference).
        use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate: as the reference.
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach/reference).
    """
    owner = "prodigy"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    b1, b2 = _betas(betas, owner)
    core = scale_by_prodigy(
        lr,
        b1=b1,
        b2=b2,
        b3=beta3,
        eps=eps,
        weight_decay=_nonneg("weight_decay", weight_decay, owner),
        decouple=decouple,
        mask=mask,
        use_bias_correction=use_bias_correction,
        safeguard_warmup=safeguard_warmup,
        d0=d0,
        d_coef=d_coef,
        growth_rate=growth_rate,
        schedule=schedule,
        impl=impl,
    )
    return chain(*_head(max_grad_norm), core)


@_described
def lamb(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: Mask | str = "default",
    trust_mask: Mask | str = None,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """LAMB (You et al. 2020): AdamW's update rescaled per tensor by the trust ratio::

        u = m̂ / (sqrt(v̂) + ε) + λ θ,     θ ← θ − η · (‖θ‖ / ‖u‖) · u

    (the ratio is 1 where either norm is 0). The trust ratio is a transform of its own
    (:func:`descend.transforms.scale_by_trust_ratio`) and works after any other scaler too.

    Args:
        lr: η > 0.
        betas: (β1, β2), each in [0, 1).
        eps: ε >= 0 (1e-6 as the paper).
        weight_decay: λ >= 0, decoupled, inside the ratio.
        mask: which parameters to decay (``"default"``: ndim >= 2).
        trust_mask: which parameters get the trust ratio (``None``: all, as the paper).
        schedule, max_grad_norm, impl: see the module docstring.
    """
    owner = "lamb"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    b1, b2 = _betas(betas, owner)
    eps = _nonneg("eps", eps, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    return _recipe(
        scale_by_adam(b1, b2, eps, impl=impl),
        add_decayed_weights(weight_decay, mask) if weight_decay else None,
        scale_by_trust_ratio(mask=trust_mask),
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


@_described
def lars(
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
    mask: Mask | str = "default",
    trust_mask: Mask | str = None,
    *,
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """LARS (You et al. 2017): momentum SGD with a layer-wise trust ratio, as optax's ``lars``::

        u = g + λ θ,     u ← c · ‖θ‖ / (‖u‖ + ε) · u,     b ← μ b + u,     θ ← θ − η b

    Each layer moves by about ``η c`` of its own norm per step, whatever its gradient scale;
    meant for very large batches with a large ``η``.

    Args:
        lr: η > 0 (1.0 with c = 1e-3).
        momentum: μ in [0, 1).
        weight_decay: λ >= 0, inside the ratio.
        trust_coefficient: c > 0.
        eps: ε >= 0.
        nesterov: Nesterov momentum.
        mask: which parameters to decay (``"default"``: ndim >= 2).
        trust_mask: which parameters get the ratio (``None``: all).
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach/reference).
    """
    owner = "lars"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    mu = _momentum(momentum, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    trust_coefficient = check_positive("trust_coefficient", trust_coefficient, owner=owner)
    eps = _nonneg("eps", eps, owner)
    nesterov = check_bool("nesterov", nesterov, owner=owner)
    if nesterov and not mu:
        _momentum(mu, owner, allow_zero=False)
    return _recipe(
        add_decayed_weights(weight_decay, mask) if weight_decay else None,
        scale_by_trust_ratio(trust_coefficient, eps, mask=trust_mask),
        trace(mu, nesterov=nesterov, impl=impl) if mu else None,
        lr=lr,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
    )


# --------------------------------------------------------------------------- Muon

# module names (the part of a parameter name before ".weight") that mark an embedding or an
# output layer; matched as whole "_"-separated words, so "attention.output.dense" stays hidden
_EMBED_WORDS = ("embed", "embeds", "embedding", "embeddings", "wte", "wpe", "emb")
_HEAD_WORDS = ("head", "classifier", "logits", "readout", "lm_head", "output", "out")
MuonLabel = str


def _name_label(name: str) -> str | None:
    parts = name.lower().split(".")
    module = parts[-2] if len(parts) >= 2 else parts[0]
    words = set(module.replace("-", "_").split("_"))
    if module in _EMBED_WORDS or words & {"embed", "embedding", "embeddings", "embeds"}:
        return "embedding"
    if module in _HEAD_WORDS or words & {"head", "classifier", "logits"}:
        return "head"
    return None


def muon_partition(
    model_or_params: torch.nn.Module | Params | Iterable[tuple[str, torch.Tensor]],
) -> dict[str, str]:
    """Which parameters :func:`muon` orthogonalizes (``"muon"``) and which go to AdamW.

    Muon is for hidden weight matrices only. A parameter goes to ``"adamw"`` when it is

    - a bias, gain or any tensor with ``ndim < 2``;
    - an embedding: the weight of an ``nn.Embedding``/``nn.EmbeddingBag`` module, or a name whose
      module part is an embedding word (``embed``, ``wte``, ``wpe``, ``*_embeddings`` ...);
    - the output layer: the last ``nn.Linear`` in the module's registration order (given a
      module), the last parameter with ``ndim >= 2`` (given a dict: its order is the module's),
      or a name whose module part is ``head``, ``lm_head``, ``classifier``, ``output``, ``out``,
      ``logits`` ...

    Every other tensor with ``ndim >= 2`` (convolution kernels too, as matrices
    ``(out, in · k · k)``) goes to ``"muon"``. Pass the result (edited if you like) as
    ``muon(partition=...)``; by default :func:`muon` applies these rules to the names and
    shapes it sees at ``init``, so a module's Embedding/Linear types are seen only if you pass
    ``partition=muon_partition(model)`` or ``partition=model``.

    Example:
        >>> import torch
        >>> from descend import optim
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> optim.muon_partition(model)
        {'0.weight': 'muon', '0.bias': 'adamw', '2.weight': 'muon', '2.bias': 'adamw', '3.weight': 'adamw', '3.bias': 'adamw'}
    """
    params = named_params(model_or_params)
    special: set[int] = set()
    if isinstance(model_or_params, torch.nn.Module):
        last_linear = None
        for module in model_or_params.modules():
            if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                special.add(id(module.weight))
            elif isinstance(module, torch.nn.Linear):
                last_linear = module
        if last_linear is not None:
            special.add(id(last_linear.weight))
    else:
        matrices = [n for n, p in params.items() if isinstance(p, torch.Tensor) and p.ndim >= 2]
        if matrices:
            special.add(id(params[matrices[-1]]))
    out = {}
    for n, p in params.items():
        hidden = p.ndim >= 2 and id(p) not in special and _name_label(n) is None
        out[n] = "muon" if hidden else "adamw"
    return out


def _muon_labels(spec: Any, owner: str) -> dict[str, str] | Callable[[str, torch.Tensor], str]:
    """``muon(partition=...)`` (not None) as a dict or a callable for the partition transform."""
    if isinstance(spec, torch.nn.Module):
        return muon_partition(spec)
    if isinstance(spec, Mapping):
        bad = [(k, v) for k, v in spec.items() if v not in ("muon", "adamw")]
        if bad:
            raise ConfigError(
                message(
                    f"{owner}: partition[{bad[0][0]!r}]",
                    "must be 'muon' or 'adamw'",
                    describe(bad[0][1]),
                    "start from descend.optim.muon_partition(model) and edit it",
                )
            )
        return dict(spec)
    if callable(spec):
        return spec
    raise ConfigError(
        message(
            f"{owner}: partition",
            "must be None (automatic), a model, a dict {name: 'muon'|'adamw'} or a callable "
            "(name, tensor) -> 'muon'|'adamw'",
            describe(spec),
            "pass partition=descend.optim.muon_partition(model)",
        )
    )


@_described
def muon(
    lr: float = 3e-3,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    weight_decay: float = 0.01,
    adjust_lr: str = "match_rms_adamw",
    adamw_lr: float | None = None,
    adamw_betas: tuple[float, float] = (0.9, 0.999),
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float | None = None,
    partition: Any = None,
    *,
    ns_dtype: torch.dtype | str = "auto",
    schedule: Schedule | None = None,
    max_grad_norm: float | None = None,
    impl: Impl = "auto",
) -> Transform:
    """Muon (Jordan et al. 2024) for hidden weight matrices, AdamW for everything else.

    For a hidden matrix ``W`` of shape ``(A, B)``, as ``torch.optim.Muon``::

        b ← μ b + (1 − μ) g,     m = (1 − μ) g + μ b  (nesterov)  or  b
        W ← W − η · (s(A, B) · NS(m) + λ W)

    with NS five Newton–Schulz steps that orthogonalize ``m`` (batched over matrices of the same
    shape; bfloat16 on GPUs). **Learning-rate convention**: by default ``s = 0.2 · sqrt(max(A,
    B))`` (``adjust_lr="match_rms_adamw"``, Liu et al. 2025), which gives the update the RMS of
    a typical AdamW update, so ``lr`` and ``weight_decay`` are AdamW's and one learning rate
    drives both parts (``adamw_lr`` defaults to ``lr``). The default 3e-3 was the most
    consistent of 1e-3 … 2e-2 on the zero-tuning suite's small MLPs (benchmarks/RESULTS.md);
    Keller Jordan's 0.02 under his scaling is about 4e-3 (768-wide) to 9e-3 (128-wide) in this
    one. ``adjust_lr="original"`` is his ``sqrt(max(1, A/B))`` with learning rates around 0.02
    (then set ``adamw_lr``, e.g. 3e-4).

    The parameters are split by :func:`muon_partition` (biases, gains, embeddings and the output
    layer go to AdamW); see the split with ``optim.muon_partition(model)``, or pass your own as
    ``partition``. The state is ``(partition state {"muon": ..., "adamw": ...}, lr_state)``:
    there is one learning-rate dict (``find_lr_state``), and a schedule or the divergence
    guard's scale moves both parts together.

    Args:
        lr: η > 0, the learning rate of the Muon part (and of the AdamW part unless
            ``adamw_lr`` is set).
        momentum: μ in [0, 1).
        nesterov: Nesterov momentum.
        ns_steps: Newton–Schulz iterations (1–99).
        weight_decay: λ >= 0, decoupled, on the Muon matrices.
        adjust_lr: ``"match_rms_adamw"``, ``"original"`` or ``"none"``.
        adamw_lr: the AdamW part's learning rate (default: ``lr``).
        adamw_betas, adamw_eps: the AdamW part's β1, β2 and ε.
        adamw_weight_decay: the AdamW part's decay (default: ``weight_decay``), on its
            parameters with ndim >= 2 (embeddings, the output layer), never biases and gains.
        partition: ``None`` (the rules of :func:`muon_partition` on the names and shapes seen at
            ``init``; with parameter groups in ``as_torch_optimizer``, on all the groups'
            parameters in the groups' order, so the output layer is the last matrix of the
            last group that has one), a model (its module types are used too), a dict ``{name: "muon" |
            "adamw"}`` or a callable ``(name, tensor) -> "muon" | "adamw"``.
        ns_dtype: the Newton–Schulz dtype, ``"auto"``: bfloat16 on GPUs, the parameters' on CPU.
        schedule, max_grad_norm, impl: see the module docstring (``impl``: foreach, the batched
            Newton–Schulz, or reference, one matrix at a time).

    Example:
        >>> import torch
        >>> from descend import optim
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 1))
        >>> opt = optim.as_torch_optimizer(optim.muon(partition=model), model)
    """
    owner = "muon"
    lr = _common(owner, lr, schedule, max_grad_norm, impl)
    mu = _momentum(momentum, owner)
    weight_decay = _nonneg("weight_decay", weight_decay, owner)
    adamw_lr = lr if adamw_lr is None else check_positive("adamw_lr", adamw_lr, owner=owner)
    b1, b2 = _betas(adamw_betas, owner)
    adamw_eps = _nonneg("adamw_eps", adamw_eps, owner)
    adamw_wd = (
        weight_decay
        if adamw_weight_decay is None
        else _nonneg("adamw_weight_decay", adamw_weight_decay, owner)
    )
    labels = None if partition is None else _muon_labels(partition, owner)
    muon_part = chain(
        scale_by_muon(mu, nesterov, ns_steps, adjust_lr, ns_dtype=ns_dtype, impl=impl),  # type: ignore[arg-type]
        *([add_decayed_weights(weight_decay, None)] if weight_decay else []),
    )
    adamw_part = chain(
        scale_by_adam(b1, b2, adamw_eps, impl=impl),
        *([add_decayed_weights(adamw_wd, "default")] if adamw_wd else []),
        *([scale(adamw_lr / lr)] if adamw_lr != lr else []),
    )
    parts = {"muon": muon_part, "adamw": adamw_part}
    if labels is not None:
        split = partition_transform(parts, labels)
    else:
        # the automatic rules need the whole parameter dict (the last matrix is the output
        # layer), so they run at init and the partition transform reads the table; for one
        # parameter group of as_torch_optimizer they run on all the groups' parameters (else
        # each group's last matrix would be taken for the output layer)
        auto: dict[str, str] = {}
        split = partition_transform(parts, lambda name, tensor: auto[name])
        split_init = split.init

        def init(params: Params) -> Any:
            whole = whole_or(params)
            table = muon_partition(dict(whole if all(n in whole for n in params) else params))
            auto.clear()
            auto.update((n, table[n]) for n in params)
            return split_init(params)

        split = Transform(init, split.update)
    return _recipe(split, lr=lr, schedule=schedule, max_grad_norm=max_grad_norm)


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

MODERN_REGISTRY: dict[str, Callable[..., Transform]] = {
    "schedulefree_adamw": schedulefree_adamw,
    "schedulefree_sgd": schedulefree_sgd,
    "muon": muon,
    "lion": lion,
    "prodigy": prodigy,
    "lamb": lamb,
    "lars": lars,
}


_ALIASES = {
    "schedulefree": "schedulefree_adamw",
    "schedule_free": "schedulefree_adamw",
    "schedule_free_adamw": "schedulefree_adamw",
    "schedule_free_sgd": "schedulefree_sgd",
}


def names() -> list[str]:
    """Every optimizer name :func:`get` accepts (``REGISTRY`` and ``MODERN_REGISTRY``)."""
    return [*REGISTRY, *MODERN_REGISTRY]


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
    name = spec.strip().lower().replace("-", "_")
    name = _ALIASES.get(name, name)
    check_choice("optimizer", name, sorted(names()), owner="optim.get")
    factory = REGISTRY.get(name) or MODERN_REGISTRY[name]
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


def _stateless(node: Any) -> bool:
    """The state of a link that keeps none (``()``)."""
    return isinstance(node, (tuple, list)) and len(node) == 0


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
        if not isinstance(loaded, (tuple, list)):
            raise fail(f"must be a sequence of length {len(target)}")
        if len(loaded) != len(target):
            # A chain with or without a stateless link (adamw's weight decay, whose state is
            # ``()``, is left out at weight_decay=0): the links that hold state must match.
            kept = [i for i, t in enumerate(target) if not _stateless(t)]
            rest = [x for x in loaded if not _stateless(x)]
            if len(kept) != len(rest):
                raise fail(f"must be a sequence of length {len(target)}")
            items = list(target)
            for i, x in zip(kept, rest):
                items[i] = _load_into(target[i], x, f"{path}/{i}")
            return type(target)(items)
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


class _Group:
    """One parameter group of a :class:`TorchOptimizer`: its named parameters, its transform,
    that transform's state, and the factory arguments it was built with (None for a hand-made
    transform)."""

    __slots__ = ("args", "base_lr", "hyper", "lr_state", "named", "seen_lr", "state", "tx", "watch")

    def __init__(self, tx: Transform, named: Params, args: dict[str, Any] | None) -> None:
        self.tx, self.named, self.args = tx, named, args
        self.reset(tx.init(named))
        # the lr state's "lr" is the rate last used (schedules move it): the base is read once
        self.base_lr = float(self.lr_state["lr"]) if self.lr_state is not None else 1.0
        self.seen_lr = self.base_lr

    def reset(self, state: State) -> None:
        """Take ``state`` (of ``self.tx``): find its learning-rate state, the holder of its
        betas/momentum, and the shown factory arguments a step checks for a change."""
        self.state = state
        self.lr_state = find_lr_state(state)
        # Adam's betas or SGD's momentum, where the transform has one holder of them
        # (scale_by_adam's, trace's): shown as the group's "betas"/"momentum" like torch's
        # optimizers, and read back before each step, so schedulers that cycle momentum
        # (OneCycleLR, CyclicLR) drive them as they drive torch's.
        self.hyper = getattr(self.tx.update, "hyper", None)
        # the shown factory arguments a step checks for a change (which rebuilds the
        # transform): all but the lr and the betas/momentum a holder takes live
        live = {"lr"}
        if self.betas is not None:
            live.add("betas")
        if self.momentum is not None:
            live.add("momentum")
        self.watch = [(k, v) for k, v in (self.args or {}).items() if k not in live and _shown(v)]

    @property
    def betas(self) -> Any:
        h = self.hyper
        return h if hasattr(h, "b1") and hasattr(h, "b2") else None

    @property
    def momentum(self) -> Any:
        return self.hyper if hasattr(self.hyper, "momentum") else None


def _shown(value: Any) -> bool:
    """A hyperparameter value a param group shows (numbers, flags, tuples of numbers, None)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)


@functools.cache
def _factory_options() -> frozenset[str]:
    """Every hyperparameter name of every descend.optim factory."""
    return frozenset(
        p
        for f in (*REGISTRY.values(), *MODERN_REGISTRY.values())
        for p in inspect.signature(f).parameters
    )


class TorchOptimizer(torch.optim.Optimizer):
    """A descend Transform behind the ``torch.optim.Optimizer`` interface.

    Build it with :func:`as_torch_optimizer`. A group's ``"lr"`` starts at its transform's
    base learning rate; changing it (by hand or with any ``torch.optim.lr_scheduler``) sets
    that group's learning-rate state's ``scale`` to ``group lr / base lr``, on top of the
    transform's own schedule. Adam-family transforms show ``"betas"`` and momentum SGD
    ``"momentum"`` in the group, read back before each step (so ``OneCycleLR``'s momentum
    cycling drives them as it drives torch's optimizers).

    **Parameter groups** work as torch's: a group's options (``{"params": ..., "lr": 1e-4,
    "weight_decay": 0.0}``) override the optimizer's for its parameters, and every group shows
    the hyperparameters of the ``descend.optim`` factory that built the transform (adamw's
    ``weight_decay``, ``eps``, ``amsgrad``, ...). A group other than a lone first one gets its
    own transform (the factory called again with the group's options) and its own state.
    Changing a shown option such as ``weight_decay`` between steps rebuilds the group's
    transform and carries the state over; a change that would reshape the state (``amsgrad``)
    is refused then. A transform not built by a factory (a hand-made ``chain``) takes ``lr``
    per group (and ``betas``/``momentum`` where it has one holder of them), nothing else. Keys
    that are no option of the optimizer stay on the group untouched, as torch keeps them
    (schedulers store ``initial_lr`` there); a key within a letter or two of an option
    (``weight_dacay``) is refused, and so is torch's ``maximize=True`` (descend minimizes).
    ``add_param_group`` works too. ``max_grad_norm`` clips by
    the norm over every group's gradients, as ``clip_grad_norm_(model.parameters())`` before a
    torch optimizer's step.

    The transform's state is ``self.tx_state`` (with several groups, the list of their states);
    ``state_dict()`` holds it keyed by parameter NAME, with tensors and plain Python values
    only. It is made when the optimizer is built (torch's optimizers make theirs at the first
    step), and follows the parameters when the model is moved or cast afterwards
    (``model.to(device)``, ``model.double()``): the next ``step()`` moves it.

    **One step count for all parameters** (unlike torch's per-parameter ``state[p]["step"]``):
    a transform counts the optimizer's steps, not each parameter's. A parameter that first gets
    a gradient at step ``k`` (a head unfrozen later, a branch unused until then) gets Adam's bias
    correction for step ``k`` on its first update, not for step 1: that update is
    ``(1 − β1)/(1 − β1^k) · sqrt((1 − β2^k)/(1 − β2))`` times torch's (0.58 for the default
    betas at ``k = 4``). Momentum SGD with ``dampening > 0`` likewise scales that parameter's
    first gradient by ``1 − dampening`` where torch copies it. The same holds for a parameter
    whose gradient is ``None`` on some steps (an unused branch after ``zero_grad()``): torch
    does not count those steps for it, descend does (Adam, AdamW, NAdam's bias corrections,
    Adagrad's ``lr_decay``). Parameters that get a gradient at every step follow torch exactly.

    Schedule-free optimizers: call ``opt.eval()`` before evaluating or saving the weights (the
    parameters become the averaged point) and ``opt.train()`` before training again, next to
    ``model.eval()``/``model.train()``. ``step()`` in eval mode raises; for every other
    optimizer both calls are harmless no-ops. (``descend.fit`` does all this by itself.)
    """

    def __init__(
        self,
        tx: Transform,
        params: Params | Sequence[tuple[Params, Mapping[str, Any]]],
        *,
        fused_step: bool = True,
    ):
        self.tx = tx
        self.fused_step = fused_step
        groups = [(params, {})] if isinstance(params, Mapping) else list(params)
        # The factory call that built tx (every descend.optim optimizer records it): a group
        # of its own gets the factory called again with its options.
        self._built: tuple[Callable[..., Transform], dict[str, Any]] | None = getattr(
            tx.update, "built_with", None
        )
        self._groups: list[_Group] = []
        self.named: Params = {}
        # Every group's parameters: each group's transform is initialised for its part of them,
        # so a dict mask (adamw(mask={...}), muon(partition=model)) may name any of them; the
        # probe that reads the defaults is initialised with none.
        self._whole: Params = {n: p for named, _ in groups for n, p in dict(named).items()}
        with whole_params(self._whole):
            probe = _Group(tx, {}, None)
        self.base_lr = probe.base_lr
        defaults: dict[str, Any] = {}
        if self._built is not None:
            defaults.update({k: v for k, v in self._built[1].items() if _shown(v)})
        defaults["lr"] = self.base_lr
        if probe.betas is not None:
            defaults["betas"] = (probe.betas.b1, probe.betas.b2)
        if probe.momentum is not None:
            defaults["momentum"] = probe.momentum.momentum
        self._pending = [dict(named) for named, _ in groups]
        self._building = True
        with whole_params(self._whole):
            super().__init__(
                [{**dict(opts), "params": list(named.values())} for named, opts in groups],
                defaults,
            )
        self._building = False
        # Where the state was made: torch's optimizers make theirs at the first step, so a
        # model moved or cast after the optimizer was built (``model.to(device)``,
        # ``model.double()``) still trains; this state exists from the start and follows the
        # parameters at the next step instead (checked on the first one: a whole-model move).
        self._first = next(iter(self.named.values()), None)
        self._placed = self._where()

    def __deepcopy__(self, memo: dict[int, Any]) -> TorchOptimizer:
        """An independent optimizer over copies of the parameters (the same ones as the model's
        copy when both are copied together, ``copy.deepcopy((model, opt))``), with a copy of
        every state tensor. torch's ``Optimizer.__getstate__`` keeps only
        defaults/state/param_groups, which is not enough here: the transforms are closures.
        A factory-built group's transform is built again from its arguments (so the copies
        share no holder of betas/momentum or cache); a hand-made transform is shared (its
        state lives in the copied state tree, and each step syncs its betas/momentum holder
        from its own group first)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        fresh: dict[int, Transform] = {}
        if self._built is not None:
            factory, args = self._built
            fresh[id(self.tx)] = factory(**args)
            for g in self._groups:
                if g.args is not None and id(g.tx) not in fresh:
                    fresh[id(g.tx)] = factory(**g.args)
        for g in self._groups:
            for tx in (self.tx, g.tx):
                mine = fresh.get(id(tx), tx)
                memo[id(tx)] = mine
                hyper = getattr(tx.update, "hyper", None)
                if hyper is not None:
                    memo[id(hyper)] = getattr(mine.update, "hyper", None)
            if g.args is not None:
                memo[id(g.args)] = g.args  # never changed in place; may hold a model
        memo[id(self._built)] = self._built
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    @property
    def tx_state(self) -> State:
        """The transform's state: the one group's, or the list of every group's."""
        if len(self._groups) == 1:
            return self._groups[0].state
        return [g.state for g in self._groups]

    @tx_state.setter
    def tx_state(self, state: State) -> None:
        states = [state] if len(self._groups) == 1 else list(state)
        for g, s in zip(self._groups, states, strict=True):
            g.reset(s)

    # ------------------------------------------------------------------ groups

    def _options(self, i: int, group: Mapping[str, Any]) -> dict[str, Any]:
        """Group ``i``'s options: its keys that are the optimizer's hyperparameters, after
        refusing a misspelt one and one a hand-made transform cannot take."""
        known = set(self.defaults)
        if self._built is not None:
            known |= set(self._built[1])
        for key in group:
            if key == "params" or key in known:
                continue
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.85)
            if close:
                raise ConfigError(
                    message(
                        f"param_groups[{i}]",
                        "takes the optimizer's own hyperparameter names",
                        repr(key),
                        f"did you mean {close[0]!r}?",
                    )
                )
            if key == "maximize" and group[key]:
                # torch.optim's option would be kept on the group and ignored: a silent descent
                raise ConfigError(
                    message(
                        f"param_groups[{i}]['maximize']",
                        "is a torch.optim option descend's optimizers do not have (they minimize)",
                        describe(group[key]),
                        "minimize the negated objective instead: (-objective).backward()",
                    )
                )
            if self._built is None and key in _factory_options():
                raise ConfigError(
                    message(
                        f"param_groups[{i}][{key!r}]",
                        "needs a transform built by a descend.optim factory (a hand-made "
                        f"transform takes only {', '.join(sorted(known))} per group)",
                        describe(group[key]),
                        "build it with descend.optim (e.g. optim.adamw(weight_decay=0.01)), or "
                        "treat those parameters differently with descend.transforms.masked",
                    )
                )
        return {k: group[k] for k in group if k != "params" and k in known}

    def _build(self, i: int, opts: Mapping[str, Any], named: Params) -> _Group:
        """Group ``i``'s transform: ``self.tx`` for a first group without options of its own or
        a hand-made transform (whose group lr acts through its scale), else the factory again
        with the group's options."""
        if self._built is None:
            return _Group(self.tx, named, None)
        factory, args = self._built
        own = {k: v for k, v in opts.items() if k not in args or v != args[k]}
        if i == 0 and not own:
            return _Group(self.tx, named, dict(args))
        mine = {**args, **own}
        return _Group(factory(**mine), named, mine)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does, ``{"params": ..., <options>}``; its parameters come as
        tensors (named ``"N"``, numbered on from the parameters so far), ``(name, tensor)``
        pairs or a ``{name: tensor}`` dict, each new to the optimizer."""
        i = len(self.param_groups)
        if self._building:
            named = self._pending.pop(0)
        else:
            if not isinstance(param_group, Mapping) or "params" not in param_group:
                raise ConfigError(
                    message(
                        "add_param_group",
                        "takes a dict with 'params'",
                        describe(param_group),
                        "pass e.g. {'params': model.head.parameters(), 'lr': 1e-4}",
                    )
                )
            named = _group_params(param_group["params"], len(self.named))
            _check_group("add_param_group", named, self.named)
            param_group = {**param_group, "params": list(named.values())}
        opts = self._options(i, param_group)
        super().add_param_group(param_group)
        if self._building:
            group = self._build(i, opts, named)
        else:
            self._whole = {**self.named, **named}
            with whole_params(self._whole):
                group = self._build(i, opts, named)
        if group.tx is not self.tx or "lr" not in opts:
            self.param_groups[i]["lr"] = group.seen_lr = group.base_lr
        self._groups.append(group)
        self.named.update(named)
        if not self._building and self._first is None:
            self._first = next(iter(named.values()), None)
            self._placed = self._where()

    def _rebuild(self, i: int, g: _Group, changed: dict[str, Any]) -> None:
        """Group ``i``'s factory options changed between steps: build its transform again and
        carry the state over (refused where the state would change shape)."""
        factory = self._built[0]  # type: ignore[index]
        args = g.args or {}
        mine = {**args, **changed}

        def carried(tx: Transform) -> State:
            with whole_params(self._whole):
                fresh = tx.init(g.named)
            return _load_into(fresh, g.state, "state")  # g.state is only read

        def culprit(error: type[Exception]) -> str:
            # several options may change at once (by hand, or a loaded state_dict): name the
            # one that fails alone this way, else the first
            for key in changed:
                try:
                    carried(factory(**{**args, key: changed[key]}))
                except (ConfigError, CheckpointError) as e:
                    if isinstance(e, error):
                        return key
            return next(iter(changed))

        try:
            tx = factory(**mine)
        except ConfigError as e:
            key = culprit(ConfigError)
            raise ConfigError(f"param_groups[{i}][{key!r}]: {e}") from None
        try:
            state = carried(tx)
        except CheckpointError:
            key = culprit(CheckpointError)
            raise ConfigError(
                message(
                    f"param_groups[{i}][{key!r}]",
                    "can change between steps only where the optimizer's state keeps its shape",
                    f"{key}={describe(changed[key])} (was {describe(args.get(key))})",
                    "build a new optimizer with that setting (as_torch_optimizer)",
                )
            ) from None
        seen = g.seen_lr
        g.tx, g.args = tx, mine
        g.reset(state)
        g.seen_lr = seen

    def _sync(self, i: int, g: _Group) -> None:
        """Read group ``i``'s hyperparameters back into its transform before a step."""
        group = self.param_groups[i]
        changed = {k: group[k] for k, v in g.watch if group.get(k, v) != v}
        if changed:
            self._rebuild(i, g, changed)
        lr = group["lr"]
        if lr != g.seen_lr:
            if g.lr_state is None:
                raise ConfigError(
                    message(
                        f"param_groups[{i}]['lr']",
                        "can change only if the transform ends in scale_by_learning_rate",
                        f"lr={lr}",
                        "use a descend.optim optimizer, or chain scale_by_learning_rate(lr)",
                    )
                )
            g.lr_state["scale"] = _group_lr(i, lr) / g.base_lr
            g.seen_lr = lr
        betas = g.betas
        if betas is not None:
            want = group["betas"]
            if not isinstance(want, (tuple, list)) or len(want) != 2:
                raise ConfigError(
                    message(
                        f"param_groups[{i}]['betas']",
                        "must be two numbers in [0, 1)",
                        describe(want),
                        "e.g. (0.9, 0.999)",
                    )
                )
            if want[0] != betas.b1 or want[1] != betas.b2:
                what = f"param_groups[{i}]['betas']"
                betas.b1, betas.b2 = (_unit_interval(what, b) for b in want)
        mom = g.momentum
        if mom is not None and group["momentum"] != mom.momentum:
            mom.momentum = _unit_interval(f"param_groups[{i}]['momentum']", group["momentum"])

    # ------------------------------------------------------------------- step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update from the ``.grad`` of every named parameter (``None`` grads skipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._where() != self._placed:
            self._follow_params()
        if len(self._groups) == 1:
            self._step_group(0, self._groups[0])
            return loss
        # max_grad_norm (clip_by_global_norm) clips by the norm over every group's gradients,
        # as clip_grad_norm_(model.parameters()) does before a torch optimizer's step; the
        # gradients are read before any group's step changes a parameter.
        every = {n: p.grad for n, p in self.named.items() if p.grad is not None}
        with whole_grads(every) as whole:
            for i, g in enumerate(self._groups):
                self._step_group(i, g, whole)
        return loss

    def _step_group(self, i: int, g: _Group, whole: WholeGrads | None = None) -> None:
        self._sync(i, g)
        grads = {n: p.grad for n, p in g.named.items() if p.grad is not None}
        if not grads:
            return
        if whole is not None:
            whole.part = grads
        check_dense(grads, "optimizer.step")
        with torch.no_grad():
            if self.fused_step:
                g.state = update_and_apply(g.tx, grads, g.state, g.named)
            else:
                updates, g.state = g.tx.update(grads, g.state, g.named)
                apply_updates(g.named, updates)

    def _where(self) -> tuple[torch.device, torch.dtype] | None:
        p = self._first
        return None if p is None else (p.device, p.dtype)

    def _follow_params(self) -> None:
        """Move the state to the parameters: each per-parameter tensor to its parameter's device
        (floating-point ones to its dtype too, as ``torch.optim.Optimizer.load_state_dict``
        casts a state), any other tensor to the first parameter's device (and to float64 where a
        parameter is, as Prodigy's scalars are made). Containers are
        updated in place (tuples rebuilt), so whatever holds them keeps seeing the state."""
        home = self._first.device if self._first is not None else None
        # a shared scalar (Prodigy's d) is float64 where any parameter is, as its init makes it
        wide = any(p.dtype == torch.float64 for p in self.named.values())

        def moved(v: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
            if p is None:
                widen = wide and v.is_floating_point() and v.dtype != torch.float64
                return v.to(device=home, dtype=torch.float64 if widen else v.dtype)
            cast = v.is_floating_point() and p.is_floating_point()
            return v.to(device=p.device, dtype=p.dtype if cast else v.dtype)

        def follow(node: Any, named: Params, owner: torch.Tensor | None = None) -> Any:
            if isinstance(node, torch.Tensor):
                return moved(node, owner)
            if isinstance(node, dict):
                for k in node:
                    p = named.get(k) if isinstance(k, str) else None
                    mine = p if p is not None and isinstance(node[k], torch.Tensor) else None
                    if mine is not None and node[k].shape != mine.shape:
                        mine = None
                    node[k] = follow(node[k], named, mine)
                return node
            if isinstance(node, list):
                node[:] = [follow(v, named) for v in node]
                return node
            if isinstance(node, tuple):
                items = [follow(v, named) for v in node]
                return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
            return node

        with torch.no_grad():
            for g in self._groups:
                g.reset(follow(g.state, g.named))
        self._placed = self._where()

    def train(self) -> bool:
        """Parameters to the training point (schedule-free); ``True`` if anything moved."""
        return any([swap_to_train(g.state, g.named) for g in self._groups])

    def eval(self) -> bool:
        """Parameters to the averaged point for evaluation/saving (schedule-free); ``True`` if
        anything moved. Idempotent; a no-op for optimizers without an averaged point."""
        return any([swap_to_eval(g.state, g.named) for g in self._groups])

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"state": <tx state>, "param_groups": [{"lr", ..., "params": [names]}],
        "synced_lr": lr}``; with several groups ``"state"`` and ``"synced_lr"`` are lists, one
        entry a group.

        Tensors are the live state (like torch's ``state_dict``): copy them to keep a
        snapshot while training goes on. Hooks registered with torch's
        ``register_state_dict_pre_hook``/``register_state_dict_post_hook`` run as in torch.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        groups = []
        for shown, g in zip(self.param_groups, self._groups):
            group = {k: v for k, v in shown.items() if k != "params"}
            group["params"] = list(g.named)
            groups.append(group)
        # synced_lr: the group lr last folded into the lr-state scale; a scheduler may have
        # moved group["lr"] since, and the resumed optimizer must notice that too.
        synced = [g.seen_lr for g in self._groups]
        one = len(self._groups) == 1
        state_dict = {
            "state": self.tx_state,
            "param_groups": groups,
            "synced_lr": synced[0] if one else synced,
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Restore a :meth:`state_dict` (tensors are copied into this optimizer's buffers).
        Hooks registered with torch's ``register_load_state_dict_pre_hook``/``..._post_hook``
        run as in torch (a pre-hook may return a replacement state dict)."""
        if isinstance(state_dict, Mapping):
            state_dict = dict(state_dict)  # as torch: a hook may edit its copy, not the caller's
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load_state_dict(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_state_dict(self, state_dict: Any) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise CheckpointError(
                message(
                    "optimizer state_dict",
                    "must have 'state' and 'param_groups'",
                    describe(state_dict),
                    "pass what TorchOptimizer.state_dict() returned",
                )
            )
        n = len(self._groups)
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != n:
            raise CheckpointError(
                message(
                    "optimizer state_dict['param_groups']",
                    f"must hold {'exactly one group' if n == 1 else f'{n} groups'}, as this "
                    "optimizer has",
                    describe(groups),
                    "pass what TorchOptimizer.state_dict() returned for the same groups",
                )
            )
        states = [state_dict["state"]] if n == 1 else state_dict["state"]
        synced = state_dict.get("synced_lr")
        synced = [synced] if n == 1 else (synced or [None] * n)
        if not isinstance(states, (list, tuple)) or len(states) != n:
            raise CheckpointError(
                message(
                    "optimizer state_dict['state']",
                    f"must hold one state for each of the {n} groups",
                    describe(states),
                    "pass what TorchOptimizer.state_dict() returned for the same groups",
                )
            )
        for i, (g, saved) in enumerate(zip(self._groups, groups)):
            names = list(saved.get("params", []))
            if set(names) != set(g.named):
                missing = sorted(set(g.named) - set(names))
                extra = sorted(set(names) - set(g.named))
                where = "the model" if n == 1 else f"group {i}"
                raise CheckpointError(
                    message(
                        "optimizer state_dict",
                        f"must cover the same parameter names as {where}",
                        f"missing {missing[:5]}, unexpected {extra[:5]}",
                        "load a state saved from the same model (names from named_parameters())",
                    )
                )
        for i, (g, saved) in enumerate(zip(self._groups, groups)):
            path = "state" if n == 1 else f"state/{i}"
            g.reset(_load_into(g.state, states[i], path))
            shown = self.param_groups[i]
            for key, value in saved.items():
                if key != "params":
                    # betas saved through JSON or a plain tree come back as a list
                    shown[key] = (
                        tuple(value) if key == "betas" and isinstance(value, list) else value
                    )
            g.seen_lr = synced[i] if synced[i] is not None else shown["lr"]


def _unit_interval(what: str, value: Any) -> float:
    """``value`` as a float in [0, 1) (a beta or a momentum set on a param group), or ConfigError."""
    value = plain(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(
            message(what, "must be in [0, 1)", describe(value), "set e.g. 0.9 (betas (0.9, 0.999))")
        )
    return float(value)


def _group_lr(i: int, value: Any) -> float:
    """A group's ``"lr"`` (set by hand or by a scheduler) as a float >= 0, or ConfigError: a
    negative rate would turn the step into gradient ascent, a NaN would wipe the parameters.
    0 is a rate schedulers reach (cosine to ``eta_min=0``); a one-element tensor counts too."""
    number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    number = plain(number)
    ok = isinstance(number, (int, float)) and not isinstance(number, bool)
    if not (ok and math.isfinite(number) and number >= 0):
        raise ConfigError(
            message(
                f"param_groups[{i}]['lr']",
                "must be a finite number >= 0",
                describe(value),
                "set e.g. 1e-3 (a scheduler's rates are always such numbers)",
            )
        )
    return float(number)


def _group_params(source: Any, start: int) -> Params:
    """One group's ``{name: tensor}``: a module, a ``{name: tensor}`` mapping,
    ``named_parameters()`` pairs, or tensors (named ``str(start)``, ``str(start + 1)``, ... as
    torch numbers its own optimizer state across groups)."""
    if isinstance(source, torch.nn.Module):
        return named_params(source)
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, torch.Tensor):
        return {str(start): source}
    try:
        items = list(source)
    except TypeError:
        return {}
    if items and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in items):
        return dict(items)
    return {str(start + i): p for i, p in enumerate(items)}  # non-tensors refused by the caller


def _check_group(who: str, named: Params, before: Params) -> None:
    """Refuse a group holding a non-tensor, or a name or tensor an earlier group holds."""
    bad = [n for n, p in named.items() if not isinstance(p, torch.Tensor)]
    if bad:
        raise ConfigError(
            message(
                f"{who}: parameters",
                "must be tensors",
                f"{bad[0]!r}: {describe(named[bad[0]])}",
                "pass model.parameters(), named_parameters() or {name: tensor}",
            )
        )
    seen = {id(p) for p in before.values()}
    twice = [n for n, p in named.items() if id(p) in seen]
    if twice:
        raise ConfigError(
            message(
                f"{who}: parameter {twice[0]!r}",
                "may belong to one parameter group only",
                "a tensor already in an earlier group",
                "give every parameter to exactly one group",
            )
        )
    # another tensor under a taken name: two submodules' named_parameters() ("weight", "bias")
    again = [n for n in named if n in before]
    if again:
        raise ConfigError(
            message(
                f"{who}: parameter name {again[0]!r}",
                "must be unique across the groups (the optimizer state is keyed by name)",
                "it for two different tensors",
                "name them apart, e.g. {'params': model.head.named_parameters(prefix='head')}, "
                "or pass model.head.parameters()",
            )
        )


def _adapter_groups(source: Any) -> list[tuple[Params, dict[str, Any]]]:
    """``[(named params, options)]`` from what a torch optimizer takes: a module, a
    ``{name: tensor}`` mapping, ``named_parameters()``, plain ``model.parameters()`` (named
    "0", "1", ... like torch's own optimizer state), or parameter groups (dicts with
    ``"params"`` and options of their own)."""
    if isinstance(source, (torch.nn.Module, Mapping, torch.Tensor)):
        return [(_group_params(source, 0), {})]
    try:
        items = list(source)
    except TypeError:
        return [({}, {})]
    if not (items and all(isinstance(g, Mapping) for g in items)):
        return [(_group_params(items, 0), {})]
    groups: list[tuple[Params, dict[str, Any]]] = []
    everyone: Params = {}
    for i, g in enumerate(items):
        if "params" not in g:
            raise ConfigError(
                message(
                    f"as_torch_optimizer: parameter group {i}",
                    "must have 'params'",
                    f"keys {sorted(map(str, g))}",
                    "pass e.g. [{'params': model.body.parameters()}, {'params': model.head."
                    "parameters(), 'lr': 1e-3}]",
                )
            )
        named = _group_params(g["params"], len(everyone))
        _check_group(f"as_torch_optimizer: parameter group {i}", named, everyone)
        everyone.update(named)
        groups.append((named, {k: v for k, v in g.items() if k != "params"}))
    return groups


def as_torch_optimizer(
    tx: Transform | str,
    model_or_named_params: torch.nn.Module | Params | Iterable[tuple[str, torch.Tensor]],
    *,
    fused_step: bool = True,
) -> TorchOptimizer:
    """Wrap a descend optimizer as a ``torch.optim.Optimizer`` for hand-written torch loops.

    ``step()`` runs :func:`descend.transforms.update_and_apply` (``fused_step=True``, the
    default): for adam/adamw and sgd/momentum/nesterov one fused kernel call that writes the
    parameters — the speed of ``torch.optim.AdamW(fused=True)``, half its time on many small
    tensors (benchmarks/RESULTS.md) — equal to the readable step up to rounding; for every other
    optimizer exactly ``tx.update`` + ``apply_updates``. ``fused_step=False`` always takes
    that readable pair, bit for bit what driving the transform by hand gives. Schedule-free optimizers need ``opt.train()``/``opt.eval()`` (see
    :class:`TorchOptimizer`).

    The parameters come as a torch optimizer takes them: the module, ``model.parameters()``
    (the state then names them ``"0"``, ``"1"``, ... as torch's own does),
    ``model.named_parameters()``, a ``{name: tensor}`` dict, or parameter groups
    (``{"params": ..., "lr": 1e-4, "weight_decay": 0.0}``): a group with options of its own gets
    the factory called again with them and its own state (a hand-made transform takes only
    ``lr``, and ``betas``/``momentum`` where it has one holder of them, per group; see
    :class:`TorchOptimizer`).

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
    groups = _adapter_groups(model_or_named_params)
    first = groups[0][0]
    bad = [n for n, p in first.items() if not isinstance(p, torch.Tensor)]
    if not any(named for named, _ in groups) or bad:
        raise ConfigError(
            message(
                "as_torch_optimizer: parameters",
                "must be a module, model.parameters(), named_parameters(), parameter groups "
                "or a non-empty {name: tensor} mapping",
                f"non-tensor {bad[0]!r}" if bad else describe(model_or_named_params),
                "pass model or dict(model.named_parameters())",
            )
        )
    check_bool("fused_step", fused_step, owner="as_torch_optimizer")
    return TorchOptimizer(tx, groups, fused_step=fused_step)
