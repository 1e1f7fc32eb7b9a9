"""``descend.fit``: the training loop.

Read it top to bottom to follow one batch: ``data.prepare`` makes device-resident tensors and
a seeded batch order; the model computes predictions; the loss (validated once, up front)
reduces them to a scalar; ``torch.autograd.grad`` computes the gradients; the optimizer's
transform chain turns them into updates that change the parameters (``update_and_apply``: one
fused pass where the optimizer has one, else ``update`` then ``apply_updates``). At the end
of each epoch the validation loss decides whether these are the best weights so far and
whether to stop.

Nothing in the per-step path forces a host-device sync: step losses, gradient norms and the
running sums stay on the device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import numbers
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import torch

from descend import checkpoint as C
from descend import data as D
from descend import distributed as dist_
from descend import losses as L
from descend import optim
from descend._errors import (
    CheckpointError,
    ConfigError,
    InputError,
    check_bool,
    check_choice,
    check_positive,
    describe,
    message,
    plain,
)
from descend.train import autopilot as _autopilot
from descend.train._mlp import MLPStep, loss_value
from descend.train.callbacks import Callback, default_progress, wants_steps
from descend.train.guard import Guard, clone_tree, copy_pairs
from descend.train.result import History, Result, StopReason
from descend.transforms import (
    Transform,
    averaged_point_states,
    find_lr_state,
    swap_to_eval,
    swap_to_train,
    update_and_apply,
)
from descend.transforms._util import check_dense

__all__ = ["Loop", "fit"]

_EVAL_CHUNK = 8192


class _MetricSum:
    """Running sums for the epoch metric (accuracy, R² or a callable's batch mean).

    ``evaluate`` fills one over a whole source; without validation data the training steps
    fill one from the outputs they already computed (as Keras and Lightning report a training
    metric), so no extra pass over the training set is spent on a number for the display.
    ``add`` only keeps the (detached) batch outputs and targets: a handful of small metric ops
    interleaved with every step cost 70-100 µs there (3x their cost in isolation), so they run
    batched, once ``_FLUSH_ELEMENTS`` outputs are waiting and when the value is read.
    """

    _FLUSH_ELEMENTS = 1 << 20

    def __init__(self, kind: str | Callable, binary: bool) -> None:
        self.kind, self.binary = kind, binary
        self.count = 0
        self.acc: torch.Tensor | None = None  # hits, sum of SSE per column, or metric * n
        self.y_sum: torch.Tensor | None = None
        self.y_sq: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_elements = 0

    def _add(self, name: str, v: torch.Tensor) -> None:
        cur = getattr(self, name)
        setattr(self, name, v if cur is None else cur + v)

    def add(self, out: torch.Tensor, yb: torch.Tensor | None) -> None:
        if yb is None:
            return
        self.count += out.shape[0]
        if callable(self.kind):  # a user's function sees the batches as they were
            n = out.shape[0]
            v = torch.as_tensor(self.kind(out, yb), dtype=torch.float32)
            if v.numel() != 1:
                raise InputError(
                    message(
                        f"fit(metric={getattr(self.kind, '__name__', 'metric')})",
                        "must return one number for the batch (it is averaged over batches, "
                        "weighted by their sizes)",
                        f"a tensor of shape {tuple(v.shape)}",
                        "reduce it over the samples, e.g. return (pred.argmax(1) == target)"
                        ".float().mean()",
                    )
                )
            self._add("acc", v.reshape(()) * n)
            return
        self._pending.append((out, yb))
        self._pending_elements += out.numel()
        if self._pending_elements >= self._FLUSH_ELEMENTS:
            self._reduce()

    def _reduce(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_elements = self._pending, [], 0
        if len(pending) == 1:
            out, yb = pending[0]
        else:
            out = torch.cat([o for o, _ in pending])
            yb = torch.cat([y for _, y in pending])
        if self.kind == "accuracy":
            if self.binary:
                hit = (out > 0) == (yb > 0.5)
                hit = hit.float().mean(dim=tuple(range(1, out.dim()))) if out.dim() > 1 else hit
                hit = hit.float().sum()
            elif out.dim() == 2 and out.shape[1] > 1 and yb.dim() == 1:
                hit = (out.argmax(1) == yb).sum()
            elif out.dim() == 2 and out.shape[1] > 1 and yb.dim() == 2:
                hit = (out.argmax(1) == yb.argmax(1)).sum()
            else:
                hit = out.new_zeros(())
            self._add("acc", hit.float())
        else:  # r2
            yf = yb.float()
            self._add("acc", ((out - yf) ** 2).sum(0))
            self._add("y_sum", yf.sum(0))
            self._add("y_sq", (yf**2).sum(0))

    def value(self) -> float | None:
        self._reduce()
        if self.acc is None or self.count == 0:
            return None
        if self.kind == "r2":
            sst = self.y_sq - self.y_sum**2 / self.count
            return float((1 - self.acc / sst.clamp_min(1e-12)).mean())
        return float(self.acc / self.count)

    def all_reduce(self, world: dist_.World) -> None:
        """Sum the processes' sums (data-parallel: each saw its share of the rows); every
        process then reads the whole set's value."""
        if not world.active:
            return
        self._reduce()
        names = [k for k in ("acc", "y_sum", "y_sq") if getattr(self, k) is not None]
        parts = [torch.tensor([float(self.count)], device=world.device)]
        parts += [getattr(self, k).float().reshape(-1).to(world.device) for k in names]
        flat = world.all_sum(torch.cat(parts))
        self.count = round(float(flat[0]))
        at = 1
        for k in names:
            t = getattr(self, k)
            setattr(self, k, flat[at : at + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            at += t.numel()

    def pending(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The outputs and targets added since the last reduction, concatenated, for a
        mid-epoch checkpoint: reducing them there would sum the epoch in another order than
        a run that never wrote one (R²'s float sums then differ in the last bits)."""
        if not self._pending:
            return None
        if len(self._pending) == 1:
            return self._pending[0]
        return torch.cat([o for o, _ in self._pending]), torch.cat([y for _, y in self._pending])

    def state(self, reduce: bool = True) -> dict[str, Any]:
        """The sums as plain lists, for a mid-epoch checkpoint. Python floats hold float32
        and float64 sums exactly (a double-precision model's R² sums are float64), and the
        dtype comes back with them: the resumed run goes on summing exactly as before.
        ``reduce=False``: the sums so far only (the checkpoint keeps :meth:`pending`)."""
        if reduce:
            self._reduce()
        lists = {
            k: (None if v is None else v.double().cpu().reshape(-1).tolist())
            for k, v in (("acc", self.acc), ("y_sum", self.y_sum), ("y_sq", self.y_sq))
        }
        dtypes = {
            k: str(v.dtype).replace("torch.", "")
            for k, v in (("acc", self.acc), ("y_sum", self.y_sum), ("y_sq", self.y_sq))
            if v is not None
        }
        return {"count": self.count, **lists, "dtypes": dtypes}

    def load(
        self,
        state: dict[str, Any],
        device: torch.device,
        pending: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.count = int(state["count"])
        if pending is not None:
            out, yb = (t.to(device) for t in pending)
            self._pending, self._pending_elements = [(out, yb)], out.numel()
        dtypes = state.get("dtypes") or {}  # (a checkpoint from before: float32 sums)
        for k in ("acc", "y_sum", "y_sq"):
            v = state.get(k)
            dtype = getattr(torch, str(dtypes.get(k, "float32")), None)
            if not isinstance(dtype, torch.dtype):
                dtype = torch.float32
            t = None if v is None else torch.tensor(v, dtype=torch.float64).to(device, dtype)
            # accuracy and a callable's sum are scalars; R²'s sums are one per output column
            if t is not None and self.kind != "r2":
                t = t.reshape(())
            setattr(self, k, t)


#: Built-in modules whose forward ignores ``training``: for a model made only of these (exact
#: types, not subclasses), switching to eval mode and back around every evaluation is skipped.
#: The switch walks every module twice (~60-200 µs a call on a small MLP: a tenth of a
#: full-batch epoch) and changes nothing for them.
_MODE_FREE_TYPES = frozenset(
    {
        torch.nn.Sequential,
        torch.nn.ModuleList,
        torch.nn.ModuleDict,
        torch.nn.Linear,
        torch.nn.Bilinear,
        torch.nn.Identity,
        torch.nn.Flatten,
        torch.nn.Unflatten,
        torch.nn.ReLU,
        torch.nn.ReLU6,
        torch.nn.LeakyReLU,
        torch.nn.PReLU,
        torch.nn.ELU,
        torch.nn.SELU,
        torch.nn.CELU,
        torch.nn.GELU,
        torch.nn.SiLU,
        torch.nn.Mish,
        torch.nn.Tanh,
        torch.nn.Sigmoid,
        torch.nn.Softplus,
        torch.nn.Softmax,
        torch.nn.LogSoftmax,
        torch.nn.LayerNorm,
        torch.nn.Embedding,
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.MaxPool1d,
        torch.nn.MaxPool2d,
        torch.nn.AvgPool1d,
        torch.nn.AvgPool2d,
        torch.nn.AdaptiveAvgPool1d,
        torch.nn.AdaptiveAvgPool2d,
    }
)


def _mode_free(model: torch.nn.Module) -> bool:
    """True when no module of ``model`` behaves differently in train and eval mode (and none
    has hooks that might look): every module is exactly one of ``_MODE_FREE_TYPES``."""
    for m in model.modules():
        if type(m) not in _MODE_FREE_TYPES:
            return False
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return True


#: checkpoint_every="auto": write again once this many times the last write's duration has passed.
AUTO_CHECKPOINT_RATIO = 20


class _FunctionModel(torch.nn.Module):
    """Wraps a plain function ``fn(x, params)`` and its parameters as a module."""

    def __init__(self, fn: Callable, params: dict[str, Any]) -> None:
        super().__init__()
        self.fn = fn
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(self._initial(k, v)) for k, v in params.items()}
        )

    @staticmethod
    def _initial(name: str, v: Any) -> torch.Tensor:
        """A floating-point copy of one initial value (the caller's tensor is not trained)."""
        if torch.is_tensor(v) and v.is_floating_point():
            return v.detach().clone()
        try:
            return torch.as_tensor(v, dtype=torch.get_default_dtype()).clone()
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                message(
                    f"fit(params={{{name!r}: ...}})",
                    "must be a number, a tensor or an array of numbers (its initial value)",
                    describe(v),
                    f"pass e.g. {name!r}: torch.zeros(3)",
                )
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, dict(self.params.items()))


def _home_device(module: torch.nn.Module, dev: torch.device) -> torch.device | None:
    """The one device all of ``module``'s tensors are on, when that is not ``dev`` (else None:
    already there, no tensors, or spread over several devices)."""
    found = {t.device for t in itertools.chain(module.parameters(), module.buffers())}
    if len(found) != 1:
        return None
    (home,) = found
    return None if home == dev else home


#: After a divergence, data beyond this magnitude is named as the likely cause (see _scale_hint).
UNSCALED = 1e3

_HOOKS = ("on_fit_start", "on_step_end", "on_epoch_end", "on_fit_end")


def _callbacks(callbacks: Any) -> list[Callback]:
    """``fit(callbacks=...)`` as a list: one Callback alone is accepted too; anything without
    the four hooks is refused before training (it would fail at its first hook, mid-run)."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    fix = (
        "pass a list of objects that subclass descend.train.Callback (override on_epoch_end, "
        "on_step_end, ...)"
    )
    try:
        if isinstance(callbacks, (str, bytes, Mapping)) or callable(callbacks):
            raise TypeError
        callbacks = list(callbacks)
    except TypeError:
        raise ConfigError(
            message(
                "fit(callbacks)", "must be a list of Callback objects", describe(callbacks), fix
            )
        ) from None
    for cb in callbacks:
        if isinstance(cb, type):  # the class (its hooks exist, but unbound: fail mid-run)
            raise ConfigError(
                message(
                    "fit(callbacks)",
                    "must hold Callback objects, not classes",
                    f"the class {cb.__name__}",
                    f"pass an instance: callbacks=[{cb.__name__}()]",
                )
            )
        missing = [h for h in _HOOKS if not callable(getattr(cb, h, None))]
        if missing:
            raise ConfigError(
                message(
                    "fit(callbacks)",
                    "must hold Callback objects (with on_fit_start, on_step_end, on_epoch_end "
                    "and on_fit_end)",
                    f"{describe(cb)}, without {', '.join(missing)}",
                    fix,
                )
            )
    return list(callbacks)


def _check_trainable(module: torch.nn.Module) -> None:
    """Refuse a model with nothing to train, before any data is touched."""
    total = sum(1 for _ in module.parameters())
    if any(p.requires_grad for p in module.parameters()):
        return
    got = (
        f"a {type(module).__name__} without parameters"
        if total == 0
        else f"a {type(module).__name__} whose {total} parameter tensors all have requires_grad=False"
    )
    raise InputError(
        message(
            "the model",
            "must have trainable parameters (fit minimizes the loss over them)",
            got,
            "unfreeze what should train (p.requires_grad_(True))"
            if total
            else "train a model with layers that have weights (e.g. torch.nn.Linear); for a "
            "plain function, pass its parameters with params={name: initial value}",
        )
    )


def _sum64(t: torch.Tensor, chunk: int = 1 << 22) -> float:
    """The float64 sum of ``t``'s elements, in chunks of rows: ``sum(dtype=float64)`` makes a
    whole float64 copy first, twice the data's memory on a large resident set."""
    if t.dim() == 0 or t.numel() == 0:
        return float(t.double().sum())
    rows = max(1, chunk // max(1, t[0].numel()))
    return float(sum(t[i : i + rows].double().sum() for i in range(0, t.shape[0], rows)))


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _same_number(a: Any, b: Any) -> bool:
    """Equal, or both floats within 1e-9 relative (a JSON round trip keeps them exact anyway)."""
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _data_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype the data is converted to: the model's own (a float64 model trains on
    float64 data, a bfloat16 one on bfloat16), float32 for a model without floating parameters.
    With parameters of several floating dtypes, the first parameter's (usually the input layer's).
    """
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _torch_optimizer_hint(opt: Any) -> str | None:
    """For a ``torch.optim`` optimizer passed to fit: descend's equivalent, with its settings
    (fit steps with descend's transforms; ``as_torch_optimizer`` goes the other way)."""
    if not isinstance(opt, torch.optim.Optimizer) or not opt.param_groups:
        return None
    g = opt.param_groups[0]
    lr = g.get("lr")
    lr = float(lr) if isinstance(lr, (int, float)) or torch.is_tensor(lr) else None
    name = type(opt).__name__
    args = [f"lr={lr:g}"] if lr is not None else []
    if name == "SGD":
        mom = g.get("momentum", 0) or 0
        factory = "sgd" if not mom else ("nesterov" if g.get("nesterov") else "momentum")
        if mom:
            args.append(f"momentum={mom:g}")
    elif name in {"Adam", "AdamW", "NAdam", "RMSprop", "Adagrad"}:
        factory = name.lower()
        betas = g.get("betas")
        if betas is not None and tuple(float(b) for b in betas) != (0.9, 0.999):
            args.append(f"betas=({float(betas[0]):g}, {float(betas[1]):g})")
    else:
        factory = None
    wd = g.get("weight_decay", 0) or 0
    if factory is not None and (wd or factory == "adamw"):
        args.append(f"weight_decay={wd:g}")
    if factory is None:
        return (
            f"fit steps with descend's optimizers (descend.optim: {name} has no direct "
            "equivalent); pick one, e.g. optimizer=descend.optim.adamw(lr=3e-4), or leave "
            "optimizer unset for the default policy"
        )
    return (
        f"fit steps with descend's optimizers: pass optimizer=descend.optim.{factory}"
        f"({', '.join(args)}), the counterpart of this torch.optim.{name} (fit finds the "
        "model's parameters itself), or leave optimizer unset for the default policy"
    )


def _as_module(model: Any, params: dict[str, Any] | None) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        if params is not None:
            raise ConfigError(
                message(
                    "fit(params=...)",
                    "is only for a plain function model",
                    "a torch.nn.Module together with params",
                    "drop params=; the module's own parameters are trained",
                )
            )
        return model
    if callable(model):
        if not params:
            raise ConfigError(
                message(
                    "fit(model=<function>)",
                    "needs its parameters as params={name: initial value}",
                    "no params",
                    "call fit(lambda x, p: p['a'] * x + p['b'], data, 'mse', "
                    "params={'a': 1.0, 'b': 0.0})",
                )
            )
        if not isinstance(params, Mapping):
            raise ConfigError(
                message(
                    "fit(params=...)",
                    "must be a dict {name: initial value}; the function gets it as fn(x, params)",
                    describe(params),
                    "pass e.g. params={'w': torch.zeros(3), 'b': 0.0} and read p['w'] in fn",
                )
            )
        bad = [k for k in params if not isinstance(k, str) or not k or "." in k]
        if bad:
            raise ConfigError(
                message(
                    "fit(params=...)",
                    "must have non-empty string names without '.' (torch's parameter names)",
                    f"the name {bad[0]!r}",
                    "rename it, e.g. 'layer1_w' instead of 'layer1.w'",
                )
            )
        return _FunctionModel(model, params)
    raise ConfigError(
        message(
            "fit(model)",
            "must be a torch.nn.Module or a function fn(x, params)",
            describe(model),
            "pass a module such as torch.nn.Linear(4, 1)",
        )
    )


def _epochs(n: int) -> str:
    """``"1 epoch"``, ``"5 epochs"``: the stop sentences count in words a reader says."""
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _check_no_other_run(d: Path, resuming: Any = None) -> None:
    """Refuse to start a new run in a checkpoint directory that holds another run's
    checkpoints: a later ``resume`` would pick the newest of either run (an earlier run's
    step 1,000 over this one's step 300), and a checkpoint at a step both runs reach would be
    kept as this run's. Nothing already saved is touched."""
    found = C.list_checkpoints(d) + C.list_checkpoints(d / C.RACE_DIR)
    if not found:
        return
    newest = found[0]
    if resuming is not None:
        raise CheckpointError(
            message(
                f"fit(checkpoint={str(d)!r})",
                f"must not hold another run's checkpoints when the run resumed from "
                f"{str(resuming)!r} writes there",
                f"{len(found)} checkpoint(s), e.g. '{newest}'",
                "leave checkpoint= unset (or pass the resume directory) to go on writing "
                "where the run is, or pass an empty directory",
            )
        )
    raise CheckpointError(
        message(
            f"fit(checkpoint={str(d)!r})",
            "must not hold another run's checkpoints when a new run starts there",
            f"{len(found)} checkpoint(s), e.g. '{newest}'",
            "pass resume=True to continue that run, or another (or an emptied) directory "
            "to start a new one",
        )
    )


def _same_path(a: Any, b: Any) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Loop:
    """The state of one run. Callbacks receive it; its attributes describe the run so far.

    Attributes:
        model, loss, tx (the optimizer transform), opt_state, params ({name: tensor}),
        history, epoch (epochs completed), step (optimizer steps taken), max_epochs,
        best_loss, best_epoch, improved (the last epoch improved on the best),
        stop_message (set when the run ends), device, seed; in ``on_step_end``, last_loss and
        last_grad_norm: the step's batch loss and gradient norm as 0-d tensors (``float()``
        reads one, a host sync on an accelerator; ``history.step_loss`` gets the epoch's steps
        at its end).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        bundle: D.DataBundle,
        loss: L.Loss,
        tx: Transform,
        *,
        optimizer_desc: str,
        max_epochs: int,
        patience: int | None,
        tol: float,
        restore_best: bool,
        callbacks: Sequence[Callback],
        device: torch.device,
        seed: int,
        precision: str,
        max_time: float | None,
        metric: str | Callable | None,
        autopilot: dict[str, Any] | None,
        guard: Guard | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | str = "auto",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.bundle = bundle
        self.loss = loss
        self.tx = tx
        self._averaged_for: Transform | None = None  # see _has_averaged_point
        self._averaged = False
        self.optimizer_desc = optimizer_desc
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.restore_best = restore_best
        self.callbacks = list(callbacks)
        self.step_callbacks = [c for c in self.callbacks if wants_steps(c)]
        self.events_shown = 0  # history events shown before this run (a resume's)
        self.last_loss: torch.Tensor | None = None
        self.last_grad_norm: torch.Tensor | None = None
        self.device = device
        self.seed = seed
        self.precision = precision
        self.max_time = max_time
        self.autopilot = autopilot

        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._names = list(self.params)
        self._plist = [self.params[n] for n in self._names]
        # Data-parallel (descend/distributed.py): DDP averages the gradients in the backward
        # pass, so the hand-written MLP step (which bypasses autograd) is not taken.
        self.world = dist_.current()
        self._ddp: torch.nn.Module | None = None
        # DDP's cheaper mode (no search for unused parameters) until a step shows a parameter
        # without a gradient; then that step is redone in the other mode (_train_step_ddp).
        opts = self.world.ddp_options
        self._norm_buffers: list[torch.Tensor] | None = None  # see _pre_step_state
        self._find_unused = (
            "unused" in self.world.learned
            or opts.get("find_unused_parameters", False)
            or opts.get("static_graph", False)  # DDP's static graph handles unused ones
        )
        self._sharded = dist_.is_sharded(model)
        if self._sharded and (outside := dist_.sharded_outside(model)):
            raise ConfigError(
                message(
                    "fit(model)",
                    "a model sharded with fully_shard must be sharded at its root too",
                    f"{len(outside)} trainable parameter(s) outside every fully_shard: "
                    + ", ".join(outside[:4]),
                    "call fully_shard(model) on the whole model after its submodules",
                )
            )
        if self._sharded:  # FSDP2: the model gathers and reduces its own parameters
            self._ddp = model
            self._find_unused = True
        elif self.world.active:
            self.world.holders.append(self._drop_ddp)  # released when the run ends
            self._ddp = self._wrap_ddp()
        # A plain MLP trained in fp32 takes the hand-written backward pass (train/_mlp.py).
        self._mlp = (
            MLPStep.build(model, self._plist, loss)
            if precision == "fp32" and self._ddp is None
            else None
        )
        self._fast_ok = False  # see _epoch_loop
        self._grads_seen: Any = None  # see _finish_step
        self._grads_named: dict[str, torch.Tensor] = {}
        # The plain-MLP step writes its gradients into one reused buffer (one kernel for their
        # norm) where the optimizer's fused path consumes them at once; a transform that might
        # keep a reference to a gradient across steps gets fresh tensors.
        self._flat_grads = getattr(tx.update, "apply", None) is not None
        # When the model's whole state is its trainable parameters (no buffers, no frozen
        # parameters, no state_dict hooks), the best-weights and rollback copies read them
        # directly instead of walking the module tree with state_dict() every epoch.
        sd = model.state_dict(keep_vars=True)
        self._state_is_params = (
            list(sd) == self._names
            and all(sd[n] is p for n, p in zip(self._names, self._plist))
            and not any(
                getattr(m, "_state_dict_hooks", None) or getattr(m, "_state_dict_pre_hooks", None)
                for m in model.modules()
            )
        )
        self.opt_state = tx.init(self.params)
        self.lr_state = find_lr_state(self.opt_state)
        # Whether the run has said that its schedule reached a rate of 0 (once a run).
        self._zero_said = False
        self.guard = guard
        self.checkpoint_dir = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        # "auto": when the last write ended and how long it took (see _epoch_checkpoint_due).
        self._ckpt_done_at: float | None = None
        self._ckpt_cost = 0.0
        self._ckpt_step: int | None = None
        self.config = dict(config or {})

        self.history = History()
        self.epoch = 0
        self.step = 0
        self._dense_checked = False  # sparse gradients refused by name at the first step
        self.best_loss = math.inf
        self.best_epoch = 0
        self.improved = False
        self.stop_message = ""
        self._stop_request: str | None = None
        self._stop_reason = StopReason.CALLBACK
        self._since_best = 0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._t0 = 0.0
        self._t_offset = 0.0
        # Position inside the current epoch, and the epoch's records so far (kept on the device
        # until the epoch ends; a checkpoint reads them).
        self.batch = 0
        self._ep_losses: list[torch.Tensor] = []
        self._ep_norms: list[torch.Tensor] = []
        self._ep_lrs: list[float] = []
        self._interrupt: int | None = None
        self._late = False  # data-parallel: max_time spent on some process (_agree_on_stop)
        self._agreed = (False, False, False)  # data-parallel: see _train_step_ddp
        self._resumed_from: Path | None = None
        self._data_sig: dict[str, Any] | None = None

        self._metric_fn, self.history.metric_name = self._pick_metric(metric)
        self.monitor = "val_loss" if bundle.val is not None else "train_loss"
        # Without validation data the epoch's metric is the running one over its training steps.
        self._ep_metric = (
            self._new_metric_sum() if self._metric_fn is not None and bundle.val is None else None
        )
        self._y_unsqueeze = False
        self._y_as_given = False  # a custom loss that reads 1-D targets as they are
        self._y_sample_shape: tuple[int, ...] | None = None  # one training target's shape

    # ---- setup checks ----------------------------------------------------------------

    def _pick_metric(self, metric: str | Callable | None):
        if metric is None:
            return None, None
        if callable(metric):
            return metric, getattr(metric, "__name__", "metric")
        check_choice("metric", metric, ("auto", "accuracy", "r2"), owner="fit")
        kind = self.loss.target_kind
        name = metric
        classify = self.loss.name in ("cross_entropy", "nll", "binary_cross_entropy") or (
            kind == "index"
        )
        regress = self.loss.name in ("mse", "mae", "huber", "poisson")
        if (metric == "r2" and classify) or (metric == "accuracy" and regress):
            other = "accuracy" if metric == "r2" else "r2"
            raise ConfigError(
                message(
                    "fit: metric",
                    f"{metric!r} does not apply to the loss {self.loss.name} ("
                    + ("class labels" if classify else "real-valued targets")
                    + ")",
                    repr(metric),
                    f"pass metric={other!r} or 'auto', or a function metric(pred, target)",
                )
            )
        if metric == "auto":
            if (
                self.loss.name in ("cross_entropy", "nll", "binary_cross_entropy")
                or kind == "index"
            ):
                name = "accuracy"
            elif self.loss.name in ("mse", "mae", "huber"):
                name = "r2"
            else:
                return None, None
        return name, name

    def _metric_state(self) -> dict[str, Any]:
        """The epoch's running training-metric sums for a checkpoint (data-parallel: summed
        over the processes, which keep their own)."""
        assert self._ep_metric is not None
        if not self.world.active:
            return self._ep_metric.state(reduce=False)  # the checkpoint keeps the rest
        state = self._ep_metric.state()
        total = self._new_metric_sum()
        total.load(state, self.device)
        total.all_reduce(self.world)
        return total.state()

    def _new_metric_sum(self) -> _MetricSum:
        return _MetricSum(self._metric_fn, binary=self.loss.name == "binary_cross_entropy")

    def check_model_fits(self) -> None:
        """Run the model once on a few samples and validate the loss against ALL targets, so a
        bad shape, an out-of-range class or a NaN target is refused before step 1."""
        src = self.bundle.train
        first = next(iter(src.batches(0)), None)
        if first is None:
            raise _no_batches("training", src)
        val = self.bundle.val
        if val is not None and val.num_batches == 0:
            raise _no_batches("validation", val)
        xb, yb = first[0], first[1]
        self._y_sample_shape = None if yb is None else tuple(yb.shape[1:])
        multi = D.is_multi(xb)
        n_probe = min(8, D.n_rows(xb)) if torch.is_tensor(xb) or multi else 8
        probe_x = D.cut_rows(xb, 0, n_probe) if torch.is_tensor(xb) or multi else xb
        was_training = self.model.training
        self.model.eval()
        fed: list[tuple[torch.nn.Module, torch.Tensor]] = []
        try:
            with torch.no_grad(), self._autocast(), _checked_ids(self.model, fed):
                out = D.call_model(self.model, probe_x)
        except IndexError as e:
            self._check_resident_ids(fed, probe_x)  # names the table and its ids, if it can
            self._raise_named(e, src, xb)
        except (RuntimeError, TypeError) as e:
            function = isinstance(self.model, _FunctionModel)
            if isinstance(e, TypeError) and not (multi or function):
                raise
            shape = D.shapes_of(probe_x) if torch.is_tensor(probe_x) or multi else "?"
            kind = (
                probe_x.dtype
                if torch.is_tensor(probe_x)
                else ", ".join(str(t.dtype) for t in D.inputs_of(probe_x))
                if multi
                else "?"
            )
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            if (
                "dtype" in first_line.lower()
                and torch.is_tensor(probe_x)
                and not (probe_x.is_floating_point() or probe_x.is_complex())
            ):
                # Integer features stay integers (an embedding layer wants its indices).
                fix = (
                    f"the data is {probe_x.dtype}: fit keeps int32/int64 features as they are "
                    "(for embedding layers); for a model that computes with them, pass floats, "
                    "e.g. X.astype('float32') or X.float()"
                )
            elif "dtype" in first_line.lower() and torch.is_tensor(probe_x):
                dtypes = sorted({str(p.dtype) for p in self.model.parameters()})
                fix = (
                    f"the data is {probe_x.dtype} (fit converts it to the model's first floating "
                    f"parameter's dtype) and the model holds {', '.join(dtypes)}: give every "
                    "parameter one floating dtype (e.g. model.float() or model.double())"
                )
            elif function:
                names = ", ".join(repr(n) for n in self.model.params)
                fix = (
                    "fit calls the function as fn(x, params): x a batch of rows, params a dict "
                    f"of tensors ({names}); check the order of its arguments and the shapes"
                )
            elif multi and isinstance(probe_x, dict):
                fix = (
                    f"X holds the inputs {list(probe_x)} and fit calls model(**inputs): check "
                    "that forward() takes those keyword arguments and each layer its input's shape"
                )
            elif multi:
                fix = (
                    f"X holds {len(probe_x)} inputs and fit calls model(*inputs): check that "
                    f"forward() takes {len(probe_x)} arguments and each layer its input's shape"
                )
            else:
                fix = (
                    "check the model's first layer against the number of features "
                    f"({self.bundle.n_features})"
                )
            raise InputError(
                message(
                    "the model",
                    "must accept the data's feature batches",
                    f"an error on a batch of shape {shape} ({kind}): {first_line}",
                    fix,
                )
            ) from None
        finally:
            self.model.train(was_training)
        self._check_resident_ids(fed, probe_x)
        if not torch.is_tensor(out):
            raise InputError(
                message(
                    "the model's output",
                    "must be a tensor",
                    describe(out),
                    "return the prediction tensor from forward()",
                )
            )
        if out.ndim == 0:
            raise InputError(
                message(
                    "the model's output",
                    "must have one row per sample",
                    f"a 0-dimensional tensor (one number for a batch of {D.n_rows(probe_x)} "
                    "samples)",
                    "do not reduce over the batch dimension inside the model",
                )
            )
        if not (out.is_floating_point() or out.is_complex()):
            # (the stand-in output the targets are checked against below is cast to float)
            raise InputError(
                message(
                    "the model's output",
                    "must be floating-point scores (the raw output the gradients flow back "
                    "through)",
                    f"a tensor of dtype {out.dtype} and shape {tuple(out.shape)}",
                    "return the scores or logits themselves from forward(), not argmax'ed, "
                    "rounded or cast predictions (take out.argmax(1) when predicting)",
                )
            )
        if out.shape[0] != D.n_rows(probe_x):
            raise InputError(
                message(
                    "the model's output",
                    "must have one row per sample",
                    f"output of shape {tuple(out.shape)} for {D.n_rows(probe_x)} samples",
                    "do not reduce over the batch dimension inside the model",
                )
            )
        y_all = src.y if (src.resident and src.y is not None) else yb
        if y_all is None:
            if self.loss.target_kind != "any":  # a library loss compares with targets
                raise InputError(
                    message(
                        f"the loss {self.loss.name}",
                        "compares the predictions with targets",
                        "data without targets (X alone)",
                        "pass the data as (X, y), or a loss function of the prediction alone: "
                        "loss=lambda pred: ...",
                    )
                )
            return
        y_all = self._shape_targets(out, y_all)
        custom = self._y_unsqueeze and self.loss.target_kind == "any" and yb is not None
        if custom and not self._custom_loss_wants_column(out, yb[: out.shape[0]]):
            self._y_unsqueeze, self._y_as_given = False, True
            y_all = src.y if (src.resident and src.y is not None) else yb
        # A zero-cost expanded prediction lets the loss check every target (range, NaN, shape)
        # against the model's real output width, without running the model on all of the data.
        fake = out[:1].float().expand(y_all.shape[0], *out.shape[1:])
        yv = None
        if val is not None and val.resident and val.y is not None:
            yv = self._shape_targets(out, self._like_training(val.y))
        try:
            self.loss.validate(fake, y_all)
            if yv is not None:
                self.loss.validate(out[:1].float().expand(yv.shape[0], *out.shape[1:]), yv)
        except InputError as err:
            # Labels are encoded over training and validation together: a validation-only
            # label is one class too many for the model, in either part's check.
            unseen = [] if yv is None else self._validation_only_labels(y_all, yv)
            if not unseen:
                raise
            raise InputError(
                f"{err} (validation y holds labels that the training y does not: "
                f"{unseen} — check the validation labels, or train on rows of them too)"
            ) from None

    def _validation_only_labels(self, y: torch.Tensor, yv: torch.Tensor) -> list[Any]:
        """Class labels (original values where they were encoded) present in the validation
        targets but not in the training targets; [] for other targets."""
        if self.loss.target_kind != "index" or y.is_floating_point() or yv.is_floating_point():
            return []
        only = sorted(set(torch.unique(yv).tolist()) - set(torch.unique(y).tolist()))
        classes = getattr(self.bundle, "classes", None)
        if classes is not None:
            return [classes[i].item() if hasattr(classes[i], "item") else classes[i] for i in only][
                :5
            ]
        return only[:5]

    def _custom_loss_wants_column(self, out: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether the user's own loss reads 1-D targets as a column ``(N, 1)`` beside the
        model's ``(N, 1)`` output (as ``torch.nn.MSELoss`` needs: ``(N, 1)`` against ``(N,)``
        broadcasts to ``(N, N)``) or as given (a loss that squeezes the prediction itself).
        Checked once on the probe's rows: the right shape gives the mean of the rows' own
        losses (one row is unambiguous); the column when both or neither do."""
        n = min(out.shape[0], y.shape[0])
        if n < 2:
            return True
        o, t = out[:n].detach().float(), y[:n].to(out.device).float()
        try:
            # (torch's losses warn about the very broadcast this checks for)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                col = float(self.loss(o, t.unsqueeze(-1), validate=False))
                flat = float(self.loss(o, t, validate=False))
                rows = (
                    sum(
                        float(self.loss(o[i : i + 1], t[i : i + 1].unsqueeze(-1), validate=False))
                        for i in range(n)
                    )
                    / n
                )
        except Exception:  # the loss takes one shape only: the column, as always
            return True

        def near(a: float, b: float) -> bool:
            return math.isfinite(a) and abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-12)

        return not (near(flat, rows) and not near(col, rows))

    def _like_training(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """Validation targets in the training targets' shape per sample where the two differ
        only by dimensions of 1 (a column ``(N, 1)`` beside ``(N,)``, or the reverse): the
        same targets, which the step's own reshaping (:meth:`_shape_targets`) would otherwise
        turn into ``(N, 1, 1)`` against an ``(N, 1)`` output, a silent ``(N, N, 1)`` broadcast."""
        shape = self._y_sample_shape
        if y is None or shape is None or tuple(y.shape[1:]) == shape:
            return y
        if [d for d in y.shape[1:] if d != 1] == [d for d in shape if d != 1]:
            return y.reshape(y.shape[0], *shape)
        return y

    def _shape_targets(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A regression model usually ends in Linear(k, 1) while y is 1-D: (N,1) vs (N,) would
        # silently broadcast to (N,N) in a loss. Adapt y's view once, explicitly.
        if (
            self.loss.target_kind != "index"
            and not self._y_as_given
            and y.is_floating_point()
            and y.dim() == 1
            and out.dim() == 2
            and out.shape[1] == 1
        ):
            self._y_unsqueeze = True
            return y.unsqueeze(-1)
        return y

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_resident_ids(
        self, fed: list[tuple[torch.nn.Module, torch.Tensor]], probe_x: Any
    ) -> None:
        """Check every id the training and validation data in memory hold for each embedding
        table the probe fed from a view of an input (the input itself, a column, columns):
        an InputError naming the table and the ids' range for the first out of range, before
        any step. A streamed source (a DataLoader) gets the same check of each batch on the
        host, before the batch moves to the device (``StreamSource.host_check``).

        On a CPU torch raises an IndexError in the step that meets the id, and fit names it; on
        a GPU an id out of range is no exception but a device-side assert, which leaves the
        process's CUDA context unusable (every later CUDA call fails, the user's own too), so
        the ids are checked here, one ``aminmax`` per table and split. Ids a model computes
        (``x + 1``, a lookup) are left to torch."""
        if not fed:
            return
        names = {m: name for name, m in self.model.named_modules()}

        def check(src: D.Source, X: Any, where: str) -> None:
            for table, ids in fed:
                found = _view_of_all_rows(ids, probe_x, X)
                if found is None or not found[1].numel() or _ids_fit(found[1], table):
                    continue
                lo, hi = (int(v) for v in torch.aminmax(found[1]))
                name = names.get(table, "")
                raise InputError(
                    message(
                        f"the {'validation' if src is self.bundle.val else 'training'} data's "
                        "integer features",
                        "must index inside the model's embedding tables",
                        f"{f'model.{name}' if name else 'the model'} = {type(table).__name__}"
                        f"({table.num_embeddings}, {table.embedding_dim}) takes "
                        f"0..{table.num_embeddings - 1}, and the ids it is given from "
                        f"{D.input_names(X)[found[0]]}{where} hold {lo}..{hi}",
                        _IDS_FIX,
                    )
                )

        for src in (self.bundle.train, self.bundle.val):
            if src is None:
                continue
            if src.resident and src.X is not None:
                check(src, src.X, "")
            elif isinstance(src, D.StreamSource):
                src.host_check = lambda x, src=src: check(src, x, " (a batch of the DataLoader)")

    def _raise_named(self, err: Exception, src: D.Source, xb: Any) -> NoReturn:
        """Raise a forward pass's error in the user's terms — an embedding id out of range,
        batch norm given one sample — or ``err`` itself when it is neither."""
        named = self._step_error(err, src, xb)
        if named is err:
            raise err
        raise named from err

    def _step_error(self, err: Exception, src: D.Source, xb: Any) -> Exception:
        """:meth:`_raise_named`'s translation (``err`` itself when it has none)."""
        if isinstance(err, IndexError):
            return self._index_error(err, src, xb)
        if "Expected more than 1 value per channel" not in str(err):
            return err
        rows = D.n_rows(xb) if torch.is_tensor(xb) or D.is_multi(xb) else None
        return InputError(
            message(
                "a model with batch norm",
                "needs at least 2 samples in every training batch (it normalizes over the batch)",
                f"a batch of {rows} sample{'s' * (rows != 1)}"
                + (f" (batch_size={src.batch_size}" if src.batch_size else " (full batch")
                + f", {src.n_samples} training samples)",
                "pass batch_size >= 2, and train on at least 2 samples (with validation=None "
                "if the split leaves fewer)",
            )
        )

    def _index_error(self, err: IndexError, src: D.Source, xb: Any) -> Exception:
        """torch's "index out of range in self" from an embedding, as an InputError naming
        the integer features' ranges and the model's tables (``err`` itself otherwise)."""
        tables = [
            (name, m)
            for name, m in self.model.named_modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        ]
        if not tables or "out of range" not in str(err):
            return err
        X = src.X if src.resident and src.X is not None else xb
        known = torch.is_tensor(X) or D.is_multi(X)
        ints = [
            (name, t)
            for name, t in zip(D.input_names(X), D.inputs_of(X) if known else ())
            if not (t.is_floating_point() or t.is_complex()) and t.numel()
        ]
        held = "; ".join(f"{n} holds {int(t.min())}..{int(t.max())}" for n, t in ints)
        sizes = ", ".join(
            f"{f'model.{name}' if name else 'the model'} = "
            f"{type(m).__name__}({m.num_embeddings}, {m.embedding_dim}) "
            f"takes 0..{m.num_embeddings - 1}"
            for name, m in tables
        )
        which = "validation" if src is self.bundle.val else "training"
        return InputError(
            message(
                f"the {which} data's integer features",
                "must index inside the model's embedding tables",
                f"{held or 'integer indices'}, and {sizes} (torch: {str(err).strip()})",
                _IDS_FIX,
            )
        )

    # ---- the step ----------------------------------------------------------------------

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor | None, wb: torch.Tensor | None = None):
        if self._ddp is not None:
            return self._train_step_ddp(xb, yb, wb)
        fast = self._mlp
        if fast is not None and (self._fast_ok or fast.usable(xb)):
            if yb is not None and self._y_unsqueeze:
                yb = yb.unsqueeze(-1)
            flat = self._flat_grads
            value, out, grads = fast.grads(xb, self.loss, yb, wb, flat=flat)
            if self._ep_metric is not None:
                self._ep_metric.add(out, yb)
            return self._finish_step(value, grads, fast.grad_norm() if flat else None)
        value, out, yb = self._forward_loss(self.model, xb, yb, wb)
        try:
            grads = torch.autograd.grad(value, self._plist, allow_unused=True)
        except RuntimeError as err:
            raise self._loss_error(err, value) from err
        if self._ep_metric is not None:
            self._ep_metric.add(out, yb)
        return self._finish_step(value, grads)

    def _loss_error(self, err: RuntimeError, value: Any) -> Exception:
        """autograd's refusal of the loss value, in the user's terms (or ``err`` itself)."""
        text = str(err)
        if torch.is_tensor(value) and value.numel() != 1:
            return InputError(
                message(
                    f"the loss ({self.loss.name})",
                    "must return one number for the batch (a scalar tensor)",
                    f"a tensor of shape {tuple(value.shape)}",
                    "reduce it over the samples, e.g. return ((pred - target) ** 2).mean()",
                )
            )
        if "does not require grad" in text:
            return InputError(
                message(
                    f"the loss ({self.loss.name})",
                    "must be computed from the model's output with torch operations",
                    "a value with no gradient (detached, converted with .item()/numpy, or not "
                    "computed from the prediction)",
                    "build it from pred with torch operations and return the tensor, "
                    "without .detach(), .item() or numpy",
                )
            )
        return err

    def _forward_loss(
        self,
        model: torch.nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor | None,
        wb: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss, detached output, target)`` of the batch through ``model`` (the module, or
        its DDP wrapper) with a graph, errors named after the data (the caller gives the
        output to the epoch's training metric once the step stands)."""
        with self._autocast():
            try:
                out = D.call_model(model, xb)
            except (IndexError, ValueError) as e:
                self._raise_named(e, self.bundle.train, xb)
            if yb is not None and self._y_unsqueeze:
                yb = yb.unsqueeze(-1)
            out = out.float() if self.precision == "bf16" else out
            if wb is None:
                value = self.loss(out, yb, validate=False)
            else:
                value = self.loss(out, yb, weight=wb, validate=False)
        return value, out.detach(), yb

    def _wrap_ddp(self) -> torch.nn.Module:
        dev = self.device
        opts = {**self.world.ddp_options, "find_unused_parameters": self._find_unused}
        return torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[dev.index] if dev.type == "cuda" else None, **opts
        )

    def _drop_ddp(self) -> None:
        self._ddp = None

    def _pre_step_state(self) -> tuple[Any, ...]:
        """What a step's forward pass changes besides the gradients — the random streams
        (dropout) and batch norm's running statistics — to redo the step exactly. (Taken at
        every data-parallel step until a redo, so not every buffer: a model's constant ones,
        such as attention masks, can be large.)"""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        saved = [(b, b.detach().clone()) for b in self._norm_buffer_list()]
        return torch.get_rng_state(), cuda, saved

    def _norm_buffer_list(self) -> list[torch.Tensor]:
        """Batch norm's running statistics (found once: asked at every data-parallel step)."""
        if self._norm_buffers is None:
            self._norm_buffers = [
                b
                for m in self.model.modules()
                if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                for b in m.buffers(recurse=False)
            ]
        return self._norm_buffers

    def _sync_norm_buffers(self) -> None:
        """Data-parallel: batch norm's running statistics become rank 0's on every process.

        Each process updates them from its own share of a batch. DDP broadcasts rank 0's before
        each training forward, FSDP does not: so this runs before each step of a sharded model
        (a resumed run, which loads rank 0's, then goes on exactly as the run never stopped),
        before every evaluation (the summed validation loss is one model's) and when the run
        ends (every process hands back the same model)."""
        if not self.world.active:
            return
        for b in self._norm_buffer_list():
            torch.distributed.broadcast(b.data, src=0)

    def _restore_pre_step(self, state: tuple[Any, ...]) -> None:
        cpu, cuda, saved = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        with torch.no_grad():
            for b, copy_ in saved:
                b.copy_(copy_)

    def _switch_to_unused_search(self, missing: list[str]) -> None:
        """Every process saw this step's flag: some parameter got no gradient. DDP without
        the search leaves such a step's gradient buckets partly unreduced (and fails at the
        next forward), so it is wrapped again with ``find_unused_parameters=True``, which
        reduces the others and leaves the unused parameters' gradients empty (the optimizer
        skips them, as in one process). Said once a run, on the main process."""
        self._find_unused = True
        self._ddp = None  # the old wrapper's reducer goes with it
        self._ddp = self._wrap_ddp()
        said = "unused" in self.world.learned  # by an earlier loop of this run
        self.world.learned.add("unused")  # the run's next loops start with the search on
        if self.world.is_main and not said:
            shown = ", ".join(missing[:4]) + (
                f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            )
            warnings.warn(
                f"descend: {shown or 'some parameters'} got no gradient at step "
                f"{self.step + 1} (not part of the loss there); data-parallel training now "
                "searches for such parameters at every step (DDP's find_unused_parameters), "
                "which costs a little time — freeze parameters that never train "
                "(requires_grad_(False)) to avoid it",
                RuntimeWarning,
                stacklevel=2,
            )

    def _train_step_ddp(
        self, xb: torch.Tensor, yb: torch.Tensor | None, wb: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One data-parallel step: this process's share of the batch through DDP, its mean loss
        weighted by the share (so DDP's average of the gradients is the whole batch's), and
        the whole batch's loss summed over the processes for the guard and the history."""
        src = self.bundle.train
        world = self.world
        # A resident batch is split by rows (its share set by the source); a DistributedSampler
        # gives every process a batch of its own, of one size.
        share = src.share if src.resident else 1.0 / world.size
        if self._sharded:
            self._sync_norm_buffers()  # as DDP's broadcast_buffers does before its forward
        before = None if self._find_unused else self._pre_step_state()
        value, out, yt = self._forward_loss(self._ddp, xb, yb, wb)
        try:
            (value * (share * world.size)).backward()
        except RuntimeError as err:
            raise self._loss_error(err, value) from err
        grads = []
        for p in self._plist:
            grads.append(p.grad)
            p.grad = None
        missing = [n for n, g in zip(self._names, grads) if g is None]
        # One all_reduce carries the batch loss and the flags (a signal, a callback's request,
        # max_time, a parameter without a gradient) as they stand on each process: the step's
        # only sync beyond DDP's.
        over = self.max_time is not None and self._elapsed() > self.max_time
        flags = [self._interrupt is not None, self._stop_request is not None, over]
        parts = [
            value.detach().float().reshape(1) * share,
            torch.tensor(
                [*flags, bool(missing) and not self._find_unused],
                dtype=torch.float32,
                device=value.device,
            ),
        ]
        if self._sharded:
            # Each process holds a disjoint shard of every gradient: the squares of the
            # global norm add up over the processes, in the step's one all_reduce.
            local = [g.to_local() for g in grads if g is not None]
            sq = (
                torch.stack(torch._foreach_norm(local)).float().square().sum().reshape(1)
                if local
                else value.new_zeros(1, dtype=torch.float32)
            )
            parts.append(sq.to(value.device))
        total = world.all_sum(torch.cat(parts).to(world.device))
        agreed = tuple(bool(v > 0) for v in total[1:5].tolist())
        if agreed[3]:
            # Nothing of this step is applied: redo it from the same random streams and buffers.
            self._switch_to_unused_search(missing)
            self._restore_pre_step(before)
            return self._train_step_ddp(xb, yb, wb)
        self._agreed = agreed[:3]
        if self._ep_metric is not None:
            self._ep_metric.add(out, yt)
        gnorm = total[5].sqrt().to(value.device) if self._sharded else None
        return self._finish_step(total[0].to(value.device), grads, gnorm)

    def _take_agreed(self) -> tuple[bool, bool]:
        """(interrupted, stop) as agreed by every process in the last step's all_reduce."""
        interrupt, request, late = self._agreed
        if interrupt and self._interrupt is None:
            self._interrupt = int(signal.SIGTERM)
        if request and self._stop_request is None:
            self._stop_request = "another process asked to stop"
        self._late = late
        return interrupt, request or late

    def _out_of_time(self) -> bool:
        """``max_time`` is spent (data-parallel: on some process, as agreed after the step)."""
        if self._ddp is not None:
            return self._late
        return self.max_time is not None and self._elapsed() > self.max_time

    def _agree_on_stop(self) -> None:
        """Data-parallel, at an epoch's end: a stop asked for on any process (a signal, an
        epoch callback, ``max_time``) stops every process here; the others would wait for it
        forever. (Within the epoch the flags ride in each step's all_reduce.)"""
        over = self.max_time is not None and self._elapsed() > self.max_time
        flags = torch.tensor(
            [self._interrupt is not None, self._stop_request is not None, over],
            dtype=torch.float32,
            device=self.world.device,
        )
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        interrupt, request, late = (bool(v) for v in flags.tolist())
        if interrupt and self._interrupt is None:
            self._interrupt = int(signal.SIGTERM)
        if request and self._stop_request is None:
            self._stop_request = "another process asked to stop"
        self._late = late

    def _finish_step(
        self,
        value: torch.Tensor,
        grads: Sequence[torch.Tensor | None],
        gnorm: torch.Tensor | None = None,
    ):
        if grads is self._grads_seen:  # the plain-MLP step's reused gradient views
            g = self._grads_named
        else:
            g = {n: gr for n, gr in zip(self._names, grads) if gr is not None}
            # A list the fast step hands back every step holds the same tensors (views into
            # its buffer, rewritten in place): name them once. Other paths make fresh lists.
            if self._mlp is not None and grads is self._mlp._views:
                self._grads_seen, self._grads_named = grads, g
        if not self._dense_checked:  # a model that makes sparse gradients makes them every step
            check_dense(g, "fit")
            self._dense_checked = True
        if gnorm is None:
            norms = torch._foreach_norm(list(g.values())) if g else []
            gnorm = torch.linalg.vector_norm(torch.stack(norms)) if norms else value.new_zeros(())
        # One fused pass over parameters and optimizer state where the transform has one
        # (the Adam family, momentum SGD); exactly update + apply_updates otherwise.
        self.opt_state = update_and_apply(self.tx, g, self.opt_state, self.params)
        self.step += 1
        return value.detach(), gnorm.detach()

    # ---- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, src: D.Source) -> tuple[float, float | None]:
        """Mean loss and metric over a whole source, in eval mode, chunked to bound memory."""
        self._sync_norm_buffers()
        fast = self._mlp  # (None when data-parallel)
        if (
            fast is not None
            and src.resident
            and D.n_rows(src.X) <= _EVAL_CHUNK
            and fast.usable(src.X, training=False)
        ):
            # A plain MLP on one chunk: one forward pass, and no train/eval switch (none of its
            # modules behaves differently; the switch and the generator below cost ~2x the
            # forward pass of a small validation set, benchmarks/RESULTS.md).
            return self._evaluate_once(fast, src.X, src.y)
        was_training = self.model.training
        # Checked per call (cheap next to the switch): a model may change between evaluations.
        switch = was_training and not _mode_free(self.model)
        if switch:
            self.model.eval()
        total = None
        count = 0
        sums = self._new_metric_sum() if self._metric_fn is not None else None
        try:
            fast = self._mlp
            for xb, yb in self._eval_batches(src, *self._eval_rows(src)):
                if fast is not None and fast.usable(xb, training=False):
                    out = fast.forward(xb)
                else:
                    try:
                        with self._autocast():
                            out = D.call_model(self.model, xb)
                    except IndexError as e:
                        self._raise_named(e, src, xb)
                out = out.float()
                yb = self._like_training(yb)
                if yb is None and self.loss.target_kind != "any":
                    # (a stream's batches are seen only here: resident data is checked earlier)
                    raise InputError(
                        message(
                            f"the validation data (for the loss {self.loss.name})",
                            "must hold targets: the loss compares the predictions with them",
                            "batches of X alone (the validation loader yields no y)",
                            "yield (x, y) from the validation DataLoader, or pass "
                            "validation=(X_val, y_val)",
                        )
                    )
                if yb is not None and self._y_unsqueeze:
                    yb = yb.unsqueeze(-1)
                n = out.shape[0]
                v = loss_value(self.loss, out, yb) if fast is not None else None
                if v is None:
                    v = self.loss(out, yb, validate=False)
                v = v.float() * n
                total = v if total is None else total + v
                count += n
                if sums is not None:
                    sums.add(out, yb)
        finally:
            if switch:
                self.model.train(was_training)
        if self.world.active:
            return self._shared_result(total, count, sums)
        if total is None:
            raise _no_batches("validation", src)
        loss_val = float(total / count)
        metric = None if sums is None else sums.value()
        return loss_val, metric

    def _evaluate_once(
        self, fast: MLPStep, X: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[float, float | None]:
        out = fast.forward(X).float()
        y = self._like_training(y)
        if y is not None and self._y_unsqueeze:
            y = y.unsqueeze(-1)
        v = loss_value(self.loss, out, y)
        if v is None:
            v = self.loss(out, y, validate=False)
        n = out.shape[0]
        # the same arithmetic as the chunked path (the mean times n, over n): the same number
        loss_val = float(v.float() * n / n)
        if self._metric_fn is None:
            return loss_val, None
        sums = self._new_metric_sum()
        sums.add(out, y)
        return loss_val, sums.value()

    def _eval_rows(self, src: D.Source) -> tuple[int, int | None]:
        """The rows ``[lo, hi)`` of a resident source this process evaluates: all of them in a
        single process; its share when data-parallel (a set smaller than the group: all of it
        everywhere, and the mean of equal sums is the same number). A stream: ``(0, None)``,
        each process reading its own batches (a DistributedSampler's)."""
        if not (self.world.active and src.resident):
            return 0, None
        n = D.n_rows(src.X)
        return self.world.shard(0, n) if n >= self.world.size else (0, n)

    def _shared_result(
        self, total: torch.Tensor | None, count: int, sums: _MetricSum | None
    ) -> tuple[float, float | None]:
        """Data-parallel: the loss and metric sums of every process's rows, summed, so every
        process reads the whole set's numbers."""
        world = self.world
        totals = torch.zeros(2, dtype=torch.float64, device=world.device)
        if total is not None:
            totals[0] = total.double().to(world.device)
        totals[1] = count
        total_all, count_all = (float(v) for v in world.all_sum(totals).tolist())
        if sums is not None:
            sums.all_reduce(world)
        if count_all == 0:
            return math.nan, None
        return total_all / count_all, None if sums is None else sums.value()

    def _eval_batches(
        self, src: D.Source, lo: int = 0, hi: int | None = None
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        if src.resident:
            n = D.n_rows(src.X) if hi is None else hi
            step = _EVAL_CHUNK
            if self._sharded and self.world.active:
                # Each forward pass of a fully_shard model is collective: every process makes
                # as many as the largest share needs, its own share cut into that many chunks.
                most = -(-D.n_rows(src.X) // self.world.size)
                step = -(-(n - lo) // max(1, -(-most // _EVAL_CHUNK)))
            for i in range(lo, n, max(step, 1)):
                j = min(i + step, n)
                yield (
                    D.cut_rows(src.X, i, j),
                    (None if src.y is None else src.y[i:j]),
                )
        else:
            for batch in src.batches(0):
                yield batch[0], batch[1]

    # ---- the run -----------------------------------------------------------------------

    def describe_start(self) -> str:
        b = self.bundle
        val = f", {b.n_val} for validation" if b.val is not None else ", no validation split"
        return (
            f"descend: {type(self.model).__name__} with {_n_params(self.model):,} parameters, "
            f"loss {self.loss.name}, {self.optimizer_desc}; {b.n_train} training samples{val}; "
            f"{b.train.num_batches} steps/epoch, up to {self.max_epochs} epochs; "
            f"device {self.device}, seed {self.seed}"
        )

    def request_stop(
        self, why: str = "a callback asked to stop", reason: StopReason = StopReason.CALLBACK
    ) -> None:
        """Ask the run to stop after the current step (stop reason ``callback``, or the one
        given); asked before the first step (``on_fit_start``), the run takes none."""
        self._stop_request = why
        self._stop_reason = reason

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The model's ``state_dict()`` tensors (the parameters themselves when they are the
        whole state): what the best-weights and rollback copies read."""
        if self._state_is_params:
            return dict(zip(self._names, self._plist))
        return self.model.state_dict()

    def _save_best(self) -> None:
        if not self.restore_best:
            return
        sd = self.state_tensors()
        if self._best_state is None:
            self._best_state = {k: v.detach().clone() for k, v in sd.items()}
        else:
            copy_pairs([(self._best_state[k], v) for k, v in sd.items()])

    def _restore_best(self) -> None:
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)

    def rewind_to_best(self) -> int | None:
        """Put the best weights kept so far back into the model, mid-run (the optimizer state
        stays), and make them the divergence guard's rollback point; return their epoch, or
        None when no best weights are kept (``restore_best=False``, or none yet)."""
        if not self.restore_best or self._best_state is None:
            return None
        self.model.load_state_dict(self._best_state)
        if self.guard is not None:
            self.guard.snapshot(self, force=True)
        return self.best_epoch

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 + self._t_offset

    def set_opt_state(self, state: Any) -> None:
        """Start from a given optimizer state (must match this optimizer's structure)."""
        if C.tree_signature(state) != C.tree_signature(self.opt_state):
            raise ConfigError(
                message(
                    "fit(opt_state=...)",
                    "must come from the same optimizer and model",
                    "a state of a different structure",
                    "pass the Result.opt_state of a run with the same optimizer, or leave it unset",
                )
            )
        # A copy: the run must not change the state it was given (an earlier Result's, which
        # a second warm start from the same point would read again).
        self.opt_state = clone_tree(_to_device_tree(state, self.device))
        self.refresh_lr_state()

    def refresh_lr_state(self) -> None:
        """Look up the learning-rate state again (after ``opt_state`` was replaced)."""
        self.lr_state = find_lr_state(self.opt_state)

    def record_event(self, kind: str, text: str) -> None:
        """Add an event (rollback, checkpoint failure, ...) to the history."""
        self.history.events.append(
            {"step": self.step, "epoch": self.epoch + 1, "kind": kind, "message": text}
        )

    def _check_zero_rates(self, lrs: list[float]) -> None:
        """An epoch whose every step ran at a rate of 0 after steps that did not: the schedule
        has ended (the default plan's decays to 0 over the budget it was planned for), and
        whatever the run does from here cannot change the weights — a warm start
        (``fit(opt_state=...)``) of an ended run, a resume with a larger ``epochs`` than the
        plan's, a user schedule shorter than the run. Said once a run, not silently."""
        st = self.lr_state
        if st is None or not lrs or lrs[-1] != 0.0 or any(lr != 0.0 for lr in lrs):
            return
        ended = st["count"] - len(lrs)  # steps taken before this epoch, this run's or earlier
        if ended <= 0:  # a warmup that starts at 0
            return
        earlier = self.history.step_lr[: len(self.history.step_lr) - len(lrs)]
        if earlier and not any(lr != 0.0 for lr in earlier):
            return  # a rate of 0 from this run's first step on: a schedule held at 0, not ended
        self._zero_said = True
        text = (
            f"every step of epoch {self.epoch + 1} ran at a learning rate of 0: the optimizer's "
            f"schedule ended at its step {ended} (the default plan decays to 0 over the budget "
            "it was planned for), so the run cannot change the weights from here — to train "
            "further, start a fresh optimizer: fit(optimizer=descend.optim.adamw(lr=1e-3)), or "
            "a new default plan (a new run, not a resume or a warm start of this one; an "
            "estimator: set lr= or optimizer=, or fit with warm_start=False)"
        )
        # the caller's line: _check_zero_rates < _end_epoch < Loop.run < fit < caller
        warnings.warn(f"descend: {text}", RuntimeWarning, stacklevel=5)
        self.record_event("rate_zero", text)

    def _end_epoch(self) -> StopReason | None:
        """Read the epoch's numbers (one sync), evaluate, and decide whether to stop."""
        h = self.history
        losses = (
            [float(v) for v in torch.stack(self._ep_losses).float().cpu().tolist()]
            if self._ep_losses
            else []
        )
        norms = (
            [float(v) for v in torch.stack(self._ep_norms).float().cpu().tolist()]
            if self._ep_norms
            else []
        )
        h.step_loss.extend(losses)
        h.step_grad_norm.extend(norms)
        h.step_lr.extend(self._ep_lrs)
        if not self._zero_said:
            self._check_zero_rates(self._ep_lrs)
        self._ep_losses, self._ep_norms, self._ep_lrs = [], [], []
        self.batch = 0
        finite = [v for v in losses if math.isfinite(v)]
        train_loss = self._epoch_mean(losses, finite)
        self.epoch += 1
        h.epoch.append(self.epoch)
        h.epoch_steps.append(len(h.step_lr))
        h.train_loss.append(train_loss)
        # Schedule-free optimizers train at one point and average another: evaluate, and keep
        # as "best", the averaged point, then swap back for the next step.
        swapped = self._has_averaged_point() and swap_to_eval(self.opt_state, self.params)
        try:
            if swapped:
                self._recompute_batchnorm()
            return self._judge_epoch(train_loss, losses, finite, norms)
        finally:
            if swapped:
                swap_to_train(self.opt_state, self.params)

    def _epoch_mean(self, losses: list[float], finite: list[float]) -> float:
        """The epoch's training loss: its finite batch losses weighted by their rows (resident
        data; as scikit-learn's loss_curve_ and Keras' loss tracker), the mean over the samples
        the epoch trained on. An unweighted mean of batch means counts a small last batch as a
        full one: 50 rows in batches of 32 and 18 gave each 18 rows the weight of 32, and a
        fit whose loss was falling ~0.3% an epoch read +-10% noise, stopped "converged" after 12
        epochs and restored epoch 2. (Streamed batches count one each, their sizes not known
        ahead; with sample weights a batch counts for its rows, not for its weight.)"""
        src = self.bundle.train
        rows = src.batch_rows() if src.resident else None
        if not finite or rows is None or len(losses) > len(rows) or len(set(rows)) < 2:
            # (batches of one size: the plain mean, to the bit)
            return sum(finite) / len(finite) if finite else math.nan
        kept = [(r, v) for r, v in zip(rows, losses) if math.isfinite(v)]
        return sum(r * v for r, v in kept) / sum(r for r, _ in kept)

    def _has_averaged_point(self) -> bool:
        """Whether the optimizer state holds a schedule-free averaged point to evaluate at.
        Looked up once per transform (its state tree has the same shape all run): walking the
        tree every epoch cost ~10 us, a few % of a small full-batch epoch."""
        if self._averaged_for is not self.tx:
            self._averaged_for = self.tx
            self._averaged = next(averaged_point_states(self.opt_state), None) is not None
        return self._averaged

    @torch.no_grad()
    def _recompute_batchnorm(self) -> None:
        """BatchNorm running statistics belong to the training point; after swapping in the
        averaged point, recompute them with one pass over (up to 50 batches of) training data."""
        bns = [
            m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        if not bns or not self.bundle.train.resident:
            return
        saved = [(m, m.momentum) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        was_training = self.model.training
        self.model.train()
        try:
            src = self.bundle.train
            n = D.n_rows(src.X)
            step = max(1, src.batch_size or n)
            for i in range(0, min(n, 50 * step), step):
                with self._autocast():
                    D.call_model(self.model, D.cut_rows(src.X, i, i + step))
        finally:
            for m, mom in saved:
                m.momentum = mom
            self.model.train(was_training)

    def _judge_epoch(self, train_loss, losses, finite, norms) -> StopReason | None:
        h = self.history
        metric = None
        if self.bundle.val is not None:
            val_loss, metric = self.evaluate(self.bundle.val)
            h.val_loss.append(val_loss)
            monitored = val_loss
        else:
            monitored = train_loss
            if self._ep_metric is not None:
                self._ep_metric.all_reduce(self.world)
                metric = self._ep_metric.value()
                self._ep_metric = self._new_metric_sum()
        if metric is not None:
            h.metric.append(metric)
        h.time.append(self._elapsed())

        # Without the guard any non-finite step ends the run. With it, every non-finite step
        # was already rolled back and the guard alone decides when to give up: an epoch of one
        # step (full batch) or one inside a guard window (16 steps on an accelerator) can be
        # wholly non-finite while the guard is still lowering the rate.
        if self.guard is None and (not math.isfinite(train_loss) or len(finite) < len(losses)):
            self.improved = False
            return StopReason.DIVERGED
        threshold = self.best_loss - max(self.tol * abs(self.best_loss), 0.0)
        self.improved = math.isfinite(monitored) and (
            monitored < threshold or not math.isfinite(self.best_loss)
        )
        h.improved.append(self.improved)
        if self.improved:
            self.best_loss = monitored
            self.best_epoch = self.epoch
            self._since_best = 0
            self._save_best()
        else:
            self._since_best += 1
        if norms and norms[-1] < 1e-10:
            return StopReason.CONVERGED
        return self._patience_spent()

    def _patience_spent(self) -> StopReason | None:
        if self.patience is not None and self._since_best >= self.patience:
            return StopReason.PATIENCE if self.bundle.val is not None else StopReason.CONVERGED
        return None

    def _sentence(self, reason: StopReason) -> str:
        """Why the run stopped, and — when the divergence guard had to step in but the run went
        on — that it did: a run that survived five rollbacks at a 400x lower rate should not
        read like a clean one."""
        text = self._reason_sentence(reason)
        events = self.guard.events if self.guard is not None else 0
        if reason is StopReason.DIVERGED or not events:
            return text
        scale = float(self.lr_state["scale"]) if self.lr_state is not None else 1.0
        steps = "one step" if events == 1 else f"{events} steps"
        alarms = self.guard.false_alarms if self.guard is not None else 0
        if alarms:
            how = (
                f", then found the batch losses simply vary that much ({alarms} recalibration"
                f"{'s' * (alarms != 1)}); the learning rate is at x{scale:.3g} of the planned "
                "one (history.events says more)"
            )
        elif scale < 1:
            how = (
                f", lowering the learning rate to x{scale:.3g} of the planned one: a lower "
                "learning rate would waste fewer steps"
            )
        else:
            how = " (history.events says why)"
        return f"{text} The divergence guard rolled back {steps}{how}."

    def _scale_hint(self) -> str:
        """After a divergence: whether unscaled data is the likelier cause than the rate."""
        src = self.bundle.train
        if not src.resident:
            return ""
        parts = [
            f"the {name} reach {top:.3g} in absolute value"
            for name, t in (("features", D.inputs_of(src.X)), ("targets", [src.y]))
            if (top := _largest(t)) > UNSCALED
        ]
        if not parts:
            return ""
        return (
            f" Also, {' and '.join(parts)}: standardize them (mean 0, standard deviation 1, "
            "e.g. sklearn's StandardScaler; the descend CLI and estimators do it for you)."
        )

    def _reason_sentence(self, reason: StopReason) -> str:
        m = self.monitor
        best = f"{m} {self.best_loss:.4g} at epoch {self.best_epoch}"
        kept = f"restored the best weights ({best})" if self.restore_best else f"best was {best}"
        if self.best_epoch == 0 and not math.isfinite(self.best_loss):
            # no epoch ended with a finite loss: the best is the starting point, never scored
            why = "no epoch had ended" if self.epoch == 0 else "no epoch ended with a finite loss"
            kept = f"put the starting weights back ({why})" if self.restore_best else why
        if reason is StopReason.PATIENCE:
            decay = (self.autopilot or {}).get("decay")
            during = ""
            if decay:
                # (a record written before "cause" existed says it in its sentence)
                cause = decay.get("cause") or (
                    "budget" if "still improving" in decay.get("why", "") else "stall"
                )
                during = (
                    f" of the learning rate's decay (started after epoch {decay['epoch']}, "
                    + (
                        "when it had stalled)"
                        if cause == "stall"
                        else "the budget's last share: it had not stalled)"
                    )
                )
            # (patience that runs out at the budget's last epoch is no early stop)
            head = (
                f"Stopped early after epoch {self.epoch}"
                if self.epoch < self.max_epochs
                else f"Stopped after epoch {self.epoch}, the budget's last"
            )
            return (
                f"{head}: the validation loss did not improve "
                f"by more than {self.tol:g} (relative) for {_epochs(self.patience)}{during}; "
                f"{kept}."
            )
        if reason is StopReason.CONVERGED:
            if self.history.step_grad_norm and self.history.step_grad_norm[-1] < 1e-10:
                return (
                    f"Converged after epoch {self.epoch}: the gradient norm fell below 1e-10; "
                    f"{kept}."
                )
            return (
                f"Stopped after epoch {self.epoch}: the training loss did not improve by more "
                f"than {self.tol:g} (relative) for {_epochs(self.patience)}; {kept}."
            )
        if reason is StopReason.MAX_EPOCHS:
            polished = ((self.autopilot or {}).get("polish") or {}).get("kept")
            tail = (
                " It was still improving at the end: more epochs may help."
                if self.best_epoch == self.epoch and not polished
                else ""
            )
            if self.epoch > self.max_epochs:  # resumed from a checkpoint past this budget
                return (
                    f"Nothing to train: the checkpoint resumed had already run {self.epoch} "
                    f"epochs, more than epochs={self.max_epochs}; {kept}. Pass a larger "
                    "epochs= to train on"
                    + (
                        " (not with the default plan: its rate stays at 0 past the budget it "
                        "was planned for — for more training, start a new run from these "
                        "weights)."
                        if self.autopilot
                        else "."
                    )
                )
            return f"Used the whole budget of {_epochs(self.max_epochs)}; {kept}.{tail}"
        if reason is StopReason.MAX_TIME:
            return f"Stopped after {self._elapsed():.1f}s, the max_time budget; {kept}."
        if reason is StopReason.DIVERGED:
            if self.guard is not None and self.guard.events:
                scale = float(self.lr_state["scale"]) if self.lr_state is not None else None
                lowered = (
                    f" (the learning rate lowered to x{scale:.3g} of the planned one)"
                    if scale is not None and scale < 1
                    else ""
                )
                return (
                    f"Diverged in epoch {self.epoch + 1}: the loss kept blowing up through "
                    f"{self.guard.events} rollbacks{lowered}; {kept}. Try a much lower learning "
                    f"rate or max_grad_norm=1.0.{self._scale_hint()}"
                )
            return (
                f"Diverged in epoch {self.epoch}: the training loss became non-finite; "
                f"{kept}. Try a lower learning rate or max_grad_norm=1.0.{self._scale_hint()}"
            )
        if reason is StopReason.INTERRUPTED:
            return f"Interrupted by the user during epoch {self.epoch + 1}; {kept}."
        return f"Stopped after epoch {self.epoch}: {self._stop_request}; {kept}."

    # ---- checkpoints ---------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        import numpy as np

        rng: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
        if self.world.active:
            # each process draws its own dropout masks: keep every one's generator
            for r, st in enumerate(self.world.gather(torch.get_rng_state().to(self.world.device))):
                rng[f"rank{r}_torch_cpu"] = st.cpu()
            if self.device.type == "cuda":
                own = torch.cuda.get_rng_state(self.device).to(self.world.device)
                for r, st in enumerate(self.world.gather(own)):
                    rng[f"rank{r}_cuda"] = st.cpu()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda_{i}"] = st
        ver, internal, gauss = random.getstate()
        rng["python"] = [ver, list(internal), gauss]
        npst = np.random.get_state(legacy=False)
        rng["numpy"] = {
            "key": npst["state"]["key"].tolist(),
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
        return rng

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        import numpy as np

        if "torch_cpu" in rng:
            torch.set_rng_state(rng["torch_cpu"])
        mine = f"rank{self.world.rank}_"
        if self.world.active and mine + "torch_cpu" in rng:
            torch.set_rng_state(rng[mine + "torch_cpu"])
        for k, v in rng.items():
            if k.startswith("cuda_") and torch.cuda.is_available():
                i = int(k.split("_")[1])
                if i < torch.cuda.device_count():
                    torch.cuda.set_rng_state(v, i)
        if self.world.active and mine + "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng[mine + "cuda"], self.device)
        if "python" in rng:
            ver, internal, gauss = rng["python"]
            random.setstate((ver, tuple(internal), gauss))
        if "numpy" in rng:
            n = rng["numpy"]
            np.random.set_state(
                {
                    "bit_generator": "MT19937",
                    "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                    "has_gauss": n["has_gauss"],
                    "gauss": n["gauss"],
                }
            )

    def _meta(self) -> dict[str, Any]:
        partial_losses = (
            torch.stack(self._ep_losses).float().cpu().tolist() if self._ep_losses else []
        )
        partial_norms = torch.stack(self._ep_norms).float().cpu().tolist() if self._ep_norms else []
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "since_best": self._since_best,
            "elapsed": self._elapsed(),
            "history": self.history.to_dict(),
            "partial": {
                "loss": partial_losses,
                "norm": partial_norms,
                "lr": list(self._ep_lrs),
                "metric": None if self._ep_metric is None else self._metric_state(),
            },
            "guard": self.guard.state_dict() if self.guard is not None else None,
            "model_signature": {k: list(v.shape) for k, v in self.model.state_dict().items()},
            "data_signature": self._data_signature(),
            "opt_signature": C.tree_signature(self.opt_state),
            "optimizer": self.optimizer_desc,
            "autopilot": self.autopilot,
            "config": self.config,
        }

    def _data_signature(self) -> dict[str, Any]:
        """What identifies the training data, cheaply: sizes, steps per epoch and, for data in
        memory, float64 sums of the features and targets (one pass, once per run). A resumed run
        on other data cannot continue exactly where the first one was, and says so."""
        if self._data_sig is None:
            b = self.bundle
            sig: dict[str, Any] = {
                "n_train": b.n_train,
                "n_val": b.n_val,
                "steps_per_epoch": b.train.num_batches,
            }
            src = b.train
            if src.resident:
                sig["x_sum"] = sum(_sum64(t) for t in D.inputs_of(src.X))
                if src.y is not None:
                    sig["y_sum"] = _sum64(src.y)
                # sample weights are part of the data (none: a weight of 1 each)
                sig["w_sum"] = _sum64(src.w) if src.w is not None else float(b.n_train)
            self._data_sig = sig
        return self._data_sig

    def _check_resumed_data(self, theirs: dict[str, Any] | None) -> None:
        if not theirs:  # a checkpoint from before the signature
            return
        own = self._data_signature()
        differ = [k for k in own if k in theirs and not _same_number(own[k], theirs[k])]
        if not differ:
            return
        shown = ", ".join(f"{k} {_num(theirs[k])} then, {_num(own[k])} now" for k in differ)
        text = (
            f"resumed on other training data than the checkpoint's run ({shown}): the run goes "
            "on from its saved weights and optimizer state, but not exactly where it was — pass "
            "the original data to continue it exactly"
        )
        # the caller's line: _check_resumed_data < load_checkpoint < Loop.run < fit < caller
        warnings.warn(f"descend: {text}", RuntimeWarning, stacklevel=5)
        self.record_event("resumed_on_other_data", text)

    def _snapshot_epoch(self) -> bool:
        """Whether the start of epoch ``self.epoch`` (0-based) is a guard snapshot point."""
        if self.guard is None:
            return True
        return self.epoch % self.guard.epoch_period(self.bundle.train.num_batches) == 0

    def _epoch_checkpoint_due(self) -> bool:
        """Whether to write a checkpoint at this epoch end.

        ``"epoch"``: always. ``"auto"``: after the first epoch (the first guard snapshot point:
        epoch ``snapshot_every // steps_per_epoch`` on runs of very short epochs), then whenever
        the time since the last write is at least ``AUTO_CHECKPOINT_RATIO`` (20) times what that
        write took, at such an epoch end, so
        writing checkpoints costs at most ~5% of the run: every epoch when epochs are long,
        every few epochs when they take milliseconds (on a 150-row set, 52 per-epoch writes were
        half the run's time). A kill loses at most that much work, and the resumed run is still
        bit-identical (any checkpoint resumes exactly).
        """
        if self.checkpoint_every == "epoch":
            return True
        if self.checkpoint_every != "auto":
            return False
        if not self._snapshot_epoch():
            # Only where the guard snapshots anyway (the next epoch's start), so a wall-time
            # cadence never moves the rollback point: resumed and uninterrupted runs agree.
            return False
        if self._ckpt_done_at is None:
            return True
        due = time.perf_counter() - self._ckpt_done_at >= AUTO_CHECKPOINT_RATIO * self._ckpt_cost
        return bool(self.world.from_main(due))  # data-parallel: by rank 0's clock, for all

    def save_checkpoint(self, rollback: bool = False) -> Path | None:
        """Write a checkpoint of the exact current state (no-op without ``checkpoint=``).

        ``rollback``: also write the guard's rollback point. A run that goes on makes every
        checkpoint its rollback point; the last one of an interrupted run is written between
        snapshot points, so the resumed run must be handed the rollback point the interrupted
        one had, or a rollback after the resume restores another state.

        A failure (full disk, permissions changed mid-run) is a warning and an event: the
        previous checkpoint stays, training goes on.
        """
        if self.checkpoint_dir is None:
            return None
        t = time.perf_counter()
        model, opt, best = dict(self.model.state_dict()), self.opt_state, self._best_state
        point = self.guard.rollback_point if rollback and self.guard is not None else None
        if self._sharded:  # a fully_shard model: the file holds the whole tensors
            model, opt, best, point = dist_.gathered((model, opt, best, point))
        ckpt = C.Checkpoint(
            step=self.step,
            model=model,
            opt_state=opt,
            best=best,
            meta=self._meta(),
            rng=self._rng_state(),
            rollback=point,
            metric_pending=(
                self._ep_metric.pending()
                if self._ep_metric is not None and not self.world.active
                else None
            ),
        )
        path: Path | None = None
        text = ""
        if self.world.is_main:  # data-parallel: one writer (the others hold the same state)
            try:
                path = C.save(self.checkpoint_dir, ckpt)
            except OSError as e:
                text = (
                    f"could not write a checkpoint at step {self.step} "
                    f"({type(e).__name__}: {e.strerror or e}); the previous one is kept"
                )
                warnings.warn(f"descend: {text}", RuntimeWarning, stacklevel=2)
        # Every process moves its rollback point with the write, or none does.
        if not self.world.from_main(path is not None):
            if path is None and self.world.is_main:
                self.record_event("checkpoint_failed", text)
            elif not self.world.is_main:
                self.record_event(
                    "checkpoint_failed",
                    f"rank 0 could not write a checkpoint at step {self.step}; the previous "
                    "one is kept",
                )
            return None
        self._ckpt_done_at = time.perf_counter()
        self._ckpt_cost = self._ckpt_done_at - t
        self._ckpt_step = self.step
        race = Path(self.checkpoint_dir) / C.RACE_DIR
        if self.world.is_main and race.is_dir():  # the run's checkpoint supersedes the race's
            shutil.rmtree(race, ignore_errors=True)
        if self.guard is not None:
            # The rollback point must be identical in a resumed run: make it this state.
            self.guard.snapshot(self, force=True)
        return path

    def load_checkpoint(self, ckpt: C.Checkpoint) -> None:
        """Put the run exactly where ``ckpt`` left it; refuse a checkpoint of another model
        or optimizer, naming what differs."""
        own = {k: list(v.shape) for k, v in self.model.state_dict().items()}
        theirs = {k: list(v.shape) for k, v in ckpt.model.items()}
        if own != theirs:
            missing = sorted(set(own) - set(theirs))
            extra = sorted(set(theirs) - set(own))
            shapes = [
                f"{k} {tuple(theirs[k])} vs model {tuple(own[k])}"
                for k in sorted(set(own) & set(theirs))
                if own[k] != theirs[k]
            ]
            parts = []
            if missing:
                parts.append(f"not in the checkpoint: {', '.join(missing[:8])}")
            if extra:
                parts.append(f"only in the checkpoint: {', '.join(extra[:8])}")
            if shapes:
                parts.append(f"different shapes: {'; '.join(shapes[:8])}")
            raise CheckpointError(
                message(
                    f"resume from {ckpt.path}",
                    "needs the same model (parameter names and shapes)",
                    "; ".join(parts),
                    "rebuild the model exactly as in the original run, or start "
                    "a new run without resume=",
                )
            )
        sd = self.model.state_dict()
        differ = [k for k, v in ckpt.model.items() if v.dtype != sd[k].dtype]
        if differ:
            # (load_state_dict would cast them silently; the optimizer state then differs in
            # dtype and was refused as "another optimizer")
            name = {k: str(ckpt.model[k].dtype).replace("torch.", "") for k in differ}
            dtypes = [
                f"{k} {name[k]} vs model {str(sd[k].dtype).replace('torch.', '')}" for k in differ
            ]
            theirs_dtype = name[differ[0]]
            raise CheckpointError(
                message(
                    f"resume from {ckpt.path}",
                    "needs the model in the dtypes of the original run",
                    f"different dtypes: {'; '.join(dtypes[:8])}",
                    f"convert the model as in the original run (e.g. model.to(torch.{theirs_dtype})) "
                    "before fit, or start a new run without resume=",
                )
            )
        sig = C.tree_signature(self.opt_state)
        if sig != ckpt.meta.get("opt_signature"):
            theirs_sig = ckpt.meta.get("opt_signature") or {}
            diff = sorted(set(sig.items()) ^ set(theirs_sig.items()))
            shown = ", ".join(f"{k}: {v}" for k, v in diff[:6])
            raise CheckpointError(
                message(
                    f"resume from {ckpt.path}",
                    "needs the same optimizer as the original run",
                    f"an optimizer state that differs at {shown}",
                    f"use the original optimizer ({ckpt.meta.get('optimizer')}), or start a new run",
                )
            )
        loss_then = (ckpt.meta.get("config") or {}).get("loss")
        loss_now = self.config.get("loss")
        if loss_then is not None and loss_now is not None and loss_then != loss_now:
            # the history, the best loss and the patience count are in the other loss's units:
            # early stopping and the best weights would compare the two
            raise CheckpointError(
                message(
                    f"resume from {ckpt.path}",
                    "needs the same loss as the original run",
                    f"loss {loss_now!r}, where the checkpoint's run minimized {loss_then!r}",
                    f"pass the original loss ({loss_then!r}), or start a new run without resume=",
                )
            )
        state = ckpt.model
        if self._sharded:  # whole tensors from a file: this process's shards of them
            state = dist_.sharded_like(state, self.model.state_dict())
        with torch.no_grad():
            self.model.load_state_dict(state)
        opt_state = C.unflatten_tree(
            C.flatten_tree(ckpt.opt_state, "x")[0], C.flatten_tree(ckpt.opt_state, "x")[1]
        )
        opt_state = _to_device_tree(opt_state, self.device)
        if self._sharded:
            opt_state = dist_.sharded_like(opt_state, self.opt_state)
        self.opt_state = opt_state
        self.refresh_lr_state()
        if ckpt.best is not None and self.restore_best:
            best = {k: v.to(self.device) for k, v in ckpt.best.items()}
            if self._sharded:
                best = dist_.sharded_like(best, self.model.state_dict())
            self._best_state = best
        m = ckpt.meta
        self.epoch, self.batch, self.step = m["epoch"], m["batch"], m["step"]
        self.best_loss, self.best_epoch = m["best_loss"], m["best_epoch"]
        self._since_best = m["since_best"]
        self._t_offset = m["elapsed"]
        self.history = History.from_dict(m["history"])
        part = m["partial"]
        dev = self.device
        self._ep_losses = [torch.tensor(v, dtype=torch.float32, device=dev) for v in part["loss"]]
        self._ep_norms = [torch.tensor(v, dtype=torch.float32, device=dev) for v in part["norm"]]
        self._ep_lrs = list(part["lr"])
        if self._ep_metric is not None:
            self._ep_metric = self._new_metric_sum()
            # (data-parallel: the saved sums are every process's; rank 0 carries them on)
            if part.get("metric") is not None and self.world.is_main:
                self._ep_metric.load(part["metric"], dev, ckpt.metric_pending)
        if self.guard is not None and m.get("guard") is not None:
            self.guard.load_state_dict(m["guard"])
        if self.guard is not None and ckpt.rollback is not None:
            snap_model = {k: v.to(self.device) for k, v in ckpt.rollback[0].items()}
            snap_opt = _to_device_tree(ckpt.rollback[1], self.device)
            if self._sharded:
                snap_model = dist_.sharded_like(snap_model, self.model.state_dict())
                snap_opt = dist_.sharded_like(snap_opt, self.opt_state)
            self.guard.load_rollback_point(snap_model, snap_opt)
        self._set_rng_state(ckpt.rng)
        self._resumed_from = ckpt.path
        self._check_resumed_data(m.get("data_signature"))

    # ---- signals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self):
        """Turn the first Ctrl-C / SIGTERM into a request honoured after the current step (so
        the final checkpoint is consistent); a second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            if self._interrupt is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._interrupt = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    # ---- the run -------------------------------------------------------------------------

    def _epoch_loop(self) -> StopReason | None:
        """Run the current epoch from ``self.batch``; return a stop reason or None."""
        src = self.bundle.train
        guard = self.guard
        every = self.checkpoint_every if isinstance(self.checkpoint_every, int) else None
        # (an epoch-start point only at the epoch's start: a run resumed mid-epoch keeps the
        # rollback point its checkpoint holds)
        if guard is not None and (
            not guard.has_snapshot or (self.batch == 0 and self._snapshot_epoch())
        ):
            guard.snapshot(self)
        # The fast step's conditions (hooks, grad/autocast/anomaly modes, the batches' dtype and
        # device) change only through user code: with no step callbacks, and slices of one
        # resident tensor, they are checked at the epoch's first step instead of every step.
        self._fast_ok = False
        steady = self._mlp is not None and not self.step_callbacks and src.resident
        start = self.batch
        for batch in src.batches(self.epoch, start=self.batch):
            # Sources yield (x, y) or, with sample weights, (x, y, w).
            if steady and not self._fast_ok:
                # before the step, so the step does not ask again (nothing runs in between)
                self._fast_ok = self._mlp.usable(batch[0])
            value, gnorm = self.train_step(*batch)
            self.batch += 1
            self._ep_losses.append(value)
            self._ep_norms.append(gnorm)
            lr_state = self.lr_state
            self._ep_lrs.append(float(lr_state["lr"]) if lr_state is not None else math.nan)
            if guard is not None and guard.after_step(self, value, gnorm, batch) == "diverged":
                return StopReason.DIVERGED
            if self.step_callbacks:
                # the step's numbers for on_step_end (history gets them at the epoch's end)
                self.last_loss, self.last_grad_norm = value, gnorm
                for cb in self.step_callbacks:
                    cb.on_step_end(self)
            if self._ddp is not None:
                # Data-parallel: act only on what every process agreed in this step's
                # all_reduce (a stop asked for after it is carried by the next one).
                interrupted, stop = self._take_agreed()
            else:
                interrupted = self._interrupt is not None
                stop = self._stop_request is not None or self._out_of_time()
            if interrupted or (every is not None and self.step % every == 0):
                # A checkpoint comes next (the final one, or this cadence's): the steps the
                # guard has not judged yet (a window of them on an accelerator) are judged
                # first, or a non-finite step among them would be written to disk and made the
                # rollback point, and every later rollback would restore it.
                if guard is not None and guard.flush(self) == "diverged":
                    return StopReason.DIVERGED
                if interrupted:
                    return StopReason.INTERRUPTED
                self.save_checkpoint()
            if stop:
                break
        if start == 0 and self.batch == 0:
            # (only a stream can: a resident source has at least one batch an epoch)
            raise _no_batches("training", src, self.epoch)
        self._fast_ok = False  # user code (epoch callbacks) runs before the next step
        if guard is not None and guard.flush(self) == "diverged":
            return StopReason.DIVERGED
        return None

    def run(self, resume: C.Checkpoint | None = None) -> Result:
        self._t0 = time.perf_counter()
        self.check_model_fits()
        if self.checkpoint_dir is not None:
            # An optimizer state that cannot be written is refused now, not at the first
            # checkpoint (after an epoch: hours into a long run).
            C.flatten_tree(self.opt_state, "opt/")
        reason: StopReason | None = None
        # A warm start may hand over a schedule-free state left in eval mode.
        swap_to_train(self.opt_state, self.params)
        if resume is not None:
            self.load_checkpoint(resume)
            # the events the run that wrote the checkpoint already showed (not shown again)
            self.events_shown = len(self.history.events)
            # A checkpoint written when the run stopped early resumes as stopped: it does not
            # train past its own patience (resuming with a larger patience continues it).
            reason = self._patience_spent()
            if reason is None and self.max_time is not None and self._t_offset > self.max_time:
                # Nor past its max_time (the time of the runs before counts): it trained one
                # more step and recorded it as an epoch at every resume (a larger max_time
                # continues it). From the checkpoint alone: every process decides alike.
                reason = StopReason.MAX_TIME
        else:
            # The starting point counts as "epoch 0" so a run that only gets worse keeps it.
            self._save_best()
        finished = False  # not ``reason is None``: an error can follow a decided stop
        try:
            with self._signals():
                for cb in self.callbacks:
                    cb.on_fit_start(self)
                if reason is None and self._stop_request is not None:
                    reason = self._stop_reason
                self.model.train()
                while reason is None and self.epoch < self.max_epochs:
                    reason = self._epoch_loop()
                    if reason is not None:
                        break
                    reason = self._end_epoch()
                    if reason is not None or self._epoch_checkpoint_due():
                        self.save_checkpoint()
                    for cb in self.callbacks:
                        cb.on_epoch_end(self)
                    if self._ddp is not None:
                        self._agree_on_stop()
                        if reason is None and self._interrupt is not None:
                            reason = StopReason.INTERRUPTED
                    if reason is None and self._stop_request is not None:
                        reason = self._stop_reason
                    if reason is None and self._out_of_time():
                        reason = StopReason.MAX_TIME
                if reason is None:
                    reason = StopReason.MAX_EPOCHS
                if reason is StopReason.INTERRUPTED or (
                    reason is not StopReason.DIVERGED and self._ckpt_step != self.step
                ):
                    # The final state is always on disk ("auto" may have skipped this epoch).
                    self.save_checkpoint(rollback=reason is StopReason.INTERRUPTED)
            finished = True
        except KeyboardInterrupt:
            reason, finished = StopReason.INTERRUPTED, True
        finally:
            if not finished:  # an exception is propagating: still restore and tell callbacks
                self._restore_best()
                self.stop_message = "Training failed with an error; " + (
                    "restored the best weights."
                    if self.restore_best and self._best_state is not None
                    else "the weights are those of the last step."
                )
                for cb in self.callbacks:
                    cb.on_fit_end(self)
        self._restore_best()
        self._sync_norm_buffers()  # (data-parallel) every process hands back one model
        if not self.restore_best or self._best_state is None:
            swap_to_eval(self.opt_state, self.params)  # deploy the averaged point
        # A curve fit the policy trained: full-batch L-BFGS from here, kept if it is better
        # (see autopilot.polish).
        polished = _autopilot.polish(self, reason)
        self.stop_message = self._sentence(reason) + (polished[1] if polished else "")
        if polished:
            self.best_loss = polished[0]
        for cb in self.callbacks:
            cb.on_fit_end(self)
        result = Result(
            model=self.model,
            params={n: p.detach() for n, p in self.model.named_parameters()},
            history=self.history,
            stop_reason=reason,
            stop_message=self.stop_message,
            best_epoch=self.best_epoch,
            best_loss=self.best_loss,
            seed=self.seed,
            epochs=self.epoch,
            steps=self.step,
            elapsed=self._elapsed(),
            device=str(self.device),
            optimizer=self.optimizer_desc,
            classes=self.bundle.classes,
            autopilot=self.autopilot,
            monitor=self.monitor,
            opt_state=self.opt_state,
            tx=self.tx,
        )
        return result


def _to_device_tree(tree: Any, device: torch.device) -> Any:
    if torch.is_tensor(tree):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device_tree(v, device) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_to_device_tree(v, device) for v in tree)
    if isinstance(tree, list):
        return [_to_device_tree(v, device) for v in tree]
    return tree


def _same_everywhere(world: dist_.World, name: str, value: float, fix: str) -> None:
    """Data-parallel: refuse a setting that is not rank 0's on every process."""
    main = world.from_main(value)
    if world.any(main != value):
        show = (lambda v: f"{v:g}") if isinstance(value, float) else str
        mine = "" if main == value else f" and {show(value)} on rank {world.rank}"
        raise ConfigError(
            message(
                f"fit: {name}",
                "must be the same on every process of a data-parallel run",
                f"{show(main)} on rank 0{mine}",
                fix,
            )
        )


_EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)
#: The fix both messages for embedding ids out of range give (checked before step 1, or
#: torch's own IndexError named).
_IDS_FIX = (
    "give each table at least (largest id + 1) rows, e.g. nn.Embedding(int(ids.max()) + 1, "
    "dim), or map the ids to 0..n-1 first (e.g. pandas.factorize)"
)


def _ids_fit(ids: torch.Tensor, table: torch.nn.Module) -> bool:
    """Whether every id in ``ids`` indexes a row of ``table`` (one host sync)."""
    lo, hi = torch.aminmax(ids)
    return int(lo) >= 0 and int(hi) < table.num_embeddings


@contextlib.contextmanager
def _checked_ids(model: torch.nn.Module, fed: list | None = None):
    """Within the block, each embedding table of ``model`` checks the ids it is given before
    its kernel runs: torch's IndexError ("index out of range in self") for one out of range,
    on every device alike (on a GPU torch's own check is a device-side assert that leaves the
    CUDA context unusable). Each (table, ids) pair is appended to ``fed``. For the probe
    forward passes only: the check costs a host sync per table."""
    tables = [m for m in model.modules() if isinstance(m, _EMBEDDINGS)]
    if not tables:
        yield
        return

    def check(table: torch.nn.Module, args: tuple) -> None:
        ids = args[0] if args else None
        if not torch.is_tensor(ids) or ids.is_floating_point() or ids.is_complex():
            return
        if fed is not None:
            fed.append((table, ids))
        if ids.numel() and not _ids_fit(ids, table):
            raise IndexError("index out of range in self")

    handles = [t.register_forward_pre_hook(check) for t in tables]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _view_of_all_rows(ids: torch.Tensor, probe_x: Any, X: Any) -> tuple[int, torch.Tensor] | None:
    """``(i, view)``: the same view of every row of ``X``'s input ``i`` that ``ids`` is of
    the probe's rows ``probe_x`` (the whole input, a column ``x[:, j]``, columns
    ``x[:, a:b]``), or None when ``ids`` is none of these (ids the model computed, e.g.
    ``x.long()`` or ``x.clamp(max=n - 1)``). ``X`` is the data in memory, or a DataLoader's
    batch on the host, laid out as the probe's rows are."""
    for i, (p, full) in enumerate(zip(D.inputs_of(probe_x), D.inputs_of(X))):
        if not (torch.is_tensor(p) and torch.is_tensor(full)) or p.ndim == 0 or ids.ndim == 0:
            continue
        if p.is_floating_point() or p.is_complex() or full.shape[1:] != p.shape[1:]:
            continue
        shares = (
            p.device == ids.device
            and p.dtype == ids.dtype
            and p.untyped_storage().data_ptr() == ids.untyped_storage().data_ptr()
        )
        if shares:  # (ids a model computes, even equal ones, may be clamped or mapped: not ours)
            offset = ids.storage_offset() - p.storage_offset()
            row = p.stride(0)
            if (
                ids.shape[0] == p.shape[0]
                and ids.stride(0) == row == full.stride(0)
                and full.stride()[1:] == p.stride()[1:]
                and 0 <= offset < max(row, 1)
            ):
                shape = (full.shape[0], *ids.shape[1:])
                return i, full.as_strided(shape, ids.stride(), full.storage_offset() + offset)
    return None


def _keep_label_values(
    bundle: D.Bundle, model: torch.nn.Module, ignore_index: int | None = None
) -> None:
    """Integer class labels that already index the model's outputs stay as they are.

    ``prepare`` encodes labels that are not ``0..C-1`` by their sorted values (strings, {-1, 1},
    {3, 5, 7}). But labels {0, 1, 3} (class 2 absent from this data) for a model with 4 or more
    outputs are output indices already: encoded, output 2 would mean class 3, the model's
    argmax would not be the label, and another subset of the data would get another code book.
    So when every label is an integer in ``[0, width)`` of the model's output, the labels are
    decoded back (``Result.classes`` is then None). A model that fails on the probe is left to
    ``Loop.check_model_fits``, which explains its error."""
    classes = bundle.classes
    if classes is None or classes.dtype.kind not in "iuf" or classes.size == 0:
        return
    values = classes.astype(np.float64)
    if not (np.all(values == np.round(values)) and values.min() >= 0):
        return
    src = bundle.train
    if not (src.resident and src.y is not None):
        return
    try:
        first = D.cut_rows(src.X, 0, 1)
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), _checked_ids(model):
                out = D.call_model(model, first)
        finally:
            model.train(was)
    except Exception:  # the probe in check_model_fits reports it, in the user's terms
        return
    if not (torch.is_tensor(out) and out.dim() == 2 and out.shape[1] > int(values.max())):
        return
    lut = torch.as_tensor(values.astype(np.int64))
    for part in (bundle.train, bundle.val):
        if part is not None and part.resident and part.y is not None:
            if ignore_index is None:
                part.y = lut.to(part.y.device)[part.y]
            else:  # (labels the loss skips are not codes: they stay as they are)
                skip = part.y == ignore_index
                kept = lut.to(part.y.device)[part.y.masked_fill(skip, 0)]
                part.y = kept.masked_fill(skip, ignore_index)
    bundle.classes = None
    bundle.n_classes = int(values.max()) + 1


def _no_batches(which: str, src: D.Source, epoch: int = 0) -> InputError:
    """A stream that yielded no batch: empty from the start, or (``epoch`` > 0) exhausted by
    an earlier epoch, as a one-shot iterator is."""
    loader = getattr(src, "loader", None)
    kind = type(loader).__name__ if loader is not None else "source"
    if epoch > 0:
        return InputError(
            message(
                f"the {which} data",
                "must yield its batches in every epoch",
                f"a {kind} that yielded no batch in epoch {epoch + 1}, after batches in the "
                "epochs before: its dataset is a one-shot iterator (a generator, or __iter__ "
                "returning the same iterator each time)",
                "return a new iterator from __iter__ on every call (e.g. write __iter__ as a "
                "generator function: for row in ...: yield row), or pass epochs=1",
            )
        )
    size = getattr(loader, "batch_size", None)
    details = f"{src.n_samples} samples" if src.n_samples is not None else "no known length"
    if size is not None:
        details += f", batch_size={size}"
    if getattr(loader, "drop_last", False):
        details += ", drop_last=True"
    return InputError(
        message(
            f"the {which} data",
            "must yield at least one batch",
            f"a {kind} that yields none ({details})",
            "check that its dataset is not empty, and with drop_last=True that batch_size does "
            "not exceed the number of samples",
        )
    )


def _check_streamed_validation_labels(bundle: D.Bundle) -> None:
    """Refuse a streamed validation set beside training labels that stay encoded (not
    ``0..C-1``, nor output indices kept by :func:`_keep_label_values`): its labels cannot be
    encoded with them and would reach the loss as they are, out of range (torch's "Target 2 is
    out of bounds") or, encoded otherwise by the user, silently other classes."""
    classes, val = bundle.classes, bundle.val
    if classes is None or val is None or val.resident:
        return
    shown = ", ".join(repr(c.item() if hasattr(c, "item") else c) for c in classes[:10])
    raise InputError(
        message(
            "validation (a DataLoader)",
            "cannot be matched to the training labels, which are not 0..C-1 and so are encoded "
            "by their sorted values (label classes[i] -> index i)",
            f"training labels {shown}{' ...' if len(classes) > 10 else ''}",
            "pass validation as arrays (X_val, y_val), which are encoded together with y; or "
            "give both y and the DataLoader's labels as indices 0..C-1",
        )
    )


def _largest(tensors: Any) -> float:
    """The largest absolute value among the floating-point tensors of ``tensors`` (0 if none)."""
    top = 0.0
    for t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and t.numel():
            lo, hi = torch.aminmax(t.detach())  # no |t| copy of a large resident set
            top = max(top, -float(lo), float(hi))
    return top


def _warn_no_split(bundle: D.Bundle) -> None:
    """Say, once per fit, that the default ``validation="auto"`` held nothing out of a set too
    small to split (:func:`descend.data.prepare`): the run has no validation loss, so no race,
    and its early stopping watches the training loss."""
    if bundle.no_split_why is None:
        return
    warnings.warn(
        f"descend: {bundle.no_split_why}: training on all of them with no validation data (no "
        "held-out loss to stop early or race rates on); pass validation=(X_val, y_val) or a "
        "fraction to hold some out anyway, or validation=None to silence this",
        UserWarning,
        stacklevel=3,
    )


def _warn_unscaled_features(bundle: D.Bundle) -> None:
    """Warn, once per fit, when the training features (in memory, floating point) reach beyond
    ``UNSCALED`` in absolute value: a network trains best on standardized inputs, and no
    learning rate makes up for it (features ~300 +- 100 with standardized targets: test R²
    0.84-0.90 where the standardized features reach 0.92-0.98; ~1e4: -0.30 to 0.17;
    benchmarks/RESULTS.md, raw targets). The CLI and the estimators standardize for you."""
    src = bundle.train
    if not src.resident:
        return
    top = _largest(D.inputs_of(src.X))
    if top > UNSCALED:
        warnings.warn(
            f"descend: the features reach {top:.3g} in absolute value; a network trains best on "
            "standardized inputs (mean 0, standard deviation 1 per column): fit e.g. sklearn's "
            "StandardScaler on the training rows and apply it to every split (the descend CLI "
            "and estimators do this for you)",
            RuntimeWarning,
            stacklevel=3,
        )


#: Target columns whose spreads (standard deviations) differ by more than this factor are
#: named: a loss in the targets' units weighs the narrow column's errors this factor squared
#: (mse) less than the wide one's.
TARGET_SPREAD_RATIO = 100.0


def _warn_mixed_target_scales(bundle: D.Bundle, loss: L.Loss) -> None:
    """Warn, once per fit, when a loss in the targets' own units (mse, mae, huber) meets target
    columns on scales that differ by more than ``TARGET_SPREAD_RATIO`` (their standard
    deviations, on the training rows in memory). The fit then minimizes the loss it was given,
    which is the wide column's: two outputs on scales 1 and 1,000 (800 rows, a 64-unit MLP,
    the default run, 3 seeds) reached a test mse within 2% of the best explicit rate's, and the
    narrow column's R² was -306 to -4 (benchmarks/input_kinds.py). Standardizing each
    column (or a weighted loss) is the fix; the estimators and the CLI standardize for you."""
    if getattr(loss, "name", None) not in ("mse", "mae", "huber"):
        return
    src = bundle.train
    y = getattr(src, "y", None) if src.resident else None
    if not torch.is_tensor(y) or not y.is_floating_point() or y.dim() != 2 or y.shape[1] < 2:
        return
    if y.shape[0] < 2:
        return
    sd = y.detach().double().std(dim=0)
    live = sd[torch.isfinite(sd) & (sd > 0)]
    if live.numel() < 2:
        return
    lo, hi = float(live.min()), float(live.max())
    if hi > TARGET_SPREAD_RATIO * lo:
        narrow, wide = int((sd == lo).nonzero()[0]), int((sd == hi).nonzero()[0])
        weight = (hi / lo) ** (2 if loss.name == "mse" else 1)
        warnings.warn(
            f"descend: the target columns are on different scales (column {narrow}: standard "
            f"deviation {lo:.3g}, column {wide}: {hi:.3g}), so the {loss.name} loss weighs column "
            f"{narrow}'s errors about {weight:.2g}x less than column {wide}'s and barely fits "
            "it; if every column matters, standardize each target column (e.g. sklearn's "
            "StandardScaler on the training targets, inverted on the predictions) or weight "
            "the loss per column (the descend estimators and CLI standardize for you)",
            RuntimeWarning,
            stacklevel=3,
        )


def _last_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last module of a ``Sequential`` (into nested ones); the model itself otherwise."""
    while isinstance(model, torch.nn.Sequential) and len(model):
        model = model[-1]
    return model


def _warn_probability_outputs(
    model: torch.nn.Module, bundle: D.Bundle, loss: Any, look: bool = True
) -> None:
    """Warn, once per fit, when a loss that takes logits meets a model that already outputs
    probabilities — a Sequential ending in ``Sigmoid`` before ``binary_cross_entropy``, or in
    ``Softmax`` (or any model whose first rows' outputs are probabilities summing to 1) before
    ``cross_entropy``. Those losses apply the sigmoid / log-softmax themselves, so the
    probabilities go through it twice: the outputs a second sigmoid can reach lie in
    (0.5, 0.73), the gradients are squashed, and the run trains on without a word. ``look``:
    whether the model may be run on the first rows (not in a data-parallel run)."""
    name = getattr(loss, "name", None)
    last = _last_layer(model)
    if name == "binary_cross_entropy" and isinstance(last, torch.nn.Sigmoid):
        what, inside = "ends in a Sigmoid", "the sigmoid"
        fix = "remove the final Sigmoid and predict with torch.sigmoid(model(x))"
    elif name == "cross_entropy":
        inside = "log-softmax"
        fix = (
            "remove the final softmax and predict with model(x).softmax(1), or end the model "
            "in LogSoftmax and use loss='nll'"
        )
        if isinstance(last, torch.nn.Softmax):
            what = "ends in a Softmax"
        else:
            src = bundle.train
            if not (look and src.resident):
                return
            was_training = model.training
            model.eval()  # (no batch-norm statistics updated, no dropout drawn)
            try:
                with torch.no_grad():
                    out = D.call_model(model, D.cut_rows(src.X, 0, min(8, D.n_rows(src.X))))
            except Exception:  # (the loop's own first look names what is wrong)
                return
            finally:
                model.train(was_training)
            if not (
                torch.is_tensor(out)
                and out.is_floating_point()
                and out.ndim == 2
                and out.shape[0] >= 2
                and out.shape[1] >= 2
            ):
                return
            o = out.float()
            probs = bool(((o >= 0) & (o <= 1)).all()) and bool(((o.sum(1) - 1).abs() <= 1e-4).all())
            if not probs:
                return
            what = "outputs probabilities (each row sums to 1)"
    else:
        return
    warnings.warn(
        f"descend: the model {what}, but {name} takes logits (raw scores) and applies {inside} "
        "itself: the probabilities go through it twice, which squashes the gradients and caps "
        f"the fit; {fix}",
        RuntimeWarning,
        stacklevel=3,
    )


def _split_batches(
    bundle: D.Bundle, world: dist_.World, batch_size: int | None, model: torch.nn.Module
) -> None:
    """Shape the training batches for the model and the processes: batch norm cannot train
    on one row, nor on a process's one-row share of a last batch (folded into the batch
    before it); under data parallelism each process takes its share of every batch."""
    bn = bundle.train.resident and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    if bn:
        bundle.train.fold_last_below(2 * world.size)
    if world.active:
        _check_shardable(bundle, world, batch_size, per_process=2 if bn else 1)
        if bundle.train.resident:
            src = bundle.train
            alone = src.num_batches
            if bn:  # what one process would fold (a last batch of one row)
                n, bs = src.n_samples or 0, src.batch_size or 0
                alone = alone + (bs > 0 and 2 <= n % bs < 2 * world.size)
            src.shard_for(world)
            if src.num_batches != alone and world.is_main:
                n, bs = src.n_samples or 0, src.batch_size or 0
                need = world.size * (2 if bn else 1)
                better = next(b for b in range(bs + 1, n + 1) if n % b == 0 or n % b >= need)
                warnings.warn(
                    f"descend: the last batch of each epoch ({n % bs} of {n} rows) is too small "
                    f"to give each of the {world.size} processes "
                    + ("2 rows (batch norm)" if bn else "a row")
                    + ": it joins the batch before it, so each epoch takes one step fewer than "
                    f"one process would — batch_size={better} (or another that leaves no "
                    "such remainder) gives one process's steps exactly",
                    RuntimeWarning,
                    stacklevel=3,
                )


def _check_shardable(
    bundle: D.Bundle, world: dist_.World, batch_size: int | None, per_process: int = 1
) -> None:
    """Data-parallel: every process must get ``per_process`` rows of every batch (2 for batch
    norm), and a stream must be split among the processes by its sampler."""
    src = bundle.train
    if src.resident:
        rows = src.n_samples if batch_size is None else min(batch_size, src.n_samples or 0)
        need = world.size * per_process
        if rows is not None and rows < need:
            each = "a row" if per_process == 1 else f"{per_process} rows (batch norm)"
            raise ConfigError(
                message(
                    "fit: batch_size",
                    f"is the global batch, split among the {world.size} processes, each "
                    f"needing {each}, so it must be at least {need}",
                    f"batches of {rows} row{'s' * (rows != 1)}",
                    f"pass batch_size >= {need} (e.g. {world.size * 32})",
                )
            )
        return
    loader = getattr(src, "loader", None)
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        raise ConfigError(
            message(
                "fit: a DataLoader trained on several processes",
                "must split the data among them with a DistributedSampler",
                f"a loader with {type(sampler).__name__}",
                "build it as DataLoader(ds, batch_size=..., sampler=DistributedSampler(ds)) "
                "(fit calls set_epoch), or pass the arrays (fit splits every batch itself)",
            )
        )


def _trial_runner(module, bundle, loss_obj, dev, seed, precision):
    def run_trial(tx: Transform, epochs: int, model: torch.nn.Module | None = None) -> Result:
        """Train ``model`` (default: a deep copy of the user's) with ``tx`` for ``epochs``."""
        if model is None:
            model = copy.deepcopy(module)
        loop = Loop(
            model,
            bundle,
            loss_obj,
            tx,
            optimizer_desc="trial",
            max_epochs=epochs,
            patience=None,
            tol=0.0,
            restore_best=False,
            callbacks=(),
            device=dev,
            seed=seed,
            precision=precision,
            max_time=None,
            metric=None,
            autopilot=None,
        )
        return loop.run()

    return run_trial


def fit(
    model: torch.nn.Module | Callable,
    data: Any,
    loss: str | L.Loss | Callable = "mse",
    *,
    optimizer: Transform | str | None = None,
    lr: float | None = None,
    epochs: int = 100,
    batch_size: int | None = 32,
    validation: Any = "auto",
    patience: int | None = 10,
    tol: float = 1e-4,
    restore_best: bool = True,
    metric: Literal["auto", "accuracy", "r2"] | Callable | None = "auto",
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    seed: int | None = None,
    device: str | torch.device | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    max_time: float | None = None,
    params: dict[str, Any] | None = None,
    shuffle: bool = True,
    guard: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | Literal["auto", "epoch"] = "auto",
    resume: str | Path | bool | None = None,
    sample_weight: Any = None,
    opt_state: Any = None,
) -> Result:
    """Train ``model`` on ``data`` by minimizing ``loss``; return a :class:`Result`.

    Args:
        model: a ``torch.nn.Module`` (trained in place on ``device``, then handed back on the
            device it came on), or a plain function ``fn(x, params)`` together with
            ``params={name: initial value}``.
        data: ``(X, y)`` (numpy, torch, pandas, pyarrow, lists), ``X`` alone for a loss that
            needs no targets, a ``torch.utils.data.Dataset`` or a ``DataLoader``. In-memory data
            is moved to the device once and sliced by a seeded permutation. Floating, boolean
            and uint8/int8/int16/uint16 features (and real targets) take the model's floating dtype:
            float32 for most models, float64 for a double-precision one; int32/int64 features
            stay integers (embedding indices). For a model with several inputs ``X`` is a tuple
            of arrays, one per argument of ``forward`` (``((x_num, x_ids), y)`` calls
            ``model(x_num, x_ids)`` on the same rows of each), or a dict of them, passed as
            keywords (``({"input_ids": ids, "attention_mask": m}, y)``).
        loss: a registry name (``"mse"``, ``"cross_entropy"``, ``"mae"``, ``"huber"``,
            ``"poisson"`` (the model's output is the log of the expected count),
            ``"binary_cross_entropy"``, ``"nll"``), a :class:`descend.losses.Loss`, or any
            callable ``(pred, target) -> scalar tensor``.
        optimizer: a transform from :mod:`descend.optim` (e.g. ``descend.optim.adamw(lr=3e-4)``)
            or its registry name. Left unset, the default policy chooses (see ``Result.autopilot``).
        lr: learning rate. With ``optimizer`` unset this gives AdamW at exactly this rate; with
            a registry name it is passed to that optimizer.
        epochs: the epoch budget (an upper bound: early stopping usually ends sooner).
        batch_size: samples per step; ``None`` = full-batch gradient descent.
        validation: a fraction held out (seeded, stratified for classification), explicit
            ``(X_val, y_val)``, or ``None`` for none. ``"auto"`` (default) holds out 20% of
            in-memory data and none of streamed data (a DataLoader cannot be split) or of a
            set too small to split (under 8 samples, or a stratified split that cannot keep
            every class on both sides: a warning says so). Early stopping watches the
            validation loss, or the training loss when there is no validation data.
        patience: epochs without a relative improvement of more than ``tol`` before stopping;
            ``None`` never stops early.
        restore_best: put the best weights back into the model at the end (default on).
        metric: ``"auto"`` (accuracy for classification, R² for regression), a name, a callable
            ``(pred, target) -> float`` averaged over samples, or ``None``. It is measured on
            the validation data at the end of each epoch; without validation data it is the
            running value over the epoch's training steps, from the outputs they computed (as
            Keras and Lightning report training metrics), not a second pass over the data.
        callbacks: :class:`descend.train.Callback` objects.
        verbose: 0 silent; 1 a progress bar on a terminal or one plain line per epoch in a log;
            2 also keeps one line per epoch on a terminal.
        seed: makes the run reproducible (split, batch order, dropout). Seeds torch's global
            generator. When not given one is drawn and recorded in ``Result.seed``.
        device: ``"cpu"``, ``"cuda"``, ... ; default: the model's device if it is on an
            accelerator, else CUDA when available, else CPU. Training happens there; a model
            that came on another device goes back to it at the end (on error too), so code
            written for a CPU model keeps working on a machine with a GPU. ``Result.params``
            and ``Result.opt_state`` go with it (``fit(opt_state=...)`` moves a state to the
            training device again).
        precision: ``"bf16"`` runs forward passes under bfloat16 autocast (opt-in).
        max_time: wall-clock budget in seconds.
        params: the parameters of a function model (see ``model``).
        shuffle: reshuffle the training data every epoch (default on).
        guard: the divergence guard (default on): a non-finite or exploding batch loss rolls
            the run back to its last good state, lowers the learning rate and skips the batch;
            every event is in ``Result.history.events``. See :mod:`descend.train.guard`.
        checkpoint: a directory for atomic, verified checkpoints (see :mod:`descend.checkpoint`);
            refused at the start if it is not writable. Ctrl-C / SIGTERM write a final one.
        checkpoint_every: ``"auto"`` (default: at epoch ends, as often as keeps writing
            checkpoints under ~5% of the run time — every epoch when epochs take longer than
            ~20 writes), ``"epoch"`` (every epoch end) or a number of optimizer steps. The
            final state is always written when the run stops or is interrupted.
        sample_weight: one non-negative weight per training sample (array of shape (N,));
            the training loss becomes the weighted mean.
        opt_state: continue from this optimizer state (``Result.opt_state`` of an earlier run
            with the same model and optimizer) instead of a fresh one — warm starts that keep
            Adam's moments and the schedule position. A state whose schedule has ended (the
            default plan's decays to 0 at its budget's end) trains nothing: the run warns and
            records a ``rate_zero`` event (as any run does once an epoch runs at rate 0).
        resume: continue a run from the newest good checkpoint in this directory (``True``:
            the ``checkpoint`` directory). With the same model, data, loss and optimizer the
            continued run is bit-identical on CPU to one never interrupted. A directory with no
            checkpoint yet starts a fresh run (so the same command works for start and restart).

    Returns:
        Result: the trained model, history, stop reason and sentence, best epoch, seed.

    Example:
        >>> import torch, descend
        >>> X = torch.randn(256, 3); y = X @ torch.tensor([1.0, -2.0, 0.5])
        >>> r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=5, verbose=0, seed=0)
        >>> r.history.val_loss[-1] < r.history.val_loss[0]
        True
    """
    # NumPy numbers (from np.arange, np.logspace, a config array) are numbers like any other
    epochs, batch_size, patience, tol, max_time, checkpoint_every = (
        plain(v) for v in (epochs, batch_size, patience, tol, max_time, checkpoint_every)
    )
    lr = plain(lr)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(
            message(
                "fit: epochs", "must be an integer >= 1", describe(epochs), "pass e.g. epochs=50"
            )
        )
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ConfigError(
            message(
                "fit: batch_size",
                "must be an integer >= 1 or None (full batch)",
                describe(batch_size),
                "pass e.g. batch_size=64",
            )
        )
    if patience is not None and (
        not isinstance(patience, int) or isinstance(patience, bool) or patience < 1
    ):
        raise ConfigError(
            message(
                "fit: patience",
                "must be an integer >= 1 or None",
                describe(patience),
                "pass e.g. patience=10",
            )
        )
    check_positive("tol", tol, owner="fit", allow_zero=True)
    if max_time is not None:
        check_positive(
            "max_time",
            max_time,
            owner="fit",
            rule="must be a number of seconds > 0, or None for no time limit",
            example="max_time=600",
        )
    check_choice("precision", precision, ("fp32", "bf16"), owner="fit")
    verbose = plain(verbose)
    if not isinstance(verbose, int):  # (True and False are 1 and 0)
        raise ConfigError(
            message(
                "fit: verbose",
                "must be 0 (silent), 1 (progress) or 2 (progress and a line per epoch)",
                describe(verbose),
                "pass e.g. verbose=1",
            )
        )
    # flags must be flags: guard="off" is a true string, and would have turned the guard on
    for flag, value in (("shuffle", shuffle), ("guard", guard), ("restore_best", restore_best)):
        check_bool(flag, value, owner="fit")
    for where, value in (("checkpoint", checkpoint), ("resume", resume)):
        if value is not None and not isinstance(value, (str, os.PathLike, bool)):
            raise ConfigError(
                message(
                    f"fit: {where}",
                    "must be a directory path (str or pathlib.Path)"
                    + (", True or False" if where == "resume" else "")
                    + ", or None",
                    describe(value),
                    f"pass e.g. {where}='runs/mine'",
                )
            )
    if isinstance(checkpoint, bool):
        raise ConfigError(
            message(
                "fit: checkpoint",
                "must be a directory path (str or pathlib.Path), or None",
                describe(checkpoint),
                "pass e.g. checkpoint='runs/mine' (resume=True continues from it)",
            )
        )
    if checkpoint_every not in ("auto", "epoch") and (
        not isinstance(checkpoint_every, int)
        or isinstance(checkpoint_every, bool)
        or checkpoint_every < 1
    ):
        raise ConfigError(
            message(
                "fit: checkpoint_every",
                "must be 'auto', 'epoch' or an integer >= 1",
                describe(checkpoint_every),
                "pass e.g. checkpoint_every=500",
            )
        )
    # Several processes launched for this script (torchrun) train one model together
    # (descend/distributed.py); a single process is a world of one.
    world, device = dist_.join(device)
    resume_ckpt = None
    race_ckpt = None
    if resume is True:
        if checkpoint is None:
            raise ConfigError(
                message(
                    "fit(resume=True)",
                    "needs checkpoint= (where to resume from)",
                    "no checkpoint directory",
                    "pass checkpoint='runs/mine'",
                )
            )
        resume = checkpoint
    for where, value in (("resume", resume), ("checkpoint", checkpoint)):
        if isinstance(value, (str, os.PathLike)) and C.is_checkpoint(value):
            # It holds no ckpt-* folders: a resume there started a new run from scratch, and
            # wrote that run's checkpoints inside the checkpoint.
            raise CheckpointError(
                message(
                    f"fit({where}=...)",
                    "must name the directory that holds a run's checkpoints (its ckpt-* folders)",
                    f"{str(value)!r}, which is one checkpoint",
                    f"pass {where}={str(Path(value).parent)!r} (a resume takes the newest good "
                    "checkpoint there)",
                )
            )
    if resume not in (None, False):
        same_dir = checkpoint is not None and Path(checkpoint) == Path(resume)
        if not Path(resume).exists() and not same_dir:
            raise CheckpointError(
                message(
                    "fit(resume=...)",
                    "must name a checkpoint directory",
                    repr(str(resume)),
                    "check the path, or leave resume unset to start a new run",
                )
            )
        resume_ckpt = C.latest(resume) if Path(resume).exists() else None
        if checkpoint is None:
            checkpoint = resume
        if resume_ckpt is not None:
            seed = int(resume_ckpt.meta["seed"])
        elif optimizer is None and Path(resume).exists():
            # No checkpoint of the run yet, but perhaps of the default policy's race, which
            # runs before the first epoch: the race goes on from it (same seed, same race).
            race_ckpt = C.latest(Path(resume) / C.RACE_DIR)
            if race_ckpt is not None:
                seed = int(race_ckpt.meta["race"]["seed"])
    if checkpoint is not None:
        C.check_writable(checkpoint)
        if resume in (None, False) or not _same_path(checkpoint, resume):
            # a resumed run writing into another run's directory would mix the two too
            _check_no_other_run(Path(checkpoint), None if resume in (None, False) else resume)
    # every process has looked at the directory before rank 0 writes to it
    world.barrier()
    if seed is None:
        seed = world.from_main(random.SystemRandom().randrange(2**31))  # one seed for all
    elif (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= int(seed) < 2**63  # torch's generators take a 64-bit seed
    ):
        raise ConfigError(
            message(
                "fit: seed", "must be an integer in [0, 2**63)", describe(seed), "pass e.g. seed=0"
            )
        )
    seed = int(seed)  # numpy integers too (torch's generators take Python ints only)
    if world.active:
        # One run: each process splitting and ordering its own data, or stepping by its own
        # rate while DDP averages the gradients, would part the copies without an error.
        if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
            _same_everywhere(
                world, "lr", float(lr), "pass one rate to every process (descend.lr_find "
                "under torchrun gives every process the same suggestion)",
            )  # fmt: skip
        _same_everywhere(
            world, "seed", seed, "pass one seed to every process, or none (rank 0 draws it for "
            "all); a scikit-learn estimator needs an int random_state",
        )  # fmt: skip
    D.seed_all(seed)

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # The user's own wrapper: its module is trained, each of fit's wrappers (range test,
        # race, run) made with its options (find_unused_parameters, static_graph, ...).
        if world.active:
            world.ddp_options.update(dist_.ddp_options(model))
        model = model.module
    module = _as_module(model, params)
    _check_trainable(module)
    callbacks = _callbacks(callbacks)
    loss_obj = L.check_reduces(L.get(loss), "fit")
    dev = D.resolve_device(device, module)
    # Train on `dev`, but hand the model back where the caller had it: code written against a
    # CPU model keeps working after fit on a machine that happens to have a GPU (Lightning
    # does the same at teardown). A model already on the accelerator stays there.
    home = _home_device(module, dev)
    came_training = module.training  # handed back in the mode it came in (eval: no dropout)
    module.to(dev)
    # the loops of the run, the range test's and the race's train in this world
    in_world = contextlib.ExitStack()
    in_world.enter_context(dist_.running(world))
    try:
        if torch.is_tensor(data):
            D.check_devices(module, data)
        elif isinstance(data, tuple) and data and torch.is_tensor(data[0]):
            D.check_devices(module, data[0])
        if isinstance(validation, str):
            check_choice("validation", validation, ("auto",), owner="fit")
        # labels the loss skips are no class: prepare must not encode them as one
        ignore = loss_obj.kwargs.get("ignore_index") if loss_obj.target_kind == "index" else None
        bundle = D.prepare(
            data,
            validation=validation,
            target_kind=loss_obj.target_kind,
            stratify=True,
            device=dev,
            dtype=_data_dtype(module),
            seed=seed,
            batch_size=batch_size,
            shuffle=shuffle,
            **({"sample_weight": sample_weight} if sample_weight is not None else {}),
            **({"ignore_index": ignore} if ignore is not None else {}),
        )

        _keep_label_values(bundle, module, ignore)
        _check_streamed_validation_labels(bundle)
        _split_batches(bundle, world, batch_size, module)
        if world.is_main:
            _warn_no_split(bundle)
            _warn_unscaled_features(bundle)
            _warn_mixed_target_scales(bundle, loss_obj)
            # (its look at the outputs runs the model: one process only, as a sharded model's
            # forward pass is a collective)
            _warn_probability_outputs(module, bundle, loss_obj, look=not world.active)
        autopilot = None
        extra_callbacks: list[Callback] = []
        # Made before planning: the default policy's range test and race come before step 1
        # (a quarter of the budget and more), and say what they are doing meanwhile.
        progress = default_progress(verbose if world.is_main else 0, callbacks)  # one display
        if optimizer is None and opt_state is not None:
            raise ConfigError(
                message(
                    "fit(opt_state=...)",
                    "needs the optimizer that made it",
                    "opt_state with optimizer=None (the default policy would plan a new one)",
                    "pass optimizer=result.tx together with opt_state=result.opt_state",
                )
            )
        if optimizer is None:
            ctx = _autopilot.PlanContext(
                model=module,
                bundle=bundle,
                loss=loss_obj,
                epochs=epochs,
                seed=seed,
                device=dev,
                lr=lr,
                run_trial=_trial_runner(module, bundle, loss_obj, dev, seed, precision),
                # The race trains and judges its candidates by the run's own settings.
                precision=precision,
                metric=metric,
                tol=tol,
                patience=patience,
                max_time=max_time,
                checkpoint=checkpoint,
                race_resume=race_ckpt,
                report=getattr(progress, "planning", None),
            )
            rebuild = getattr(_autopilot, "rebuild", None)
            if (
                resume_ckpt is not None
                and rebuild is not None
                and resume_ckpt.meta.get("autopilot")
            ):
                # Resuming: rebuild the recorded choice; no trials (they would move the RNG and
                # waste time) and no start-of-run adoption (the checkpoint holds the state).
                # The rebuilt plan's callbacks are the run's own (the stall-started decay).
                decision = rebuild(resume_ckpt.meta["autopilot"], ctx)
                extra_callbacks = list(decision.callbacks)
            else:
                decision = _autopilot.plan(ctx)
                extra_callbacks = list(decision.callbacks)
                if resume_ckpt is not None:
                    # (a checkpoint with no plan recorded, e.g. of a run with lr=): it holds
                    # the state, so a race winner's is not adopted; the plan's other callbacks
                    # (the stall-started decay its record states, the end of a run whose
                    # planning was interrupted) are the run's own.
                    for cb in extra_callbacks:
                        if isinstance(cb, _autopilot._Handover):
                            cb.ckpt = None
            tx, desc, autopilot = decision.tx, decision.description, decision.record
        elif isinstance(optimizer, str):
            kwargs = {"lr": lr} if lr is not None else {}
            tx = optim.get(optimizer, **kwargs)
            desc = f"{optimizer}({', '.join(f'{k}={v:g}' for k, v in kwargs.items())})"
        elif isinstance(optimizer, Transform):
            if lr is not None:
                raise ConfigError(
                    message(
                        "fit(lr=...)",
                        "cannot change an optimizer that is already built",
                        f"lr={lr} together with a Transform",
                        "set the rate when building it, e.g. optimizer=descend.optim.adamw(lr=3e-4)",
                    )
                )
            tx = optimizer
            desc = getattr(optimizer.update, "desc", None) or "user optimizer"
        else:
            raise ConfigError(
                message(
                    "fit(optimizer)",
                    "must be a descend Transform, a registry name, or None",
                    describe(optimizer),
                    _torch_optimizer_hint(optimizer)
                    or "use e.g. descend.optim.adamw(lr=3e-4) or optimizer='sgd'",
                )
            )

        cbs = list(callbacks) + extra_callbacks + ([progress] if progress is not None else [])
        loop = Loop(
            module,
            bundle,
            loss_obj,
            tx,
            optimizer_desc=desc,
            max_epochs=epochs,
            patience=patience,
            tol=tol,
            restore_best=restore_best,
            callbacks=cbs,
            device=dev,
            seed=seed,
            precision=precision,
            max_time=max_time,
            metric=metric,
            autopilot=autopilot,
            guard=Guard(check_every=1 if dev.type == "cpu" else 16) if guard else None,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            config={
                "loss": loss_obj.name,
                "epochs": epochs,
                "batch_size": batch_size,
                "patience": patience,
                "tol": tol,
                "seed": seed,
                "optimizer": desc,
            },
        )
        if opt_state is not None:
            loop.set_opt_state(opt_state)
        result = loop.run(resume=resume_ckpt)
    finally:
        in_world.close()
        module.train(came_training)
        if home is not None:
            module.to(home)
    if home is not None:  # everything handed back lives where the model does
        result.params = {n: p.detach() for n, p in module.named_parameters()}
        result.opt_state = _to_device_tree(result.opt_state, home)
    return result
