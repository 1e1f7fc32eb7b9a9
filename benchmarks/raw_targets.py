"""Raw regression targets: descend's zero-setting fit where nobody scaled the targets.

``descend.fit(model, (X, y), "mse")`` is often called on targets as they come — prices, counts,
lengths in the hundreds or thousands. Adam moves each weight by about the learning rate per
step, so the rate that fits such targets in a few hundred steps is far above the 1e-3 that
suits standardized ones: the default policy has to read it off the data. Per set and seed, in
one process, the same split (75/25), the same MLP (64 ReLU units, same initial weights), the
same budget (100 epochs, batches of 32):

- ``descend``: ``descend.fit`` with no optimizer settings (its default validation split of 20%
  and early stopping), and ``descend (no split)`` with ``validation=None`` (the stop rule and
  the kept weights then go by the training loss, and the policy has no race);
- ``grid``: ``descend.fit(lr=...)`` — AdamW with descend's default schedule at an explicit rate
  — for each rate of ``GRID`` with ``validation=None``; ``grid best`` is the best test R² of
  the grid per seed (an oracle: it picks on the test part, so it bounds what a tuned rate does);
- ``sk-mlp``: scikit-learn's ``MLPRegressor`` (64 units, batch 32, its defaults otherwise) on
  the same raw targets and features.

Sets: diabetes as bundled (targets 25-346, features scaled to unit norm), friedman1 targets
x1000 (400 rows), and seeded generated sets of 60-1,000 rows whose targets spread over
thousands, some with an offset (a mean of 3,000-50,000). Reported: test R² (mean over seeds and
per seed) and the rate the policy chose.

Run: ``python benchmarks/raw_targets.py [--seeds 3]`` (~4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import warnings

import numpy as np
import torch
from sklearn.datasets import load_diabetes, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor

import descend

GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def sets():
    X, y = load_diabetes(return_X_y=True)
    yield "diabetes (raw)", X, y
    X, y = make_friedman1(n_samples=400, noise=1.0, random_state=0)
    yield "friedman1 x1000", X, y * 1000
    rng = np.random.default_rng(0)
    for n, scale, offset in [(60, 3000, 0), (80, 1000, 5000), (300, 1000, 3000), (1000, 1e4, 5e4)]:
        X = rng.normal(size=(n, 5))
        w = rng.normal(size=5)
        y = np.sin(X[:, 0]) * scale + X @ w * scale * 0.5 + offset
        yield (
            f"{n} rows, spread {scale:g}, mean {offset:g}",
            X,
            y + rng.normal(size=n) * scale * 0.1,
        )


def r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def descend_fit(X, y, tr, te, seed, **kw) -> tuple[float, float | None]:
    Xt = torch.tensor(X, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)[:, None]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    )
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = descend.fit(model, (Xt[tr], yt[tr]), "mse", epochs=100, verbose=0, seed=seed, **kw)
    with torch.no_grad():
        score = r2(model(Xt[te]), yt[te])
    return score, (r.autopilot or {}).get("lr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread\n")
    rows = []
    for name, X, y in sets():
        got: dict[str, list[float]] = {}
        lrs: list[float] = []
        for seed in range(args.seeds):
            tr, te = train_test_split(np.arange(len(X)), test_size=0.25, random_state=seed)
            score, lr = descend_fit(X, y, tr, te, seed)
            got.setdefault("descend", []).append(score)
            lrs.append(lr)
            score, _ = descend_fit(X, y, tr, te, seed, validation=None)
            got.setdefault("descend (no split)", []).append(score)
            grid = [descend_fit(X, y, tr, te, seed, validation=None, lr=lr)[0] for lr in GRID]
            got.setdefault("grid best", []).append(max(grid))
            for lr, s in zip(GRID, grid):
                got.setdefault(f"lr {lr:g}", []).append(s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                sk = MLPRegressor(hidden_layer_sizes=(64,), batch_size=32, random_state=seed).fit(
                    X[tr], y[tr]
                )
            got.setdefault("sk-mlp", []).append(sk.score(X[te], y[te]))
        rows.append((name, got, lrs))
        print(f"{name}: " + ", ".join(f"{k} {statistics.mean(v):.3f}" for k, v in got.items()))
    print("\n| set | descend | descend (no split) | grid best (oracle) | best single rate | "
          "sk-mlp | descend's rates |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, got, lrs in rows:
        single = max(GRID, key=lambda lr: statistics.mean(got[f"lr {lr:g}"]))
        cells = [
            " / ".join(f"{s:.3f}" for s in got[k])
            for k in ("descend", "descend (no split)", "grid best")
        ]
        best = f"{statistics.mean(got[f'lr {single:g}']):.3f} (lr {single:g})"
        sk = f"{statistics.mean(got['sk-mlp']):.3f}"
        rates = ", ".join(f"{lr:.2g}" for lr in lrs)
        print(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {best} | {sk} | {rates} |")


if __name__ == "__main__":
    main()
