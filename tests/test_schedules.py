"""Schedules: values at key steps, continuity, agreement with torch's schedulers, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import descend
from descend import schedules as S
from descend._errors import ConfigError


def _max_jump(schedule, steps):
    values = [schedule(t) for t in range(steps)]
    return max(abs(a - b) for a, b in itertools.pairwise(values))


def test_constant():
    s = S.constant()
    assert [s(t) for t in (0, 1, 10**9)] == [1.0, 1.0, 1.0]
    assert repr(s) == "constant()"


def test_linear_warmup():
    s = S.linear_warmup(4)
    assert [s(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert S.linear_warmup(0)(0) == 1.0


def test_cosine_key_values_and_continuity():
    s = S.cosine(100)
    assert s(0) == 1.0
    assert s(50) == pytest.approx(0.5)
    assert s(100) == 0.0 and s(1000) == 0.0
    assert s(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    s = S.cosine(110, final=0.1, warmup_steps=10)
    assert s(0) == pytest.approx(0.1) and s(9) == 1.0 and s(10) == 1.0
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(110) == pytest.approx(0.1)
    assert _max_jump(s, 200) < 0.11  # steps of at most 1/W during warmup, smooth after
    assert all(s(t) >= s(t + 1) for t in range(10, 200))
    assert repr(s) == "cosine(total_steps=110, final=0.1, warmup_steps=10)"


def test_cosine_matches_torch_cosine_annealing():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.2)
    s = S.cosine(50, final=0.2)
    for t in range(50):
        assert s(t) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_warmup_stable_decay():
    s = S.warmup_stable_decay(100, warmup_steps=10, decay_fraction=0.2, final=0.0)
    assert s(0) == pytest.approx(0.1) and s(9) == 1.0
    assert s(10) == 1.0 and s(79) == 1.0
    assert s(80) == 1.0 and s(90) == pytest.approx(0.5) and s(99) == pytest.approx(0.05)
    assert s(100) == 0.0 and s(10**6) == 0.0
    assert _max_jump(s, 120) <= 0.1 + 1e-12
    s = S.warmup_stable_decay(10, 0, decay_fraction=0.0, final=0.5)
    assert [s(t) for t in range(10)] == [1.0] * 10 and s(10) == 0.5
    s = S.warmup_stable_decay(10, 0, decay_fraction=1.0, final=0.5)
    assert s(0) == 1.0 and s(5) == pytest.approx(0.75) and s(10) == 0.5


@pytest.mark.parametrize(
    ("total", "pct", "div", "final_div"), [(100, 0.3, 25.0, 1e4), (37, 0.25, 10.0, 100.0)]
)
def test_one_cycle_matches_torch(total, pct, div, final_div):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=2.0,
        total_steps=total,
        pct_start=pct,
        div_factor=div,
        final_div_factor=final_div,
        cycle_momentum=False,
    )
    s = S.one_cycle(total, pct_start=pct, div_factor=div, final_div_factor=final_div)
    for t in range(total):
        assert 2.0 * s(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), t
        opt.step()
        sched.step()
    assert s(total + 5) == pytest.approx(1 / div / final_div)
    assert max(s(t) for t in range(total)) == pytest.approx(
        1.0, abs=1e-2
    )  # peak may fall between steps


def test_join():
    s = S.join([S.linear_warmup(10), S.cosine(90), S.constant()], [10, 100])
    assert s(0) == pytest.approx(0.1) and s(9) == 1.0
    assert s(10) == 1.0  # cosine starts at its own step 0
    assert s(55) == pytest.approx(0.5)
    assert s(99) == pytest.approx(S.cosine(90)(89))
    assert s(100) == 1.0 and s(10**6) == 1.0
    assert "join([linear_warmup(warmup_steps=10), cosine(" in repr(s)
    assert S.join([lambda t: 0.5], [])(7) == 0.5


def test_negative_step_is_refused():
    with pytest.raises(ConfigError, match=r"schedule step must be >= 0 \(0-based\); got -1"):
        S.cosine(10)(-1)


BAD = [
    (lambda: S.linear_warmup(-1), r"linear_warmup: warmup_steps must be an integer >= 0; got -1"),
    (lambda: S.linear_warmup(2.5), r"linear_warmup: warmup_steps must be an integer >= 0; got 2.5"),
    (lambda: S.cosine(0), r"cosine: total_steps must be an integer >= 1; got 0"),
    (lambda: S.cosine(True), r"cosine: total_steps must be an integer >= 1; got True"),
    (lambda: S.cosine(10, final=1.5), r"cosine: final must be in \[0.0, 1.0\]; got 1.5"),
    (
        lambda: S.cosine(10, warmup_steps=10),
        r"cosine: warmup_steps must be < total_steps=10; got 10 — shorten the warmup",
    ),
    (
        lambda: S.warmup_stable_decay(100, 90, decay_fraction=0.2),
        r"warmup_stable_decay: warmup_steps must be <= the first decay step 80",
    ),
    (
        lambda: S.warmup_stable_decay(100, 10, decay_fraction=1.5),
        r"warmup_stable_decay: decay_fraction must be in \[0.0, 1.0\]; got 1.5",
    ),
    (
        lambda: S.warmup_stable_decay(100, 10, final=-0.1),
        r"warmup_stable_decay: final must be in \[0.0, 1.0\]",
    ),
    (lambda: S.one_cycle(1), r"one_cycle: total_steps must be an integer >= 2; got 1"),
    (lambda: S.one_cycle(100, pct_start=0.0), r"one_cycle: pct_start must be in \(0.0, 1.0\)"),
    (lambda: S.one_cycle(100, div_factor=0), r"one_cycle: div_factor must be a finite number > 0"),
    (
        lambda: S.one_cycle(100, final_div_factor=-1),
        r"one_cycle: final_div_factor must be a finite number > 0",
    ),
    (
        lambda: S.one_cycle(100, div_factor=0.04),
        r"one_cycle: div_factor must be >= 1 \(the peak over the starting rate\); got 0.04 — "
        r"it divides the peak: pass e.g. div_factor=25",
    ),
    (
        lambda: S.one_cycle(100, div_factor=25, final_div_factor=1e-4),
        r"one_cycle: final_div_factor must be >= 1 / div_factor = 0.04 \(the final rate may not "
        r"exceed the peak\); got 0.0001",
    ),
    (
        lambda: S.one_cycle(3, pct_start=0.3),
        r"one_cycle: pct_start must leave at least one step before and after the peak",
    ),
    (lambda: S.join([], []), r"join: schedules must be a non-empty list of callables"),
    (
        lambda: S.join(S.cosine(10), []),
        r"join: schedules must be a non-empty list of callables step -> float; got cosine\(",
    ),
    (
        lambda: S.join([S.constant(), S.constant()], 10),
        r"join: boundaries must be a list of integers; got 10 — pass one boundary per switch",
    ),
    (lambda: S.join([1.0, 2.0], [5]), r"join: schedules must be a non-empty list of callables"),
    (
        lambda: S.join([S.constant(), S.constant()], []),
        r"join: boundaries must have len\(schedules\) − 1 = 1 entries; got 0 entries",
    ),
    (
        lambda: S.join([S.constant()] * 3, [10, 5]),
        r"join: boundaries must be strictly increasing integers > 0; got \[10, 5\]",
    ),
    (
        lambda: S.join([S.constant()] * 2, [0]),
        r"join: boundaries must be strictly increasing integers > 0",
    ),
]


@pytest.mark.parametrize(("build", "pattern"), BAD, ids=[p[:40] for _, p in BAD])
def test_bad_arguments(build, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build()


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_a_schedule_returning_a_non_number_is_named(impl):
    from descend import optim
    from descend.transforms import update_and_apply

    tx = optim.adamw(lr=1e-2, schedule=lambda step: "fast", impl=impl)
    params = {"w": torch.zeros(3)}
    state = tx.init(params)
    with pytest.raises(
        ConfigError, match=r"schedule\(step\) must return a number.*'fast' at step 0"
    ):
        update_and_apply(tx, {"w": torch.ones(3)}, state, params)


def test_join_takes_numpy_boundaries():
    import numpy as np

    s = descend.schedules
    a = s.join([s.linear_warmup(5), s.cosine(50)], [5])
    b = s.join([s.linear_warmup(5), s.cosine(50)], np.array([5]))
    assert [a(t) for t in range(0, 60, 7)] == [b(t) for t in range(0, 60, 7)]
