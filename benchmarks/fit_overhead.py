"""Per-epoch time of descend.fit against the loops people write by hand, side by side.

Same process, same data, same model, same optimizer settings (AdamW, lr 1e-3, wd 0.01), same
batch size and epoch count for every contender:

- ``bare/descend-adamw``: a hand-written loop over in-memory tensors (randperm + indexing) that
  drives descend's own AdamW transform through ``update_and_apply`` (the fused step ``fit``
  takes): fit's framework overhead is ``fit / this``.
- ``bare/hand-backprop``: the floor. The same loop with the backward pass written out
  (closed-form loss gradient, a ``mm``/``sum`` per layer, no autograd) and torch's fused AdamW
  kernel called directly on the parameters, nothing else: no gradient norm, no divergence
  guard, no loss history, no hooks check. ``fit`` takes the same arithmetic (its plain-MLP
  path), so ``fit / this`` is everything the framework adds per step.
- ``bare/torch-adamw``: the same loop with ``torch.optim.AdamW`` at its defaults (the for-loop
  implementation on CPU), and ``bare/torch-adamw-fused`` with ``fused=True``.
- ``dataloader``: the typical ``DataLoader(TensorDataset, shuffle=True)`` loop, torch AdamW.
- ``sklearn-mlp``: scikit-learn's MLPClassifier/MLPRegressor (adam, same width and batch size),
  time per iteration (= epoch).
- ``descend.fit``: training only (``validation=None``), and ``descend.fit+val`` with its default
  20% validation split evaluated every epoch (on 80% of the training rows, so slightly less work).
  These plain MLPs take fit's hand-written backward pass (descend/train/_mlp.py).
- ``descend.fit/autograd``: ``descend.fit`` on the same model with a no-op forward hook, which
  sends it down autograd's path like any other model: ``this / bare/descend-adamw`` is the
  framework's own overhead, the number the loop is held to.

Run: ``python benchmarks/fit_overhead.py [--epochs 5] [--repeats 3] [--device cuda]`` (the
sets of at most 1,000 rows run 40x the epochs). On an accelerator every torch contender keeps the
model, and the bare loops the data, on the device (the permutation too); the ``dataloader``
loop is the typical one: CPU tensors in the ``DataLoader``, each batch moved with ``.to()``. Prints a Markdown table
of seconds per epoch (median over repeats) and ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor

import descend
from descend.transforms import update_and_apply

DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def make_mlp(i: int, h: int, o: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(i, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, o),
    ).to(DEVICE)


def workloads():
    X, y = load_digits(return_X_y=True)
    yield "digits (1.8k x 64, clf, batch 32)", (X / 16).astype(np.float32), y, "clf", 256, 32
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    yr = (np.tanh(X @ w / 4) + 0.1 * rng.standard_normal(20_000)).astype(np.float32)
    yield "synthetic (20k x 32, reg, batch 128)", X, yr, "reg", 256, 128
    Xc = rng.standard_normal((50_000, 54)).astype(np.float32)
    yc = (Xc[:, :7] @ rng.standard_normal((7, 7))).argmax(1)
    yield "synthetic (50k x 54, clf, batch 256)", Xc, yc, "clf", 512, 256
    # The estimators' 3-output benchmark set: a 20-64-64 MLP on 169-row batches (4 per epoch),
    # where a step is ~0.15 ms of arithmetic and the framework's per-step costs show most.
    X3 = rng.standard_normal((675, 20)).astype(np.float32)
    y3 = (X3[:, :10] @ rng.standard_normal(10) + rng.standard_normal(675)).astype(np.float32)
    yield "small tabular (675 x 20, reg, batch 169)", X3, y3, "reg", 64, 169
    # One step per epoch: every per-epoch cost of the framework shows as a per-step cost.
    Xi, yi = load_iris(return_X_y=True)
    Xi = ((Xi - Xi.mean(0)) / Xi.std(0)).astype(np.float32)
    yield "iris (150 x 4, clf, full batch: 1 step per epoch)", Xi, yi, "clf", 64, 150


def loss_fn(kind):
    if kind == "clf":
        return torch.nn.functional.cross_entropy
    return lambda p, t: torch.nn.functional.mse_loss(p.squeeze(-1), t)


def bare_loop(model, X, y, kind, bs, epochs, make_opt):
    _, step = make_opt(model)
    lf = loss_fn(kind)
    g = torch.Generator(device=X.device).manual_seed(0)
    n = X.shape[0]
    sync()
    t = time.perf_counter()
    for _ in range(epochs):
        if bs >= n:  # full batch: no shuffle needed
            step(lf(model(X), y))
            continue
        perm = torch.randperm(n, generator=g, device=X.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            step(lf(model(X[idx]), y[idx]))
    sync()
    return (time.perf_counter() - t) / epochs


def torch_opt(**kw):
    def make(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **kw)

        def step(loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return opt, step

    return make


def descend_opt(model):
    params = {n: p for n, p in model.named_parameters()}
    names, plist = list(params), list(params.values())
    tx = descend.optim.adamw(lr=1e-3, weight_decay=0.01)
    state = [tx.init(params)]

    def step(loss):
        grads = dict(zip(names, torch.autograd.grad(loss, plist)))
        # What fit's step does: the fused apply path (one torch fused AdamW pass).
        state[0] = update_and_apply(tx, grads, state[0], params)

    return tx, step


def hand_backprop_loop(model, X, y, kind, bs, epochs):
    """The floor: the step's arithmetic and nothing else (see the module docstring)."""
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    ps = [t for lin in lins for t in (lin.weight, lin.bias)]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    count = torch.zeros((), device=X.device)  # one step tensor for all, as fit keeps it
    steps = [count] * len(ps)
    g = torch.Generator(device=X.device).manual_seed(0)
    n = X.shape[0]

    def step(xb, yb):
        acts = [xb]
        h = xb
        for i, lin in enumerate(lins):
            h = torch.nn.functional.linear(h, lin.weight, lin.bias)
            if i < len(lins) - 1:
                h = h.relu_()
            acts.append(h)
        if kind == "clf":
            grad = torch.softmax(h, 1)
            grad[torch.arange(h.shape[0], device=h.device), yb] -= 1.0
            grad /= h.shape[0]
        else:
            grad = (h.squeeze(-1) - yb).mul_(2.0 / h.shape[0]).unsqueeze(-1)
        grads = [None] * len(ps)
        for i in range(len(lins) - 1, -1, -1):
            if i < len(lins) - 1:
                grad = torch.ops.aten.threshold_backward.default(grad, acts[i + 1], 0)
            grads[2 * i] = grad.t().mm(acts[i])
            grads[2 * i + 1] = grad.sum(0)
            if i > 0:
                grad = grad.mm(lins[i].weight)
        count.add_(1)
        torch._fused_adamw_(
            ps, grads, ms, vs, [], steps, lr=1e-3, beta1=0.9, beta2=0.999,
            weight_decay=0.01, eps=1e-8, amsgrad=False, maximize=False,
        )  # fmt: skip

    sync()
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(epochs):
            if bs >= n:
                step(X, y)
                continue
            perm = torch.randperm(n, generator=g, device=X.device)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                step(X[idx], y[idx])
    sync()
    return (time.perf_counter() - t) / epochs


def dataloader_loop(model, X, y, kind, bs, epochs):
    ds = torch.utils.data.TensorDataset(X.cpu(), y.cpu())
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    lf = loss_fn(kind)
    sync()
    t = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in dl:
            xb, yb = xb.to(DEVICE), yb.to(DEVICE)
            opt.zero_grad(set_to_none=True)
            lf(model(xb), yb).backward()
            opt.step()
    sync()
    return (time.perf_counter() - t) / epochs


def sklearn_mlp(X, y, kind, width, bs, epochs):
    cls = MLPClassifier if kind == "clf" else MLPRegressor
    m = cls(
        hidden_layer_sizes=(width, width),
        batch_size=bs,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=10**9,
        alpha=0.0,
        learning_rate_init=1e-3,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        m.fit(X, y)
    return (time.perf_counter() - t) / m.n_iter_


def hooked(model: torch.nn.Module) -> torch.nn.Module:
    """The model with a no-op forward hook: fit takes autograd's path for it."""
    model.register_forward_hook(lambda module, args, out: None)
    return model


def descend_fit(model, X, y, kind, bs, epochs, validation):
    loss = "cross_entropy" if kind == "clf" else "mse"
    t = time.perf_counter()
    r = descend.fit(
        model,
        (X, y),
        loss,
        optimizer=descend.optim.adamw(lr=1e-3, weight_decay=0.01),
        batch_size=bs,
        epochs=epochs,
        validation=validation,
        patience=None,
        metric=None if validation is None else "auto",
        verbose=0,
        seed=0,
        device=DEVICE,
    )
    sync()
    if r.epochs != epochs:
        raise RuntimeError(f"descend.fit stopped early: {r.stop_message} {r.history.events}")
    return (time.perf_counter() - t) / epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="skip workloads whose name contains this")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "no GPU"
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, python {platform.python_version()}, "
        f"device {DEVICE} ({gpu})"
    )
    for name, Xn, yn, kind, width, bs in workloads():
        if args.skip and args.skip in name:
            continue
        # Epochs of a few milliseconds (full batch, small sets) need many more of them to time.
        E = args.epochs if Xn.shape[0] > 1000 else 40 * args.epochs
        X = torch.as_tensor(Xn, device=DEVICE)
        y = torch.as_tensor(yn, device=DEVICE)
        y = y.long() if kind == "clf" else y
        d_in = X.shape[1]
        d_out = int(y.max()) + 1 if kind == "clf" else 1
        contenders = {
            "bare/descend-adamw": lambda: bare_loop(
                make_mlp(d_in, width, d_out), X, y, kind, bs, E, descend_opt
            ),
            "bare/hand-backprop": lambda: hand_backprop_loop(
                make_mlp(d_in, width, d_out), X, y, kind, bs, E
            ),
            "bare/torch-adamw": lambda: bare_loop(
                make_mlp(d_in, width, d_out), X, y, kind, bs, E, torch_opt()
            ),
            "bare/torch-adamw-fused": lambda: bare_loop(
                make_mlp(d_in, width, d_out), X, y, kind, bs, E, torch_opt(fused=True)
            ),
            "dataloader": lambda: dataloader_loop(make_mlp(d_in, width, d_out), X, y, kind, bs, E),
            "sklearn-mlp": lambda: sklearn_mlp(Xn, yn, kind, width, bs, E),
            "descend.fit": lambda: descend_fit(
                make_mlp(d_in, width, d_out), Xn, yn, kind, bs, E, None
            ),
            "descend.fit+val": lambda: descend_fit(
                make_mlp(d_in, width, d_out), Xn, yn, kind, bs, E, 0.2
            ),
            "descend.fit/autograd": lambda: descend_fit(
                hooked(make_mlp(d_in, width, d_out)), Xn, yn, kind, bs, E, None
            ),
        }
        # warm-up (allocator, thread pools, first-call costs)
        bare_loop(make_mlp(d_in, width, d_out), X, y, kind, bs, 1, descend_opt)
        descend_fit(make_mlp(d_in, width, d_out), Xn, yn, kind, bs, 1, None)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.repeats):  # interleave contenders so drift hits all alike
            for k, f in contenders.items():
                times[k].append(f())
        med = {k: statistics.median(v) for k, v in times.items()}
        ref = med["bare/descend-adamw"]
        fit_t = med["descend.fit"]
        print(f"\n### {name}, width {width}, {E} epochs x {args.repeats} repeats\n")
        floor = med["bare/hand-backprop"]
        print(
            "| contender | ms/epoch | ÷ bare/descend-adamw | ÷ bare/hand-backprop "
            "| descend.fit speed-up vs it |"
        )
        print("|---|---:|---:|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {v * 1e3:.3g} | {v / ref:.2f} | {v / floor:.2f} | {v / fit_t:.2f}x |")


if __name__ == "__main__":
    main()
