"""descend's scikit-learn estimators against MLPClassifier / MLPRegressor, side by side.

Same process, same train/test splits, same thread budget (1 torch thread, 1 BLAS thread), the
contenders interleaved seed by seed so that load from other jobs hits them alike:

- ``descend``: ``descend.sklearn.Classifier`` / ``Regressor`` with default settings
  (``random_state`` only).
- ``sk-default``: ``MLPClassifier`` / ``MLPRegressor`` with default settings, given the same
  preprocessing descend does inside: ``StandardScaler`` on the features (a ``Pipeline``) and,
  for regression, on the targets (``TransformedTargetRegressor``). Without it the MLPs are much
  worse (unscaled diabetes targets do not converge in 200 iterations), so this is the stronger,
  fairer baseline.
- ``sk-grid``: the same pipeline tuned by ``GridSearchCV`` (3-fold, refit on the whole training
  part) over ``hidden_layer_sizes`` {(100,), (100, 100)} × ``alpha`` {1e-4, 1e-2} ×
  ``learning_rate_init`` {1e-3, 1e-2}: 8 configurations, 25 fits. Its time is the whole search.

Datasets: scikit-learn's bundled iris, wine, breast_cancer, digits (classification) and diabetes
(regression), plus two generated offline by scikit-learn: friedman1 (2000 × 10, noise 1) and a
3-output linear regression (1000 × 20, noise 10) for multi-output. Each seed draws its own
75/25 split (stratified for classification). Metrics on the test part: accuracy and log loss
(classification), R² (regression; averaged over outputs). Wall time is ``fit`` only.

``--extra`` adds nine generated 1,000-row sets (friedman2/3, a 50-feature regression, a sine
product, 3-class ``make_classification``, the first 1,000 digits, moons, a 5-label
multi-label set scored by subset accuracy, and counts from a non-linear rate fitted with
``loss="poisson"`` on both sides and scored by the mean Poisson deviance; see
``extra_datasets``).

Run: ``python benchmarks/sklearn_estimators.py [--seeds 3] [--datasets iris,wine] [--extra]
[--no-grid] [--descend '{"max_epochs": 100}']``. Prints a Markdown table (means over seeds) and
ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
    make_classification,
    make_friedman1,
    make_friedman2,
    make_friedman3,
    make_moons,
    make_multilabel_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss, mean_poisson_deviance
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from descend.sklearn import Classifier, Regressor

GRID = {
    "mlp__hidden_layer_sizes": [(100,), (100, 100)],
    "mlp__alpha": [1e-4, 1e-2],
    "mlp__learning_rate_init": [1e-3, 1e-2],
}


def datasets() -> dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], bool]]:
    """name -> (loader, is_classification)."""
    return {
        "iris": (lambda: load_iris(return_X_y=True), True),
        "wine": (lambda: load_wine(return_X_y=True), True),
        "breast_cancer": (lambda: load_breast_cancer(return_X_y=True), True),
        "digits": (lambda: load_digits(return_X_y=True), True),
        "diabetes": (lambda: load_diabetes(return_X_y=True), False),
        "friedman1": (
            lambda: make_friedman1(n_samples=2000, noise=1.0, random_state=0),
            False,
        ),
        "linear-3-outputs": (
            lambda: make_regression(
                n_samples=1000,
                n_features=20,
                n_informative=10,
                n_targets=3,
                noise=10.0,
                random_state=0,
            ),
            False,
        ),
    }


def _sine_product() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, (1000, 6))
    y = np.sin(2 * X[:, 0]) * X[:, 1] + np.cos(X[:, 2] * X[:, 3]) + 0.1 * rng.randn(1000)
    return X, y


def extra_datasets() -> dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], bool]]:
    """``--extra``: nine more sets of 1,000 rows, generated offline, built to check the
    estimators' rules (batch size, budget) beyond the seven above — sets where sklearn's
    default converges fast (friedman2, the 50-feature regression), a sharply non-linear one
    (the sine product), a 2-D one with a curved boundary (moons) and a subset of digits."""
    digits = load_digits(return_X_y=True)
    return {
        "friedman2-1000": (
            lambda: make_friedman2(n_samples=1000, noise=50, random_state=0),
            False,
        ),
        "friedman3-1000": (
            lambda: make_friedman3(n_samples=1000, noise=0.1, random_state=0),
            False,
        ),
        "regression-50-features": (
            lambda: make_regression(
                n_samples=1000, n_features=50, n_informative=20, noise=20, random_state=1
            ),
            False,
        ),
        "sine-product": (_sine_product, False),
        "3-class": (
            lambda: make_classification(
                n_samples=1000, n_features=20, n_informative=8, n_classes=3, random_state=0
            ),
            True,
        ),
        "digits-1000": (lambda: (digits[0][:1000], digits[1][:1000]), True),
        "moons": (lambda: make_moons(n_samples=1000, noise=0.3, random_state=0), True),
        # a 0/1 indicator y (5 labels): subset accuracy, log loss averaged over the labels
        "multilabel-5": (
            lambda: make_multilabel_classification(
                n_samples=1000, n_features=20, n_classes=5, random_state=0
            ),
            True,
        ),
        # counts from a non-linear rate: loss="poisson" on both sides, scored by the mean
        # Poisson deviance of the test predictions (lower is better)
        "poisson-counts": (_poisson_counts, False),
    }


#: Sets fitted with loss="poisson" (descend's Regressor and MLPRegressor alike, no target
#: scaling on scikit-learn's side: the log link needs the counts as they are).
POISSON = {"poisson-counts"}


def _poisson_counts() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    X = rng.normal(size=(1000, 8))
    rate = np.exp(0.5 * np.sin(2 * X[:, 0]) + 0.4 * X[:, 1] * X[:, 2] - 0.3 * X[:, 3] + 0.5)
    return X, rng.poisson(rate).astype(np.float64)


def sk_pipeline(clf: bool, seed: int):
    if clf:
        return Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier(random_state=seed))])
    return Pipeline([("scale", StandardScaler()), ("mlp", MLPRegressor(random_state=seed))])


def sk_default(clf: bool, seed: int):
    pipe = sk_pipeline(clf, seed)
    return pipe if clf else TransformedTargetRegressor(pipe, transformer=StandardScaler())


def sk_grid(clf: bool, seed: int):
    search = GridSearchCV(sk_pipeline(clf, seed), GRID, cv=3, n_jobs=1)
    return search if clf else TransformedTargetRegressor(search, transformer=StandardScaler())


def contenders(clf: bool, seed: int, descend_kw: dict, grid: bool, poisson: bool = False):
    if poisson:
        pipe = Pipeline(
            [("scale", StandardScaler()), ("mlp", MLPRegressor(loss="poisson", random_state=seed))]
        )
        out = {
            "descend": Regressor(loss="poisson", random_state=seed, **descend_kw),
            "sk-default": pipe,
        }
        if grid:
            out["sk-grid"] = GridSearchCV(
                clone(pipe), GRID, cv=3, n_jobs=1, scoring="neg_mean_poisson_deviance"
            )
        return out
    out = {
        "descend": (Classifier if clf else Regressor)(random_state=seed, **descend_kw),
        "sk-default": sk_default(clf, seed),
    }
    if grid:
        out["sk-grid"] = sk_grid(clf, seed)
    return out


def evaluate(est, clf: bool, X, y, poisson: bool = False) -> dict[str, float]:
    if poisson:
        return {"metric": float(mean_poisson_deviance(y, np.clip(est.predict(X), 1e-9, None)))}
    if clf:
        proba = est.predict_proba(X)
        if y.ndim == 2:  # multi-label: score is the subset accuracy; per-label log loss
            p = np.clip(proba, 1e-15, 1 - 1e-15)
            ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            return {"metric": float(est.score(X, y)), "log_loss": float(ll)}
        return {"metric": float(est.score(X, y)), "log_loss": float(log_loss(y, proba))}
    return {"metric": float(est.score(X, y))}


def run(names: list[str], seeds: int, descend_kw: dict, grid: bool) -> list[dict]:
    rows = []
    table = {**datasets(), **extra_datasets()}
    for name in names:
        loader, clf = table[name]
        X, y = loader()
        per: dict[str, list[dict]] = {}
        for seed in range(seeds):
            Xtr, Xte, ytr, yte = train_test_split(
                X, y, test_size=0.25, random_state=seed, stratify=y if clf and y.ndim == 1 else None
            )
            poisson = name in POISSON
            items = list(contenders(clf, seed, descend_kw, grid, poisson).items())
            # Rotate the order per seed: no contender always runs first (or after the warm-up).
            k = seed % len(items)
            for label, est in items[k:] + items[:k]:
                t = time.perf_counter()
                est.fit(Xtr, ytr)
                seconds = time.perf_counter() - t
                rec = {"seconds": seconds, **evaluate(est, clf, Xte, yte, poisson)}
                if label == "descend":
                    rec["epochs"] = est.n_iter_
                elif label == "sk-grid":
                    inner = est if clf or poisson else est.regressor_
                    rec["best"] = inner.best_params_
                per.setdefault(label, []).append(rec)
                print(
                    f"  {name} seed {seed} {label:10s} metric={rec['metric']:.4f} "
                    f"time={seconds:.2f}s",
                    flush=True,
                )
        for label, recs in per.items():
            row = {
                "dataset": name,
                "task": "classification" if clf else "regression",
                "n": int(X.shape[0]),
                "contender": label,
                "metric": statistics.mean(r["metric"] for r in recs),
                "metric_sd": statistics.pstdev(r["metric"] for r in recs),
                "seconds": statistics.mean(r["seconds"] for r in recs),
                "runs": recs,
            }
            if clf:
                row["log_loss"] = statistics.mean(r["log_loss"] for r in recs)
            rows.append(row)
    return rows


def markdown(rows: list[dict], grid: bool) -> str:
    by = {(r["dataset"], r["contender"]): r for r in rows}
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    head = (
        "| dataset | metric | descend | sk default | "
        + ("sk grid | " if grid else "")
        + "descend s | sk default s | "
        + ("sk grid s | " if grid else "")
        + "descend / sk default time |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in names:
        d, s = by[(name, "descend")], by[(name, "sk-default")]
        g = by.get((name, "sk-grid"))
        clf = d["task"] == "classification"
        metric = (
            ("subset accuracy" if name.startswith("multilabel") else "accuracy") if clf else "R²"
        )
        if name in POISSON:
            metric = "Poisson deviance (lower is better)"

        def fmt(r):
            text = f"{r['metric']:.4f} ± {r['metric_sd']:.4f}"
            if clf:
                text += f" (log loss {r['log_loss']:.3f})"
            return text

        cells = [name, metric, fmt(d), fmt(s)]
        if grid:
            cells.append(fmt(g))
        cells += [f"{d['seconds']:.2f}", f"{s['seconds']:.2f}"]
        if grid:
            cells.append(f"{g['seconds']:.1f}")
        cells.append(f"{d['seconds'] / s['seconds']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(datasets()))
    parser.add_argument(
        "--extra", action="store_true", help="also run the nine generated 1,000-row sets"
    )
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--descend", default="{}", help="JSON of extra descend estimator params")
    parser.add_argument("--json", default=None, help="also write the raw rows to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    torch.set_num_threads(1)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if args.extra:
        names += list(extra_datasets())
    descend_kw = json.loads(args.descend)
    with threadpool_limits(1):
        rows = run(names, args.seeds, descend_kw, grid=not args.no_grid)
    print()
    print(
        f"Machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread, 1 BLAS thread; seeds {args.seeds}; "
        f"descend params {descend_kw or 'default'}"
    )
    print()
    print(markdown(rows, grid=not args.no_grid))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
