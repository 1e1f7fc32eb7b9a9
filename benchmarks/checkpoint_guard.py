"""Checkpoint write/read time and size for a 10M-parameter model, and the guard's cost per step.

Checkpoints: an MLP with ~10M parameters and its AdamW state (so ~3x the parameters on disk,
plus the best-weights copy) is written with ``descend.checkpoint.save`` (safetensors + JSON,
fsync, manifest with sha256, atomic rename), verified and read back with ``latest``. For
reference, ``torch.save`` of the same tensors (a pickle-based format descend does not use) and
``safetensors.save_file`` alone are timed in the same process.

Guard: ``descend.fit`` on the same small workload with ``guard=True`` vs ``guard=False``
(interleaved repeats; seconds per step, median), i.e. what watching every batch loss and
keeping the rollback snapshot costs.

Run: ``python benchmarks/checkpoint_guard.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import descend
from descend import checkpoint as C


def ten_million_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(1024, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    )


def checkpoint_numbers(repeats: int = 3) -> None:
    model = ten_million_model()
    params = dict(model.named_parameters())
    n = sum(p.numel() for p in params.values())
    tx = descend.optim.adamw()
    state = tx.init(params)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    _, state = tx.update(grads, state, params)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ck = C.Checkpoint(
        step=1,
        model=dict(model.state_dict()),
        opt_state=state,
        best=best,
        meta={"note": "benchmark"},
        rng={"torch_cpu": torch.get_rng_state()},
    )
    rows = {
        "descend.checkpoint.save (fsync, sha256, rename)": [],
        "descend.checkpoint.latest (verify + load)": [],
        "safetensors.save_file alone (no fsync, no manifest)": [],
        "torch.save (pickle; for reference only)": [],
    }
    size = 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeats):
            ck.step = i + 1
            t = time.perf_counter()
            path = C.save(Path(d) / "ck", ck)
            rows["descend.checkpoint.save (fsync, sha256, rename)"].append(time.perf_counter() - t)
            size = sum(f.stat().st_size for f in path.iterdir())
            t = time.perf_counter()
            C.latest(Path(d) / "ck")
            rows["descend.checkpoint.latest (verify + load)"].append(time.perf_counter() - t)
            flat = {f"model/{k}": v.contiguous() for k, v in ck.model.items()}
            flat.update({f"best/{k}": v for k, v in best.items()})
            flat.update(C.flatten_tree(state, "opt/")[1])
            t = time.perf_counter()
            save_file({k: v.clone() for k, v in flat.items()}, os.path.join(d, "plain.st"))
            rows["safetensors.save_file alone (no fsync, no manifest)"].append(
                time.perf_counter() - t
            )
            t = time.perf_counter()
            torch.save(flat, os.path.join(d, "plain.pt"))
            rows["torch.save (pickle; for reference only)"].append(time.perf_counter() - t)
    print(
        f"\n### Checkpoint of a {n / 1e6:.1f}M-parameter MLP + AdamW state + best weights "
        f"({size / 2**20:.0f} MiB on disk), median of {repeats}\n"
    )
    print("| operation | seconds | MB/s |")
    print("|---|---:|---:|")
    for k, v in rows.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.3f} | {size / 1e6 / m:.0f} |")


def guard_numbers(repeats: int = 5) -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    times = {True: [], False: []}
    steps = 0
    for _ in range(repeats):
        for g in (False, True):
            torch.manual_seed(0)
            m = torch.nn.Sequential(
                torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
            )
            r = descend.fit(
                m,
                (X, y),
                "cross_entropy",
                optimizer=descend.optim.adamw(),
                epochs=5,
                validation=None,
                metric=None,
                patience=None,
                verbose=0,
                seed=0,
                guard=g,
            )
            steps = r.steps
            times[g].append(r.elapsed / r.steps)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"\n### Divergence guard cost (digits, 64-256-10 MLP, batch 32, {steps} steps, "
        f"median of {repeats})\n"
    )
    print("| guard | ms/step | ratio |")
    print("|---|---:|---:|")
    print(f"| off | {off * 1e3:.3f} | 1.00 |")
    print(f"| on | {on * 1e3:.3f} | {on / off:.2f} |")


if __name__ == "__main__":
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    checkpoint_numbers()
    guard_numbers()
