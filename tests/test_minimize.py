from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import descend
from descend import ConfigError, InputError, StopReason


def rosen(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def test_lbfgs_finds_rosenbrock_minimum():
    x0 = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    r = descend.minimize(rosen, x0)
    torch.testing.assert_close(r.params["x"], torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    assert r.best_loss < 1e-8
    assert r.stop_reason is StopReason.CONVERGED
    assert torch.equal(x0, torch.tensor([-1.5, 2.0], dtype=torch.float64))  # input untouched


def test_adam_on_rosenbrock_gets_close():
    r = descend.minimize(
        rosen,
        torch.tensor([-1.0, 1.0], dtype=torch.float64),
        method=descend.optim.adam(lr=2e-2),
        steps=5000,
    )
    assert r.best_loss < 1e-4
    assert len(r.history.step_loss) == r.steps


def test_dict_params_curve_fit():
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    y = 3 * x + 0.5

    def obj(p):
        return ((p["a"] * x + p["b"] - y) ** 2).mean()

    r = descend.minimize(
        obj,
        {"a": torch.tensor(0.0, dtype=torch.float64), "b": torch.tensor(0.0, dtype=torch.float64)},
    )
    assert r.params["a"].item() == pytest.approx(3.0, abs=1e-6)
    assert r.params["b"].item() == pytest.approx(0.5, abs=1e-6)


def test_non_scalar_objective_is_refused():
    with pytest.raises(InputError, match="scalar"):
        descend.minimize(lambda x: x * 2, torch.ones(3))


def test_bad_method_is_refused():
    with pytest.raises(ConfigError):
        descend.minimize(rosen, torch.zeros(2), method="no_such_optimizer")


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_an_objective_cut_off_from_the_parameters_is_refused(method):
    # A detached objective used to die inside autograd ("element 0 of tensors does not require
    # grad"); it is the user's bug, and the message says where to look.
    with pytest.raises(InputError, match=r"must compute its result.*\.detach\(\)"):
        descend.minimize(lambda x: x.detach().sum(), torch.ones(2), method=method)


def test_a_numpy_start_or_a_number_is_the_tensor_x():
    # scipy.optimize users start from numpy arrays and floats (refused before).
    r = descend.minimize(lambda p: ((p - 3) ** 2).sum(), np.zeros(3))
    assert r.params["x"].dtype == torch.float64
    np.testing.assert_allclose(r.params["x"].detach().numpy(), 3.0, atol=1e-6)
    r = descend.minimize(lambda p: (p - 2) ** 2, 0.5)
    assert abs(float(r.params["x"]) - 2.0) < 1e-5
    with pytest.raises(ConfigError, match=r"a numpy array or a number"):
        descend.minimize(lambda p: p.sum(), "x")


def test_an_objective_without_a_minimum_is_not_called_converged():
    # L-BFGS on a linear objective ran the point off to -2.8e23 and said "Converged after 3
    # iterations: ... fell below tolerance".
    r = descend.minimize(lambda x: x.sum(), torch.zeros(2))
    assert r.stop_reason is StopReason.DIVERGED
    assert (
        r.stop_message.startswith("Diverged: the objective fell without bound (from 0 to -5.5")
        and "it has no minimum as written. Bound it" in r.stop_message
    )
    # gradient descent on -|x|^2 doubles x every step: stopped once x ran 1e8-fold off
    r = descend.minimize(
        lambda x: -(x**2).sum(), torch.ones(2), method=descend.optim.sgd(lr=0.5), steps=400
    )
    assert r.stop_reason is StopReason.DIVERGED and r.steps < 60


def test_stop_sentences_say_which_test_ended_the_run():
    r = descend.minimize(lambda x: (x**2).sum(), torch.ones(1))
    assert r.stop_message == (
        "Converged after 1 iteration: the gradient norm fell below gtol=1e-09. Best value 0."
    )
    # Adam at a fixed rate circles the minimum: a stall, with its gradient norm shown
    r = descend.minimize(lambda x: (x**2).sum(), torch.ones(2), method=descend.optim.adam(lr=0.1))
    assert r.stop_reason is StopReason.CONVERGED
    assert re.match(
        r"Stopped after \d+ iterations: the objective improved by less than tol=1e-12 "
        r"\(relative\) for 20 steps in a row; the gradient norm is [0-9.e-]+\. Best value ",
        r.stop_message,
    )


def test_the_starting_point_is_never_modified():
    """A leaf that requires grad (an nn.Parameter) was optimized in place, its .grad filled."""
    x0 = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    r = descend.minimize(lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2, x0)
    assert x0.tolist() == [-1.5, 2.0] and x0.grad is None
    assert torch.allclose(r.params["x"], torch.ones(2, dtype=torch.float64), atol=1e-4)
    w = torch.nn.Parameter(torch.zeros(3))
    descend.minimize(lambda d: ((d["w"] - 2) ** 2).sum(), {"w": w}, method="adam", steps=50)
    assert torch.equal(w.detach(), torch.zeros(3)) and w.grad is None


def test_lbfgs_counts_iterations_and_keeps_a_finite_start_as_its_best():
    rosen = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # noqa: E731
    calls = []

    def counted(p):
        calls.append(1)
        return rosen(p)

    r = descend.minimize(counted, torch.tensor([-1.5, 2.0], dtype=torch.float64), steps=1)
    assert r.steps == 1 and len(calls) <= 6  # one iteration (was a block of 20)
    # a line search stepping where fn is NaN: the start stays the best point, with its value
    f = lambda x: ((x - 5) ** 2).sum() + 0 * torch.sqrt(3 - x).sum()  # noqa: E731
    r = descend.minimize(f, torch.zeros(1))
    assert r.stop_reason is descend.StopReason.DIVERGED and r.best_loss == 25.0
    assert "Best value 25" in r.stop_message and "method='lbfgs'" not in r.stop_message


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: descend.minimize(lambda x: torch.log(x).sum(), -torch.ones(2)),
         "must be finite at the starting point"),
        (lambda: descend.minimize(lambda z: (z.abs() ** 2).sum(), torch.tensor([1 + 1j])),
         "must be real"),
        (lambda: descend.minimize(lambda x: (x**2).sum(), torch.ones(2), patience=0),
         "patience must be an integer >= 1"),
        (lambda: descend.minimize(lambda x: (x**2).sum(), torch.ones(2), steps=True),
         "steps must be an integer >= 1"),
        (lambda: descend.minimize(lambda x: (x**2).sum(), torch.ones(2), tol=-1),
         "tol must be a finite number >= 0"),
        (lambda: descend.minimize(lambda x: (x**2).sum(), torch.ones(2), max_time=-1),
         "max_time must be a finite number > 0"),
    ],
)  # fmt: skip
def test_bad_starts_and_settings_are_refused(call, says):
    with pytest.raises(descend.DescendError, match=re.escape(says)):
        call()


def test_the_recorded_rate_is_the_one_each_step_applied():
    warm = descend.schedules.linear_warmup(4)
    r = descend.minimize(
        lambda x: (x**2).sum(), torch.ones(2), method=descend.optim.sgd(lr=0.1, schedule=warm),
        steps=6, patience=100,
    )  # fmt: skip
    assert r.history.step_lr == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "must hold at least one parameter to optimize; got an empty dict"),
        ([], "must hold at least one parameter to optimize; got an empty list"),
        ({"a": "1.0"}, "minimize(params['a']) must be a tensor, a numpy array, a number or a"),
        ({"a": None}, "minimize(params['a']) must be a tensor, a numpy array, a number or a"),
        ([torch.zeros(2), [[1.0, 2.0], [3.0]]], "minimize(params['1']) must be a tensor"),
    ],
)  # fmt: skip
def test_params_with_nothing_to_optimize_are_refused(params, says, method):
    """Were torch's 'optimizer got an empty parameter list' (or, with a descend method, a
    run of nothing), "new(): invalid data type 'str'", 'Could not infer dtype of NoneType'
    and 'expected sequence of length 2 at dim 1 (got 1)' from inside torch.as_tensor."""
    with pytest.raises(ConfigError, match=re.escape(says)):
        descend.minimize(lambda p: torch.tensor(0.0, requires_grad=True), params, method=method)


def test_lbfgs_reports_the_gradient_at_the_point_it_returns():
    """The norm was read from the .grad of the line search's last trial, not the accepted
    point: runs stopped as 'Converged: the gradient norm fell below gtol' where it had not."""
    g = torch.Generator().manual_seed(6)
    A = torch.randn(5, 5, dtype=torch.float64, generator=g)
    x0 = torch.randn(5, dtype=torch.float64, generator=g)

    def f(x):
        return torch.logsumexp(A @ x, 0) + (x**4).sum()

    r = descend.minimize(f, x0)
    assert r.history.step_loss[-1] == r.best_loss  # the last record is the returned point
    x = r.params["x"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    assert r.history.step_grad_norm[-1] == pytest.approx(float(grad.norm()), rel=1e-3, abs=1e-15)
    if "fell below gtol" in r.stop_message:
        assert float(grad.norm()) < 1e-9


def test_patience_counts_steps_that_fail_to_improve_not_the_start():
    """The first evaluation (the start itself) was counted as a step that did not improve on
    the start: patience=1 stopped before taking any step."""
    f = lambda x: ((x - 1) ** 2).sum()  # noqa: E731
    r = descend.minimize(f, torch.zeros(2), method=descend.optim.adam(lr=0.1), patience=1)
    assert r.best_loss < 2.0 and len(r.history.step_loss) > 1


def test_an_optimizer_name_without_a_default_rate_is_refused_in_minimize_terms():
    """method='sgd' was refused as "optim.get('sgd') needs lr ... pass optim.get('sgd',
    lr=0.01)", a call the user never made; an unknown name's list left out 'lbfgs'."""
    with pytest.raises(ConfigError, match=re.escape("method=descend.optim.get('sgd', lr=1e-2)")):
        descend.minimize(rosen, torch.zeros(2), method="sgd")
    with pytest.raises(ConfigError, match=r"minimize\(method\).*'lbfgs'.*'adam'"):
        descend.minimize(rosen, torch.zeros(2), method="no_such_optimizer")
    r = descend.minimize(rosen, torch.zeros(2), method=descend.optim.get("sgd", lr=1e-3), steps=5)
    assert r.best_loss < 1.0


def test_the_last_update_of_the_budget_is_not_thrown_away():
    """The loop scored a point and then updated it: the budget's last update was never
    scored, so steps=1 returned the start unchanged and every run lost its last step."""
    f = lambda x: ((x - 1) ** 2).sum()  # noqa: E731
    r = descend.minimize(f, torch.zeros(1), method=descend.optim.sgd(lr=0.1), steps=1)
    assert r.stop_reason is StopReason.MAX_EPOCHS and r.steps == 1
    assert r.params["x"].item() == pytest.approx(0.2) and r.best_loss == pytest.approx(0.64)
    assert "Best value 0.64." in r.stop_message
    r = descend.minimize(f, torch.zeros(1), method=descend.optim.sgd(lr=0.1), steps=3)
    assert r.params["x"].item() == pytest.approx(1 - 0.8**3)


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_minimize_works_when_called_under_no_grad(method):
    """L-BFGS (torch enables grad in its closure) worked under torch.no_grad(); a descend
    optimizer failed with torch's 'element 0 of tensors does not require grad'."""
    with torch.no_grad():
        r = descend.minimize(lambda x: ((x - 1) ** 2).sum(), torch.zeros(2), method=method)
    assert r.best_loss < 1.5 and r.params["x"].requires_grad is False


def test_the_stall_sentence_names_what_it_counted():
    """It read 'improved by less than tol for 2 in a row' for L-BFGS at patience=20: two of
    what (its calls of up to 20 iterations), and why not 20?"""
    f = lambda x: (x.abs() ** 1.5).sum() + 1  # noqa: E731
    r = descend.minimize(f, torch.ones(2, dtype=torch.float64), tol=1e-3)
    assert r.stop_reason is StopReason.CONVERGED
    assert "for 2 L-BFGS calls (of up to 20 iterations) in a row" in r.stop_message
