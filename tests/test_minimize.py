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
        r"\(relative\) for 20 in a row; the gradient norm is [0-9.e-]+\. Best value ",
        r.stop_message,
    )
