"""Shared test settings.

One torch thread: the suite runs on 2 shared cores, where two spinning OpenMP threads per
process made small-model tests up to 10x slower. (Speed is measured in benchmarks/, not here.)
"""

import torch

torch.set_num_threads(1)
