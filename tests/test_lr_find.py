"""descend.lr_find: the learning-rate range test as an advice tool."""

from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
import torch

import descend
from descend import ConfigError
from descend.train.lr_find import LRFindResult, analyze, lr_find
from helpers.raw_targets import raw_targets_50


def _regression(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5]) + 0.1 * torch.randn(n, generator=g)
    return X, y


def _model_with_buffers():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )


def test_model_and_global_rng_are_left_exactly_as_they_were():
    X, y = _regression()
    model = _model_with_buffers()
    params = list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    found = lr_find(model, (X, y), "mse", steps=40, seed=0)
    assert len(found.lrs) > 10
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():  # weights AND BatchNorm running statistics
        assert torch.equal(after[k], v), k
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert not model.training  # the mode is untouched too
    assert torch.equal(torch.get_rng_state(), rng)


def test_curve_is_an_exponential_sweep_and_stops_at_divergence():
    X, y = _regression()
    found = lr_find(torch.nn.Linear(6, 1), (X, y), "mse", start_lr=1e-5, end_lr=1e4, steps=80)
    lrs = found.lrs
    assert lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)  # constant factor per step
    assert ratios[0] == pytest.approx((1e4 / 1e-5) ** (1 / 79), rel=1e-9)
    # AdamW at lr 1e4 cannot fit this: the sweep ends early instead of running to end_lr.
    assert len(lrs) < 80
    assert "passed" in found.stop or "non-finite" in found.stop
    assert found.suggestion == pytest.approx(found.min_lr / 10)
    assert found.descended


def test_suggestion_trains_well_and_beats_the_sweep_extremes():
    X, y = _regression()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    found = lr_find(model, (X, y), "mse", steps=100, seed=0)
    assert 1e-3 < found.suggestion < 1.0
    assert "passed" in found.stop  # it saw the blow-up, so the minimum is a real one

    def final_loss(lr):
        m = copy.deepcopy(model)
        descend.fit(m, (X, y), "mse", lr=lr, epochs=3, validation=None, verbose=0, seed=0)
        with torch.no_grad():
            return torch.nn.functional.mse_loss(m(X).squeeze(-1), y).item()

    good = final_loss(found.suggestion)
    assert good < 0.2 * final_loss(1e-5)  # far better than a timid rate
    assert good < final_loss(found.min_lr * 10)  # and than a reckless one


def test_same_seed_same_curve_and_other_optimizers():
    X, y = _regression()
    a = lr_find(torch.nn.Linear(6, 1), (X, y), "mse", steps=30, seed=3)
    torch.manual_seed(123)  # the global state must not matter
    b = lr_find(torch.nn.Linear(6, 1), (X, y), "mse", steps=30, seed=3)
    assert a.lrs == b.lrs
    # Same initial weights are not guaranteed by the two Linear(6, 1) above, so compare a
    # deep copy swept twice.
    torch.manual_seed(0)
    m = torch.nn.Linear(6, 1)
    c = lr_find(m, (X, y), "mse", steps=30, seed=3)
    d = lr_find(m, (X, y), "mse", steps=30, seed=3)
    assert c.losses == d.losses
    e = lr_find(m, (X, y), "mse", optimizer="sgd", steps=30, seed=3, end_lr=1.0)
    assert e.optimizer == "sgd" and len(e.lrs) >= 10


def test_plot_is_saved(tmp_path):
    X, y = _regression()
    path = tmp_path / "lr.png"
    found = lr_find(torch.nn.Linear(6, 1), (X, y), "mse", steps=30, plot=path)
    assert isinstance(found, LRFindResult)
    assert path.exists() and path.stat().st_size > 1000
    other = tmp_path / "again.svg"
    found.plot(other)
    assert other.exists()


def test_classification_and_repr():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    found = lr_find(torch.nn.Linear(5, 2), (X, y), "cross_entropy", steps=40)
    assert math.isfinite(found.suggestion)
    assert "suggestion=" in repr(found)


def test_analyze_flat_curve_is_not_a_descent():
    lrs = [1e-6 * 1.2**i for i in range(50)]
    a = analyze(lrs, [1.0] * 50)
    assert not a["descended"]
    assert a["suggestion"] >= lrs[0]


def test_bad_arguments_are_refused_with_the_fix():
    X, y = _regression(64)
    m = torch.nn.Linear(6, 1)
    with pytest.raises(ConfigError, match="end_lr"):
        lr_find(m, (X, y), "mse", start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="steps"):
        lr_find(m, (X, y), "mse", steps=3)
    with pytest.raises(ConfigError, match="diverge"):
        lr_find(m, (X, y), "mse", diverge=1.0)
    with pytest.raises(ConfigError, match=r"torch\.nn\.Module"):
        lr_find(lambda x: x, (X, y), "mse")
    with pytest.raises(ConfigError, match="optimizer"):
        lr_find(m, (X, y), "mse", optimizer="adamm")


def _sweep_curve(shape, n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    lrs = [1e-6 * (1e6 ** (i / (n - 1))) for i in range(n)]
    noise = (torch.rand(n, generator=g) - 0.5).tolist()
    return lrs, [shape(lr) + 0.05 * e for lr, e in zip(lrs, noise)]


def test_a_sharp_valley_is_read_at_its_minimum():
    # falls from 2.3 to its minimum at lr 0.03 and blows up right after: a plain MLP's curve
    def shape(lr):
        x = math.log10(lr / 0.03)
        return 0.3 + 2.0 / (1 + math.exp(4 * (x + 1.5))) + (5.0 * x * x if x > 0 else 0.0)

    lrs, losses = _sweep_curve(shape)
    a = analyze(lrs, losses)
    assert a["descended"] and not a["flat_bottom"]
    lo, hi = a["valley"]
    assert math.log10(hi / lo) <= 1.0
    assert a["suggestion"] == pytest.approx(a["min_lr"] / 10)
    assert 0.01 < a["min_lr"] < 0.06


def test_a_curve_still_falling_at_the_top_of_the_sweep_is_flagged():
    # The loss falls from 1 and is still falling at the sweep's last rate: that rate is no
    # ceiling ("at_top"). A curve whose minimum lies before the top, or that blows up, is not.
    def falling(lr):
        return 1.0 / (1 + lr)

    def valley(lr):
        x = math.log10(lr / 0.03)
        return 0.3 + 2.0 / (1 + math.exp(4 * (x + 1.5))) + (5.0 * x * x if x > 0 else 0.0)

    lrs, losses = _sweep_curve(falling)
    a = analyze(lrs, losses)
    assert a["descended"] and not a["diverged"] and a["at_top"]
    assert a["min_lr"] == lrs[-1]
    assert not analyze(*_sweep_curve(valley))["at_top"]
    blown = [*losses[:-5], float("nan")]
    assert not analyze(lrs[: len(blown)], blown)["at_top"]


def test_lr_find_says_when_the_loss_was_still_falling_at_end_lr():
    # Targets spread over thousands: Adam at rates up to 1 has only begun to fit them, the
    # minimum is the sweep's last rate, and min/10 is a floor, not a reading: lr_find says so.
    X, y, model = raw_targets_50()
    r = lr_find(model, (X, y), "mse", end_lr=1.0, steps=100)
    assert r.at_top and r.min_lr == r.lrs[-1]
    assert "still falling" in r.stop and "end_lr=100" in r.stop
    scaled = lr_find(model, (X, y / 3000), "mse", steps=100)  # the same data, standardized
    assert not scaled.at_top and "still falling" not in scaled.stop


def test_a_flat_bottom_is_read_at_its_left_edge():
    # falls to a floor at lr ~0.01 and stays there up to lr 1 (batch norm: no blow-up), with
    # noise: the minimum lands anywhere on the floor, the floor's left edge does not move
    def shape(lr):
        return 0.3 + 2.0 / (1 + math.exp(4 * (math.log10(lr / 0.01) + 1.0)))

    reads, minima = [], []
    for seed in range(5):
        lrs, losses = _sweep_curve(shape, seed=seed)
        a = analyze(lrs, losses)
        assert a["descended"] and a["flat_bottom"] and not a["diverged"]
        lo, hi = a["valley"]
        assert math.log10(hi / lo) > 1.0 and a["suggestion"] == pytest.approx(lo / 10)
        reads.append(a["suggestion"])
        minima.append(a["min_lr"])
    assert max(reads) / min(reads) < 2.0  # the left edge is stable from seed to seed
    assert all(0.0005 < r < 0.005 for r in reads)
    # the minimum sits at the far end of the floor: read there, the rate would be 100x higher
    assert min(minima) / 10 > 10 * max(reads)
    # lr_find's result carries the same reading
    from descend.train.lr_find import _result

    r = _result(lrs, losses, diverge=4.0, steps=len(lrs), end_lr=1.0, optimizer="adamw")
    assert r.flat_bottom and r.valley == a["valley"] and r.suggestion == a["suggestion"]


def test_a_flat_curve_that_blows_up_is_read_at_its_stable_edge_not_its_noise_minimum():
    # a matrix factorization's sweep (session 13): the loss does not move at any rate until it
    # rises and blows up near lr 0.3; the noise minimum lands anywhere below. Read the edge.
    def shape(lr):
        return 1.2 if lr < 0.2 else 1.2 * (lr / 0.2) ** 4

    reads, minima, flat = [], [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        lrs = [1e-6 * (1e6 ** (i / 96)) for i in range(97)]
        noise = torch.randn(97, generator=g).tolist()
        losses = [shape(lr) * (1 + 0.15 * e) for lr, e in zip(lrs, noise)]
        a = analyze(lrs, losses)
        assert a["diverged"]
        flat.append(not a["descended"])
        reads.append(a["suggestion"])
        minima.append(a["min_lr"])
    # Read at the edge (~0.2) / 10; a noise dip can pass for a descent only near the edge
    # (seed 3: a dip at 0.087), so a misreading costs at most that distance.
    assert sum(flat) >= 5
    assert all(0.005 < r < 0.05 for r in reads), reads
    assert max(reads) / min(reads) < 3.0
    assert min(minima) / 10 < 0.002  # min/10 would have trained some seeds 10x too slowly


def test_a_recorded_noise_dip_far_below_the_edge_is_not_a_descent():
    # A recorded sweep (session 13): matrix factorization, 12,000 ratings, batch 128, AdamW
    # from 1e-6 up by 10**(6/96) a step. Flat until ~0.3, then the blow-up. The old rule (a
    # fall of 3 noise levels below the first tenth's median) read a noise dip at 7.6e-5 as a
    # descent and suggested 7.6e-6; the model then trained at 3.8e-6 (1.45x tuned AdamW).
    # fmt: off
    losses = [
        1.165, 1.24, 1.29, 1.531, 1.037, 1.065, 1.228, 1.194, 1.245, 1.81, 1.459, 1.367, 1.176,
        1.092, 0.971, 1.501, 1.204, 1.349, 1.197, 1.262, 0.905, 1.118, 1.025, 1.065, 0.911,
        0.866, 0.946, 1.134, 1.054, 1.25, 0.951, 0.979, 1.148, 1.261, 1.48, 1.364, 1.431, 1.036,
        1.329, 1.146, 1.188, 1.304, 1.251, 1.338, 1.469, 1.061, 1.05, 1.29, 1.248, 0.771, 1.493,
        0.926, 1.017, 0.942, 1.228, 1.042, 1.24, 1.375, 0.983, 1.211, 1.031, 1.354, 0.935,
        1.214, 1.269, 0.792, 1.089, 1.296, 1.18, 1.342, 1.091, 0.94, 1.051, 1.177, 1.054, 0.911,
        1.475, 1.09, 1.76, 1.095, 0.992, 1.046, 1.041, 0.922, 1.438, 1.261, 1.15, 1.1, 1.25,
        1.546, 1.672, 2.055, 2.925, 4.797, 7.543, 16.25, 33.654,
    ]
    # fmt: on
    lrs = [1e-6 * 10 ** (6 * i / 96) for i in range(len(losses))]
    a = analyze(lrs, losses)
    assert a["diverged"] and not a["descended"]
    assert 0.01 < a["suggestion"] < 0.05  # the edge (~0.3) / 10; AdamW's best was 0.03-0.06


def test_a_batch_norm_model_sweeps_past_a_one_row_last_batch():
    # 65 rows in batches of 32: the last batch has one row, on which batch norm cannot
    # train; as in fit, it is folded into the batch before it, so the sweep runs through
    torch.manual_seed(0)
    X = torch.randn(65, 4)
    y = X.sum(1, keepdim=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
    )
    res = descend.lr_find(model, (X, y), "mse", steps=12, batch_size=32)
    assert len(res.lrs) == 12


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"diverge": float("nan")}, "diverge must be a number > 1"),
        ({"optimizer": torch.optim.SGD}, "a torch.optim class is not one"),
        ({"model": torch.nn.ReLU()}, "without parameters"),
        ({"plot": True}, "lr_find: plot must be a file path with an image extension"),
        ({"plot": "curve.pnj"}, "got 'curve.pnj' — pass e.g. plot='lr_find.png'"),
    ],
)
def test_more_bad_arguments_are_refused_with_the_fix(kw, says):
    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    model = kw.pop("model", torch.nn.Linear(4, 1))
    y = X.sum(1) if isinstance(model, torch.nn.Linear) else X
    with pytest.raises(descend.DescendError, match=re.escape(says)):
        descend.lr_find(model, (X, y), steps=12, **kw)


def test_plot_into_a_directory_that_does_not_exist_yet(tmp_path):
    # savefig raised FileNotFoundError after the whole sweep had run
    X, y = _regression(128)
    path = tmp_path / "plots" / "run1" / "lr.png"
    found = lr_find(torch.nn.Linear(6, 1), (X, y), "mse", steps=20, plot=path)
    assert path.exists() and math.isfinite(found.suggestion)


def test_a_loss_that_is_nan_at_the_starting_weights_is_refused():
    # The sweep stopped at its first step and suggested start_lr, as if that were a reading.
    X, y = _regression(128)
    model = torch.nn.Linear(6, 1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(
        descend.InputError,
        match=r"lr_find: the first batch loss .* must be finite; got nan — the learning rate is "
        r"not the cause: check the data and the model's output for NaN/inf",
    ):
        lr_find(model, (X, y), "mse", steps=20)


def test_the_in_place_sweep_of_a_sharded_model_puts_its_mode_back(monkeypatch):
    # A model sharded with fully_shard is swept in place (it cannot be copied) and its state is
    # put back; its train/eval mode was left in train mode. (The in-place path is taken here by
    # telling lr_find the model is sharded.)
    import types

    from descend import distributed as dist_
    from descend.train import lr_find as lf

    fake = types.SimpleNamespace(**{k: getattr(dist_, k) for k in dir(dist_) if k[:2] != "__"})
    fake.is_sharded = lambda model: True
    monkeypatch.setattr(lf, "dist_", fake)
    X, y = _regression()
    model = _model_with_buffers()
    model.eval()
    model[1].train()  # a mixed state: every module's own flag comes back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    lr_find(model, (X, y), "mse", steps=20)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_cpu_sweep_does_not_reseed_the_accelerators(monkeypatch):
    # lr_find seeded every accelerator (D.seed_all) inside fork_rng(devices=[]), which puts
    # back the CPU generator only: on a machine with a GPU each call reset the caller's CUDA
    # generator to the sweep's seed (its dropout masks, its torch.randn(device="cuda")).
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    X, y = _regression(128)
    lr_find(torch.nn.Linear(6, 1), (X, y), "mse", steps=12, seed=3, device="cpu")
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_sweep_leaves_the_callers_cuda_generator_as_it_was():
    X, y = _regression(128)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    state = torch.cuda.get_rng_state()
    lr_find(model, (X, y), "mse", steps=12, seed=3, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_a_loss_below_zero_is_swept_like_the_same_loss_shifted_up():
    # diverge × a negative minimum lies below it: every smoothed value "passed" it, and a
    # loss shifted by a constant (a Gaussian NLL, an offset) stopped after its warm-up with
    # suggestion = start_lr. The rise above the minimum is the test now, for both signs.
    X, y = _regression(256)

    def shifted(by):
        return lambda out, target: torch.nn.functional.mse_loss(out.squeeze(-1), target) + by

    def sweep(by, **kw):
        return lr_find(torch.nn.Linear(6, 1), (X, y), shifted(by), steps=60, seed=0, **kw)

    up, down = sweep(20.0), sweep(-20.0)
    assert len(down.lrs) == len(up.lrs) and down.descended and up.descended
    assert 0.5 < down.suggestion / up.suggestion < 2.0
    # ... and a blow-up below zero still ends the sweep early
    blown = sweep(-20.0, start_lr=1e-5, end_lr=1e4)
    assert len(blown.lrs) < 60 and ("passed" in blown.stop or "non-finite" in blown.stop)
