"""The zero-tuning benchmark's own judgement (benchmarks/suite.py): the interval over seeds, the
verdict it prints, and the tuned peer's grid that extends past an edge. These decide what
RESULTS.md says of each workload, so they are tested like library code (speed is not)."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("suite_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_interval_is_students_t_over_the_seeds(suite):
    from scipy import stats

    ratios = [0.98, 1.03, 1.01, 0.97, 1.05, 1.00]
    lo, hi = suite.ratio_interval(ratios)
    mean, sem = statistics.fmean(ratios), stats.sem(ratios)
    want = stats.t.interval(0.95, len(ratios) - 1, loc=mean, scale=sem)
    assert lo == pytest.approx(want[0], rel=1e-12)
    assert hi == pytest.approx(want[1], rel=1e-12)


def test_no_interval_from_one_seed_or_a_diverged_run(suite):
    assert all(math.isnan(x) for x in suite.ratio_interval([1.2]))
    assert all(math.isnan(x) for x in suite.ratio_interval([1.0, math.inf, 0.9]))


def test_the_verdict_says_what_the_seeds_can_tell(suite):
    assert suite.verdict([0.99, 1.02, 1.01]) == "within 1%"  # the mean, 1.0067
    assert suite.verdict([1.20, 1.21, 1.22, 1.19]) == "miss"  # the whole interval above
    assert suite.verdict([0.90, 1.40]) == "open"  # mean 1.15, interval reaches below 1.01
    assert suite.verdict([1.5]) == "open"  # one seed cannot tell
    assert suite.verdict([1.0, math.inf]) == "miss"  # a diverged seed


def _fake_loop(suite, best_at, calls):
    """A stand-in for torch_loop whose best validation loss is |log10(lr / best_at)|."""

    def loop(w, s, seed, make, method):
        lr = float(method.split("@")[1])
        calls.append(lr)
        return suite.Run(method, [abs(math.log10(lr / best_at)) + 1.0], [0.0], 1.0, 0.0)

    return loop


@pytest.mark.parametrize(
    ("best_at", "extra", "picked"),
    [
        (3e-3, [], 3e-3),  # inside the grid: nothing added
        (0.3, [0.09, 0.3, 0.9], 0.3),  # past the top: extended until the best is inside
        (1e-5, [3e-5, 9e-6, 3e-6], 9e-6),  # past the bottom (rates rounded to one digit)
        (100.0, [0.09, 0.3, 0.9, 3.0], 3.0),  # at most GRID_EXTEND more rates
    ],
)
def test_the_tuned_grid_extends_past_an_edge(suite, monkeypatch, best_at, extra, picked):
    calls: list[float] = []
    monkeypatch.setattr(suite, "torch_loop", _fake_loop(suite, best_at, calls))
    run = suite.grid_search(None, None, 0, lambda lr: None, "adamw-tuned")
    assert calls == [*suite.GRID, *extra]
    assert run.info["lr"] == pytest.approx(picked)
    assert len(run.info["grid"]) == len(suite.GRID) + len(extra)
    assert run.info["grid_wall"] == pytest.approx(len(calls))


def test_the_overview_shows_when_one_seed_carries_the_mean(suite):
    # Tuned's best near zero on one seed: that seed's ratio (8) carries the mean ratio (3.32),
    # the verdict stays on the mean, and the median and the ratio of mean losses show the rest.
    def row(method, best, ratios):
        return {
            "method": method,
            "best_val": statistics.fmean(best),
            "ratio": statistics.fmean(ratios),
            "ratios": ratios,
            "test_loss_ratio": 1.0,
            "wall_vs_tuned_run": 1.0,
        }

    tuned = [0.05, 0.04, 0.005]
    ours = [0.045, 0.042, 0.04]
    ratios = [o / t for o, t in zip(ours, tuned)]
    entry = {
        "workload": "w",
        "rows": [row("adamw-tuned", tuned, [1.0] * 3), row("descend", ours, ratios)],
    }
    table = suite.overview([entry]).splitlines()
    header, line = ([c.strip() for c in t.strip("|").split("|")] for t in (table[2], table[-1]))
    got = dict(zip(header, line))
    assert got["mean ratio"] == f"{statistics.fmean(ratios):.3f}" == "3.317"
    assert got["median ratio"] == "1.050"
    assert got["mean loss vs tuned's"] == f"{statistics.fmean(ours) / statistics.fmean(tuned):.3f}"
    assert got["mean loss vs tuned's"] == "1.337"
    assert got["verdict"] == "open"
    assert got["seeds below tuned"] == "1 of 3"
