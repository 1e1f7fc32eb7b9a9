"""``descend.lr_find``: the learning-rate range test (Smith 2017), as an advice tool.

The test trains a COPY of the model for a few dozen to a few hundred steps while the learning
rate grows exponentially from ``start_lr`` to ``end_lr``, and records the batch loss at every
step. The loss first barely moves (rate too small), then falls, then blows up (rate too large).
The user's model is never touched: the sweep runs on a deep copy, so "restoring" it is exact.

How the curve is read:

- The raw batch losses are smoothed with a bias-corrected exponential moving average (as in
  fastai's finder) of ``beta = 1 − 10 / steps`` clipped to [0.8, 0.98], so the window is about a
  tenth of the sweep whatever its length.
- The sweep stops early once the smoothed loss exceeds ``diverge`` × its minimum (or a loss is
  not finite): nothing to learn past that point. (A loss below zero, e.g. a Gaussian
  negative log-likelihood, has passed when it rises above its minimum by ``diverge − 1``
  times the minimum's size: ``diverge`` × a negative minimum is below it.)
- ``suggestion`` is the rate at the minimum of the smoothed loss divided by 10 ("min/10"); if
  the loss did not fall clearly below the median of the sweep's first quarter (by 5% and by 6
  times its noise, or by 3 times with its minimum within 30x of the edge below), every rate
  below the point where it starts to rise was too small to matter and the minimum among them
  is noise: the suggestion is then the *stable edge* — the last rate before the smoothed loss
  rises clearly above its median level for good (before the blow-up, or the top of the
  sweep) — / 10.
- A flat bottom is read at its left edge: the *valley* is the stretch of rates whose smoothed
  loss lies within ``VALLEY_SHARE`` (10%) of the fall (first batches → minimum) above the
  minimum; when it spans more than ``FLAT_DECADES`` (one decade), the minimum's place in it is
  noise, and the suggestion is the valley's lowest rate / 10. A network with batch norm shows
  this: its loss need not blow up at high rates within a short sweep (the normalized layers do
  not care about their weights' scale), and the minimum wandered over 0.045–0.81 across six
  seeds of one small CNN (benchmarks/RESULTS.md, session 12), the highest reading racing rates
  4–8× above the best. The plain MLPs' sharp valleys (under a decade) read as before. On
  the six workloads of ``benchmarks/suite.py`` the best AdamW rate of a dense grid lay between
  0.25× and 2× of min/10 in every case, while the "steepest descent" point jumped between the
  very first rates (a warming-up EMA looks steep) and 10× too high from one seed to the next —
  so min/10 is the suggestion and the steepest point is reported only as a second opinion.

Example:
    >>> import torch, descend
    >>> from descend.train.lr_find import lr_find
    >>> X = torch.randn(512, 4); y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> model = torch.nn.Linear(4, 1)
    >>> found = lr_find(model, (X, y), "mse", steps=60, seed=0)
    >>> 1e-5 < found.suggestion < 1.0
    True
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from descend import data as D
from descend import distributed as dist_
from descend import losses as L
from descend import optim
from descend._errors import (
    ConfigError,
    InputError,
    check_choice,
    check_positive,
    describe,
    message,
    plain,
)
from descend.transforms import Transform

__all__ = ["LRFindResult", "lr_find", "sweep"]


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured and what it suggests.

    Attributes:
        lrs: the learning rate of every step taken.
        losses: the raw batch loss of every step (``nan``/``inf`` where it blew up).
        smoothed: the smoothed loss (bias-corrected EMA), one per finite step.
        suggestion: the suggested learning rate (``min_lr / 10``, or the left edge of a flat
            bottom / 10: see the module doc).
        min_lr: the rate at the minimum of the smoothed loss.
        steepest: the rate where the smoothed loss fell fastest per decade (before the
            minimum), or ``None`` when the curve is too short to tell.
        descended: False when the smoothed loss never fell clearly below the median of the
            sweep's first quarter (by 5% and 6 times its noise, or 3 times near the edge).
            The suggestion is then the stable edge / 10: the last rate before the loss rose
            for good (the top of the sweep if it never did: raise ``end_lr``).
        stop: why the sweep ended, as a sentence.
        optimizer: the optimizer swept.
        valley: the lowest and highest rate whose smoothed loss is within 10% of the fall
            above the minimum (None when the loss did not descend).
        flat_bottom: the valley spans more than a decade: the suggestion is its lowest
            rate / 10, not the minimum's.
        at_top: the loss was still falling at ``end_lr`` (its smoothed minimum is the sweep's
            last rate): the rate that fits lies beyond the sweep (raw regression targets in
            the thousands); ``stop`` says to sweep further.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_lr: float
    steepest: float | None
    descended: bool
    stop: str
    optimizer: str = "adamw"
    extra: dict[str, Any] = field(default_factory=dict)
    valley: tuple[float, float] | None = None
    flat_bottom: bool = False
    at_top: bool = False

    def __repr__(self) -> str:
        st = f"{self.steepest:.3g}" if self.steepest is not None else "None"
        return (
            f"LRFindResult(suggestion={self.suggestion:.3g}, min_lr={self.min_lr:.3g}, "
            f"steepest={st}, steps={len(self.lrs)}, descended={self.descended})"
        )

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """Draw loss against learning rate (log axis) with the suggestion marked.

        Returns the matplotlib Figure; saves it to ``path`` (PNG, SVG, PDF by extension) when
        given.
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        finite = [(lr, v) for lr, v in zip(self.lrs, self.losses) if math.isfinite(v)]
        if finite:
            ax.plot(*zip(*finite), color="tab:blue", alpha=0.3, lw=0.8, label="batch loss")
        if self.smoothed:
            ax.plot(
                self.lrs[: len(self.smoothed)],
                self.smoothed,
                color="tab:blue",
                lw=2,
                label="smoothed",
            )
        ax.axvline(self.min_lr, color="gray", ls=":", lw=1, label=f"minimum {self.min_lr:.2g}")
        ax.axvline(
            self.suggestion, color="tab:red", lw=1.5, label=f"suggestion {self.suggestion:.2g}"
        )
        if self.smoothed:
            # Frame the part before the minimum (the plateau and the descent), not the blow-up.
            i_min = min(range(len(self.smoothed)), key=lambda i: self.smoothed[i])
            lo = self.smoothed[i_min]
            hi = max(self.smoothed[: i_min + 1])
            pad = hi - lo if hi > lo else abs(lo) * 0.1 + 1e-12
            ax.set_ylim(lo - 0.1 * pad, hi + 0.3 * pad)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title(title or f"learning-rate range test ({self.optimizer})")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # not a lost sweep at the end
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def _smooth(losses: list[float], beta: float) -> list[float]:
    out: list[float] = []
    avg = 0.0
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            break
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def _passed(smoothed: float, best: float, diverge: float) -> bool:
    """The smoothed loss has risen past ``diverge`` × its minimum (``smoothed > diverge ·
    best`` written as a rise, so that it holds for a minimum below zero too)."""
    return smoothed - best > (diverge - 1.0) * abs(best)


def default_beta(steps: int) -> float:
    """The EMA factor for a sweep of ``steps``: a window of about a tenth of the sweep."""
    return min(0.98, max(0.8, 1.0 - 10.0 / max(steps, 1)))


#: A descent is clear when the smoothed loss falls this many noise levels (and 5%) below the
#: start, or 3 with its minimum within ``NEAR_EDGE`` times of the stable edge (see ``analyze``).
DESCENT_NOISE = 6.0
NEAR_EDGE = 30.0
#: The valley of a sweep: the rates whose smoothed loss is within this share of the fall
#: (first batches → minimum) above the minimum.
VALLEY_SHARE = 0.1
#: A valley wider than this many decades of rates is a flat bottom, read at its left edge.
FLAT_DECADES = 1.0


def analyze(
    lrs: list[float], losses: list[float], *, beta: float | None = None, diverge: float = 4.0
) -> dict[str, Any]:
    """Smooth a sweep and read the suggestion off it (see the module doc for the rules).

    Returns ``smoothed``, ``min_lr``, ``suggestion``, ``steepest``, ``descended`` (the smoothed
    loss fell below the median of the sweep's first quarter by more than 5% and more than
    ``DESCENT_NOISE`` times its own noise, or 3 times with its minimum within ``NEAR_EDGE`` of
    the stable edge), ``diverged`` (the sweep ended in a blow-up), ``valley`` (the lowest and
    highest rate within ``VALLEY_SHARE`` of the fall above the minimum, or None) and ``flat_bottom``
    (the valley spans more than ``FLAT_DECADES``: the suggestion is then its lowest rate / 10),
    and ``at_top`` (the sweep descended, did not blow up, and its smoothed minimum is its last
    point: the loss was still falling at the top rate, which is then no ceiling).
    A sweep that did not descend only tried rates too small to matter below its stable edge
    (the last rate before the loss rose for good, the top of the sweep if it never did): its
    suggestion is that rate divided by the same 10.
    """
    beta = default_beta(len(lrs)) if beta is None else beta
    sm = _smooth(losses, beta)
    diverged = len(sm) < len(losses)  # a non-finite loss
    # Cut at the divergence point so a blow-up does not decide anything.
    best = math.inf
    end = len(sm)
    warm = max(3, len(lrs) // 10)
    for i, s in enumerate(sm):
        best = min(best, s)
        if i >= warm and _passed(s, best, diverge):
            end = i
            diverged = True
            break
    sm = sm[:end]
    if not sm:
        return {
            "smoothed": [],
            "min_lr": lrs[0],
            "suggestion": lrs[0],
            "steepest": None,
            "descended": False,
            "diverged": True,
            "valley": None,
            "flat_bottom": False,
            "at_top": False,
        }
    # The first points are the EMA warming up on a handful of batches: not a minimum to trust.
    first = warm if len(sm) > warm else 0
    i_min = min(range(first, len(sm)), key=lambda i: sm[i])
    min_lr = lrs[i_min]
    # A real descent takes the loss clearly below where it started; on a flat, noisy curve
    # the minimum is just the luckiest batch. The start is the median of the sweep's first
    # quarter (from the default starts — 1e-6 in the autopilot, 1e-7 here — Adam's steps there
    # are too small to move any weight); the noise is the batch-to-batch noise read off
    # successive differences (residuals from a lagging EMA overstate it where the curve
    # falls), shrunk by the EMA.
    h = min(len(sm), max(warm, len(lrs) // 4))
    head = sorted(v for v in losses[:h] if math.isfinite(v))
    plateau = head[len(head) // 2] if head else sm[0]
    diffs = sorted(abs(losses[i + 1] - losses[i]) for i in range(len(sm) - 1))
    batch_noise = 1.48 * diffs[len(diffs) // 2] / math.sqrt(2) if diffs else 0.0
    noise = batch_noise * math.sqrt((1 - beta) / (1 + beta))
    fall = plateau - sm[i_min]
    margin = max(0.05 * abs(plateau), 3.0 * noise)
    # The stable edge: the last rate, counting back from the cut, whose smoothed loss is not
    # clearly (the same margin) above the curve's median level — where it rises for good.
    # (Counting back: a noisy curve wanders above its level early on as well.)
    level = sorted(sm[first:])[(len(sm) - first) // 2] + margin
    edge = next((i for i in range(len(sm) - 1, first - 1, -1) if sm[i] <= level), first)
    # "Clearly" fell: on a flat curve (Gaussian noise, or a matrix factorization's own batch
    # losses reshuffled; 40-97 steps; session 13) the smoothed minimum lies more than 3 noise
    # levels below the start on 20-55% of sweeps, more than 6 on under 1%. A fall of 3 counts
    # when the minimum lies near the stable edge — a real descent ends where the loss starts
    # to rise (the suite's minima lay 1.3-15x below their edge), a noise minimum anywhere (a
    # thousand times below it) — and a fall of DESCENT_NOISE counts anywhere.
    strong = fall > max(0.05 * abs(plateau), DESCENT_NOISE * noise)
    near = lrs[edge] <= NEAR_EDGE * min_lr
    descended = strong or (fall > margin and near)
    steepest = None
    if i_min - warm >= 3:
        logs = [math.log10(x) for x in lrs[: i_min + 1]]
        slopes = [(sm[i + 1] - sm[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(warm, i_min)]
        steepest = lrs[warm + min(range(len(slopes)), key=lambda j: slopes[j])]
    valley, flat, read = None, False, min_lr
    if descended:
        level = sm[i_min] + VALLEY_SHARE * (plateau - sm[i_min])
        inside = [i for i in range(first, len(sm)) if sm[i] <= level]
        valley = (lrs[inside[0]], lrs[inside[-1]])
        flat = math.log10(valley[1] / valley[0]) > FLAT_DECADES
        if flat:
            read = valley[0]
    if descended:
        suggestion = read / 10.0
    else:
        # No clear descent: every rate up to where the loss starts to rise was too small to
        # matter in this sweep, and the minimum among them is the luckiest batch. Read the
        # stable edge / 10, blow-up or not. A matrix factorization's embeddings barely move in
        # a 100-step sweep — flat to ~0.3, then a blow-up — and its noise minimum wandered
        # from 3.5e-6 to 0.06 over six seeds, which trained at rates down to 5e-7 where
        # AdamW's best was 0.06 (session 13).
        suggestion = lrs[edge] / 10.0
    return {
        "smoothed": sm,
        "min_lr": min_lr,
        "suggestion": max(lrs[0], suggestion),
        "steepest": steepest,
        "descended": descended,
        "diverged": diverged,
        "valley": valley,
        "flat_bottom": flat,
        "at_top": descended and not diverged and i_min == len(lrs) - 1,
    }


def sweep(
    model: torch.nn.Module,
    bundle: D.Bundle,
    loss: L.Loss,
    *,
    make_tx: Callable[[float], Transform],
    start_lr: float,
    end_lr: float,
    steps: int,
    device: torch.device,
    seed: int,
    precision: str = "fp32",
    diverge: float = 4.0,
) -> tuple[list[float], list[float]]:
    """Run the exponential sweep on a deep copy of ``model``; return ``(lrs, losses)``.

    The step is the training loop's own (:meth:`descend.train.loop.Loop.train_step`), so the
    sweep sees exactly the forward pass, loss and update that ``fit`` will use. The rate is set
    through the learning-rate state's ``scale`` before every step.
    """
    from descend.train import guard as G

    if not dist_.is_sharded(model):
        work = copy.deepcopy(model).to(device)
        return _sweep(work, bundle, loss, make_tx, start_lr, end_lr, steps, device, seed,
                      precision, diverge)  # fmt: skip
    # A model sharded with fully_shard cannot be copied: the sweep runs on it and puts its
    # state back afterwards, and its train/eval mode (the sweep trains in train mode).
    snap = G.snapshot(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        return _sweep(model, bundle, loss, make_tx, start_lr, end_lr, steps, device, seed,
                      precision, diverge)  # fmt: skip
    finally:
        G.restore(model, snap)
        for m, training in modes:
            m.training = training


def _sweep(work, bundle, loss, make_tx, start_lr, end_lr, steps, device, seed, precision, diverge):
    from descend.train.loop import Loop  # the loop imports the autopilot, which imports us

    tx = make_tx(start_lr)
    loop = Loop(
        work,
        bundle,
        loss,
        tx,
        optimizer_desc="lr_find",
        max_epochs=1,
        patience=None,
        tol=0.0,
        restore_best=False,
        callbacks=(),
        device=device,
        seed=seed,
        precision=precision,
        max_time=None,
        metric=None,
        autopilot=None,
    )
    loop.check_model_fits()
    lr_state = loop.lr_state
    if lr_state is None:
        raise ConfigError(
            message(
                "lr_find(optimizer=...)",
                "must end in scale_by_learning_rate (every descend.optim optimizer does)",
                "a transform without a learning-rate state",
                "pass a name such as 'adamw' or a descend.optim factory",
            )
        )
    base = float(lr_state["lr"])
    ratio = end_lr / start_lr
    lrs: list[float] = []
    losses: list[float] = []
    best = math.inf
    ema = 0.0
    beta = default_beta(steps)
    warm = max(3, steps // 10)
    work.train()
    epoch = 0
    while len(lrs) < steps:
        got_batch = False
        for batch in bundle.train.batches(epoch):
            got_batch = True
            i = len(lrs)
            lr = start_lr * ratio ** (i / max(steps - 1, 1))
            lr_state["scale"] = lr / base
            value, _ = loop.train_step(*batch)
            if not loop._fast_ok and loop._mlp is not None and bundle.train.resident:
                # no user code runs between the sweep's steps: check the fast step once
                loop._fast_ok = loop._mlp.usable(batch[0])
            v = float(value)
            lrs.append(lr)
            losses.append(v)
            if not math.isfinite(v):
                return lrs, losses
            ema = beta * ema + (1 - beta) * v
            smoothed = ema / (1 - beta ** (i + 1))
            best = min(best, smoothed)
            if i >= warm and _passed(smoothed, best, diverge):
                return lrs, losses
            if len(lrs) >= steps:
                break
        if not got_batch:
            break
        epoch += 1
    return lrs, losses


def _make_tx(optimizer: str | Callable[..., Transform]) -> tuple[Callable[[float], Transform], str]:
    if isinstance(optimizer, str):
        name = optimizer.strip().lower()
        if name not in optim.names():
            optim.get(name)  # raises the registry's message with close matches
        return (lambda lr: optim.get(name, lr=lr)), name
    if callable(optimizer):
        name = getattr(optimizer, "__name__", "optimizer")

        def make(lr: float) -> Transform:
            torch_class = isinstance(optimizer, type) and issubclass(
                optimizer, torch.optim.Optimizer
            )
            tx = None if torch_class else optimizer(lr=lr)
            if not isinstance(tx, Transform):
                raise ConfigError(
                    message(
                        "lr_find(optimizer=...)",
                        "must be a name or a factory returning a descend Transform "
                        "(a torch.optim class is not one)",
                        f"the torch optimizer class {name}"
                        if torch_class
                        else f"{name}(lr=...) returned {describe(tx)}",
                        "pass 'adamw', or descend.optim.sgd / a function lr -> "
                        "descend.optim.<name>(lr=lr)",
                    )
                )
            return tx

        return make, name
    raise ConfigError(
        message(
            "lr_find(optimizer=...)",
            "must be an optimizer name or a factory taking lr=",
            describe(optimizer),
            "pass 'adamw' or descend.optim.sgd",
        )
    )


def lr_find(
    model: torch.nn.Module,
    data: Any,
    loss: str | L.Loss | Callable = "mse",
    *,
    optimizer: str | Callable[..., Transform] = "adamw",
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    batch_size: int | None = 32,
    diverge: float = 4.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    plot: str | Path | None = None,
) -> LRFindResult:
    """Sweep the learning rate exponentially on a copy of ``model`` and suggest one.

    The model you pass is left exactly as it was (the sweep trains a deep copy). Every batch
    loss is recorded; the sweep stops early once the smoothed loss passes ``diverge`` × its
    minimum. The suggestion is the rate at the smoothed minimum divided by 10 (why: see the
    module doc). Pass the suggestion to ``descend.fit(..., lr=...)``, or let ``fit`` choose by
    itself (it runs a short sweep like this one, then races a few rates below the suggestion).

    Args:
        model: any ``torch.nn.Module``.
        data: what ``descend.fit`` accepts (``(X, y)``, a Dataset, a DataLoader ...).
        loss: a loss name, :class:`descend.losses.Loss` or callable.
        optimizer: a ``descend.optim`` name or factory taking ``lr=`` (default AdamW).
        start_lr, end_lr: the range swept, ``0 < start_lr < end_lr``.
        steps: the number of steps (one batch each), >= 10.
        batch_size: samples per step, as in ``fit``.
        diverge: stop once the smoothed loss exceeds this multiple of its minimum, > 1.
        seed: seeds the batch order.
        device: as in ``fit``.
        precision: ``"fp32"`` or ``"bf16"``, as in ``fit``.
        plot: save the curve to this file (PNG, SVG, PDF by extension).

    Returns:
        LRFindResult: the curve, the suggestion and ``plot(path)``.
    """
    owner = "lr_find"
    start_lr = check_positive("start_lr", start_lr, owner=owner)
    end_lr = check_positive("end_lr", end_lr, owner=owner)
    if end_lr <= start_lr:
        raise ConfigError(
            message(
                f"{owner}: end_lr",
                "must be greater than start_lr",
                f"start_lr={start_lr:g}, end_lr={end_lr:g}",
                "pass e.g. start_lr=1e-7, end_lr=10",
            )
        )
    steps, diverge, seed = plain(steps), plain(diverge), plain(seed)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ConfigError(
            message(f"{owner}: steps", "must be an integer >= 10", describe(steps), "steps=100")
        )
    check_choice("precision", precision, ("fp32", "bf16"), owner=owner)
    if (
        not isinstance(diverge, (int, float))
        or isinstance(diverge, bool)
        or not 1 < diverge < math.inf
    ):
        raise ConfigError(
            message(f"{owner}: diverge", "must be a number > 1", describe(diverge), "diverge=4")
        )
    if plot is not None:
        _check_plot_path(plot, owner)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            message(
                f"{owner}: model",
                "must be a torch.nn.Module",
                describe(model),
                "pass a module such as torch.nn.Linear(4, 1)",
            )
        )
    from descend.train.loop import _check_trainable

    _check_trainable(model)  # (a model with nothing to train: autograd's raw error)
    # the loop imports the autopilot, which imports us
    from descend.train.loop import _data_dtype, _split_batches

    make_tx, name = _make_tx(optimizer)
    loss_obj = L.check_reduces(L.get(loss), owner)
    # Under torchrun the sweep is data-parallel like fit (one curve, the same on every
    # process; rank 0 saves the plot), not N sweeps writing one file.
    world, device = dist_.join(device)
    dev = D.resolve_device(device, model)
    bundle = D.prepare(
        data,
        validation=None,
        target_kind=loss_obj.target_kind,
        stratify=True,
        device=dev,
        dtype=_data_dtype(model),
        seed=seed,
        batch_size=batch_size,
        shuffle=True,
        ignore_index=loss_obj.kwargs.get("ignore_index")
        if loss_obj.target_kind == "index"
        else None,
    )
    _split_batches(bundle, world, batch_size, model)
    # The sweep's randomness (dropout) comes from the seed, and the caller's generators are
    # left as they were: the CPU's and, for a sweep on a GPU, that GPU's, put back afterwards.
    # (D.seed_all also reseeded every other accelerator, and fork_rng(devices=[]) kept none of
    # them: on a machine with a GPU every lr_find reset the caller's CUDA generator to seed.)
    gpus: list[int] = []
    if dev.type == "cuda":
        gpus = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=gpus), dist_.running(world):
        torch.default_generator.manual_seed(seed)
        if gpus:
            with torch.cuda.device(gpus[0]):
                torch.cuda.manual_seed(seed)
        elif dev.type != "cpu":  # another accelerator (MPS, XPU): seeded as before, not forked
            D.seed_all(seed)
        lrs, losses = sweep(
            model,
            bundle,
            loss_obj,
            make_tx=make_tx,
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            device=dev,
            seed=seed,
            precision=precision,
            diverge=diverge,
        )
    if losses and not math.isfinite(losses[0]):
        # The first loss is measured at the starting weights, before any update: no rate can
        # be read off a sweep that has no finite point (it used to suggest start_lr).
        raise InputError(
            message(
                f"{owner}: the first batch loss (at the model's starting weights, before any "
                "update)",
                "must be finite",
                f"{losses[0]}",
                "the learning rate is not the cause: check the data and the model's output "
                "for NaN/inf, e.g. torch.isfinite(model(X)).all()",
            )
        )
    result = _result(lrs, losses, diverge=diverge, steps=steps, end_lr=end_lr, optimizer=name)
    if plot is not None and world.is_main:
        result.plot(plot)
    return result


def _check_plot_path(plot: Any, owner: str) -> None:
    """Refuse a plot path matplotlib cannot write before the sweep, not after it."""
    ok = isinstance(plot, (str, os.PathLike)) and not isinstance(plot, bool)
    suffix = Path(plot).suffix.lower().lstrip(".") if ok else ""
    if ok and suffix:
        from matplotlib.backend_bases import FigureCanvasBase

        ok = suffix in FigureCanvasBase.get_supported_filetypes()
    if not ok:
        raise ConfigError(
            message(
                f"{owner}: plot",
                "must be a file path with an image extension matplotlib writes (PNG, SVG, PDF)",
                describe(plot),
                "pass e.g. plot='lr_find.png'",
            )
        )


def _result(
    lrs: list[float],
    losses: list[float],
    *,
    diverge: float,
    steps: int,
    end_lr: float,
    optimizer: str,
) -> LRFindResult:
    a = analyze(lrs, losses, diverge=diverge)
    if lrs and not math.isfinite(losses[-1]):
        stop = f"the loss became non-finite at lr={lrs[-1]:.3g}"
    elif len(lrs) < steps:
        stop = f"the smoothed loss passed {diverge:g}x its minimum at lr={lrs[-1]:.3g}"
    else:
        stop = f"reached end_lr={end_lr:g} after {len(lrs)} steps"
        if a["at_top"]:
            stop += (
                "; the loss was still falling there (its minimum is the sweep's last rate), so "
                "the suggestion is a floor, not a reading: sweep further, e.g. "
                f"end_lr={end_lr * 100:g}"
            )
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=a["smoothed"],
        suggestion=a["suggestion"],
        min_lr=a["min_lr"],
        steepest=a["steepest"],
        descended=a["descended"],
        stop=stop,
        optimizer=optimizer,
        valley=a["valley"],
        flat_bottom=a["flat_bottom"],
        at_top=a["at_top"],
    )
