"""Data-parallel descend.fit against one process and a hand-written DDP loop, side by side.

The same data (``make_classification``-like, 50,000 × 54, 7 classes, generated from a seed),
model (MLP 54-512-512-7, 0.3M parameters), optimizer (AdamW, lr 1e-3, weight decay 0.01),
global batch (256) and epochs, every contender a fresh set of processes launched by this script
(the processes of a data-parallel run cannot share one), interleaved repeat by repeat:

- ``fit 1 proc x T threads``: ``descend.fit`` in one process with T torch threads;
- ``fit N procs x 1 thread``: ``descend.fit`` in N gloo processes (descend/distributed.py): each
  takes its share of every global batch;
- ``DDP loop N procs x 1 thread``: what one writes by hand: ``DistributedDataParallel``, each
  process slicing its share of every batch of the same seeded permutation, ``torch.optim.AdamW``
  (fused), ``loss.backward()``; no validation, no history, no guard;
- ``fit N procs x 1 thread, a layer outside the loss``: the same model beside a layer the loss
  never reaches, so DDP searches the graph for unused parameters at every step;
- ``fit N procs x 1 thread, FSDP2``: the model sharded with ``fully_shard`` (each Linear, then
  the root) and passed to ``descend.fit`` as it is: no DDP; each process holds half of every
  parameter, gradient and AdamW moment;
- ``FSDP2 loop N procs x 1 thread``: the same sharded model in the hand-written loop above
  (``torch.optim.AdamW``, foreach: the default for DTensor parameters).

Reported: seconds per epoch (median over repeats; the first epoch of each run is not timed:
process start, DDP setup), the ratio to ``fit`` in one single-threaded process, and the final
training loss (descend's N-process run equals its 1-process run up to float rounding).

Run: ``python benchmarks/distributed.py [--procs 2] [--epochs 3] [--repeats 3]``. On an N-core
CPU box N processes of one thread compete with one process of N threads for the same cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import descend

N, D, C, W, BS = 50_000, 54, 7, 512, 256


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)).astype(np.float32)
    y = (X[:, :7] @ rng.standard_normal((7, C))).argmax(1)
    return X, y


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(D, W), torch.nn.ReLU(), torch.nn.Linear(W, W), torch.nn.ReLU(),
        torch.nn.Linear(W, C),
    )  # fmt: skip


class WithSpare(torch.nn.Module):
    """The same MLP beside a layer outside the loss: DDP must search for unused parameters
    at every step (descend switches the search on at step 1, redoing that step)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = model()
        self.spare = torch.nn.Linear(D, C)

    def forward(self, x):
        return self.body(x)


class EpochClock(descend.train.Callback):
    """Wall time at every epoch end."""

    wants_steps = False

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_epoch_end(self, loop) -> None:
        self.ends.append(time.perf_counter())


def sharded() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    m = model()
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(m)
    return m


def run_fit(epochs: int, spare: bool = False, shard: bool = False) -> tuple[list[float], float]:
    X, y = data()
    clock = EpochClock()
    r = descend.fit(
        WithSpare() if spare else sharded() if shard else model(), (X, y), "cross_entropy", optimizer=descend.optim.adamw(lr=1e-3, weight_decay=0.01),
        epochs=epochs, batch_size=BS, validation=None, patience=None, metric=None, verbose=0,
        seed=0, guard=True, callbacks=[clock],
    )  # fmt: skip
    return clock.ends, r.history.train_loss[-1]


def run_ddp_loop(
    epochs: int, rank: int, world: int, shard: bool = False
) -> tuple[list[float], float]:
    X, y = (torch.as_tensor(a) for a in data())
    if shard:
        m = sharded()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    else:
        m = torch.nn.parallel.DistributedDataParallel(model())
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    ends, last = [], 0.0
    for epoch in range(epochs):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        total = torch.zeros(2)
        for lo in range(0, N, BS):
            idx = perm[lo : min(lo + BS, N)]
            n = idx.numel()
            a = lo + rank * (n // world) + min(rank, n % world)
            b = a + n // world + (rank < n % world)
            mine = perm[a:b]
            loss = torch.nn.functional.cross_entropy(m(X[mine]), y[mine])
            share = (b - a) / n
            opt.zero_grad(set_to_none=True)
            (loss * share * world).backward()
            opt.step()
            total += torch.stack([loss.detach() * share, torch.tensor(1.0)])
        torch.distributed.all_reduce(total)
        last = float(total[0] / (total[1] / world))  # the mean batch loss of the epoch
        ends.append(time.perf_counter())
    return ends, last


def worker(mode: str, rank: int, world: int, threads: int, epochs: int, out: Path) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{out.parent / (out.stem + '.group')}", rank=rank,
            world_size=world,
        )  # fmt: skip
    if mode in ("ddp", "fsdp-loop"):
        ends, loss = run_ddp_loop(epochs, rank, world, shard=mode == "fsdp-loop")
    else:
        ends, loss = run_fit(epochs, spare=mode == "fit-spare", shard=mode == "fit-fsdp")
    if rank == 0:
        per_epoch = [b - a for a, b in itertools.pairwise(ends)]  # from the end of epoch 1
        out.write_text(json.dumps({"per_epoch": per_epoch, "loss": loss}))
    if world > 1:
        torch.distributed.barrier()  # leave together (a group torn down alone can abort)
        torch.distributed.destroy_process_group()


def launch(mode: str, world: int, threads: int, epochs: int, tmp: Path, tag: str) -> dict:
    out = tmp / f"{tag}.json"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", mode]
            + [str(v) for v in (r, world, threads, epochs, out)],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        for r in range(world)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{tag}: a process failed")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="run the contenders whose name contains this text")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, rank, world, threads, epochs, out = args.worker
        worker(mode, int(rank), int(world), int(threads), int(epochs), Path(out))
        return
    P, E = args.procs, args.epochs + 1  # the first epoch is not timed
    contenders = {
        "fit 1 proc x 1 thread": ("fit", 1, 1),
        f"fit 1 proc x {P} threads": ("fit", 1, P),
        f"fit {P} procs x 1 thread": ("fit", P, 1),
        f"DDP loop {P} procs x 1 thread": ("ddp", P, 1),
        f"fit {P} procs x 1 thread, a layer outside the loss": ("fit-spare", P, 1),
        f"fit {P} procs x 1 thread, FSDP2": ("fit-fsdp", P, 1),
        f"FSDP2 loop {P} procs x 1 thread": ("fsdp-loop", P, 1),
    }
    if args.only:
        contenders = {k: v for k, v in contenders.items() if args.only in k}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.repeats):
            for i, (k, (mode, world, threads)) in enumerate(contenders.items()):
                res = launch(mode, world, threads, E, Path(d), f"r{rep}c{i}")
                times[k].append(statistics.median(res["per_epoch"]))
                losses[k] = res["loss"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, python {platform.python_version()}; {N:,} x {D}, MLP {D}-{W}-{W}-"
        f"{C}, batch {BS} (global), {args.epochs} timed epochs x {args.repeats} repeats\n"
    )
    base = statistics.median(times.get("fit 1 proc x 1 thread") or next(iter(times.values())))
    print("| contender | s / epoch | speed-up vs fit 1 proc x 1 thread | final train loss |")
    print("|---|---:|---:|---:|")
    for k, v in times.items():
        t = statistics.median(v)
        print(f"| {k} | {t:.3f} | {base / t:.2f}x | {losses[k]:.5f} |")


if __name__ == "__main__":
    main()
