"""Gradient transforms: each transform's math, both implementations, masks, clipping, errors."""

from __future__ import annotations

import pytest
import torch

from descend._errors import ConfigError
from descend.testing import check_state_tree, check_transform
from descend.transforms import (
    Transform,
    add_decayed_weights,
    add_l2,
    apply_updates,
    chain,
    clip_by_global_norm,
    find_lr_state,
    identity,
    masked,
    scale,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_nadam,
    scale_by_rms,
    scale_by_schedule,
    trace,
)


def _params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(4, 3, generator=g, dtype=dtype),
        "fc.bias": torch.randn(3, generator=g, dtype=dtype),
        "norm.weight": torch.randn(3, generator=g, dtype=dtype),
    }


def _grad_stream(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}


def _run(tx: Transform, steps=100, params=None):
    params = params or _params()
    state = tx.init(params)
    history = []
    for grads in _grad_stream(params, steps):
        updates, state = tx.update(grads, state, params)
        history.append({n: u.clone() for n, u in updates.items()})
        apply_updates(params, {n: 0.01 * u for n, u in updates.items()})
    return history, state


# --------------------------------------------------------------------------- both impls agree

SCALERS = {
    "trace": lambda impl: trace(0.9, impl=impl),
    "trace-dampening": lambda impl: trace(0.8, dampening=0.3, impl=impl),
    "trace-nesterov": lambda impl: trace(0.9, nesterov=True, impl=impl),
    "adam": lambda impl: scale_by_adam(impl=impl),
    "adam-amsgrad": lambda impl: scale_by_adam(0.8, 0.95, 1e-6, amsgrad=True, impl=impl),
    "nadam": lambda impl: scale_by_nadam(impl=impl),
    "rms": lambda impl: scale_by_rms(impl=impl),
    "rms-centered": lambda impl: scale_by_rms(0.9, centered=True, impl=impl),
    "adagrad": lambda impl: scale_by_adagrad(0.1, 1e-10, 0.01, impl=impl),
}


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_foreach_matches_reference_over_100_steps(name):
    ref, _ = _run(SCALERS[name]("reference"))
    impls = ["auto", "foreach"] + (["fused"] if name.startswith("adam") else [])
    for impl in impls:
        got, state = _run(SCALERS[name](impl))
        diff = max((a[n] - b[n]).abs().max().item() for a, b in zip(ref, got) for n in a)
        assert diff < 1e-6, impl
        check_state_tree(state)


def test_adam_first_step_is_sign_of_gradient():
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    tx = scale_by_adam(eps=0.0)
    updates, state = tx.update(
        {"w": torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)}, tx.init(params), params
    )
    assert torch.allclose(updates["w"], torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    assert state["count"] == 1 and set(state) == {"count", "exp_avg", "exp_avg_sq"}


def test_trace_torch_semantics():
    params = {"w": torch.zeros(1)}
    for impl in ("foreach", "reference"):
        tx = trace(0.5, dampening=0.5, impl=impl)
        state = tx.init(params)
        u1, state = tx.update({"w": torch.tensor([4.0])}, state, params)
        u2, state = tx.update({"w": torch.tensor([2.0])}, state, params)
        assert u1["w"].item() == 4.0  # first step copies the gradient, no dampening
        assert u2["w"].item() == 0.5 * 4.0 + 0.5 * 2.0
        tx = trace(0.5, nesterov=True, impl=impl)
        state = tx.init(params)
        u1, state = tx.update({"w": torch.tensor([4.0])}, state, params)
        assert u1["w"].item() == 4.0 + 0.5 * 4.0


# --------------------------------------------------------------------------- simple transforms


def test_scale_and_chain_do_not_mutate_and_compose():
    params = _params()
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    tx = chain(scale(2.0), identity(), scale(3.0), scale_by_learning_rate(0.5))
    updates, state = tx.update(grads, tx.init(params), params)
    assert all(torch.equal(updates[n], torch.full_like(p, -3.0)) for n, p in params.items())
    assert all(torch.equal(g, torch.ones_like(g)) for g in grads.values())
    assert find_lr_state(state) == {"count": 1, "lr": 0.5, "scale": 1.0}


def test_chain_with_foreign_transform_resets_ownership():
    """A user transform that returns its input must not let later links write into it."""
    params = {"w": torch.zeros(2)}
    passthrough = Transform(lambda p: (), lambda g, s, p=None: (g, s))
    grads = {"w": torch.ones(2)}
    tx = chain(passthrough, scale(5.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    assert torch.equal(grads["w"], torch.ones(2)) and torch.equal(
        updates["w"], torch.full((2,), 5.0)
    )


def test_scale_by_learning_rate_schedule_and_scale():
    params = {"w": torch.zeros(1)}
    tx = scale_by_learning_rate(0.1, schedule=lambda t: 1.0 / (t + 1))
    state = tx.init(params)
    assert state == {"count": 0, "lr": 0.1, "scale": 1.0}
    u, state = tx.update({"w": torch.ones(1)}, state, params)
    assert u["w"].item() == pytest.approx(-0.1)
    state["scale"] = 2.0
    u, state = tx.update({"w": torch.ones(1)}, state, params)
    assert u["w"].item() == pytest.approx(-0.1 * 0.5 * 2.0)
    assert state == {"count": 2, "lr": pytest.approx(0.1), "scale": 2.0}


def test_find_lr_state():
    tx = chain(scale_by_adam(), chain(scale(1.0), scale_by_learning_rate(0.3)))
    state = tx.init(_params())
    lr_state = find_lr_state(state)
    assert lr_state == {"count": 0, "lr": 0.3, "scale": 1.0}
    assert lr_state is state[1][1]
    assert find_lr_state(chain(scale(1.0)).init({})) is None
    assert find_lr_state(None) is None


def test_scale_by_schedule():
    params = {"w": torch.zeros(1)}
    tx = scale_by_schedule(lambda t: t + 1.0)
    state = tx.init(params)
    outs = []
    for _ in range(3):
        u, state = tx.update({"w": torch.ones(1)}, state, params)
        outs.append(u["w"].item())
    assert outs == [1.0, 2.0, 3.0] and state == {"count": 3}
    # a schedule that returns no number is named, as scale_by_learning_rate's is
    tx = scale_by_schedule(lambda t: None if t == 1 else 1.0)
    state = tx.init(params)
    tx.update({"w": torch.ones(1)}, state, params)
    with pytest.raises(
        ConfigError,
        match=r"scale_by_schedule: fn\(step\) must return a number .* got None at step 1",
    ):
        tx.update({"w": torch.ones(1)}, state, params)
    assert state == {"count": 1}


def test_add_decayed_weights_masks():
    params = _params()
    zeros = {n: torch.zeros_like(p) for n, p in params.items()}

    def decayed(tx):
        u, _ = tx.update(zeros, tx.init(params), params)
        return {n for n in params if not torch.equal(u[n], zeros[n])}

    assert decayed(add_decayed_weights(0.1)) == {"fc.weight"}
    assert decayed(add_decayed_weights(0.1, mask=None)) == set(params)
    assert decayed(add_decayed_weights(0.1, mask={"norm.weight": True})) == {"norm.weight"}
    assert decayed(add_decayed_weights(0.1, mask=lambda n, p: "bias" in n)) == {"fc.bias"}
    u, _ = add_decayed_weights(0.1).update(zeros, (), params)
    assert torch.allclose(u["fc.weight"], 0.1 * params["fc.weight"])


def test_add_l2_decays_everything_before_scaling():
    params = _params()
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    u, _ = add_l2(0.5).update(grads, (), params)
    assert all(torch.allclose(u[n], 1 + 0.5 * params[n]) for n in params)


def test_weight_decay_needs_params():
    with pytest.raises(
        ConfigError,
        match=r"add_decayed_weights.update needs the current parameters; got params=None",
    ):
        add_decayed_weights(0.1).update({"w": torch.ones(2, 2)}, ())


@pytest.mark.parametrize("max_norm", [0.5, 1.0, 100.0])
def test_clip_by_global_norm_matches_torch(max_norm):
    params = _params()
    g = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    leaves = [torch.nn.Parameter(p.clone()) for p in params.values()]
    for leaf, grad in zip(leaves, grads.values()):
        leaf.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_(leaves, max_norm)
    updates, _ = clip_by_global_norm(max_norm).update(grads, (), params)
    for leaf, name in zip(leaves, params):
        assert torch.allclose(updates[name], leaf.grad, rtol=0, atol=1e-12)


def test_clip_by_global_norm_mixed_dtypes():
    grads = {"a": torch.full((4,), 3.0), "b": torch.full((4,), 4.0, dtype=torch.float64)}
    updates, _ = clip_by_global_norm(1.0, eps=0.0).update(grads, ())
    total = torch.sqrt(sum(u.double().pow(2).sum() for u in updates.values()))
    assert total.item() == pytest.approx(1.0)
    assert updates["a"].dtype == torch.float32


def test_masked_applies_inner_to_selected_only():
    params = _params()
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    tx = masked(scale(10.0), lambda n, p: p.ndim == 1)
    updates, state = tx.update(grads, tx.init(params), params)
    assert torch.equal(updates["fc.weight"], grads["fc.weight"])
    assert torch.equal(updates["fc.bias"], torch.full((3,), 10.0, dtype=torch.float64))
    # stateful inner: state only for the selected parameters
    tx = masked(scale_by_adam(), {"fc.bias": True})
    state = tx.init(params)
    assert set(state["exp_avg"]) == {"fc.bias"}
    updates, state = tx.update(grads, state, params)
    assert torch.equal(updates["fc.weight"], grads["fc.weight"])
    assert torch.equal(grads["fc.bias"], torch.ones(3, dtype=torch.float64))


def test_transforms_build_no_autograd_graph():
    p = torch.nn.Parameter(torch.randn(3, 3))
    params = {"w": p}
    tx = chain(add_l2(0.1), scale_by_adam(), add_decayed_weights(0.1), scale_by_learning_rate(0.1))
    updates, _ = tx.update({"w": torch.randn(3, 3)}, tx.init(params), params)
    assert updates["w"].grad_fn is None and not updates["w"].requires_grad


ALL = {
    "scale": lambda: scale(-0.1),
    "lr": lambda: scale_by_learning_rate(0.1),
    "schedule": lambda: chain(scale_by_schedule(lambda t: 0.99**t), scale(-0.1)),
    "trace": lambda: chain(trace(0.9), scale(-0.01)),
    "adam": lambda: chain(scale_by_adam(), scale(-0.01)),
    "nadam": lambda: chain(scale_by_nadam(), scale(-0.01)),
    "rms": lambda: chain(scale_by_rms(centered=True), scale(-0.01)),
    "adagrad": lambda: chain(scale_by_adagrad(), scale(-0.1)),
    "decay": lambda: chain(add_decayed_weights(0.1), scale(-0.1)),
    "l2": lambda: chain(add_l2(0.1), scale(-0.1)),
    "clip": lambda: chain(clip_by_global_norm(0.5), scale(-0.1)),
    "masked": lambda: chain(masked(scale_by_adam(), "default"), scale(-0.01)),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_check_transform(name):
    check_transform(ALL[name]())


# --------------------------------------------------------------------------- errors

BAD = [
    (lambda: scale(float("inf")), r"scale: factor must be a finite number; got inf"),
    (lambda: scale_by_learning_rate(0), r"scale_by_learning_rate: lr must be a finite number > 0"),
    (
        lambda: scale_by_learning_rate(0.1, schedule="cos"),
        r"schedule must be a callable; got 'cos'",
    ),
    (lambda: scale_by_schedule(1.0), r"scale_by_schedule: fn must be a callable; got 1.0"),
    (
        lambda: trace(1.0),
        r"trace: momentum must be in \[0.0, 1.0\); got 1.0 — pass e.g. momentum=0.9",
    ),
    (lambda: trace(0.9, dampening=-1), r"trace: dampening must be in \[0.0, 1.0\]"),
    (
        lambda: trace(0.9, 0.1, nesterov=True),
        r"trace: nesterov=True requires dampening=0; got dampening=0.1",
    ),
    (lambda: trace(0.9, nesterov="yes"), r"trace: nesterov must be True or False"),
    (
        lambda: trace(0.9, impl="fused"),
        r"trace: impl must be one of \['auto', 'foreach', 'reference'\]",
    ),
    (lambda: scale_by_adam(b1=1.0), r"scale_by_adam: b1 must be in \[0.0, 1.0\); got 1.0"),
    (lambda: scale_by_adam(b2=-0.5), r"scale_by_adam: b2 must be in \[0.0, 1.0\)"),
    (lambda: scale_by_adam(eps=-1), r"scale_by_adam: eps must be a finite number >= 0"),
    (lambda: scale_by_adam(amsgrad=None), r"scale_by_adam: amsgrad must be True or False"),
    (lambda: scale_by_adam(impl="cuda"), r"scale_by_adam: impl must be one of"),
    (
        lambda: scale_by_nadam(momentum_decay=-1),
        r"scale_by_nadam: momentum_decay must be a finite number >= 0",
    ),
    (lambda: scale_by_rms(alpha=1.2), r"scale_by_rms: alpha must be in \[0.0, 1.0\)"),
    (lambda: scale_by_rms(centered="no"), r"scale_by_rms: centered must be True or False"),
    (
        lambda: scale_by_adagrad(-1),
        r"scale_by_adagrad: initial_accumulator_value must be a finite number >= 0",
    ),
    (
        lambda: scale_by_adagrad(lr_decay=-1),
        r"scale_by_adagrad: lr_decay must be a finite number >= 0",
    ),
    (
        lambda: add_decayed_weights(-0.1),
        r"add_decayed_weights: weight_decay must be a finite number >= 0",
    ),
    (
        lambda: add_decayed_weights(0.1, mask="biases"),
        r"add_decayed_weights: mask must be one of \['default'\]",
    ),
    (
        lambda: add_decayed_weights(0.1, mask={"w": 1}),
        r"mask as a dict must map parameter names \(str\) to True/False",
    ),
    (lambda: add_l2(float("nan")), r"add_l2: weight_decay must be a finite number >= 0; got nan"),
    (
        lambda: clip_by_global_norm(0),
        r"clip_by_global_norm: max_norm must be a finite number > 0; got 0",
    ),
    (lambda: masked(scale(1.0), None), r"masked: mask must select parameters; got None"),
    (lambda: masked("adam", "default"), r"masked: inner must be a descend Transform; got 'adam'"),
    (
        lambda: chain(scale(1.0), "adam"),
        r"chain\(...\) arguments must be descend Transforms; got 'adam'",
    ),
]


@pytest.mark.parametrize(("build", "pattern"), BAD, ids=[p[:40] for _, p in BAD])
def test_bad_arguments(build, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build()


def test_dict_mask_with_unknown_name():
    with pytest.raises(
        ConfigError,
        match=r"masked: mask must name existing parameters; got unknown name 'fc.bais' — did you mean 'fc.bias'",
    ):
        masked(scale(1.0), {"fc.bais": True}).init(_params())


@pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="this torch has no fused Adam")
def test_fused_adam_kernel_is_used_on_cpu():
    from descend.transforms._kernels import AdamKernel

    for dtype in (torch.float32, torch.float64):
        assert AdamKernel.supports(torch.zeros(1, dtype=dtype))
    assert not AdamKernel.supports(torch.zeros(1, dtype=torch.complex64))


def test_fused_adam_update_takes_a_gradient_laid_out_unlike_its_parameter():
    params = {"w": torch.zeros(3, 4)}
    torch.manual_seed(0)
    grads = [{"w": torch.randn(4, 3).t()} for _ in range(3)]
    out = {}
    for impl in ("fused", "reference"):
        tx = scale_by_adam(impl=impl)
        state = tx.init(params)
        for g in grads:
            u, state = tx.update(g, state, params)
        out[impl] = u["w"]
    assert torch.allclose(out["fused"], out["reference"], atol=1e-6)
