"""Per-sample weights end to end: ``fit(..., sample_weight=w)``."""

from __future__ import annotations

import torch

import descend


def test_sample_weight_zero_ignores_samples():
    torch.manual_seed(0)
    X = torch.randn(64, 2)
    y = X[:, 0].clone()
    y[32:] = 100.0
    w = torch.ones(64)
    w[32:] = 0
    r = descend.fit(
        torch.nn.Linear(2, 1),
        (X, y),
        "mse",
        optimizer=descend.optim.adam(lr=0.05),
        epochs=200,
        batch_size=None,
        validation=None,
        verbose=0,
        seed=0,
        sample_weight=w,
        patience=None,
    )
    assert r.best_loss < 1e-3
