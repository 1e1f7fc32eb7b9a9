"""Shared test settings.

One torch thread: the suite runs on 2 shared cores, where two spinning OpenMP threads per
process made small-model tests up to 10x slower. (Speed is measured in benchmarks/, not here.)

Every test starts from the same global random state: data drawn with ``torch.randn`` or
``np.random`` without a generator otherwise depends on which tests ran before it in the same
worker (pytest-xdist shares a process among many tests), and a draw that only some orders see
made a test fail now and then (session 25: ``test_lr_alone_gives_exactly_that_rate``).
"""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
