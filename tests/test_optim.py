"""Named optimizers: oracle tests against torch.optim, contract tests over the registry, errors."""

from __future__ import annotations

import math

import pytest
import torch

from descend import optim, schedules
from descend._errors import ConfigError
from descend.testing import check_state_tree, check_transform
from descend.transforms import Transform, apply_updates, find_lr_state
from helpers.optim_common import (
    data,
    forbid_host_sync,
    layout,
    loss,
    max_diff,
    minimize,
    quadratic,
    quadratic_grad,
    rosenbrock,
    rosenbrock_grad,
    train_descend,
)

IMPLS = ["auto", "foreach", "reference"]
ADAM_IMPLS = ["auto", "fused", "foreach", "reference"]


# --------------------------------------------------------------------------- helpers
# (the problem, the descend loop and the test functions: tests/helpers/optim_common.py)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 16),
        torch.nn.Tanh(),
        torch.nn.LayerNorm(16),
        torch.nn.Linear(16, 3),
    ).double()


def _train_torch(make_opt, steps=100, clip=None, scheduler=None):
    model = _mlp()
    x, y = data()
    opt = make_opt(model.parameters())
    sched = scheduler(opt) if scheduler else None
    for _ in range(steps):
        opt.zero_grad()
        loss(model, x, y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
    return model


def _train_descend(tx: Transform, steps=100):
    return train_descend(_mlp(), tx, steps)


# --------------------------------------------------------------------------- oracle

ORACLE = {
    "sgd": (
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda impl: optim.sgd(0.1, impl=impl),
    ),
    "sgd-l2": (
        lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01),
        lambda impl: optim.sgd(0.1, weight_decay=0.01, impl=impl),
    ),
    "momentum": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        lambda impl: optim.momentum(
            0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, impl=impl
        ),
    ),
    "nesterov": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda impl: optim.nesterov(0.05, momentum=0.9, weight_decay=0.01, impl=impl),
    ),
    # torch ignores dampening while momentum is 0
    "momentum-0-dampening": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.0, dampening=0.5),
        lambda impl: optim.momentum(0.05, momentum=0.0, dampening=0.5, impl=impl),
    ),
    # torch's (and optax's) spelling: sgd with the momentum keywords
    "sgd-momentum": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        lambda impl: optim.sgd(0.05, weight_decay=0.01, momentum=0.9, dampening=0.1, impl=impl),
    ),
    "sgd-nesterov": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
        lambda impl: optim.sgd(0.05, momentum=0.9, nesterov=True, impl=impl),
    ),
    "adam": (
        lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
        lambda impl: optim.adam(0.01, weight_decay=0.01, impl=impl),
    ),
    "adam-amsgrad": (
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), amsgrad=True),
        lambda impl: optim.adam(0.01, betas=(0.8, 0.99), amsgrad=True, impl=impl),
    ),
    "adamw": (
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        lambda impl: optim.adamw(0.01, weight_decay=0.1, mask=None, impl=impl),
    ),
    "adamw-amsgrad": (
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
        lambda impl: optim.adamw(0.01, weight_decay=0.1, amsgrad=True, mask=None, impl=impl),
    ),
    "rmsprop": (
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, weight_decay=0.01),
        lambda impl: optim.rmsprop(0.01, weight_decay=0.01, impl=impl),
    ),
    "rmsprop-centered": (
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, centered=True),
        lambda impl: optim.rmsprop(0.01, alpha=0.9, centered=True, impl=impl),
    ),
    "rmsprop-momentum": (
        lambda ps: torch.optim.RMSprop(ps, lr=0.005, momentum=0.8, centered=True),
        lambda impl: optim.rmsprop(0.005, momentum=0.8, centered=True, impl=impl),
    ),
    "adagrad": (
        lambda ps: torch.optim.Adagrad(
            ps, lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1
        ),
        lambda impl: optim.adagrad(
            0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1, impl=impl
        ),
    ),
    # torch keeps NAdam's mu_product as a float32 tensor; we keep a Python float, hence
    # differences of ~1e-7 that stay well inside the tolerance.
    "nadam": (
        lambda ps: torch.optim.NAdam(ps, lr=0.005, weight_decay=0.01, momentum_decay=0.01),
        lambda impl: optim.nadam(0.005, weight_decay=0.01, momentum_decay=0.01, impl=impl),
    ),
}


# "auto" is the foreach path except for Adam/AdamW (fused), so it is run for those only
ORACLE_RUNS = [
    (case, impl)
    for case in sorted(ORACLE)
    for impl in IMPLS
    if impl != "auto" or case.startswith("adam")
]


@pytest.mark.parametrize(("case", "impl"), ORACLE_RUNS)
def test_matches_torch_optim(case, impl):
    make_torch, make_descend = ORACLE[case]
    expected = _train_torch(make_torch)
    got, _ = _train_descend(make_descend(impl))
    assert max_diff(expected, got) < 1e-6


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_matches_torch(name):
    make_torch, make_descend = ORACLE[name]
    expected = _train_torch(make_torch)
    got, _ = _train_descend(make_descend("fused"))
    assert max_diff(expected, got) < 1e-6


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_impls_agree_and_share_state_layout(name):
    lr = 0.05
    runs = {}
    impls = ADAM_IMPLS if name in ("adam", "adamw") else IMPLS
    for impl in impls:
        model, state = _train_descend(optim.get(name, lr=lr, impl=impl))
        runs[impl] = (model, state)
    ref_model, ref_state = runs["reference"]
    for impl, (model, state) in runs.items():
        assert max_diff(ref_model, model) < 1e-6, impl
        assert layout(state) == layout(ref_state), impl


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_path_falls_back_where_the_kernel_is_missing(name, monkeypatch):
    from descend.transforms._kernels import AdamKernel

    expected, expected_state = _train_descend(optim.get(name, lr=0.05, impl="reference"))
    monkeypatch.setattr(AdamKernel, "supports", staticmethod(lambda tensor: False))
    got, state = _train_descend(optim.get(name, lr=0.05))
    assert max_diff(expected, got) < 1e-6
    assert layout(state) == layout(expected_state)


def test_max_grad_norm_matches_clip_grad_norm():
    expected = _train_torch(lambda ps: torch.optim.Adam(ps, lr=0.01), clip=0.05)
    got, _ = _train_descend(optim.adam(0.01, max_grad_norm=0.05))
    assert max_diff(expected, got) < 1e-6


def test_schedule_matches_torch_lambda_lr():
    sched = schedules.cosine(100, warmup_steps=10)
    expected = _train_torch(
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched),
    )
    got, state = _train_descend(optim.momentum(0.1, schedule=sched))
    assert max_diff(expected, got) < 1e-6
    lr_state = find_lr_state(state)
    assert lr_state["count"] == 100
    assert lr_state["lr"] == pytest.approx(0.1 * sched(99))


def test_adamw_default_mask_skips_biases_and_norms():
    model = _mlp()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    tx = optim.adamw(lr=0.1, weight_decay=0.5)
    state = tx.init(params)
    zeros = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(3):
        updates, state = tx.update(zeros, state, params)
        apply_updates(params, updates)
    for name, p in params.items():
        if p.ndim >= 2:
            # zero gradients: the only change is the decay θ ← θ (1 − η λ) per step
            assert torch.allclose(p, before[name] * (1 - 0.1 * 0.5) ** 3), name
        else:
            assert torch.equal(p, before[name]), name
    decayed = {n for n, p in params.items() if p.ndim >= 2}
    assert decayed == {"0.weight", "3.weight"}


def test_adamw_mask_none_decays_everything_and_dict_mask():
    model = _mlp()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    zeros = {n: torch.zeros_like(p) for n, p in params.items()}
    tx = optim.adamw(lr=0.1, weight_decay=0.5, mask=None)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert all(torch.allclose(updates[n], -0.05 * before[n]) for n in params)
    tx = optim.adamw(lr=0.1, weight_decay=0.5, mask={"0.bias": True})
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert torch.allclose(updates["0.bias"], -0.05 * before["0.bias"])
    assert torch.equal(updates["0.weight"], torch.zeros_like(before["0.weight"]))


# --------------------------------------------------------------------------- contract


# lrs that suit each optimizer on the two problems below
CONTRACT_LR = {
    "sgd": 1e-3,
    "momentum": 1e-3,
    "nesterov": 1e-3,
    "adagrad": 0.1,
    "rmsprop": 1e-2,
    "adam": 1e-2,
    "adamw": 1e-2,
    "nadam": 1e-2,
}


def test_contract_lr_table_covers_registry():
    assert set(CONTRACT_LR) == set(optim.REGISTRY)


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_registry_check_transform(name):
    check_transform(optim.get(name, lr=CONTRACT_LR[name]))
    check_transform(optim.get(name, lr=CONTRACT_LR[name], impl="reference"))
    check_transform(optim.get(name, lr=CONTRACT_LR[name], max_grad_norm=1.0, weight_decay=0.01))


def test_analytic_gradients():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    rosenbrock(x).backward()
    assert torch.allclose(x.grad, rosenbrock_grad(x.detach()))
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    quadratic(x).backward()
    assert torch.allclose(x.grad, quadratic_grad(x.detach()))


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_registry_lowers_quadratic(name):
    start = quadratic(torch.zeros(5, dtype=torch.float64)).item()
    tx = optim.get(name, lr=CONTRACT_LR[name] * 10)
    end = minimize(tx, quadratic, quadratic_grad, [0.0] * 5, 200)
    assert end < 0.1 * start


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_registry_lowers_rosenbrock(name):
    x0 = [-1.2, 1.0]
    start = rosenbrock(torch.tensor(x0)).item()  # 24.2
    end = minimize(optim.get(name, lr=CONTRACT_LR[name]), rosenbrock, rosenbrock_grad, x0, 500)
    assert end < 0.5 * start


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_update_never_mutates_grads_or_params(name):
    model = _mlp()
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    copies = {n: (grads[n].clone(), params[n].detach().clone()) for n in params}
    versions = {n: (grads[n]._version, params[n]._version) for n in params}
    for impl in ADAM_IMPLS if name in ("adam", "adamw") else IMPLS:
        tx = optim.get(name, lr=0.1, impl=impl, max_grad_norm=0.5, weight_decay=0.1)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
        for n in params:
            assert torch.equal(grads[n], copies[n][0]) and torch.equal(params[n], copies[n][1])
            assert (grads[n]._version, params[n]._version) == versions[n]
            assert updates[n].grad_fn is None
        check_state_tree(state)


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_update_does_not_synchronize(name, monkeypatch):
    """No .item()/float()/bool() on tensors in the hot path (host-device sync on GPUs)."""
    model = _mlp()
    params = dict(model.named_parameters())
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    tx = optim.get(name, lr=0.1, max_grad_norm=1.0, weight_decay=0.1, schedule=schedules.cosine(10))
    state = tx.init(params)
    forbid_host_sync(monkeypatch)
    for _ in range(2):
        _, state = tx.update(grads, state, params)
    monkeypatch.undo()
    assert find_lr_state(state)["count"] == 2


def test_lr_state_shape_and_scale_is_honored():
    tx = optim.adam(lr=0.1)
    params = {"w": torch.zeros(3)}
    state = tx.init(params)
    lr_state = find_lr_state(state)
    assert lr_state == {"count": 0, "lr": 0.1, "scale": 1.0}
    lr_state["scale"] = 0.5
    updates, state = tx.update({"w": torch.ones(3)}, state, params)
    assert find_lr_state(state) is lr_state
    assert lr_state == {"count": 1, "lr": 0.05, "scale": 0.5}
    # Adam's first step is ±1 per coordinate (up to ε): the update is −lr·scale.
    assert torch.allclose(updates["w"], torch.full((3,), -0.05))


def test_missing_gradient_leaves_that_parameter_alone():
    params = {"a": torch.zeros(2), "b": torch.zeros(2)}
    tx = optim.adam(lr=0.1)
    state = tx.init(params)
    updates, state = tx.update({"a": torch.ones(2)}, state, params)
    assert set(updates) == {"a"}
    adam_state = state[0]
    assert torch.equal(adam_state["exp_avg"]["b"], torch.zeros(2))


def test_mixed_dtypes_are_grouped():
    params = {"a": torch.zeros(3, dtype=torch.float32), "b": torch.zeros(3, dtype=torch.float64)}
    grads = {"a": torch.ones(3, dtype=torch.float32), "b": torch.ones(3, dtype=torch.float64)}
    for name in optim.REGISTRY:
        for impl in IMPLS:
            tx = optim.get(name, lr=0.1, impl=impl, max_grad_norm=1.0)
            updates, _ = tx.update(grads, tx.init(params), params)
            assert updates["a"].dtype == torch.float32 and updates["b"].dtype == torch.float64
            assert torch.allclose(updates["a"].double(), updates["b"]), (name, impl)


# --------------------------------------------------------------------------- get / registry


def test_get_by_name_and_passthrough():
    tx = optim.get("AdamW", lr=3e-4)
    assert isinstance(tx, Transform)
    assert find_lr_state(tx.init({"w": torch.zeros(1)}))["lr"] == 3e-4
    assert optim.get(tx) is tx
    assert set(optim.REGISTRY) == {
        "sgd",
        "momentum",
        "nesterov",
        "adagrad",
        "rmsprop",
        "adam",
        "adamw",
        "nadam",
    }


def test_get_errors():
    with pytest.raises(
        ConfigError, match=r"optim.get: optimizer must be one of .*did you mean 'adam'"
    ):
        optim.get("adma")
    with pytest.raises(ConfigError, match=r"'betas1' is not a hyperparameter of adam.*'betas'"):
        optim.get("adam", betas1=0.9)
    with pytest.raises(ConfigError, match=r"optim.get\('sgd'\) needs lr .*optim.get\('sgd', lr="):
        optim.get("sgd")
    with pytest.raises(ConfigError, match=r"takes hyperparameters only with an optimizer name"):
        optim.get(optim.sgd(0.1), lr=0.2)
    with pytest.raises(ConfigError, match=r"must be an optimizer name or a descend Transform"):
        optim.get(torch.optim.SGD)


# --------------------------------------------------------------------------- errors

BAD = [
    (lambda: optim.sgd(0), r"sgd: lr must be a finite number > 0; got 0 — pass e.g. lr="),
    (lambda: optim.sgd(-0.1), r"sgd: lr must be a finite number > 0; got -0.1"),
    (lambda: optim.sgd(float("nan")), r"sgd: lr must be a finite number > 0; got nan"),
    (lambda: optim.sgd("0.1"), r"sgd: lr must be a finite number > 0; got '0.1'"),
    (lambda: optim.sgd(0.1, weight_decay=-1), r"sgd: weight_decay must be a finite number >= 0"),
    (lambda: optim.sgd(0.1, schedule=0.5), r"sgd: schedule must be a callable; got 0.5"),
    (lambda: optim.sgd(0.1, max_grad_norm=0), r"sgd: max_grad_norm must be a finite number > 0"),
    (lambda: optim.sgd(0.1, impl="fast"), r"sgd: impl must be one of \['auto', 'foreach'"),
    (lambda: optim.sgd(0.1, momentum=1.0), r"sgd: momentum must be in \[0.0, 1.0\)"),
    (
        lambda: optim.sgd(0.1, nesterov=True),
        r"sgd: nesterov=True needs momentum > 0 and dampening=0 \(as torch.optim.SGD\); got "
        r"momentum=0, dampening=0",
    ),
    (lambda: optim.momentum(0.1, momentum=1.0), r"momentum: momentum must be in \[0.0, 1.0\)"),
    (lambda: optim.momentum(0.1, momentum=-0.1), r"momentum: momentum must be in \[0.0, 1.0\)"),
    (lambda: optim.momentum(0.1, dampening=2), r"momentum: dampening must be in \[0.0, 1.0\]"),
    (lambda: optim.nesterov(0.1, momentum=0), r"nesterov: momentum must be in \(0.0, 1.0\)"),
    (lambda: optim.nesterov(0.1, weight_decay=-1), r"nesterov: weight_decay must be a finite"),
    (lambda: optim.adagrad(lr_decay=-1), r"adagrad: lr_decay must be a finite number >= 0"),
    (
        lambda: optim.adagrad(initial_accumulator_value=-1),
        r"adagrad: initial_accumulator_value must be a finite number >= 0",
    ),
    (lambda: optim.adagrad(eps=-1), r"adagrad: eps must be a finite number >= 0"),
    (lambda: optim.rmsprop(alpha=1.0), r"rmsprop: alpha must be in \[0.0, 1.0\); got 1.0"),
    (lambda: optim.rmsprop(momentum=1.5), r"rmsprop: momentum must be in \[0.0, 1.0\)"),
    (lambda: optim.rmsprop(centered=1), r"rmsprop: centered must be True or False; got 1"),
    (lambda: optim.rmsprop(eps=-1e-8), r"rmsprop: eps must be a finite number >= 0"),
    (
        lambda: optim.adam(betas=0.9),
        r"adam: betas must be a pair \(beta1, beta2\); got 0.9 — pass e.g. betas=\(0.9, 0.999\)",
    ),
    (lambda: optim.adam(betas=(1.0, 0.999)), r"adam: betas\[0\] must be in \[0.0, 1.0\); got 1.0"),
    (lambda: optim.adam(betas=(0.9, -0.1)), r"adam: betas\[1\] must be in \[0.0, 1.0\); got -0.1"),
    (lambda: optim.adam(eps=-1), r"adam: eps must be a finite number >= 0; got -1"),
    (lambda: optim.adam(amsgrad="yes"), r"adam: amsgrad must be True or False; got 'yes'"),
    (lambda: optim.adam(impl="fuzed"), r"adam: impl must be one of .*did you mean 'fused'"),
    (lambda: optim.adamw(lr=-1), r"adamw: lr must be a finite number > 0"),
    (lambda: optim.adamw(weight_decay=-0.1), r"adamw: weight_decay must be a finite number >= 0"),
    (lambda: optim.adamw(mask="all"), r"add_decayed_weights: mask must be one of \['default'\]"),
    (lambda: optim.adamw(mask=3), r"add_decayed_weights: mask must be 'default', None, a dict"),
    (lambda: optim.nadam(momentum_decay=-1), r"nadam: momentum_decay must be a finite number >= 0"),
    (lambda: optim.nadam(betas=(0.9,)), r"nadam: betas must be a pair"),
    (lambda: optim.nadam(impl="fused"), r"nadam: impl must be one of \['auto', 'foreach', 'refer"),
]


@pytest.mark.parametrize(("build", "pattern"), BAD, ids=[p[:40] for _, p in BAD])
def test_bad_hyperparameters(build, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build()


def test_adamw_unknown_mask_name_is_refused_at_init():
    tx = optim.adamw(mask={"fc.wieght": True})
    with pytest.raises(
        ConfigError,
        match=r"mask must name existing parameters; got unknown name 'fc.wieght' — did you mean 'fc.weight'",
    ):
        tx.init({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)})


def test_rosenbrock_start_value():
    # guards the contract test's margin: f(-1.2, 1) = 24.2
    assert math.isclose(rosenbrock(torch.tensor([-1.2, 1.0])).item(), 24.2, rel_tol=1e-6)


def test_fused_apply_reusing_its_arguments_equals_fresh_ones():
    # update_and_apply reuses the last step's kernel arguments while the gradients, parameters
    # and moments are the same tensor objects (fit's plain-MLP path hands over one gradient
    # buffer every step). It must give the same parameters, bit for bit, as fresh gradients,
    # and notice a replaced moment tensor or a parameter moved to other storage.
    from descend.transforms import update_and_apply

    g = torch.Generator().manual_seed(0)
    shapes = {"w": (4, 3), "b": (4,)}
    init = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    grads_seq = [{n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(6)]
    sched = schedules.cosine(10, warmup_steps=2)

    def run(reuse, tamper=False):
        tx = optim.adamw(lr=1e-2, weight_decay=0.1, schedule=sched)
        params = {n: t.clone() for n, t in init.items()}
        state = tx.init(params)
        buf = {n: torch.empty(s) for n, s in shapes.items()}
        for i, gr in enumerate(grads_seq):
            if reuse:  # the same tensor objects every step, written in place
                for n in buf:
                    buf[n].copy_(gr[n])
                step_grads = dict(buf)
            else:
                step_grads = {n: t.clone() for n, t in gr.items()}
            if tamper and i == 2:
                adam = state[0]
                adam["exp_avg"]["w"] = adam["exp_avg"]["w"].clone()  # replaced, same values
            if tamper and i == 4:
                params["b"].data = params["b"].data.clone()  # other storage, same values
            state = update_and_apply(tx, step_grads, state, params)
        return params, state[0]

    fresh, fresh_adam = run(reuse=False)
    for got, adam in (run(reuse=True), run(reuse=True, tamper=True)):
        for n in shapes:
            assert torch.equal(got[n], fresh[n])
            for key in ("exp_avg", "exp_avg_sq"):  # the state the dict holds was updated
                assert torch.equal(adam[key][n], fresh_adam[key][n])


def test_a_built_optimizer_says_how_it_was_built():
    # repr(adamw(...)) printed two function addresses, and fit recorded "user optimizer":
    # both now show the call, with the arguments as given.
    import numpy as np

    import descend
    from descend import schedules

    tx = optim.adamw(3e-4, (0.9, 0.95), weight_decay=0.1, schedule=schedules.cosine(100))
    assert repr(tx) == (
        "adamw(lr=0.0003, betas=(0.9, 0.95), weight_decay=0.1, "
        "schedule=cosine(total_steps=100, final=0.0, warmup_steps=0))"
    )
    assert repr(optim.lion()) == "lion()" and repr(optim.get("sgd", lr=0.1)) == "sgd(lr=0.1)"
    X = np.random.default_rng(0).normal(size=(20, 2))
    r = descend.fit(
        torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", optimizer=tx, epochs=1, verbose=0, seed=0
    )
    assert r.optimizer == repr(tx)
    plain = descend.transforms.chain(descend.transforms.scale(-0.1))  # hand-built: no call
    assert repr(plain).startswith("Transform(init=")


# sgd, momentum, nesterov, schedule-free SGD and LARS are linear in g (LARS's norms are |g|):
# a complex parameter runs as torch.optim runs it, as its view_as_real; the rest refuse one
COMPLEX_OK = {"sgd", "momentum", "nesterov", "schedulefree_sgd", "lars"}


@pytest.mark.parametrize("name", optim.names())
def test_complex_parameters_follow_view_as_real_or_are_refused(name):
    z0 = torch.tensor([[1 + 1j, 2 - 1j], [0.5 - 2j, -1 + 0.3j]], dtype=torch.complex128)
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)

    def run(complex_param: bool) -> torch.Tensor:
        z = torch.nn.Parameter(z0.clone() if complex_param else torch.view_as_real(z0).clone())
        opt = optim.as_torch_optimizer(optim.get(name, lr=0.01), {"z": z})
        for _ in range(5):
            opt.zero_grad()
            zz = z if complex_param else torch.view_as_complex(z)
            ((zz - 0.3).abs().pow(2) * weight).sum().backward()
            opt.step()
        return torch.view_as_real(z.detach()) if complex_param else z.detach()

    if name in COMPLEX_OK:
        assert torch.allclose(run(True), run(False), atol=1e-12)
    else:
        with pytest.raises(ConfigError, match=r"parameter 'z' must be real.*view_as_real"):
            run(True)


def test_positional_arguments_follow_torch_optims_order():
    # Code ported from torch passes options by position: descend's sgd(lr, weight_decay) read
    # torch's SGD(params, 0.1, 0.9) as weight decay 0.9, and rmsprop's fourth positional was
    # `centered` where torch's is weight_decay. Every positional shared with torch.optim is now
    # at torch's place (descend's extras only after torch's last positional).
    import inspect

    pairs = {
        optim.sgd: torch.optim.SGD,
        optim.adam: torch.optim.Adam,
        optim.adamw: torch.optim.AdamW,
        optim.rmsprop: torch.optim.RMSprop,
        optim.adagrad: torch.optim.Adagrad,
        optim.nadam: torch.optim.NAdam,
    }

    def positional(f, skip=0):
        params = list(inspect.signature(f).parameters.values())[skip:]
        return [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]

    for ours, theirs in pairs.items():
        mine, torchs = positional(ours), positional(theirs, skip=1)  # (torch's params first)
        assert mine[: len(torchs)] == torchs[: len(mine)], (ours.__name__, mine, torchs)
    # and the call that used to go wrong does what it does in torch
    w = {"w": torch.ones(1)}
    tx = optim.sgd(0.1, 0.9)
    state = tx.init(w)
    for _ in range(2):
        updates, state = tx.update({"w": torch.ones(1)}, state, w)
    assert float(updates["w"]) == pytest.approx(-0.1 * 1.9)  # momentum: the second step is 1.9 g
