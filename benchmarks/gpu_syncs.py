"""Count the host-GPU synchronizations of a digits fit, by source line (a GPU diagnostic).

    python benchmarks/gpu_syncs.py      # on a machine with CUDA

Session 11 on an H200: 61 syncs in 285 steps (5 epochs of 57) without validation, 65 with —
one per 16-step guard window plus a few per epoch (history, metric), none per step.
"""

import collections
import time
import warnings

import torch
from sklearn.datasets import load_digits

import descend

X, y = load_digits(return_X_y=True)
X = (X - X.mean(0)) / (X.std(0) + 1e-8)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def fit(epochs, val):
    return descend.fit(
        model(), (X, y), "cross_entropy", lr=1e-3, epochs=epochs, verbose=0, seed=0, validation=val
    )


for val in (None, 0.2):
    fit(1, val)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fit(5, val)
    torch.cuda.set_sync_debug_mode(0)
    where = collections.Counter((w.filename.split("src/")[-1], w.lineno) for w in caught)
    print("validation", val, "steps", r.steps, "syncs", sum(where.values()))
    for k, v in where.most_common(15):
        print("  ", v, k)
    t = time.perf_counter()
    fit(20, val)
    torch.cuda.synchronize()
    print("  20 epochs", round(time.perf_counter() - t, 3), "s")
