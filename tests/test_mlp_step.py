"""The hand-written MLP backward pass (descend/train/_mlp.py) against autograd, its oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import descend
from descend import losses as L
from descend.models import mlp
from descend.train import _mlp
from descend.train._mlp import MLPStep, loss_grad, loss_value


def autograd_reference(model, x, loss, y, w):
    plist = [p for p in model.parameters() if p.requires_grad]
    out = model(x)
    value = loss(out, y, validate=False) if w is None else loss(out, y, weight=w, validate=False)
    return value.detach(), out.detach(), torch.autograd.grad(value, plist)


def check_same(model, x, loss, y, w=None, rtol=1e-5, atol=1e-6):
    plist = [p for p in model.parameters() if p.requires_grad]
    step = MLPStep.build(model, plist, L.get("mse"))  # the model check; grads gets `loss`
    assert step is not None and step.usable(x)
    value, out, grads = step.grads(x, loss, y, w)
    ref_value, ref_out, ref_grads = autograd_reference(model, x, loss, y, w)
    torch.testing.assert_close(value.detach(), ref_value, rtol=rtol, atol=atol)
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    assert not out.requires_grad
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
    # The loop's form: views into one flat buffer, and their norm in one kernel.
    _, _, flat = step.grads(x, loss, y, w, flat=True)
    for g, r in zip(flat, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
    norm = torch.linalg.vector_norm(torch.stack([r.norm() for r in ref_grads]))
    torch.testing.assert_close(step.grad_norm(), norm, rtol=rtol, atol=atol)


HIDDEN = [(), (16,), (16, 8), (32, 32, 32)]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize(
    "activation", ["relu", "tanh", "leaky_relu", "gelu", "silu", "logistic", "identity"]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_gradients_match_autograd(hidden, activation, weighted):
    g = torch.Generator().manual_seed(len(hidden))
    model = mlp(5, 3, hidden, activation, seed=1)
    x, y = torch.randn(37, 5, generator=g), torch.randn(37, 3, generator=g)
    w = torch.rand(37, generator=g) if weighted else None
    check_same(model, x, L.get("mse"), y, w)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("float_labels", [False, True])
def test_classification_gradients_match_autograd(hidden, weighted, float_labels):
    g = torch.Generator().manual_seed(3)
    model = mlp(6, 4, hidden, seed=2)
    x = torch.randn(29, 6, generator=g) * 3
    y = torch.randint(0, 4, (29,), generator=g)
    if float_labels:
        y = y.float()
    w = torch.rand(29, generator=g) if weighted else None
    check_same(model, x, L.get("cross_entropy"), y, w)


@pytest.mark.parametrize(
    "loss, y",
    [
        (L.get("cross_entropy", label_smoothing=0.1), torch.randint(0, 3, (11,))),
        (L.get("huber", delta=0.5), torch.randn(11, 3)),
        (L.get("mae"), torch.randn(11, 3)),
        (L.get(lambda out, y: (out - y).abs().pow(3).mean()), torch.randn(11, 3)),
    ],
    ids=["ce-smoothing", "huber", "mae", "custom"],
)
def test_other_losses_take_autograd_on_the_output_and_match(loss, y):
    model = mlp(4, 3, (8, 8), seed=0)
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(0))
    assert loss_grad(loss, model(x).detach(), y, None) is None
    check_same(model, x, loss, y)


def test_a_users_loss_takes_autograds_path_it_may_reach_the_parameters(monkeypatch):
    model = mlp(3, 2, (8,), seed=0)
    plist = list(model.parameters())
    assert MLPStep.build(model, plist, L.get("mse")) is not None
    assert MLPStep.build(model, plist, L.get("huber", delta=2.0)) is not None
    assert MLPStep.build(model, plist, L.get(lambda p, y: (p - y).square().mean())) is None

    # A loss with a penalty that closes over the model: its gradient does not pass through the
    # output, so only autograd's path gets it right. Oracle: a hand-written torch loop.
    calls = []
    monkeypatch.setattr(MLPStep, "grads", lambda *a, **k: calls.append(1))
    X, y = _data(60)
    m = mlp(6, 2, (8,), seed=1)

    def penalized(pred, target):
        return (pred - target).square().mean() + 0.1 * sum(p.square().sum() for p in m.parameters())

    descend.fit(
        m,
        (X, y),
        penalized,
        optimizer=descend.optim.sgd(lr=0.05),
        batch_size=None,
        epochs=3,
        validation=None,
        guard=False,
        verbose=0,
        seed=0,
    )
    assert calls == []
    ref = mlp(6, 2, (8,), seed=1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        pred = ref(X)
        loss = (pred - y).square().mean() + 0.1 * sum(p.square().sum() for p in ref.parameters())
        loss.backward()
        opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_closed_form_losses_equal_the_library_losses():
    g = torch.Generator().manual_seed(0)
    out, w = torch.randn(9, 4, generator=g), torch.rand(9, generator=g)
    y_reg, y_cls = torch.randn(9, 4, generator=g), torch.randint(0, 4, (9,), generator=g)
    for loss, y in [(L.get("mse"), y_reg), (L.get("cross_entropy"), y_cls)]:
        for weight in (None, w):
            value, grad = loss_grad(loss, out.clone(), y, weight)
            o = out.clone().requires_grad_()
            ref = loss(o, y, weight=weight)
            torch.testing.assert_close(value, ref.detach())
            torch.testing.assert_close(grad, torch.autograd.grad(ref, o)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(9, 4), (300, 250), (169, 1)], ids=str)
def test_mse_closed_form_on_either_side_of_the_dot_product_limit(shape, dtype):
    # Small float batches take the value as a dot product of the residual (cheaper than the
    # mse kernel), large ones (300 x 250 > _DOT_MSE_MAX) and 16-bit ones torch's kernel: the
    # value is the library's to float rounding and the gradient exactly 2 (out - y) / n.
    import descend.train._mlp as M

    g = torch.Generator().manual_seed(2)
    out = torch.randn(*shape, generator=g).to(dtype)
    y = torch.randn(*shape, generator=g).to(dtype)
    assert (out.numel() > M._DOT_MSE_MAX) == (shape == (300, 250))
    value, grad = loss_grad(L.get("mse"), out.clone(), y, None)
    ref = torch.nn.functional.mse_loss(out.double(), y.double())
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 0}
    torch.testing.assert_close(value.double(), ref, **tol)
    assert value.dtype == dtype and value.dim() == 0
    assert torch.equal(grad, (out - y).mul_(2.0 / out.numel()))
    torch.testing.assert_close(loss_value(L.get("mse"), out, y).double(), ref, **tol)


def test_evaluation_values_equal_the_library_losses_or_defer_to_them():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(9, 4, generator=g)
    y_reg, y_cls = torch.randn(9, 4, generator=g), torch.randint(0, 4, (9,), generator=g)
    for name, y in [("mse", y_reg), ("cross_entropy", y_cls), ("cross_entropy", y_cls.float())]:
        loss = L.get(name)
        torch.testing.assert_close(loss_value(loss, out, y), loss(out, y))
    # options, other losses, other target shapes: None, and evaluation goes through the loss
    assert loss_value(L.get("cross_entropy", label_smoothing=0.1), out, y_cls) is None
    assert loss_value(L.get("huber"), out, y_reg) is None
    assert loss_value(L.get("mse"), out, y_reg[:, :1]) is None
    assert loss_value(L.get("mse"), out, None) is None


@pytest.mark.parametrize(
    "last", [nn.Tanh(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.LeakyReLU(0.3)], ids=str
)
def test_bias_free_layers_and_a_trailing_activation(last):
    model = nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 2), last)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    check_same(model, x, L.get("mse"), y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2)),
        lambda: mlp(3, 2, (4,), batch_norm=True),
        lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(-0.5), nn.Linear(4, 2)),
        lambda: type("MySeq", (nn.Sequential,), {})(nn.Linear(3, 2)),
        lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 2))),
        lambda: nn.Linear(3, 2),
        lambda: nn.Sequential(),
    ],
    ids=[
        "elu",
        "dropout",
        "batchnorm",
        "activation-first",
        "two-activations",
        "negative-slope",
        "subclass",
        "nested",
        "not-sequential",
        "empty",
    ],
)
def test_other_models_are_left_to_autograd(make):
    model = make()
    assert (
        MLPStep.build(model, [p for p in model.parameters() if p.requires_grad], L.get("mse"))
        is None
    )


def test_frozen_or_shared_parameters_are_left_to_autograd():
    model = mlp(3, 2, (4,), seed=0)
    model.linear1.weight.requires_grad_(False)
    assert (
        MLPStep.build(model, [p for p in model.parameters() if p.requires_grad], L.get("mse"))
        is None
    )
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared)
    assert MLPStep.build(model, list(model.parameters()), L.get("mse")) is None


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_hooks_inputs_and_modes_that_need_autograd():
    model = mlp(3, 2, (4,), seed=0)
    step = MLPStep.build(model, list(model.parameters()), L.get("mse"))
    x = torch.randn(5, 3)
    assert step.usable(x)
    assert not step.usable(torch.randn(2, 5, 3))  # not a 2-D batch
    assert not step.usable(x.double())
    with torch.no_grad():
        assert not step.usable(x)
        assert step.usable(x, training=False)  # evaluation's forward pass
        torch.testing.assert_close(step.forward(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not step.usable(x)
    with torch.autograd.detect_anomaly():
        assert not step.usable(x)
    handle = model.linear1.register_forward_hook(lambda m, i, o: None)
    assert not step.usable(x)
    handle.remove()
    # every kind of module hook, registered after the step was built, on any module
    for register, fn in [
        (model.linear1.register_forward_pre_hook, lambda m, i: None),
        (model.register_full_backward_hook, lambda m, gi, go: None),
        (model[1].register_full_backward_pre_hook, lambda m, go: None),
    ]:
        assert step.usable(x)
        handle = register(fn)
        assert not step.usable(x) and not step.usable(x, training=False)
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert not step.usable(x)
    finally:
        handle.remove()
    assert step.usable(x)


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, :3].sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)).repeat(1, 2)
    return X, y


def test_fit_takes_the_fast_path_and_trains_like_autograd(monkeypatch):
    X, y = _data()
    calls = []
    grads = MLPStep.grads

    def counting(self, *a, **k):
        calls.append(1)
        return grads(self, *a, **k)

    monkeypatch.setattr(MLPStep, "grads", counting)
    forwards = []
    forward = MLPStep.forward
    monkeypatch.setattr(MLPStep, "forward", lambda self, x: forwards.append(1) or forward(self, x))
    fast = descend.fit(mlp(6, 2, (16, 16), seed=0), (X, y), lr=3e-3, epochs=8, verbose=0, seed=0)
    assert len(calls) == fast.steps > 0

    # The same run on autograd's path (a no-op forward hook disables the fast path).
    model = mlp(6, 2, (16, 16), seed=0)
    model.register_forward_hook(lambda m, i, o: None)
    calls.clear()
    slow = descend.fit(model, (X, y), lr=3e-3, epochs=8, verbose=0, seed=0)
    assert calls == []
    torch.testing.assert_close(fast.history.train_loss, slow.history.train_loss, rtol=1e-4, atol=0)
    assert len(fast.history.val_loss) == 8 and len(forwards) >= 8  # evaluation's pass too
    torch.testing.assert_close(fast.history.val_loss, slow.history.val_loss, rtol=1e-4, atol=0)
    for a, b in zip(fast.model.parameters(), slow.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the gradient norm read from the flat buffer is autograd's, step by step
    torch.testing.assert_close(
        fast.history.step_grad_norm, slow.history.step_grad_norm, rtol=1e-3, atol=0
    )


def test_a_transform_that_keeps_its_gradients_gets_fresh_ones():
    """The reused gradient buffer is for the fused optimizer step only: a user's transform may
    keep the tensors it was given, and must find them as they were."""
    from descend.transforms import Transform

    seen: list[dict[str, torch.Tensor]] = []

    def update(grads, state, params=None):
        seen.append(grads)
        return {n: -0.01 * g for n, g in grads.items()}, state

    X, y = _data()
    descend.fit(
        mlp(6, 2, (8,), seed=0),
        (X, y),
        optimizer=Transform(lambda params: (), update),
        epochs=2,
        batch_size=40,
        validation=None,
        verbose=0,
        seed=0,
    )
    assert len(seen) == 6
    first = seen[0]["linear1.weight"]
    assert all(s["linear1.weight"] is not first for s in seen[1:])
    assert not any(torch.equal(s["linear1.weight"], first) for s in seen[1:])


def test_classification_fit_with_sample_weights_matches_autograd():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(90, 4, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    w = torch.rand(90, generator=g)
    runs = []
    for hooked in (False, True):
        model = mlp(4, 3, (12,), seed=0)
        if hooked:
            model.register_forward_hook(lambda m, i, o: None)
        runs.append(
            descend.fit(
                model,
                (X, y),
                "cross_entropy",
                lr=1e-2,
                epochs=5,
                sample_weight=w,
                verbose=0,
                seed=1,
            )
        )
    torch.testing.assert_close(
        runs[0].history.train_loss, runs[1].history.train_loss, rtol=1e-4, atol=0
    )
    assert runs[0].history.metric == pytest.approx(runs[1].history.metric)
    assert runs[0].history.step_grad_norm == pytest.approx(runs[1].history.step_grad_norm, rel=1e-4)


def test_global_hook_flag_reads_torch_state():
    assert not _mlp._global_hooks()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy", "huber"])
def test_gradients_match_autograd_on_cuda(loss_name):
    g = torch.Generator().manual_seed(0)
    model = mlp(6, 3, (32, 32), seed=0).cuda()
    x = torch.randn(50, 6, generator=g).cuda()
    y = (
        torch.randint(0, 3, (50,), generator=g)
        if loss_name == "cross_entropy"
        else torch.randn(50, 3, generator=g)
    )
    w = torch.rand(50, generator=g).cuda()
    for weight in (None, w):
        check_same(model, x, L.get(loss_name), y.cuda(), weight, rtol=1e-4, atol=1e-5)


def test_bf16_training_keeps_autograds_path(monkeypatch):
    calls = []
    monkeypatch.setattr(MLPStep, "grads", lambda *a, **k: calls.append(1))
    X, y = _data(40)
    r = descend.fit(
        mlp(6, 2, (8,), seed=0), (X, y), lr=1e-3, epochs=1, precision="bf16", verbose=0, seed=0
    )
    assert calls == [] and r.steps > 0


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_evaluation_of_a_plain_mlp_equals_the_general_path_exactly(task):
    # evaluate() takes one forward pass without the train/eval switch for a plain MLP; the
    # numbers must be the general path's to the bit (early stopping compares them).
    X, y = _data()
    if task == "classification":
        y, loss, out = (y[:, 0] > 0).long(), "cross_entropy", 2
    else:
        loss, out = "mse", 2
    seen = {}

    class Compare(descend.train.Callback):
        # at the end of fit, while the model is still on the training device (fit hands it
        # back on the caller's device afterwards: on a GPU machine the data stays on the GPU)
        wants_steps = False

        def on_fit_end(self, loop):
            seen["fast"] = loop.evaluate(loop.bundle.val)
            hook = loop.model.register_forward_hook(lambda m, i, o: None)  # the general path
            seen["usable"] = loop._mlp.usable(loop.bundle.val.X, training=False)
            seen["general"] = loop.evaluate(loop.bundle.val)
            hook.remove()

    model = mlp(6, out, (16,), seed=0)
    descend.fit(model, (X, y), loss, lr=3e-3, epochs=2, verbose=0, seed=0, callbacks=[Compare()])
    assert seen["usable"] is False
    assert seen["general"] == seen["fast"]
    assert seen["fast"][1] is not None  # the metric (accuracy or R²) is computed too


@pytest.mark.parametrize("where", ["epoch_callback", "step_callback"])
def test_a_hook_added_mid_run_takes_effect_at_the_next_step_it_can(where):
    # Without step callbacks the fast step's conditions are checked once per epoch (only user
    # code can change them); a hook added by an epoch callback must be honoured from the next
    # epoch's first step, one added by a step callback from the next step.
    X, y = _data(64)
    calls = []

    class AddHook(descend.train.Callback):
        wants_steps = where == "step_callback"

        def _add(self, loop):
            if not calls:
                calls.append(("added at step", loop.step))
                loop.model.register_forward_hook(lambda m, i, o: calls.append(loop.step))

        def on_epoch_end(self, loop):
            if where == "epoch_callback":
                self._add(loop)

        def on_step_end(self, loop):
            if where == "step_callback" and loop.step == 3:
                self._add(loop)

    r = descend.fit(
        mlp(6, 2, (8,), seed=0),
        (X, y),
        lr=1e-3,
        epochs=3,
        batch_size=16,
        verbose=0,
        seed=0,
        validation=None,
        callbacks=[AddHook()],
    )
    added = calls[0][1]
    trained = [s for s in calls[1:] if isinstance(s, int)]
    # every training step after the hook went through the module (the general path): the hook
    # saw the step counter at each of them (evaluation passes may add more calls)
    assert set(range(added, r.steps)) <= set(trained)


def test_one_step_object_follows_a_change_of_loss_shapes_and_parameters():
    """The step resolves its layers once and remembers the last loss's closed form: a new loss,
    new batch shapes or a parameter replaced on the module must still give autograd's numbers."""
    model = mlp(5, 3, (16, 8), seed=4)
    plist = [p for p in model.parameters() if p.requires_grad]
    step = MLPStep.build(model, plist, L.get("mse"))
    g = torch.Generator().manual_seed(5)
    cases = [
        (L.get("mse"), torch.randn(13, 5, generator=g), torch.randn(13, 3, generator=g)),
        (
            L.get("huber", delta=0.3),
            torch.randn(13, 5, generator=g),
            torch.randn(13, 3, generator=g),
        ),
        (L.get("mse"), torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)),
        (
            L.get("cross_entropy"),
            torch.randn(9, 5, generator=g),
            torch.randint(0, 3, (9,), generator=g),
        ),
        (L.get("mse"), torch.randn(13, 5, generator=g), torch.randn(13, 3, generator=g)),
    ]
    for i, (loss, x, y) in enumerate(cases):
        if i == 2:  # a user replaces a layer's weight between steps
            model[0].weight = nn.Parameter(torch.randn(16, 5, generator=g))
            plist[0] = model[0].weight
        value, out, grads = step.grads(x, loss, y, None, flat=True)
        ref_value, ref_out, ref_grads = autograd_reference(model, x, loss, y, None)
        torch.testing.assert_close(value, ref_value)
        torch.testing.assert_close(out, ref_out)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(step.forward(x), ref_out)
    assert torch.is_grad_enabled()  # the step put the grad mode back
    with torch.no_grad():
        step.forward(cases[0][1])
        assert not torch.is_grad_enabled()
