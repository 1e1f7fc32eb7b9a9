"""Where does a GPU start to pay for the estimators? (session 11, one prepared device call)
Times descend.Regressor/Classifier fits on the GPU and on the CPU for growing step sizes."""

import time

import torch
from sklearn.datasets import make_classification, make_regression

import descend

torch.set_num_threads(4)
cases = [
    ("reg", 1000, 10, (100,)),
    ("reg", 5000, 20, (100,)),
    ("clf", 5000, 50, (256, 256)),
    ("reg", 20000, 50, (256, 256)),
    ("clf", 50000, 100, (512, 512)),
]
for task, n, d, hidden in cases:
    if task == "reg":
        X, y = make_regression(n_samples=n, n_features=d, noise=1.0, random_state=0)
        est = descend.Regressor
    else:
        X, y = make_classification(n_samples=n, n_features=d, n_informative=d // 2, random_state=0)
        est = descend.Classifier
    row = []
    for dev in ("cuda", "cpu", "cuda", "cpu"):
        m = est(hidden_layer_sizes=hidden, random_state=0, device=dev, max_epochs=5, verbose=0)
        t = time.perf_counter()
        m.fit(X, y)
        row.append((dev, round(time.perf_counter() - t, 3), m.n_iter_))
    batch = getattr(m, "batch_size_", None)
    params = sum(p.numel() for p in m.model_.parameters())
    print(task, n, d, hidden, "params", params, "batch", batch, row[2:], flush=True)
