"""Optimizer step time: descend against torch.optim (for-loop, foreach, fused).

Two parameter sets, float32, gradients fixed (random) so only the optimizer step is timed:

- ``gpt2``: GPT-2 small's parameter shapes (124.4M parameters in 148 tensors: token and
  position embeddings, 12 blocks of LayerNorm/attention/MLP weights and biases, final LayerNorm);
- ``small``: 200 small tensors (100 weight matrices 64×64 and 100 biases of 64; 414k parameters),
  where per-tensor Python and kernel-launch overhead dominates.

Contenders, for AdamW (lr 1e-3, weight decay 0.01 on every tensor, as torch's) and for momentum
SGD (lr 0.01, momentum 0.9):

- ``torch for-loop`` / ``torch foreach`` / ``torch fused``: ``torch.optim.AdamW`` / ``SGD`` with
  ``foreach=False`` / ``foreach=True`` / ``fused=True``;
- ``descend update+apply``: ``tx.update`` then ``apply_updates`` (the classic descend loop; with
  ``impl="auto"`` the update is one fused kernel call into an update buffer);
- ``descend update_and_apply``: :func:`descend.transforms.update_and_apply`, the fused kernel
  writing the parameters (what ``as_torch_optimizer(..., fused_step=True)`` runs);
- ``descend adapter``: ``as_torch_optimizer(tx, params, fused_step=True).step()``, the whole
  torch-style step including collecting ``.grad``;
- ``descend foreach``: ``impl="foreach"`` with update+apply (the multi-tensor path).

Every descend timing includes building the gradient dict from ``.grad`` (what a loop does).
Contenders are interleaved (round-robin, shuffled order each round) and each step is timed on its
own; the table reports the minimum and the median over all rounds. With ``--compile`` it also
times ``torch.compile`` of descend's foreach AdamW update (learning rate passed as a tensor so
changing it does not recompile) — slow to compile on CPU, so opt-in.

Run: ``python benchmarks/optimizer_step.py`` (``--quick`` for a smoke run, ``--sets small``,
``--threads N``, ``--markdown`` to print the RESULTS.md table).

``--quality`` instead trains the zero-tuning suite's workloads (``benchmarks/suite.py``: same
splits, models, budgets and hand-written loop with best-weight restore) with each modern descend
optimizer at its default settings, through ``as_torch_optimizer`` (schedule-free evaluated at
its averaged point via ``.eval()``/``.train()``), next to the suite's tuned AdamW (6-point grid +
warmup/cosine) and AdamW at 1e-3, and reports best validation loss relative to the tuned AdamW.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch

from descend import optim
from descend.transforms import apply_updates, update_and_apply

# --------------------------------------------------------------------------- parameter sets


def gpt2_small_shapes() -> dict[str, tuple[int, ...]]:
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: dict[str, tuple[int, ...]] = {"wte": (vocab, d), "wpe": (ctx, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d),
                p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d),
                p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, 4 * d),
                p + "mlp.c_fc.bias": (4 * d,),
                p + "mlp.c_proj.weight": (4 * d, d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def small_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(100):
        shapes[f"layer{i}.weight"] = (64, 64)
        shapes[f"layer{i}.bias"] = (64,)
    return shapes


SETS = {"gpt2": gpt2_small_shapes, "small": small_shapes}


def make_params(shapes: dict[str, tuple[int, ...]], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for n, s in shapes.items()}
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


# --------------------------------------------------------------------------- contenders

Step = Callable[[], None]


def torch_step(kind: str, algo: str, params) -> Step:
    ps = list(params.values())
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    if algo == "adamw":
        opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, **flags[kind])
    else:
        opt = torch.optim.SGD(ps, lr=0.01, momentum=0.9, **flags[kind])
    return opt.step


def descend_tx(algo: str, impl: str = "auto"):
    if algo == "adamw":
        return optim.adamw(1e-3, weight_decay=0.01, mask=None, impl=impl)
    return optim.momentum(0.01, momentum=0.9, impl=impl)


def descend_step(kind: str, algo: str, params) -> Step:
    if kind == "adapter":
        opt = optim.as_torch_optimizer(descend_tx(algo), params, fused_step=True)
        return opt.step
    tx = descend_tx(algo, "foreach" if kind == "foreach" else "auto")
    box = [tx.init(params)]
    named = list(params.items())

    if kind == "update_and_apply":

        @torch.no_grad()
        def step() -> None:
            grads = {n: p.grad for n, p in named}
            box[0] = update_and_apply(tx, grads, box[0], params)

    else:

        @torch.no_grad()
        def step() -> None:
            grads = {n: p.grad for n, p in named}
            updates, box[0] = tx.update(grads, box[0], params)
            apply_updates(params, updates)

    return step


def compiled_step(algo: str, params) -> Step:
    """torch.compile of descend's foreach AdamW update, the learning rate a 0-d tensor."""
    if algo != "adamw":
        raise ValueError("compiled path benchmarked for adamw only")
    names = list(params)
    ps = [params[n] for n in names]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    lr = torch.tensor(1e-3)
    count = [0]
    b1, b2, eps, wd = 0.9, 0.999, 1e-8, 0.01

    @torch.compile(fullgraph=False, dynamic=False)
    def kernel(ps, gs, ms, vs, lr, bc1, bc2_sqrt):
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        torch._foreach_mul_(ps, 1 - lr * wd)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        upd = torch._foreach_div(ms, denom)
        torch._foreach_mul_(upd, -lr / bc1)
        torch._foreach_add_(ps, upd)

    @torch.no_grad()
    def step() -> None:
        count[0] += 1
        t = count[0]
        gs = [p.grad for p in ps]
        bc1 = torch.tensor(1 - b1**t)
        bc2 = torch.tensor((1 - b2**t) ** 0.5)
        kernel(ps, gs, ms, vs, lr, bc1, bc2)

    return step


# --------------------------------------------------------------------------- timing


def time_contenders(
    makers: dict[str, Callable[[], Step]], rounds: int, steps: int, warmup: int
) -> dict[str, list[float]]:
    steps_by_name = {}
    for name, make in makers.items():
        fn = make()
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        steps_by_name[name] = fn
        print(f"  warmed {name} ({time.perf_counter() - t0:.2f} s)", flush=True)
    times: dict[str, list[float]] = {n: [] for n in makers}
    order = list(makers)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = steps_by_name[name]
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def run_set(
    set_name: str,
    algo: str,
    rounds: int,
    steps: int,
    warmup: int,
    compile_: bool,
    only: list[str] | None = None,
):
    shapes = SETS[set_name]()
    # One parameter set (and fixed gradients) shared by every contender, each with its own
    # optimizer state: memory stays at params + grads + the states (GPT-2 small: ~9 GB for
    # AdamW), and the tiny steps of the others do not change what a step costs.
    params = make_params(shapes)
    kinds_torch = ["for-loop", "foreach", "fused"]
    kinds_descend = ["update+apply", "update_and_apply", "adapter", "foreach"]
    makers: dict[str, Callable[[], Step]] = {}
    for kind in kinds_torch:
        makers[f"torch {kind}"] = lambda kind=kind: torch_step(kind, algo, params)
    for kind in kinds_descend:
        makers[f"descend {kind}"] = lambda kind=kind: descend_step(kind, algo, params)
    if compile_ and algo == "adamw":
        makers["descend compiled (foreach)"] = lambda: compiled_step(algo, params)
    if only:
        makers = {k: v for k, v in makers.items() if any(o in k for o in only)}
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    print(f"{set_name} / {algo}: {len(shapes)} tensors, {numel / 1e6:.1f}M parameters", flush=True)
    times = time_contenders(makers, rounds, steps, warmup)
    gc.collect()
    return {"set": set_name, "algo": algo, "tensors": len(shapes), "numel": numel, "times": times}


def table(result: dict) -> str:
    times = result["times"]
    torch_names = [k for k in times if k.startswith("torch ")]
    base = min(statistics.median(times[k]) for k in torch_names)
    lines = [
        f"**{result['set']}** ({result['tensors']} tensors, {result['numel'] / 1e6:.1f}M "
        f"parameters), {result['algo']}, {len(next(iter(times.values())))} timed steps each",
        "",
        "| contender | min ms | median ms | min / torch's fastest min | median / torch's "
        "fastest median | paired: median of step / torch fused step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base_min = min(min(times[k]) for k in torch_names)
    fused = times.get("torch fused")
    for name, ts in times.items():
        med = statistics.median(ts)
        # the i-th timed step of each contender ran in the same round, seconds apart: the
        # median of their ratios cancels most of the load drift that moves both
        paired = statistics.median(a / b for a, b in zip(ts, fused)) if fused else math.nan
        lines.append(
            f"| {name} | {min(ts) * 1e3:.3f} | {med * 1e3:.3f} | {min(ts) / base_min:.2f} "
            f"| {med / base:.2f} | {paired:.2f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "?")
    except OSError:
        model = platform.processor() or "?"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {model}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} at the start"
    )


# --------------------------------------------------------------------------- quality

QUALITY_METHODS = [
    "schedulefree_adamw",
    "schedulefree_sgd",
    "muon",
    "lion",
    "prodigy",
    "lamb",
    "lars",
]


def quality(args) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import suite  # the zero-tuning suite: workloads, splits, models, the reference loop

    def make(name):
        def make_opt(model, steps):
            kwargs = {"partition": model} if name == "muon" else {}
            return optim.as_torch_optimizer(optim.get(name, **kwargs), model), None

        return make_opt

    def mode(opt, evaluating: bool) -> None:
        (opt.eval if evaluating else opt.train)()

    methods = args.methods or QUALITY_METHODS
    rows = []
    for w in suite.workloads(args.quick):
        if args.only and w.name not in args.only:
            continue
        seeds = args.seeds or w.seeds
        per: dict[str, list[tuple[float, float, float]]] = {}
        t0 = time.perf_counter()
        for seed in range(seeds):
            s = suite.make_split(w, seed)
            grid = [
                suite.torch_loop(w, s, seed, suite.adamw(lr, True), f"adamw@{lr:g}")
                for lr in suite.GRID
            ]
            tuned = min(grid, key=lambda r: r.best)
            runs = {"adamw-tuned": tuned}
            runs["adamw-default"] = suite.torch_loop(
                w, s, seed, suite.adamw(1e-3, False), "adamw-default"
            )
            for m in methods:
                runs[m] = suite.torch_loop(w, s, seed, make(m), m, eval_mode=mode)
            for m, r in runs.items():
                per.setdefault(m, []).append((r.best / tuned.best, r.test, r.wall))
        print(f"  {w.name}: {time.perf_counter() - t0:.0f}s", flush=True)
        rows.append((w, per))
        print(quality_table([(w, per)]), flush=True)
    print(quality_table(rows))


def quality_table(rows) -> str:
    methods = list(rows[0][1])
    head = "| method | " + " | ".join(w.name for w, _ in rows) + " |"
    lines = [
        "Best validation loss / tuned AdamW's (mean over seeds; < 1 beats it), and the test "
        "metric (accuracy or R²) in parentheses",
        "",
        head,
        "|---|" + "---:|" * len(rows),
    ]
    for m in methods:
        cells = []
        for _, per in rows:
            vals = per.get(m, [])
            if not vals:
                cells.append("-")
                continue
            ratio = statistics.fmean(v[0] for v in vals)
            test = statistics.fmean(v[1] for v in vals)
            cells.append(f"{ratio:.3f} ({test:.3f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["small", "gpt2"], choices=sorted(SETS))
    ap.add_argument("--algos", nargs="+", default=["adamw", "momentum"])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per contender per round")
    ap.add_argument(
        "--contenders", nargs="+", help="only contenders whose name contains one of these"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--quality", action="store_true", help="quality on the suite's workloads")
    ap.add_argument("--only", action="append", help="--quality: this workload only (repeatable)")
    ap.add_argument("--methods", nargs="+", help="--quality: these optimizers only")
    ap.add_argument("--seeds", type=int, help="--quality: override the number of seeds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    if args.quality:
        quality(args)
        return
    results = []
    for set_name in args.sets:
        big = set_name == "gpt2"
        rounds = args.rounds or (2 if args.quick else (5 if big else 20))
        steps = args.steps or (2 if big else (10 if args.quick else 20))
        for algo in args.algos:
            res = run_set(
                set_name,
                algo,
                rounds,
                steps,
                warmup=2 if big else 10,
                compile_=args.compile,
                only=args.contenders,
            )
            results.append(res)
            print(table(res), "\n", flush=True)
    if args.markdown:
        print("\n\n".join(table(r) for r in results))


if __name__ == "__main__":
    main()
