"""Curve fits through ``descend.fit(fn, data, "mse", params=...)``, side by side.

Eleven parametric curves a scientist fits by least squares (an exponential decay with an
offset, a logistic, a cubic, a Gaussian peak, two power laws, Michaelis-Menten, exponential
growth, a damped oscillation, a line on raw scales, a tanh step), 200-500 noisy points each,
every seed its own noise. The contenders, in one process on the same points:

- ``curve_fit``: scipy's least-squares fit (Levenberg-Marquardt) on all the points, from the
  same starting values — the reference;
- ``descend``: ``descend.fit`` with default settings (it holds out 20% for validation);
- ``descend, no polish``: the same run without the policy's final full-batch L-BFGS
  (``autopilot.polish``), i.e. the default run before session 28;
- ``adamw-tuned``: torch AdamW with warmup and cosine decay over the same 100 epochs (batch
  32), the rate picked from {1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1} by the loss on the same 20%
  held out; its time is the whole grid.

Scored two ways, each as a ratio to ``curve_fit``'s: the mean squared residual on all the
points (the least-squares objective: ``curve_fit`` is at its minimum, so 1.000 is the best any
fit can do, and a fit of 80% of the points is a little above it), and the excess error on the
noise-free curve over the points' range (2,000 points), ``mean((f_fit - f_true)²)`` — how well
the curve itself was recovered, noisier from seed to seed (a ratio of two small numbers; with
20% of the points held out, about 1.25 is par). Medians over the seeds; wall time per fit.

Run: ``python benchmarks/curve_fits.py [--seeds 3] [--only michaelis]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import curve_fit

import descend
from descend.train import autopilot

Case = tuple[Callable, Callable, dict[str, float], Callable[[np.random.Generator], tuple]]


def _cases() -> dict[str, Case]:
    """name -> (numpy f(x, *p), torch f(x, params), start, make(rng) -> (x, y, truth))."""

    def grid(lo, hi, n, f, *true, sigma):
        def make(rng):
            x = np.linspace(lo, hi, n)
            return x, f(x, *true) + sigma * rng.standard_normal(n), (lo, hi, true)

        return make

    out: dict[str, Case] = {}

    def add(name, fnp, ft, start, lo, hi, n, true, sigma):
        out[name] = (fnp, ft, start, grid(lo, hi, n, fnp, *true, sigma=sigma))

    add(
        "exp-decay",
        lambda x, a, b, c: a * np.exp(-b * x) + c,
        lambda x, p: p["a"] * torch.exp(-p["b"] * x) + p["c"],
        dict(a=1.0, b=0.5, c=0.0),
        0,
        4,
        200,
        (2.5, 1.3, 0.5),
        0.05,
    )
    add(
        "logistic",
        lambda x, L, k, x0: L / (1 + np.exp(-k * (x - x0))),
        lambda x, p: p["L"] / (1 + torch.exp(-p["k"] * (x - p["x0"]))),
        dict(L=1.0, k=1.0, x0=1.0),
        0,
        10,
        300,
        (8.0, 1.5, 5.0),
        0.2,
    )
    add(
        "cubic",
        lambda x, a, b, c, d: a * x**3 + b * x**2 + c * x + d,
        lambda x, p: p["a"] * x**3 + p["b"] * x**2 + p["c"] * x + p["d"],
        dict(a=0.0, b=0.0, c=0.0, d=0.0),
        -3,
        3,
        500,
        (0.5, -2.0, 1.0, 3.0),
        0.3,
    )
    add(
        "gauss-peak",
        lambda x, A, m, s: A * np.exp(-((x - m) ** 2) / (2 * s**2)),
        lambda x, p: p["A"] * torch.exp(-((x - p["m"]) ** 2) / (2 * p["s"] ** 2)),
        dict(A=1.0, m=3.0, s=1.0),
        0,
        6,
        400,
        (5.0, 3.2, 0.4),
        0.1,
    )
    add(
        "power-law-100",
        lambda x, a, k: a * np.power(x, k),
        lambda x, p: p["a"] * torch.pow(x, p["k"]),
        dict(a=1.0, k=1.0),
        1,
        100,
        300,
        (3.0, 0.7),
        0.5,
    )
    add(
        "power-law-10",
        lambda x, a, k: a * np.power(x, k),
        lambda x, p: p["a"] * torch.pow(x, p["k"]),
        dict(a=1.0, k=1.0),
        1,
        10,
        300,
        (3.0, 0.7),
        0.2,
    )
    add(
        "michaelis-menten",
        lambda x, V, K: V * x / (K + x),
        lambda x, p: p["V"] * x / (p["K"] + x),
        dict(V=1.0, K=1.0),
        1,
        1000,
        300,
        (12.0, 150.0),
        0.3,
    )
    add(
        "exp-growth",
        lambda x, a, b: a * np.exp(b * x),
        lambda x, p: p["a"] * torch.exp(p["b"] * x),
        dict(a=1.0, b=0.1),
        0,
        5,
        200,
        (0.8, 0.9),
        1.0,
    )
    add(
        "damped-cosine",
        lambda x, A, g, w: A * np.exp(-g * x) * np.cos(w * x),
        lambda x, p: p["A"] * torch.exp(-p["g"] * x) * torch.cos(p["w"] * x),
        dict(A=1.0, g=0.1, w=1.9),
        0,
        10,
        400,
        (3.0, 0.3, 2.0),
        0.1,
    )
    add(
        "line-raw",
        lambda x, a, b: a + b * x,
        lambda x, p: p["a"] + p["b"] * x,
        dict(a=0.0, b=0.0),
        0,
        50,
        300,
        (40.0, 2.5),
        3.0,
    )
    add("tanh-step", lambda x, A, k, x0: A * np.tanh(k * (x - x0)),
        lambda x, p: p["A"] * torch.tanh(p["k"] * (x - p["x0"])),
        dict(A=1.0, k=1.0, x0=0.0), -5, 5, 300, (4.0, 2.5, 0.7), 0.2)  # fmt: skip
    return out


def _excess(fnp: Callable, params: list[float], truth: tuple) -> float:
    lo, hi, true = truth
    xs = np.linspace(lo, hi, 2000)
    with np.errstate(all="ignore"):
        e = float(np.mean((fnp(xs, *params) - fnp(xs, *true)) ** 2))
    return e if math.isfinite(e) else math.inf


def _residual(fnp: Callable, params: list[float], x: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        r = float(np.mean((fnp(x, *params) - y) ** 2))
    return r if math.isfinite(r) else math.inf


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(1000 + seed).permutation(n)
    k = int(0.8 * n)
    return perm[:k], perm[k:]


def _adamw_tuned(ft, start, x, y, seed) -> tuple[list[float], float]:
    """Best of the rate grid by held-out loss; returns (its parameters, the grid's seconds)."""
    tr, va = _split(len(x), seed)
    X = torch.tensor(x, dtype=torch.float32)
    Y = torch.tensor(y, dtype=torch.float32)
    t0 = time.perf_counter()
    best, best_p = math.inf, None
    for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0):
        g = torch.Generator().manual_seed(seed)
        P = {k: torch.tensor(float(v), requires_grad=True) for k, v in start.items()}
        opt = torch.optim.AdamW(P.values(), lr=lr, weight_decay=0.0)
        spe = math.ceil(len(tr) / 32)
        total, warm = 100 * spe, max(1, 5 * spe)

        def factor(s, total=total, warm=warm):
            return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        Xt, Yt = X[tr], Y[tr]
        for _ in range(100):
            perm = torch.randperm(len(tr), generator=g)
            for i in range(spe):
                idx = perm[i * 32 : (i + 1) * 32]
                loss = ((ft(Xt[idx], P) - Yt[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            v = float(((ft(X[va], P) - Y[va]) ** 2).mean())
        if math.isfinite(v) and v < best:
            best, best_p = v, [P[k].item() for k in start]
    return best_p or [math.nan] * len(start), time.perf_counter() - t0


def _descend(ft, start, x, y, seed, polish: bool) -> tuple[list[float], float, dict]:
    real = autopilot.polish
    if not polish:
        autopilot.polish = lambda loop, reason: None
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = descend.fit(
                ft,
                (x.astype(np.float32), y.astype(np.float32)),
                "mse",
                params=dict(start),
                seed=seed,
                verbose=0,
            )
        wall = time.perf_counter() - t0
    finally:
        autopilot.polish = real
    return [r.params[f"params.{k}"].item() for k in start], wall, r.autopilot or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", action="append", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {platform.machine()}, torch {torch.__version__} (1 thread), "
        f"python {platform.python_version()}"
    )
    cases = _cases()
    names = args.only or list(cases)
    descend.fit(  # the process's first fit pays one-time costs: not any case's
        lambda x, p: p["a"] * x, (np.ones(64, np.float32), np.ones(64, np.float32)), "mse",
        params={"a": 0.0}, epochs=2, verbose=0, seed=0,
    )  # fmt: skip
    methods = ["curve_fit", "descend", "descend, no polish", "adamw-tuned"]
    rows = []
    for name in names:
        fnp, ft, start, make = cases[name]
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        resid: dict[str, list[float]] = {m: [] for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        kept = 0
        for seed in range(args.seeds):
            x, y, truth = make(np.random.default_rng(seed))
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref, _ = curve_fit(fnp, x, y, p0=list(start.values()), maxfev=20000)
            times["curve_fit"].append(time.perf_counter() - t0)
            base = _excess(fnp, list(ref), truth)
            base_resid = _residual(fnp, list(ref), x, y)
            got = {"curve_fit": list(ref)}
            got["descend"], t, rec = _descend(ft, start, x, y, seed, polish=True)
            times["descend"].append(t)
            kept += bool((rec.get("polish") or {}).get("kept"))
            got["descend, no polish"], t, _ = _descend(ft, start, x, y, seed, polish=False)
            times["descend, no polish"].append(t)
            got["adamw-tuned"], t = _adamw_tuned(ft, start, x, y, seed)
            times["adamw-tuned"].append(t)
            for m in methods:
                ratios[m].append(_excess(fnp, got[m], truth) / base)
                resid[m].append(_residual(fnp, got[m], x, y) / base_resid)
            print(f"  {name} seed {seed}: " + ", ".join(
                f"{m} {resid[m][-1]:.4f} / {ratios[m][-1]:.3g}" for m in methods[1:]),
                flush=True)  # fmt: skip
        rows.append((name, ratios, resid, times, kept))
    print()
    print(
        "| curve | "
        + " | ".join(f"{m}: residual / excess error vs curve_fit" for m in methods[1:])
        + " | polish kept | wall s: "
        + ", ".join(methods)
        + " |"
    )
    print("|---|" + "---|" * (len(methods) - 1) + "---|---|")
    for name, ratios, resid, times, kept in rows:
        cells = [
            f"{statistics.median(resid[m]):.4f} / {statistics.median(ratios[m]):.3g}"
            for m in methods[1:]
        ]
        wall = ", ".join(f"{statistics.median(times[m]):.3f}" for m in methods)
        print(f"| {name} | " + " | ".join(cells) + f" | {kept} of {args.seeds} | {wall} |")


if __name__ == "__main__":
    main()
