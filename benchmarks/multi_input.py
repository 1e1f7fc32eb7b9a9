"""A model with two inputs (float features and int64 category ids): descend.fit against the
loops people write by hand, side by side, per epoch.

Same process, same data, same model (an embedding of the ids joined to the features, then an
MLP), same AdamW (lr 1e-3, weight decay 0.01), same batch size and epochs for every contender:

- ``bare/descend-adamw``: a hand-written loop over in-memory tensors (``randperm`` and
  indexing of both inputs), autograd, and descend's AdamW through ``update_and_apply`` (the
  step ``fit`` takes): ``fit / this`` is the framework's cost;
- ``bare/torch-adamw-fused``: the same loop with ``torch.optim.AdamW(fused=True)``;
- ``dataloader``: ``DataLoader(TensorDataset(x, ids, y), shuffle=True)``, torch's AdamW;
- ``descend.fit``: ``fit(model, ((x, ids), y), optimizer=adamw(...), validation=None)``.

Run: ``python benchmarks/multi_input.py [--rows 50000] [--epochs 3] [--repeats 3]``; prints a
Markdown table of seconds per epoch (median over repeats) and ratios to the bare loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import descend
from descend.transforms import update_and_apply


class WideAndDeep(torch.nn.Module):
    def __init__(self, n_num: int, n_ids: int, width: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(n_ids, 16)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_num + 16, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, self.emb(ids)], 1))


def data(rows: int, n_num: int, n_ids: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, n_num, generator=g)
    ids = torch.randint(0, n_ids, (rows,), generator=g)
    effect = torch.randn(n_ids, generator=g)
    y = (x[:, :4].sum(1) + effect[ids]).unsqueeze(1)
    return x, ids, y


def bare(model, x, ids, y, bs, epochs, step_with):
    n = x.shape[0]
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for lo in range(0, n, bs):
            idx = perm[lo : lo + bs]
            loss = torch.nn.functional.mse_loss(model(x[idx], ids[idx]), y[idx])
            step_with(loss)


def descend_step(model):
    tx = descend.optim.adamw(lr=1e-3, weight_decay=0.01)
    params = dict(model.named_parameters())
    state = [tx.init(params)]
    names, plist = list(params), list(params.values())

    def step(loss):
        grads = torch.autograd.grad(loss, plist)
        with torch.no_grad():
            state[0] = update_and_apply(tx, dict(zip(names, grads)), state[0], params)

    return step


def torch_step(model, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **kw)

    def step(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def dataloader(model, x, ids, y, bs, epochs):
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, ids, y), batch_size=bs, shuffle=True
    )
    step = torch_step(model)
    for _ in range(epochs):
        for xb, ib, yb in loader:
            step(torch.nn.functional.mse_loss(model(xb, ib), yb))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_num, n_ids = 20, 1000
    x, ids, y = data(args.rows, n_num, n_ids)
    bs, epochs = args.batch_size, args.epochs

    def fit(model):
        descend.fit(
            model,
            ((x, ids), y),
            "mse",
            optimizer=descend.optim.adamw(lr=1e-3, weight_decay=0.01),
            epochs=epochs,
            batch_size=bs,
            validation=None,
            patience=None,
            verbose=0,
            seed=0,
            device="cpu",
        )

    contenders = {
        "bare/descend-adamw": lambda m: bare(m, x, ids, y, bs, epochs, descend_step(m)),
        "bare/torch-adamw-fused": lambda m: bare(
            m, x, ids, y, bs, epochs, torch_step(m, fused=True)
        ),
        "dataloader": lambda m: dataloader(m, x, ids, y, bs, epochs),
        "descend.fit": fit,
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):  # interleaved: every contender once per round
        for name, run in contenders.items():
            model = WideAndDeep(n_num, n_ids, args.width)
            t = time.perf_counter()
            run(model)
            times[name].append((time.perf_counter() - t) / epochs)
    base = statistics.median(times["bare/descend-adamw"])
    print(
        f"Machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
        f"1 thread; {args.rows:,} rows x ({n_num} floats + 1 id of {n_ids}), batch {bs}, "
        f"width {args.width}, {epochs} epochs x {args.repeats} repeats\n"
    )
    print("| contender | s / epoch (median) | vs bare/descend-adamw |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
