"""The default run on input kinds the suite does not hold, side by side with explicit rates.

``descend.fit(model, (X, y), loss)`` with no settings, against the same call at each rate of a
grid (``lr=...``: AdamW at exactly that rate, descend's schedule otherwise), per set and seed in
one process, on the same 75/25 split and the same initial weights (a one-hidden-layer ReLU MLP).
``best rate`` is the grid's best on the test part per seed — an oracle bound, not a peer. Each
set probes one thing a user does without thinking of the optimizer:

- ``mixed-scales``: two regression outputs on scales 1 and 1,000, raw, under mse (scored by
  the test mse, the loss the user chose, and by the narrow column's R²);
- ``tiny``: 40 rows;
- ``wide``: 200 rows x 1,000 features, 10 informative (classification);
- ``imbalanced``: 97:3 classes;
- ``many-classes``: 50 classes, 3,000 rows;
- ``full-batch``: friedman1 (1,000 rows, standardized) with ``batch_size=None`` (100 steps);
- ``full-batch-raw``: diabetes with its raw targets (25-346) and ``batch_size=None``;
- ``heavy-tails-huber``: a smooth curve plus Student-t noise (1.5 degrees of freedom) under
  the huber loss, scored by the mse of the fit against the noise-free curve.

Scores: test mse (regression; lower is better), test log loss (classification). Found by this
probe (session 29): the narrow column of mixed-scale targets is not fitted — the loss is the
wide column's — which ``fit`` now names in a warning; and the full-batch run on raw targets
reads its rate in the chaotic part of a 25-step sweep (benchmarks/RESULTS.md); and a noisy
sweep under heavy-tailed noise read its luckiest batch at a rate too small to move anything
(fixed: of two noisy sweeps' minima the higher is read).

Run: ``python benchmarks/input_kinds.py [--seeds 3] [--only mixed-scales]`` (~1 min on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings

import numpy as np
import torch
from sklearn.datasets import load_diabetes, make_classification, make_friedman1
from sklearn.metrics import log_loss, r2_score
from sklearn.model_selection import train_test_split

import descend

GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def mlp(n_in: int, n_out: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


def sets():
    """name, X, y, loss, hidden width, fit kwargs, grid, and the noise-free targets (scored
    against instead of y) or None."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 6))
    narrow = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=800)
    wide = 1000 * (np.cos(X[:, 3]) + X[:, 4]) + 100 * rng.normal(size=800)
    yield "mixed-scales", X, np.stack([narrow, wide], 1), "mse", 64, {}, GRID, None
    X = rng.normal(size=(40, 4))
    y = X @ np.array([1.0, -2, 0.5, 0]) + 0.3 * np.sin(3 * X[:, 0]) + 0.2 * rng.normal(size=40)
    yield "tiny", X, y, "mse", 64, {}, GRID, None
    X = rng.normal(size=(200, 1000))
    w = np.zeros(1000)
    w[:10] = rng.normal(size=10)
    y = (X @ w + 0.5 * rng.normal(size=200) > 0).astype(np.int64)
    yield "wide", X, y, "cross_entropy", 64, {}, GRID, None
    X, y = make_classification(
        n_samples=4000, n_features=10, n_informative=5, weights=[0.97], flip_y=0.01,
        random_state=0,
    )  # fmt: skip
    yield "imbalanced", X, y, "cross_entropy", 64, {}, GRID, None
    X, y = make_classification(
        n_samples=3000, n_features=30, n_informative=20, n_classes=50, n_clusters_per_class=1,
        random_state=0,
    )  # fmt: skip
    yield "many-classes", X, y, "cross_entropy", 128, {}, GRID, None
    X, y = make_friedman1(n_samples=1000, noise=1.0, random_state=0)
    X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    full = {"batch_size": None}
    yield "full-batch", X, y, "mse", 64, full, (0.01, 0.03, 0.1, 0.3), None
    X, y = load_diabetes(return_X_y=True)
    yield "full-batch-raw", X, y, "mse", 64, full, (0.03, 0.1, 0.3, 1.0, 3.0), None
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 5))
    f = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
    y = f + 0.3 * rng.standard_t(1.5, size=1500)
    yield "heavy-tails-huber", X, y, "huber", 64, {}, GRID, f


def score(model, X, y, loss) -> tuple[float, float | None]:
    """(test mse or log loss, the first column's R² for a multi-output regression)."""
    with torch.no_grad():
        out = model(torch.as_tensor(X, dtype=torch.float32)).numpy()
    if loss == "cross_entropy":
        p = torch.softmax(torch.as_tensor(out), 1).numpy()
        return float(log_loss(y, p, labels=list(range(p.shape[1])))), None
    out = out.reshape(y.shape)
    first = float(r2_score(y[:, 0], out[:, 0])) if y.ndim == 2 else None
    return float(((out - y) ** 2).mean()), first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread\n")
    print("| set | score | descend (per seed) | best rate (oracle) | best single rate | "
          "descend's rates | narrow column R²: descend / best single rate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, X, y, loss, hidden, kw, grid, truth in sets():
        if args.only and name not in args.only:
            continue
        clf = loss == "cross_entropy"
        X = X.astype(np.float32)
        y = y.astype(np.int64 if clf else np.float32)
        n_out = int(y.max()) + 1 if clf else (y.shape[1] if y.ndim == 2 else 1)
        got: dict[str, list[float]] = {}
        first: dict[str, list[float]] = {}
        rates = []
        for seed in range(args.seeds):
            tr, te = train_test_split(
                np.arange(len(X)), test_size=0.25, random_state=seed, stratify=y if clf else None
            )
            Xtr, Xte, ytr = X[tr], X[te], y[tr]
            yte = y[te] if truth is None else truth[te].astype(np.float32)
            for lr in (None, *grid):
                label = "descend" if lr is None else f"lr {lr:g}"
                model = mlp(X.shape[1], n_out, hidden, seed)
                yfit = ytr if clf or y.ndim == 2 else ytr[:, None]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = descend.fit(model, (Xtr, yfit), loss, lr=lr, verbose=0, seed=seed, **kw)
                s, f = score(model, Xte, yte, loss)
                got.setdefault(label, []).append(s)
                if f is not None:
                    first.setdefault(label, []).append(f)
                if lr is None:
                    rates.append((r.autopilot or {}).get("lr", float("nan")))
        oracle = [min(got[f"lr {lr:g}"][i] for lr in grid) for i in range(args.seeds)]
        single = min(grid, key=lambda lr: statistics.mean(got[f"lr {lr:g}"]))
        cell = " / ".join(f"{v:.4g}" for v in got["descend"])
        narrow = "-"
        if first:
            narrow = (
                f"{statistics.mean(first['descend']):.3g} "
                f"({' / '.join(f'{v:.3g}' for v in first['descend'])}) / "
                f"{statistics.mean(first[f'lr {single:g}']):.3g}"
            )
        print(
            f"| {name} | {'log loss' if clf else 'mse'} | "
            f"{statistics.mean(got['descend']):.4g} ({cell}) | {statistics.mean(oracle):.4g} | "
            f"{statistics.mean(got[f'lr {single:g}']):.4g} (lr {single:g}) | "
            f"{', '.join(f'{r:.2g}' for r in rates)} | {narrow} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
