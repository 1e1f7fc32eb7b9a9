"""optim.as_torch_optimizer: a descend Transform inside hand-written torch loops."""

from __future__ import annotations

import copy

import pytest
import torch

from descend import optim, schedules
from descend._errors import CheckpointError, ConfigError
from descend.testing import check_state_tree
from descend.transforms import apply_updates, chain, find_lr_state, scale, scale_by_adam
from helpers.optim_common import plain_tree, tensors_in


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    ).double()


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 4, generator=g, dtype=torch.float64),
            torch.randn(16, 2, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def _torch_loop(model, opt, batches, sched=None):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _close(a, b, tol=1e-6):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < tol


def test_is_a_real_torch_optimizer():
    model = _model()
    opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2), model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == 1e-2
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "make", [lambda: optim.adamw(lr=1e-2), lambda: optim.momentum(0.05), lambda: optim.nadam()]
)
def test_same_trajectory_as_driving_the_transform_directly(make, fused):
    # fused_step=False is bit for bit the hand-driven transform; the default fused step (one
    # kernel writing the parameters) lands on the same trajectory up to float32 rounding.
    batches = _batches(20)
    a = _model()
    _torch_loop(a, optim.as_torch_optimizer(make(), a, fused_step=fused), batches)

    b = _model()
    tx = make()
    params = dict(b.named_parameters())
    state = tx.init(params)
    for x, y in batches:
        for p in params.values():
            p.grad = None
        torch.nn.functional.mse_loss(b(x), y).backward()
        updates, state = tx.update({n: p.grad for n, p in params.items()}, state, params)
        apply_updates(params, updates)
    assert _close(a, b, tol=1e-5) if fused else _same(a, b)


def test_matches_torch_adam_in_a_torch_loop():
    batches = _batches(50)
    a, b = _model(), _model()
    _torch_loop(a, torch.optim.Adam(a.parameters(), lr=1e-2), batches)
    _torch_loop(b, optim.as_torch_optimizer(optim.adam(lr=1e-2), b), batches)
    assert _close(a, b)


def test_accepts_a_name_a_dict_or_pairs():
    model = _model()
    for source in (model, dict(model.named_parameters()), list(model.named_parameters())):
        opt = optim.as_torch_optimizer("adam", source)
        assert list(opt.state_dict()["param_groups"][0]["params"]) == [
            n for n, _ in model.named_parameters()
        ]


def test_accepts_what_a_torch_optimizer_takes():
    # torch.optim.Adam(model.parameters()) is how everyone builds an optimizer: the adapter
    # takes the same (a generator of tensors, named "0", "1", ... as in torch's own state),
    # named_parameters() as a generator, and parameter groups without options; the
    # trajectory is the module form's, bit for bit.
    batches = _batches(20)
    ref = _model()
    _torch_loop(ref, optim.as_torch_optimizer(optim.adam(lr=1e-2), ref), batches)
    for make in (
        lambda m: m.parameters(),
        lambda m: m.named_parameters(),
        lambda m: [{"params": m.parameters()}],
        lambda m: [{"params": [p]} for p in m.parameters()],
    ):
        model = _model()
        opt = optim.as_torch_optimizer(optim.adam(lr=1e-2), make(model))
        _torch_loop(model, opt, batches)
        for a, b in zip(ref.parameters(), model.parameters()):
            assert torch.equal(a, b)
    names = optim.as_torch_optimizer("adam", _model().parameters()).state_dict()
    assert names["param_groups"][0]["params"] == ["0", "1", "2", "3"]


def test_zero_grad_closure_and_missing_grads():
    model = _model()
    opt = optim.as_torch_optimizer(optim.sgd(lr=0.1), model)
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # a parameter without a gradient is left alone; the others move
    before = [p.detach().clone() for p in model.parameters()]
    model[2].bias.grad = None
    model[0].weight.grad = torch.ones_like(model[0].weight)
    opt.step()
    after = list(model.parameters())
    assert torch.allclose(after[0], before[0] - 0.1)
    assert all(torch.equal(a, b) for a, b in zip(after[1:], before[1:]))


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_state_dict_round_trip_resumes_exactly(name):
    batches = _batches(20)
    make = lambda: optim.get(name, lr=1e-2, max_grad_norm=1.0)  # noqa: E731

    straight = _model()
    _torch_loop(straight, optim.as_torch_optimizer(make(), straight), batches)

    first = _model()
    opt = optim.as_torch_optimizer(make(), first)
    _torch_loop(first, opt, batches[:10])
    saved = opt.state_dict()
    check_state_tree(saved)
    assert saved["param_groups"][0]["params"] == [n for n, _ in first.named_parameters()]
    saved = plain_tree(saved)
    weights = {n: p.detach().clone() for n, p in first.named_parameters()}

    resumed = _model(seed=123)
    resumed.load_state_dict(weights)
    opt2 = optim.as_torch_optimizer(make(), resumed)
    opt2.load_state_dict(saved)
    _torch_loop(resumed, opt2, batches[10:])
    assert _same(straight, resumed)


@pytest.mark.parametrize("name", sorted(optim.REGISTRY))
def test_a_model_cast_after_the_optimizer_was_built_trains_as_if_cast_before(name):
    # torch's optimizers make their state at the first step, so model.double() (or
    # model.to(device)) after building one still trains; descend's state follows the parameters
    batches = _batches(12)
    make = lambda: optim.get(name, lr=1e-2)  # noqa: E731

    late = _model().float()
    opt = optim.as_torch_optimizer(make(), late)
    late.double()
    _torch_loop(late, opt, batches, torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5))

    early = _model().float().double()
    ref = optim.as_torch_optimizer(make(), early)
    _torch_loop(early, ref, batches, torch.optim.lr_scheduler.StepLR(ref, step_size=4, gamma=0.5))
    assert _same(early, late)
    assert find_lr_state(opt.tx_state)["scale"] == find_lr_state(ref.tx_state)["scale"] == 0.25
    moments = [t for t in tensors_in(opt.tx_state) if t.dim() > 0]
    assert len(moments) == len([t for t in tensors_in(ref.tx_state) if t.dim() > 0])
    assert all(t.dtype == torch.float64 for t in moments if t.is_floating_point())


@pytest.mark.parametrize(
    ("saved_impl", "loaded_impl"), [("auto", "reference"), ("reference", "auto")]
)
def test_state_dict_moves_between_implementations(saved_impl, loaded_impl):
    batches = _batches(20)
    straight = _model()
    opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2, impl="reference"), straight)
    _torch_loop(straight, opt, batches)

    first = _model()
    opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2, impl=saved_impl), first)
    _torch_loop(first, opt, batches[:10])
    resumed = _model()
    resumed.load_state_dict(first.state_dict())
    opt2 = optim.as_torch_optimizer(optim.adamw(lr=1e-2, impl=loaded_impl), resumed)
    opt2.load_state_dict(plain_tree(opt.state_dict()))
    _torch_loop(resumed, opt2, batches[10:])
    assert _close(straight, resumed, 1e-9)


def test_state_is_keyed_by_parameter_name():
    model = _model()
    opt = optim.as_torch_optimizer(optim.adam(lr=1e-2), model)
    _torch_loop(model, opt, _batches(2))
    adam_state = opt.state_dict()["state"][0]
    names = [n for n, _ in model.named_parameters()]
    assert list(adam_state["exp_avg"]) == names and adam_state["count"] == 2


def test_torch_lr_scheduler_matches_torch_optimizer():
    batches = _batches(30)
    a, b = _model(), _model()
    ta = torch.optim.Adam(a.parameters(), lr=1e-2)
    _torch_loop(a, ta, batches, torch.optim.lr_scheduler.StepLR(ta, step_size=7, gamma=0.5))
    tb = optim.as_torch_optimizer(optim.adam(lr=1e-2), b)
    _torch_loop(b, tb, batches, torch.optim.lr_scheduler.StepLR(tb, step_size=7, gamma=0.5))
    assert _close(a, b)
    lr_state = find_lr_state(tb.tx_state)
    assert tb.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)
    assert lr_state["scale"] == pytest.approx(0.5**4)
    assert lr_state["lr"] == pytest.approx(1e-2 * 0.5**4)


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.05, total_steps=30, cycle_momentum=False
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=5),
                torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
            ],
            milestones=[5],
        ),
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o, 1e-3, 1e-2, step_size_up=4, cycle_momentum=False
        ),
    ],
    ids=["cosine", "one_cycle", "warmup_then_exponential", "cyclic"],
)
def test_common_torch_schedulers_match_torch_adamw(make_sched):
    batches = _batches(30)
    a, b = _model(), _model()
    ta = torch.optim.AdamW(a.parameters(), lr=1e-2)
    _torch_loop(a, ta, batches, make_sched(ta))
    tb = optim.as_torch_optimizer(optim.adamw(lr=1e-2, mask=None), b)  # decay all, as torch
    _torch_loop(b, tb, batches, make_sched(tb))
    assert _close(a, b, 1e-12)
    assert tb.param_groups[0]["lr"] == pytest.approx(ta.param_groups[0]["lr"])


@pytest.mark.parametrize("impl", ["fused", "foreach", "reference"])
@pytest.mark.parametrize(
    "torch_opt, descend_opt",
    [
        (lambda p: torch.optim.Adam(p, lr=1e-2), lambda i: optim.adam(lr=1e-2, impl=i)),
        (
            lambda p: torch.optim.AdamW(p, lr=1e-2),
            lambda i: optim.adamw(lr=1e-2, mask=None, impl=i),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
            lambda i: optim.momentum(lr=1e-2, momentum=0.9, impl=i),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
            lambda i: optim.nesterov(lr=1e-2, momentum=0.9, impl=i),
        ),
    ],
    ids=["adam", "adamw", "momentum", "nesterov"],
)
def test_momentum_cycling_schedulers_drive_betas_and_momentum_like_torch(
    torch_opt, descend_opt, impl
):
    # OneCycleLR's default (cycle_momentum=True) moves the group's betas[0] (Adam) or
    # momentum (SGD) every step: the adapter shows them in its group and reads them back
    # before each step, on every implementation path.
    batches = _batches(30)
    a, b = _model(), _model()
    ta = torch_opt(a.parameters())
    tb = optim.as_torch_optimizer(descend_opt(impl), b)
    make = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=30)  # noqa: E731
    _torch_loop(a, ta, batches, make(ta))
    _torch_loop(b, tb, batches, make(tb))
    assert _close(a, b, 1e-12)
    key = "betas" if "betas" in ta.param_groups[0] else "momentum"
    assert tb.param_groups[0][key] == ta.param_groups[0][key] != ta.defaults[key]


def test_betas_set_on_the_group_are_checked_and_survive_a_state_dict():
    model = _model()
    opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2), model)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    opt.param_groups[0]["betas"] = (0.8, 0.99)
    _torch_loop(model, opt, _batches(2))
    saved = plain_tree(opt.state_dict())
    fresh = optim.as_torch_optimizer(optim.adamw(lr=1e-2), _model())
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["betas"] == (0.8, 0.99)
    straight, resumed = _model(), _model()
    o1 = optim.as_torch_optimizer(optim.adamw(lr=1e-2, betas=(0.8, 0.99)), straight)
    o2 = optim.as_torch_optimizer(optim.adamw(lr=1e-2), resumed)
    o2.param_groups[0]["betas"] = (0.8, 0.99)
    _torch_loop(straight, o1, _batches(5))
    _torch_loop(resumed, o2, _batches(5))
    assert _close(straight, resumed, 1e-15)  # the group's betas are the ones used
    opt.param_groups[0]["betas"] = (1.2, 0.999)
    with pytest.raises(ConfigError, match=r"param_groups\[0\]\['betas'\] must be in \[0, 1\)"):
        _torch_loop(model, opt, _batches(1))
    # plain SGD shows momentum 0 as torch's does; it has no buffer to start, so a change is
    # refused (torch would start one silently)
    sgd_model = _model()
    sgd = optim.as_torch_optimizer(optim.sgd(lr=0.1), sgd_model)
    assert sgd.param_groups[0]["momentum"] == 0.0
    sgd.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ConfigError, match=r"param_groups\[0\]\['momentum'\] can change between"):
        _torch_loop(sgd_model, sgd, _batches(1))
    mom_model = _model()
    mom = optim.as_torch_optimizer(optim.momentum(lr=0.1, momentum=0.9), mom_model)
    mom.param_groups[0]["momentum"] = -0.5
    with pytest.raises(
        ConfigError, match=r"param_groups\[0\]\['momentum'\] must be in \[0, 1\); got -0\.5"
    ):
        _torch_loop(mom_model, mom, _batches(1))


def test_torch_scheduler_multiplies_a_descend_schedule():
    model = _model()
    sched = schedules.linear_warmup(4)
    opt = optim.as_torch_optimizer(optim.sgd(lr=0.1, schedule=sched), model)
    torch_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    _torch_loop(model, opt, _batches(3), torch_sched)
    lr_state = find_lr_state(opt.tx_state)
    assert lr_state["lr"] == pytest.approx(0.1 * sched(2) * 0.5)


def test_scheduler_state_round_trip():
    batches = _batches(20)
    make = lambda: optim.adamw(lr=1e-2)  # noqa: E731
    make_sched = lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)  # noqa: E731

    straight = _model()
    opt = optim.as_torch_optimizer(make(), straight)
    _torch_loop(straight, opt, batches, make_sched(opt))

    first = _model()
    opt = optim.as_torch_optimizer(make(), first)
    sched = make_sched(opt)
    _torch_loop(first, opt, batches[:10], sched)
    saved_opt, saved_sched = plain_tree(opt.state_dict()), sched.state_dict()
    weights = {n: p.detach().clone() for n, p in first.named_parameters()}

    resumed = _model()
    resumed.load_state_dict(weights)
    opt2 = optim.as_torch_optimizer(make(), resumed)
    sched2 = make_sched(opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    _torch_loop(resumed, opt2, batches[10:], sched2)
    assert _same(straight, resumed)


# --------------------------------------------------------------------------- errors


def test_lr_change_without_lr_state_is_refused():
    model = _model()
    opt = optim.as_torch_optimizer(chain(scale_by_adam(), scale(-1e-3)), model)
    assert opt.param_groups[0]["lr"] == 1.0
    opt.param_groups[0]["lr"] = 0.5
    with pytest.raises(
        ConfigError, match=r"can change only if the transform ends in scale_by_learning_rate"
    ):
        opt.step()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", torch.tensor(-1.0)])
def test_a_bad_group_lr_is_refused_not_stepped_with(bad):
    # a negative rate would silently ascend the loss, a NaN wipe the parameters
    model = _model()
    opt = optim.as_torch_optimizer(optim.adam(1e-2), model)
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = bad
    with pytest.raises(
        ConfigError, match=r"param_groups\[0\]\['lr'\] must be a finite number >= 0"
    ):
        _torch_loop(model, opt, _batches(1))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    # a hand-made transform's group lr, given at construction, acts through its scale too
    hand = chain(scale_by_adam(), optim.scale_by_learning_rate(1e-2))
    opt = optim.as_torch_optimizer(hand, _groups(model, lr_head=-1e-3))
    with pytest.raises(ConfigError, match=r"param_groups\[1\]\['lr'\] must be a finite number"):
        _torch_loop(model, opt, _batches(1))
    # 0 (cosine annealing's end) and a tensor rate are rates
    opt = optim.as_torch_optimizer(optim.adam(1e-2), model)
    opt.param_groups[0]["lr"] = torch.tensor(0.0)
    _torch_loop(model, opt, _batches(1))
    assert find_lr_state(opt.tx_state)["lr"] == 0.0


def test_load_state_dict_errors():
    model = _model()
    opt = optim.as_torch_optimizer(optim.adam(), model)
    good = opt.state_dict()
    with pytest.raises(CheckpointError, match=r"must have 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    renamed = {**good, "param_groups": [{**good["param_groups"][0], "params": ["a", "b"]}]}
    with pytest.raises(
        CheckpointError,
        match=r"must cover the same parameter names as the model; got missing \['0.bias'",
    ):
        opt.load_state_dict(renamed)
    other = optim.as_torch_optimizer(optim.momentum(0.1), model).state_dict()
    with pytest.raises(CheckpointError, match=r"optimizer state at 'state/0' must have keys"):
        opt.load_state_dict(other)
    bad_shape = plain_tree(good)
    bad_shape["state"][0]["exp_avg"]["0.weight"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"'state/0/exp_avg/0.weight' must be a tensor of shape \(8, 4\)"
    ):
        opt.load_state_dict(bad_shape)


def test_bad_parameters_are_refused():
    with pytest.raises(
        ConfigError, match=r"as_torch_optimizer: parameters must be a module, model.parameters"
    ):
        optim.as_torch_optimizer(optim.adam(), {})
    with pytest.raises(ConfigError, match=r"optim.get: optimizer must be one of"):
        optim.as_torch_optimizer("adamm", _model())


def test_grad_scaler_clipping_and_step_hooks_work_as_with_torch_adamw():
    # The mixed-precision loop: GradScaler scales the loss, unscale_ + clip_grad_norm_ act on
    # param_groups' grads, a step with an inf gradient is skipped by the scaler (the step hooks
    # see only the steps taken), and the weights follow torch's AdamW.
    if not hasattr(torch, "amp") or not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler is missing")
    a, b = _model(), _model()
    ta = torch.optim.AdamW(a.parameters(), lr=1e-2)
    tb = optim.as_torch_optimizer(optim.adamw(lr=1e-2, mask=None), b)
    calls = []
    tb.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    tb.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    scalers = [torch.amp.GradScaler("cpu", init_scale=16.0) for _ in range(2)]
    for i, (x, y) in enumerate(_batches(6)):
        for model, opt, scaler in ((a, ta, scalers[0]), (b, tb, scalers[1])):
            opt.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            if i == 2:
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    assert _close(a, b, 1e-12)
    assert calls == ["pre", "post"] * 5  # 6 batches, the inf one skipped
    assert scalers[1].get_scale() == scalers[0].get_scale() == 8.0


# --------------------------------------------------------------------------- parameter groups


def _groups(model, lr_head=None, **head):
    """The fine-tuning pattern: the first layer in one group, the head in another."""
    body = {"params": list(model[0].parameters())}
    tail = {"params": list(model[2].parameters()), **head}
    if lr_head is not None:
        tail["lr"] = lr_head
    return [body, tail]


@pytest.mark.parametrize("fused", [False, True])
def test_groups_with_their_own_lr_and_weight_decay_follow_torch_adamw(fused):
    # The Hugging Face pattern (no decay on some parameters, another rate for the head) with
    # a scheduler on top: the same trajectory as torch.optim.AdamW given the same groups.
    batches = _batches(20)
    a, b = _model(), _model()
    ta = torch.optim.AdamW(_groups(a, 3e-3, weight_decay=0.0), lr=1e-2, weight_decay=0.1)
    tb = optim.as_torch_optimizer(
        optim.adamw(lr=1e-2, weight_decay=0.1, mask=None),
        _groups(b, 3e-3, weight_decay=0.0),
        fused_step=fused,
    )
    assert [g["lr"] for g in tb.param_groups] == [1e-2, 3e-3]
    assert [g["weight_decay"] for g in tb.param_groups] == [0.1, 0.0]
    assert tb.param_groups[1]["eps"] == 1e-8 and tb.param_groups[1]["amsgrad"] is False
    _torch_loop(a, ta, batches, torch.optim.lr_scheduler.ExponentialLR(ta, gamma=0.9))
    _torch_loop(b, tb, batches, torch.optim.lr_scheduler.ExponentialLR(tb, gamma=0.9))
    assert _close(a, b, 1e-12)
    assert [g["lr"] for g in tb.param_groups] == pytest.approx([g["lr"] for g in ta.param_groups])
    # without the group options the head would have moved differently
    c = _model()
    _torch_loop(
        c,
        optim.as_torch_optimizer(optim.adamw(lr=1e-2, weight_decay=0.1, mask=None), c),
        batches,
        None,
    )
    assert not _close(a, c, 1e-3)


def test_groups_with_their_own_momentum_follow_torch_sgd():
    batches = _batches(15)
    a, b = _model(), _model()
    ta = torch.optim.SGD(_groups(a, 0.01, momentum=0.5), lr=0.05, momentum=0.9)
    tb = optim.as_torch_optimizer(
        optim.momentum(0.05, momentum=0.9), _groups(b, 0.01, momentum=0.5)
    )
    assert [g["momentum"] for g in tb.param_groups] == [0.9, 0.5]
    _torch_loop(a, ta, batches)
    _torch_loop(b, tb, batches)
    assert _close(a, b, 1e-12)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    ("make", "make_torch"),
    [
        (
            lambda: optim.sgd(0.1, momentum=0.9, max_grad_norm=0.05),
            lambda groups: torch.optim.SGD(groups, 0.1, momentum=0.9),
        ),
        (
            lambda: optim.adamw(0.01, weight_decay=0.1, max_grad_norm=0.05),
            lambda groups: torch.optim.AdamW(groups, 0.01, weight_decay=0.1),
        ),
    ],
)
def test_max_grad_norm_clips_the_norm_over_every_group_as_clip_grad_norm(make, make_torch, fused):
    # max_grad_norm is "clip the global gradient norm first (as clip_grad_norm_)": with
    # parameter groups (the usual decay / no-decay split) the norm is still the whole
    # model's, as clip_grad_norm_(model.parameters()) before torch's step, not each group's.
    batches = _batches(10)
    a, b = _model(), _model()

    def groups(m):
        decay = [p for p in m.parameters() if p.ndim >= 2]
        rest = [p for p in m.parameters() if p.ndim < 2]
        return [{"params": decay}, {"params": rest, "weight_decay": 0.0, "lr": 0.02}]

    theirs = make_torch(groups(a))
    ours = optim.as_torch_optimizer(make(), groups(b), fused_step=fused)
    for x, y in batches:
        for model, opt, clip in ((a, theirs, True), (b, ours, False)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p)


def test_a_masked_clip_keeps_its_own_norm_with_several_groups():
    # only a clip link that sees its whole group's raw gradients takes every group's norm: a
    # clip of some parameters (masked) clips by theirs, as in one optimizer per group
    from descend.transforms import clip_by_global_norm, masked, scale_by_learning_rate

    def make():
        return chain(
            masked(clip_by_global_norm(0.01), lambda n, p: p.ndim >= 2),
            scale_by_learning_rate(0.1),
        )

    def named(model, i):
        return {f"{i}.{n}": p for n, p in model[i].named_parameters()}

    a, b = _model(), _model()
    opt = optim.as_torch_optimizer(make(), [{"params": named(a, 0)}, {"params": named(a, 2)}])
    apart = [optim.as_torch_optimizer(make(), named(b, i)) for i in (0, 2)]
    for x, y in _batches(5):
        for model, opts in ((a, [opt]), (b, apart)):
            for o in opts:
                o.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            for o in opts:
                o.step()
    assert _same(a, b)


@pytest.mark.parametrize("name", sorted(optim.names()))
def test_two_groups_are_two_optimizers(name):
    # For every optimizer: one optimizer over two groups with options of their own trains
    # each group exactly as its own optimizer over those parameters alone would.
    batches = _batches(8)
    lr = 2e-3 if name in ("prodigy",) else 1e-2
    a, b = _model(), _model()
    kw = {}
    if name == "muon":
        # muon's automatic split sees the whole model (the output layer is its last matrix,
        # not each group's): the optimizers apart get that split (muon for the first layer's
        # weight, AdamW for the rest) to compare with
        kw["partition"] = lambda n, p: "muon" if p.shape == (8, 4) else "adamw"
    opt = optim.as_torch_optimizer(optim.get(name, lr=lr, **kw), _groups(a, lr / 4))
    apart = [
        optim.as_torch_optimizer(optim.get(name, lr=lr, **kw), dict(b[0].named_parameters())),
        optim.as_torch_optimizer(optim.get(name, lr=lr / 4, **kw), dict(b[2].named_parameters())),
    ]
    for x, y in batches:
        for model, opts in ((a, [opt]), (b, apart)):
            for o in opts:
                o.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            for o in opts:
                o.step()
    for o in (opt, *apart):
        o.eval()  # schedule-free: compare the averaged points
    assert _same(a, b)


def test_add_param_group_follows_torch():
    # Unfreezing during training: the head joins after 5 steps with its own rate.
    batches = _batches(12)
    a, b = _model(), _model()
    ta = torch.optim.Adam(a[0].parameters(), lr=1e-2)
    tb = optim.as_torch_optimizer(optim.adam(lr=1e-2), list(b[0].parameters()))
    for i, (x, y) in enumerate(batches):
        if i == 5:
            ta.add_param_group({"params": list(a[2].parameters()), "lr": 1e-3})
            tb.add_param_group({"params": list(b[2].parameters()), "lr": 1e-3})
        for model, opt in ((a, ta), (b, tb)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert _close(a, b, 1e-12)
    assert tb.state_dict()["param_groups"][1]["params"] == ["2", "3"]
    # another tensor under a taken name is no parameter given twice: the name is the fault
    with pytest.raises(
        ConfigError,
        match=r"add_param_group: parameter name '2' must be unique across the groups \(the "
        r"optimizer state is keyed by name\); got it for two different tensors — name them apart",
    ):
        tb.add_param_group({"params": {"2": torch.zeros(1, requires_grad=True)}})
    with pytest.raises(ConfigError, match=r"parameter 'again' may belong to one parameter group"):
        tb.add_param_group({"params": {"again": b[2].weight}})
    # two submodules' own names ("weight", "bias") collide the same way
    with pytest.raises(ConfigError, match=r"parameter group 1: parameter name 'weight' must be"):
        optim.as_torch_optimizer("adamw", [{"params": b[0]}, {"params": b[2], "lr": 1e-4}])
    with pytest.raises(ConfigError, match=r"add_param_group takes a dict with 'params'"):
        tb.add_param_group({"lr": 0.1})


def test_a_refused_change_of_several_options_names_the_one_at_fault():
    # weight_decay may change between steps (its link holds no state); amsgrad may not, nor
    # may eps be negative: the message names that option, whichever the group lists first
    model = _model()
    opt = optim.as_torch_optimizer(optim.adam(1e-2), model)
    opt.param_groups[0].update(weight_decay=0.1, amsgrad=True)
    with pytest.raises(
        ConfigError,
        match=r"param_groups\[0\]\['amsgrad'\] can change between steps only where the "
        r"optimizer's state keeps its shape; got amsgrad=True \(was False\)",
    ):
        _torch_loop(model, opt, _batches(1))
    sgd = optim.as_torch_optimizer(optim.sgd(0.1, momentum=0.9), model)
    sgd.param_groups[0].update(weight_decay=0.1, dampening=2.0)
    with pytest.raises(
        ConfigError, match=r"param_groups\[0\]\['dampening'\]: sgd: dampening must be in"
    ):
        _torch_loop(model, sgd, _batches(1))
    # the state was left as it was: with the options set right the step runs
    sgd.param_groups[0]["dampening"] = 0.5
    _torch_loop(model, sgd, _batches(1))
    assert sgd.param_groups[0]["weight_decay"] == 0.1


def test_weight_decay_changed_between_steps_follows_torch():
    # torch reads a group's options at every step; so does the adapter (the group's transform
    # is built again, its state carried over). A change that reshapes the state is refused.
    batches = _batches(12)
    a, b = _model(), _model()
    ta = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.01)
    tb = optim.as_torch_optimizer(optim.adamw(lr=1e-2, weight_decay=0.01, mask=None), b)
    for i, (x, y) in enumerate(batches):
        if i == 4:
            for opt in (ta, tb):
                opt.param_groups[0]["weight_decay"] = 0.3
        if i == 8:
            for opt in (ta, tb):
                opt.param_groups[0]["weight_decay"] = 0.0
        for model, opt in ((a, ta), (b, tb)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert _close(a, b, 1e-12)
    tb.param_groups[0]["amsgrad"] = True
    with pytest.raises(
        ConfigError,
        match=r"param_groups\[0\]\['amsgrad'\] can change between steps only where the optimizer's "
        r"state keeps its shape; got amsgrad=True \(was False\)",
    ):
        tb.step()


def test_group_state_dict_round_trip_resumes_exactly():
    batches = _batches(20)

    def make(model):
        opt = optim.as_torch_optimizer(optim.adamw(lr=1e-2), _groups(model, 1e-3, weight_decay=0))
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)

    straight = _model()
    opt, sched = make(straight)
    _torch_loop(straight, opt, batches, sched)

    first = _model()
    opt, sched = make(first)
    _torch_loop(first, opt, batches[:10], sched)
    saved = opt.state_dict()
    check_state_tree(saved)
    assert isinstance(saved["state"], list) and len(saved["state"]) == 2
    saved, saved_sched = plain_tree(saved), sched.state_dict()
    resumed = _model()
    resumed.load_state_dict(first.state_dict())
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(saved)
    sched2.load_state_dict(saved_sched)
    _torch_loop(resumed, opt2, batches[10:], sched2)
    assert _same(straight, resumed)
    one = optim.as_torch_optimizer(optim.adamw(lr=1e-2), _model())
    with pytest.raises(
        CheckpointError, match=r"must hold exactly one group, as this optimizer has"
    ):
        one.load_state_dict(saved)


def test_group_options_are_checked():
    model = _model()
    with pytest.raises(
        ConfigError,
        match=r"param_groups\[1\] takes the optimizer's own hyperparameter names; got "
        r"'weight_dacay' — did you mean 'weight_decay'\?",
    ):
        optim.as_torch_optimizer("adamw", _groups(model, weight_dacay=0.0))
    with pytest.raises(ConfigError, match=r"adamw: weight_decay must be"):
        optim.as_torch_optimizer("adamw", _groups(model, weight_decay=-1.0))
    # a hand-made transform takes lr (through its scale) and betas per group, not weight decay
    hand = lambda: chain(scale_by_adam(), optim.scale_by_learning_rate(1e-2))  # noqa: E731
    with pytest.raises(
        ConfigError,
        match=r"param_groups\[1\]\['weight_decay'\] needs a transform "
        r"built by a descend.optim factory",
    ):
        optim.as_torch_optimizer(hand(), _groups(model, weight_decay=0.0))
    batches = _batches(10)
    a, b = _model(), _model()
    ta = torch.optim.Adam(_groups(a, 1e-3, betas=(0.8, 0.99)), lr=1e-2)
    tb = optim.as_torch_optimizer(hand(), _groups(b, 1e-3, betas=(0.8, 0.99)))
    _torch_loop(a, ta, batches)
    _torch_loop(b, tb, batches)
    assert _close(a, b, 1e-12)
    # keys that are no option stay on the group, as torch keeps them
    opt = optim.as_torch_optimizer("adamw", _groups(model, name="head"))
    assert opt.param_groups[1]["name"] == "head"
    # ... but not torch's maximize=True, which would be ignored: descent instead of ascent
    for build in ("adamw", hand()):
        with pytest.raises(
            ConfigError,
            match=r"param_groups\[1\]\['maximize'\] is a torch.optim option descend's "
            r"optimizers do not have \(they minimize\); got True — minimize the negated",
        ):
            optim.as_torch_optimizer(build, _groups(model, maximize=True))
    opt = optim.as_torch_optimizer(optim.sgd(0.1), model[0].parameters())
    with pytest.raises(ConfigError, match=r"param_groups\[1\]\['maximize'\] is a torch"):
        opt.add_param_group({"params": model[2].parameters(), "maximize": True})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": model[2].parameters(), "maximize": False})  # what it does
    with pytest.raises(
        ConfigError, match=r"parameter '0.weight' may belong to one parameter group"
    ):
        optim.as_torch_optimizer(
            "adam",
            [
                {"params": model.named_parameters()},
                {"params": model[0].named_parameters(prefix="0")},
            ],
        )
    with pytest.raises(ConfigError, match=r"parameter group 1 must have 'params'"):
        optim.as_torch_optimizer("adam", [{"params": model.parameters()}, {"lr": 0.1}])


@pytest.mark.parametrize("which", ["adamw", "sgd"])
def test_onecycle_drives_each_groups_rate_and_momentum_like_torch(which):
    # OneCycleLR with a max_lr per group also cycles each group's betas[0] (AdamW) or momentum
    # (SGD): every group's own transform follows its own numbers.
    batches = _batches(20)
    a, b = _model(), _model()
    if which == "adamw":
        ta = torch.optim.AdamW(_groups(a, 3e-3, weight_decay=0.0), lr=1e-2, weight_decay=0.1)
        tx = optim.adamw(lr=1e-2, weight_decay=0.1, mask=None)
        tb = optim.as_torch_optimizer(tx, _groups(b, 3e-3, weight_decay=0.0))
    else:
        ta = torch.optim.SGD(_groups(a, 0.01, momentum=0.5), lr=0.05, momentum=0.9)
        tb = optim.as_torch_optimizer(optim.sgd(0.05, momentum=0.9), _groups(b, 0.01, momentum=0.5))

    def sched(o):
        return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.02, 0.005], total_steps=20)

    _torch_loop(a, ta, batches, sched(ta))
    _torch_loop(b, tb, batches, sched(tb))
    assert _close(a, b, 1e-10)
    key = "betas" if which == "adamw" else "momentum"
    assert [g[key] for g in tb.param_groups] == [g[key] for g in ta.param_groups]


_LAYOUT_CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda ps: torch.optim.SGD(ps, 0.1)),
    "momentum": (
        lambda: optim.sgd(0.1, momentum=0.9, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, 0.1, momentum=0.9, weight_decay=0.01),
    ),
    "adamw": (lambda: optim.adamw(0.1, mask=None), lambda ps: torch.optim.AdamW(ps, 0.1)),
    "adam-amsgrad": (
        lambda: optim.adam(0.1, amsgrad=True),
        lambda ps: torch.optim.Adam(ps, 0.1, amsgrad=True),
    ),
}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("case", sorted(_LAYOUT_CASES))
def test_a_gradient_laid_out_unlike_its_parameter_follows_torch(case, fused):
    # p.grad = g.t() (or torch.autograd.grad through W.t()): torch's fused kernels walk raw
    # memory, so the gradient must be brought to the parameter's layout first
    make, make_torch = _LAYOUT_CASES[case]
    torch.manual_seed(0)
    grads = [torch.randn(4, 3).t() for _ in range(4)]
    assert not grads[0].is_contiguous()
    got, want = torch.nn.Parameter(torch.ones(3, 4)), torch.nn.Parameter(torch.ones(3, 4))
    ours = optim.as_torch_optimizer(make(), {"p": got}, fused_step=fused)
    theirs = make_torch([want])
    for g in grads:
        got.grad, want.grad = g, g.clone()
        ours.step()
        theirs.step()
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("case", sorted(_LAYOUT_CASES))
def test_a_parameter_with_gaps_in_memory_follows_torch_and_writes_only_itself(case):
    # A parameter that is a strided view (every other column of a bigger tensor) is not dense:
    # torch's fused kernels walk raw memory as if it were, so the fused step would update the
    # wrong elements and write into the columns between. torch.optim's default step is the oracle.
    make, make_torch = _LAYOUT_CASES[case]
    torch.manual_seed(0)
    grads = [torch.randn(3, 4) for _ in range(4)]
    base_ours = torch.randn(3, 8)
    base_torch = base_ours.clone()
    got = torch.nn.Parameter(base_ours[:, ::2])
    want = torch.nn.Parameter(base_torch[:, ::2])
    assert got.data_ptr() == base_ours.data_ptr() and not got.is_contiguous()
    ours = optim.as_torch_optimizer(make(), {"p": got})
    theirs = make_torch([want])
    for g in grads:
        got.grad, want.grad = g, g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(base_ours, base_torch)  # the columns between: untouched by both


@pytest.mark.parametrize("case", sorted(_LAYOUT_CASES))
def test_a_model_made_channels_last_during_training_follows_torch(case):
    # model.to(memory_format=torch.channels_last) after some steps gives the conv weights a
    # new layout while the optimizer's buffers keep the old one: the fused kernels, walking
    # all of them as flat memory, would pair each element with another one's moments.
    make, make_torch = _LAYOUT_CASES[case]
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 8, 8)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    opts = [
        (ours, optim.as_torch_optimizer(make(), ours)),
        (theirs, make_torch(theirs.parameters())),
    ]
    for i in range(8):
        for model, opt in opts:
            if i == 3:
                model.to(memory_format=torch.channels_last)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert ours[0].weight.is_contiguous(memory_format=torch.channels_last)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_reduced_precision_sgd_on_cpu_follows_torch(dtype, momentum):
    # torch's CPU fused SGD kernel is wrong past 8 elements in bfloat16/float16
    torch.manual_seed(0)
    grads = [torch.randn(4, 5).to(dtype) for _ in range(3)]
    got = torch.nn.Parameter(torch.zeros(4, 5, dtype=dtype))
    want = torch.nn.Parameter(torch.zeros(4, 5, dtype=dtype))
    ours = optim.as_torch_optimizer(optim.sgd(0.1, momentum=momentum), {"p": got})
    theirs = torch.optim.SGD([want], 0.1, momentum=momentum)
    for g in grads:
        got.grad, want.grad = g, g.clone()
        ours.step()
        theirs.step()
    assert torch.allclose(got.float(), want.float(), atol=1e-2)


def test_dict_masks_and_muon_partition_of_a_model_work_in_the_adapter():
    # the adapter reads its defaults from the transform initialised with no parameters: a
    # dict naming the model's parameters must not be refused there (muon's docstring example)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
    ).double()  # fmt: skip
    mask = {n: n.endswith("weight") for n, _ in model.named_parameters()}
    batches = [(x, y[:, :1]) for x, y in _batches(3)]
    for make in (
        lambda: optim.muon(partition=model),
        lambda: optim.muon(partition=optim.muon_partition(model)),
        lambda: optim.adamw(1e-2, mask=mask),
    ):
        a = copy.deepcopy(model)
        _torch_loop(a, optim.as_torch_optimizer(make(), a, fused_step=False), batches)
        b = copy.deepcopy(model)
        tx = make()
        params = dict(b.named_parameters())
        state = tx.init(params)
        for x, y in batches:
            b.zero_grad()
            torch.nn.functional.mse_loss(b(x), y).backward()
            updates, state = tx.update({n: p.grad for n, p in params.items()}, state, params)
            apply_updates(params, updates)
        assert _same(a, b)
    # a dict mask may name parameters of the other groups
    head = dict(model[4].named_parameters(prefix="4"))
    body = {n: p for n, p in model.named_parameters() if n not in head}
    opt = optim.as_torch_optimizer(
        optim.adamw(1e-2, mask=mask), [{"params": body}, {"params": head, "lr": 1e-3}]
    )
    torch.nn.functional.mse_loss(model(batches[0][0]), batches[0][1]).backward()
    opt.step()
    with pytest.raises(ConfigError, match=r"mask must name existing parameters.*'4\.wieght'"):
        optim.as_torch_optimizer(optim.adamw(mask={"4.wieght": True}), model)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: optim.as_torch_optimizer(optim.adamw(1e-2), m),
        lambda m: optim.as_torch_optimizer(optim.sgd(0.05, momentum=0.9), _groups(m, 1e-2)),
        lambda m: optim.as_torch_optimizer(chain(scale_by_adam(), scale(-1e-2)), m),
    ],
    ids=["adamw", "momentum-groups", "hand-made"],
)
def test_deepcopy_steps_independently_and_identically(make):
    batches = _batches(6)
    model = _model()
    opt = make(model)
    _torch_loop(model, opt, batches[:2])
    model2, opt2 = copy.deepcopy((model, opt))
    assert all(p2 is q for p2, q in zip(model2.parameters(), opt2.param_groups[0]["params"]))
    _torch_loop(model2, opt2, batches[2:])  # the copy first: the original must not move
    assert not _same(model, model2)
    _torch_loop(model, opt, batches[2:])
    assert _same(model, model2)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("name", ["sgd", "adamw", "adagrad"])
def test_sparse_gradients_are_refused_by_name(name):
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = optim.as_torch_optimizer(optim.get(name, lr=0.1), emb)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ConfigError, match=r"gradient of 'weight' must be dense.*sparse=False"):
        opt.step()


def test_state_dict_hooks_run_as_in_torch():
    calls = []
    opt = optim.as_torch_optimizer(optim.adamw(0.01), _model())
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": calls.append("sd_post")})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load_pre", sd["tag"])))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    saved = opt.state_dict()
    assert "tag" in saved  # a post hook's returned dict is the result
    opt.load_state_dict(saved)
    assert calls == ["sd_pre", "sd_post", ("load_pre", None), "load_post"]
