"""The divergence guard's decisions: false alarms at sane rates, rescues at rates far too high.

Every run is made twice in one process, with the guard (the default) and with ``guard=False``,
from the same initial weights and batch order: ``descend.fit(model, (X, y), loss, lr=lr,
epochs=10, batch_size=bs, validation=None, patience=None)`` — an explicit rate, so the only
thing that can change it is the guard. Grid: eleven small sets (iris, wine, breast cancer,
diabetes, digits, standardized; and six seeded regressions of 64-192 rows, linear and sine) x a
linear model and a 32-unit MLP x batches of 8 and 32 x rates 1e-3, 1e-2, 0.1, 1, 10 (AdamW) x
2 seeds: 440 pairs.

Per rate: how many runs the guard acted on (rolled back at least once), and of the pairs whose
final training loss differs by more than 5%, how many the guard left better or worse. At rates
1e-3 and 1e-2 every run is healthy without the guard, so any rollback there is a false alarm
(the user's explicit rate cut for nothing); at 1 and 10 most runs blow up, and the guard's
rollbacks are what saves them.

Run: ``python benchmarks/guard_alarms.py`` (~5 min on one core).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import itertools
import math
import platform
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.preprocessing import StandardScaler

import descend

RATES = (1e-3, 1e-2, 0.1, 1.0, 10.0)


def sets() -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    out = []
    for name, loader, task in [
        ("iris", load_iris, "c"),
        ("wine", load_wine, "c"),
        ("breast cancer", load_breast_cancer, "c"),
        ("diabetes", load_diabetes, "r"),
        ("digits", load_digits, "c"),
    ]:
        X, y = loader(return_X_y=True)
        X = StandardScaler().fit_transform(X)
        if task == "r":
            y = (y - y.mean()) / y.std()
        out.append((name, X, y, task))
    for s in range(3):
        rng = np.random.default_rng(s)
        X = rng.normal(size=(64 * (s + 1), 2 + 3 * s))
        out.append((f"linear {s}", X, X @ rng.normal(size=X.shape[1]), "r"))
        out.append((f"sine {s}", X, np.sin(2 * X[:, 0]) + 0.1 * rng.normal(size=len(X)), "r"))
    return out


def run(X, y, task, hidden, bs, lr, seed, guard) -> tuple[float, int]:
    """(final epoch's training loss, rollbacks)."""
    Xt = torch.tensor(X, dtype=torch.float32)
    if task == "c":
        yt = torch.tensor(y, dtype=torch.long)
        k, loss = int(yt.max()) + 1, "cross_entropy"
    else:
        yt = torch.tensor(y, dtype=torch.float32)[:, None]
        k, loss = 1, "mse"
    d = Xt.shape[1]
    torch.manual_seed(seed)
    model = (
        torch.nn.Linear(d, k)
        if hidden == 0
        else torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k)
        )
    )
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = descend.fit(model, (Xt, yt), loss, lr=lr, epochs=10, batch_size=bs, validation=None,
                        verbose=0, seed=seed, guard=guard, patience=None)  # fmt: skip
    rollbacks = sum(1 for e in r.history.events if e["kind"] == "rollback")
    return r.history.train_loss[-1], rollbacks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread\n")
    tally: dict[float, collections.Counter] = {lr: collections.Counter() for lr in RATES}
    grid = itertools.product(sets(), (0, 32), (8, 32), RATES, range(args.seeds))
    for (_, X, y, task), hidden, bs, lr, seed in grid:
        g_loss, rollbacks = run(X, y, task, hidden, bs, lr, seed, True)
        n_loss, _ = run(X, y, task, hidden, bs, lr, seed, False)
        g = g_loss if math.isfinite(g_loss) else math.inf
        n = n_loss if math.isfinite(n_loss) else math.inf
        t = tally[lr]
        t["runs"] += 1
        t["acted"] += rollbacks > 0
        t["better"] += g < 0.95 * n
        t["worse"] += g > 1.05 * n + 1e-3
        t["unguarded diverged"] += not math.isfinite(n_loss)
    print("| rate | runs | guard rolled back | guard's final loss >5% lower | >5% higher | "
          "unguarded run non-finite |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for lr, t in tally.items():
        print(f"| {lr:g} | {t['runs']} | {t['acted']} | {t['better']} | {t['worse']} | "
              f"{t['unguarded diverged']} |")  # fmt: skip


if __name__ == "__main__":
    main()
