"""`descend fit <dataset>` vs scikit-learn's MLPClassifier/MLPRegressor (default settings).

Same process, same rows: each built-in dataset is split by descend's CLI code path
(train/validation/test, seeded, stratified for classification); scikit-learn's MLP is trained
on the same training + validation rows with its defaults (on standardized features, as the
CLI standardizes too) and scored on the same test rows. Wall time covers training only for
sklearn and the whole `runs.train` call (preprocessing, training, evaluation, writing the run
directory) for descend. Mean over seeds.

Run: ``python benchmarks/cli_datasets.py [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor

from descend import runs


def one(name: str, seed: int, tmp: str) -> dict[str, float]:
    cfg = runs.resolve_config(
        {"data": name, "seed": seed, "quiet": True, "out": os.path.join(tmp, f"{name}-{seed}")}
    )
    t = time.perf_counter()
    outcome = runs.train(cfg)
    t_descend = time.perf_counter() - t
    s = outcome.summary
    task = s["task"]
    data = runs.prepare_data(cfg, seed, lambda _: None)
    Xtr, ytr = data.part(np.concatenate([data.train_idx, data.val_idx]))
    Xte, yte = data.part(data.test_idx)
    pre = data.preprocessor
    if task == "regression":
        ytr = pre.inverse_transform_target(ytr)
        yte = pre.inverse_transform_target(yte)
    est = (MLPClassifier if task == "classification" else MLPRegressor)(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        est.fit(Xtr, np.ravel(ytr))
        t_sk = time.perf_counter() - t
    pred = est.predict(Xte)
    if task == "classification":
        sk = accuracy_score(np.ravel(yte), pred)
        ours = s["test"]["accuracy"]
    else:
        sk = r2_score(np.ravel(yte), pred)
        ours = s["test"]["r2"]
    return {
        "descend": ours,
        "sklearn": sk,
        "t_descend": t_descend,
        "t_sklearn": t_sk,
        "metric": "accuracy" if task == "classification" else "R²",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "\n| dataset | metric (test) | descend fit | sklearn MLP default | descend time (s) "
        "| sklearn time (s) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("iris", "wine", "breast_cancer", "digits", "diabetes"):
            rows = [one(name, seed, tmp) for seed in range(args.seeds)]
            m = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "metric"}
            print(
                f"| {name} | {rows[0]['metric']} | {m['descend']:.4f} | {m['sklearn']:.4f} | "
                f"{m['t_descend']:.2f} | {m['t_sklearn']:.2f} |"
            )


if __name__ == "__main__":
    main()
