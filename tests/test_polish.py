"""The default policy's final polish (descend.train.autopilot.polish): a model too small to
memorize its data, trained by the policy on a regression loss, is finished with full-batch
L-BFGS — checked against scipy's least-squares curve fit, and checked to stay out where it
does not belong."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

import descend
from descend.train import autopilot


def _michaelis(seed=1, n=300):
    """A Michaelis-Menten curve: a half-saturation constant of 150 next to a rate of 12 (the
    parameter scales Adam handles worst: it moves each by about the rate per step)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(1, 1000, n)
    y = 12 * x / (150 + x) + 0.3 * rng.standard_normal(n)
    return x.astype(np.float32), y.astype(np.float32)


def _mm(x, p):
    return p["V"] * x / (p["K"] + x)


def _mse_all(x, y, params):
    with torch.no_grad():
        pred = _mm(torch.as_tensor(x), {k.split(".")[-1]: v for k, v in params.items()})
    return float(((pred - torch.as_tensor(y)) ** 2).mean())


def _oracle(x, y):
    popt, _ = curve_fit(lambda x, V, K: V * x / (K + x), x.astype(np.float64), y, p0=[1.0, 1.0])
    return float(np.mean((popt[0] * x / (popt[1] + x) - y) ** 2))


def _fit_mm(x, y, **kw):
    kw.setdefault("verbose", 0)
    kw.setdefault("seed", 0)
    return descend.fit(_mm, (x, y), "mse", params={"V": 1.0, "K": 1.0}, **kw)


def test_a_curve_fit_reaches_the_least_squares_optimum(monkeypatch):
    x, y = _michaelis()
    best = _oracle(x, y)
    r = _fit_mm(x, y)
    rec = r.autopilot["polish"]
    assert rec["ran"] and rec["kept"]
    assert rec["train_loss"][1] < rec["train_loss"][0]
    # fitted on 80% of the rows, it is within 1% of scipy's fit to all of them, on all of them
    assert _mse_all(x, y, r.params) <= 1.01 * best
    assert r.params["params.K"].item() == pytest.approx(150, rel=0.1)
    assert "Then L-BFGS on the whole training set" in r.stop_message
    # the budget ran out while Adam still crawled; polished, it is no longer "still improving"
    assert str(r.stop_reason) == "max_epochs" and "more epochs may help" not in r.stop_message
    assert any(e["kind"] == "polish" for e in r.history.events)
    assert r.best_loss == pytest.approx(rec["after"])
    # the same run without the polish is far off (what the polish is for)
    monkeypatch.setattr(autopilot, "polish", lambda loop, reason: None)
    plain = _fit_mm(x, y)
    assert _mse_all(x, y, plain.params) > 3 * best


def test_without_validation_data_the_training_loss_judges():
    x, y = _michaelis(seed=2)
    r = _fit_mm(x, y, validation=None)
    rec = r.autopilot["polish"]
    assert rec["kept"] and rec["judged_by"] == "training loss"
    assert _mse_all(x, y, r.params) <= 1.001 * _oracle(x, y)


def test_the_polish_is_deterministic_and_a_resumed_run_ends_the_same(tmp_path):
    x, y = _michaelis(seed=3)
    a = _fit_mm(x, y, checkpoint=tmp_path / "a")
    b = _fit_mm(x, y)
    assert a.autopilot["polish"]["kept"]
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    # resuming the finished run trains nothing and polishes the same way again
    again = _fit_mm(x, y, checkpoint=tmp_path / "a", resume=True)
    for k in a.params:
        assert torch.equal(a.params[k], again.params[k])
    assert again.best_loss == a.best_loss


def test_explicit_settings_and_warm_starts_are_not_polished():
    x, y = _michaelis()
    assert _fit_mm(x, y, lr=0.2).autopilot is None  # exactly AdamW at that rate
    r = _fit_mm(x, y, optimizer=descend.optim.adam(lr=0.2))
    assert r.autopilot is None
    first = _fit_mm(x, y, epochs=5)
    with pytest.warns(RuntimeWarning, match="learning rate of 0"):  # (its schedule ended)
        warm = _fit_mm(x, y, epochs=5, optimizer=first.tx, opt_state=first.opt_state)
    assert warm.autopilot is None


def _small_mlp(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(1, 16), torch.nn.Tanh()]
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers, torch.nn.Linear(16, 1))


def _sine(n=1600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    y = (np.sin(3 * x[:, 0]) + 0.5 * rng.standard_normal(n)).astype(np.float32)
    return x, y


def test_a_small_mlp_on_ample_data_is_polished_closer_to_the_truth(monkeypatch):
    # 49 parameters, 1,280 training rows: it cannot memorize them; the noise-free curve judges
    x, y = _sine()
    xt = torch.linspace(-3, 3, 2001)[:, None]
    truth = torch.sin(3 * xt[:, 0])

    def excess(model):
        with torch.no_grad():
            return float(((model(xt)[:, 0] - truth) ** 2).mean())

    m = _small_mlp()
    r = descend.fit(m, (x, y), "mse", verbose=0, seed=0)
    assert r.autopilot["polish"]["kept"]
    monkeypatch.setattr(autopilot, "polish", lambda loop, reason: None)
    m0 = _small_mlp()
    descend.fit(m0, (x, y), "mse", verbose=0, seed=0)
    assert excess(m) < 0.5 * excess(m0)


@pytest.mark.parametrize(
    "case",
    ["classification", "too few rows per parameter", "dropout", "interrupted by a callback"],
)
def test_the_polish_stays_out_where_it_does_not_belong(case):
    x, y = _sine(n=1600)
    kw = {}
    model = _small_mlp()
    loss = "mse"
    if case == "classification":
        y = (y > 0).astype(np.int64)
        model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        loss = "cross_entropy"
    elif case == "too few rows per parameter":
        x, y = x[:400], y[:400]  # 320 training rows, 49 parameters
    elif case == "dropout":
        model = _small_mlp(dropout=0.1)
    else:

        class Stop(descend.Callback):
            def on_epoch_end(self, loop):
                if loop.epoch == 3:
                    loop.request_stop("enough")

        kw["callbacks"] = [Stop()]
    r = descend.fit(model, (x, y), loss, epochs=20, verbose=0, seed=0, **kw)
    assert r.autopilot is not None and "polish" not in r.autopilot
    assert not any(e["kind"] == "polish" for e in r.history.events)


def _exact_sine(noise=0.0, y_1d=False):
    """sin(x) at 200 points on [-pi, pi] (the classic first demo), exact unless ``noise``."""
    rng = np.random.default_rng(0)
    x = np.linspace(-np.pi, np.pi, 200, dtype=np.float32)[:, None]
    y = (np.sin(x) + noise * rng.standard_normal(x.shape)).astype(np.float32)
    return x, (y[:, 0] if y_1d else y)


def _tanh_net():
    torch.manual_seed(0)  # 1-32-32-1: 1,153 parameters for 160 training rows
    t = torch.nn
    return t.Sequential(t.Linear(1, 32), t.Tanh(), t.Linear(32, 32), t.Tanh(), t.Linear(32, 1))


def _curve_error(model):
    xt = torch.linspace(-np.pi, np.pi, 1000)[:, None]
    with torch.no_grad():
        return float(((model(xt) - torch.sin(xt)) ** 2).mean())


@pytest.mark.parametrize("y_1d", [False, True])
def test_a_near_exact_fit_is_polished_with_few_rows_per_parameter(y_1d, monkeypatch):
    # Too few rows per parameter for the rule of ample data, but the run fits the points
    # almost exactly (validation loss under 2% of a constant's): what is left is the
    # optimizer's error, which L-BFGS removes (the run alone: ~3e-3 on the curve).
    x, y = _exact_sine(y_1d=y_1d)
    m = _tanh_net()
    r = descend.fit(m, (x, y), "mse", verbose=0, seed=0)
    rec = r.autopilot["polish"]
    assert rec["ran"] and rec["kept"] and rec["after"] < rec["before"]
    assert r.best_loss == pytest.approx(rec["after"])
    # the same run where the polish is not cheap enough to run: 100x further from sin(x)
    monkeypatch.setattr(autopilot, "POLISH_SMALL_WORK", 160 * 1153 - 1)
    m0 = _tanh_net()
    r0 = descend.fit(m0, (x, y), "mse", verbose=0, seed=0)
    assert "polish" not in r0.autopilot
    assert _curve_error(m) < 0.01 * _curve_error(m0)


def test_a_noisy_fit_with_few_rows_per_parameter_is_not_polished(monkeypatch):
    # the same net on the same points with noise: the run's validation loss is the noise's,
    # nowhere near exact, and minimizing the training loss would fit the noise
    x, y = _exact_sine(noise=0.3)
    r = descend.fit(_tanh_net(), (x, y), "mse", verbose=0, seed=0)
    assert "polish" not in r.autopilot
    # at a looser threshold the polish runs: the near-exact reading is what kept it out
    monkeypatch.setattr(autopilot, "POLISH_NEAR_EXACT", 1.0)
    assert "polish" in descend.fit(_tanh_net(), (x, y), "mse", verbose=0, seed=0).autopilot


def test_a_polish_that_is_clearly_worse_on_validation_is_not_kept(monkeypatch):
    x, y = _michaelis()
    # a stand-in for L-BFGS that lowers the training loss and wrecks the validation loss
    mod = sys.modules["descend.minimize"]
    real = mod.minimize

    def bad_minimize(fn, params, **kw):
        found = real(fn, params, **kw)
        wrecked = dict(found.params, **{"params.V": found.params["params.V"] * 3})
        return types.SimpleNamespace(params=wrecked, best_loss=0.0, steps=found.steps)

    monkeypatch.setattr(mod, "minimize", bad_minimize)
    before = _fit_mm(x, y, epochs=30)
    rec = before.autopilot["polish"]
    assert rec["ran"] and not rec["kept"] and rec["after"] > rec["before"]
    assert before.best_loss == pytest.approx(rec["before"], rel=1e-6)
    assert "Then L-BFGS" not in before.stop_message
    assert any("not kept" in e["message"] for e in before.history.events if e["kind"] == "polish")


def test_clearly_positive_needs_more_evidence_after_more_looks():
    noisy = [0.1, -0.05, 0.12, 0.02, -0.01, 0.08, 0.03, 0.0, 0.09, -0.02]
    m = sum(noisy) / len(noisy)
    assert m > 0
    clear = [d + 1.0 for d in noisy]
    assert autopilot._clearly_positive(clear, 50)
    assert not autopilot._clearly_positive([-d for d in clear], 1)
    # a difference 2.9 standard errors above 0 is clear after 1 look, not after 100
    sd = float(np.std(noisy, ddof=1))
    shifted = [d - m + 2.9 * sd / np.sqrt(len(noisy)) for d in noisy]
    assert autopilot._clearly_positive(shifted, 1)
    assert not autopilot._clearly_positive(shifted, 100)


def _uphill_minimize(monkeypatch, val_loss):
    """L-BFGS replaced by a step a hair uphill on the validation loss from the run's end
    (0.1% higher, a lower training loss claimed): a change within the validation rows' noise."""
    mod = sys.modules["descend.minimize"]

    def uphill(fn, params, **kw):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        loss = val_loss(p)
        grads = torch.autograd.grad(loss, list(p.values()))
        sq = sum(float((g * g).sum()) for g in grads)
        eps = 1e-3 * loss.item() / sq
        moved = {k: (v + eps * g).detach() for (k, v), g in zip(p.items(), grads)}
        return types.SimpleNamespace(params=moved, best_loss=0.0, steps=1)

    monkeypatch.setattr(mod, "minimize", uphill)


def test_a_module_keeps_a_polish_only_if_validation_is_lower_a_curve_unless_clearly_worse(
    monkeypatch,
):
    # a plain function: a change within the noise of the validation rows stands
    x, y = _michaelis()
    xv, yv = _michaelis(seed=9, n=100)
    tv, tyv = torch.as_tensor(xv), torch.as_tensor(yv)
    _uphill_minimize(
        monkeypatch,
        lambda p: ((_mm(tv, {k.split(".")[-1]: v for k, v in p.items()}) - tyv) ** 2).mean(),
    )
    curve = _fit_mm(x, y, epochs=40, validation=(xv, yv))
    rec = curve.autopilot["polish"]
    assert rec["after"] > rec["before"] and rec["kept"]
    # a module (a linear model on ample rows): its validation loss must be lower
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1200, 3, generator=g)
    yl = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(1200, generator=g)
    Xv, yvl = X[1000:], yl[1000:]
    _uphill_minimize(
        monkeypatch,
        lambda p: ((Xv.to(p["weight"]) @ p["weight"].t() + p["bias"] - yvl[:, None]) ** 2).mean(),
    )
    torch.manual_seed(0)
    r = descend.fit(
        torch.nn.Linear(3, 1), (X[:1000], yl[:1000]), "mse", epochs=20, verbose=0, seed=0,
        validation=(Xv, yvl),
    )  # fmt: skip
    rec = r.autopilot["polish"]
    assert rec["after"] > rec["before"] and not rec["kept"]
    assert r.best_loss == pytest.approx(rec["before"], rel=1e-6)


def test_a_weighted_curve_fit_matches_scipys_weighted_least_squares():
    # sample_weight 1/sigma^2 is curve_fit's sigma: the same objective, on all the points
    rng = np.random.default_rng(0)
    x = np.linspace(1, 1000, 300)
    sigma = 0.1 + 0.5 * x / 1000
    y = 12 * x / (150 + x) + sigma * rng.standard_normal(300)
    want, _ = curve_fit(lambda x, V, K: V * x / (K + x), x, y, p0=[1.0, 1.0], sigma=sigma)
    r = _fit_mm(
        x.astype(np.float32), y.astype(np.float32), validation=None,
        sample_weight=(1 / sigma**2).astype(np.float32),
    )  # fmt: skip
    assert r.autopilot["polish"]["kept"]
    got = [r.params["params.V"].item(), r.params["params.K"].item()]
    assert got == pytest.approx(list(want), rel=1e-3)


def test_a_dose_response_curve_reaches_its_maximum_likelihood():
    # a plain function under a classification loss is polished too: a logit (dose - m) / s on
    # doses up to 1,000 from m = 0, s = 1 — Adam moves m about the rate per step, 400 to go
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 1000, 2000)
    hit = (rng.random(2000) < 1 / (1 + np.exp(-(dose - 400) / 60))).astype(np.float32)
    mle = LogisticRegression(C=1e10, max_iter=10000, tol=1e-10).fit(dose[:, None], hit)
    want_s = 1 / mle.coef_[0, 0]
    want_m = -mle.intercept_[0] * want_s
    r = descend.fit(
        lambda x, q: (x - q["m"]) / q["s"], (dose.astype(np.float32), hit),
        "binary_cross_entropy", params={"m": 0.0, "s": 1.0}, validation=None, verbose=0, seed=0,
    )  # fmt: skip
    assert r.autopilot["polish"]["kept"]
    assert r.params["params.m"].item() == pytest.approx(want_m, rel=1e-2)
    assert r.params["params.s"].item() == pytest.approx(want_s, rel=1e-2)


def test_an_ill_conditioned_curve_is_polished_in_float64():
    # a cubic on inputs up to 100: coefficients from 1e-4 to 5, beyond float32's precision
    rng = np.random.default_rng(0)
    x = np.linspace(0, 100, 500)

    def cubic(x, a, b, c, d):
        return a * x**3 + b * x**2 + c * x + d

    y = cubic(x, 1e-4, -0.02, 1.0, 5.0) + rng.standard_normal(500)
    want, _ = curve_fit(cubic, x, y, p0=[0.0] * 4)
    r = descend.fit(
        lambda x, p: p["a"] * x**3 + p["b"] * x**2 + p["c"] * x + p["d"],
        (x.astype(np.float32), y.astype(np.float32)), "mse",
        params=dict.fromkeys("abcd", 0.0), validation=None, verbose=0, seed=0,
    )  # fmt: skip
    got = [r.params[f"params.{k}"].item() for k in "abcd"]
    assert r.params["params.a"].dtype == torch.float32  # put back in the model's dtype
    assert np.mean((cubic(x, *got) - y) ** 2) <= 1.001 * np.mean((cubic(x, *want) - y) ** 2)


def test_the_near_exact_reading_needs_a_distance_loss(monkeypatch):
    # Predicting the targets' mean is a baseline for mse, mae and huber; a Poisson output is a
    # log-rate, so no near-exact reading is made there (with any threshold at all, the same
    # points under mse are polished: the loss is what keeps the Poisson run out).
    monkeypatch.setattr(autopilot, "POLISH_NEAR_EXACT", 1e9)
    x, y = _exact_sine()
    counts = np.exp(y).astype(np.float32)  # rates 0.37-2.7, a smooth log-rate to fit
    r = descend.fit(_tanh_net(), (x, counts), "poisson", epochs=20, verbose=0, seed=0)
    assert "polish" not in r.autopilot
    r = descend.fit(_tanh_net(), (x, counts), "mse", epochs=20, verbose=0, seed=0)
    assert "polish" in r.autopilot
