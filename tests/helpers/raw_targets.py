"""The raw-target regression the range-test, lr_find and epoch-loss tests share."""

from __future__ import annotations

import torch


def raw_targets_50() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """``(X, y, model)``: 50 rows of 5 features whose targets spread over thousands (a linear
    map x 3,000 plus noise of 300), and a fresh 5-64-1 ReLU MLP (seeded). Adam at rates up to 1
    has only begun to fit such targets: a range test to 1 is still falling at its top."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 5, generator=g)
    y = (X @ torch.randn(5, generator=g) * 3000 + 300 * torch.randn(50, generator=g))[:, None]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    return X, y, model
