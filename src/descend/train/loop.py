"""``descend.fit``: the training loop.

Read it top to bottom to follow one batch: ``data.prepare`` makes device-resident tensors and
a seeded batch order; the model computes predictions; the loss (validated once, up front)
reduces them to a scalar; ``torch.autograd.grad`` computes the gradients; the optimizer's
transform chain turns them into updates; ``apply_updates`` changes the parameters. At the end
of each epoch the validation loss decides whether these are the best weights so far and
whether to stop.

Nothing in the per-step path forces a host-device sync: step losses, gradient norms and the
running sums stay on the device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch

from descend import data as D
from descend import losses as L
from descend import optim
from descend._errors import ConfigError, InputError, check_choice, describe, message
from descend.train import autopilot as _autopilot
from descend.train.callbacks import Callback, default_progress
from descend.train.result import History, Result, StopReason
from descend.transforms import Transform, apply_updates, find_lr_state

__all__ = ["Loop", "fit"]

_EVAL_CHUNK = 8192


class _FunctionModel(torch.nn.Module):
    """Wraps a plain function ``fn(x, params)`` and its parameters as a module."""

    def __init__(self, fn: Callable, params: dict[str, Any]) -> None:
        super().__init__()
        self.fn = fn
        self.params = torch.nn.ParameterDict(
            {
                k: torch.nn.Parameter(
                    torch.as_tensor(v, dtype=torch.get_default_dtype()).clone()
                    if not torch.is_tensor(v) or not v.is_floating_point()
                    else v.detach().clone()
                )
                for k, v in params.items()
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, dict(self.params.items()))


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
        return _FunctionModel(model, params)
    raise ConfigError(
        message(
            "fit(model)",
            "must be a torch.nn.Module or a function fn(x, params)",
            describe(model),
            "pass a module such as torch.nn.Linear(4, 1)",
        )
    )


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Loop:
    """The state of one run. Callbacks receive it; its attributes describe the run so far.

    Attributes:
        model, loss, tx (the optimizer transform), opt_state, params ({name: tensor}),
        history, epoch (epochs completed), step (optimizer steps taken), max_epochs,
        best_loss, best_epoch, improved (the last epoch improved on the best),
        stop_message (set when the run ends), device, seed.
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
    ) -> None:
        self.model = model
        self.bundle = bundle
        self.loss = loss
        self.tx = tx
        self.optimizer_desc = optimizer_desc
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.restore_best = restore_best
        self.callbacks = list(callbacks)
        self.step_callbacks = [c for c in self.callbacks if getattr(c, "wants_steps", True)]
        self.device = device
        self.seed = seed
        self.precision = precision
        self.max_time = max_time
        self.autopilot = autopilot

        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._names = list(self.params)
        self._plist = [self.params[n] for n in self._names]
        self.opt_state = tx.init(self.params)
        self._lr_state = find_lr_state(self.opt_state)

        self.history = History()
        self.epoch = 0
        self.step = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.improved = False
        self.stop_message = ""
        self._stop_request: str | None = None
        self._since_best = 0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._t0 = 0.0

        self._metric_fn, self.history.metric_name = self._pick_metric(metric)
        self.monitor = "val_loss" if bundle.val is not None else "train_loss"
        self._y_unsqueeze = False

    # ---- setup checks ----------------------------------------------------------------

    def _pick_metric(self, metric: str | Callable | None):
        if metric is None:
            return None, None
        if callable(metric):
            return metric, getattr(metric, "__name__", "metric")
        check_choice("metric", metric, ("auto", "accuracy", "r2"), owner="fit")
        kind = self.loss.target_kind
        name = metric
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

    def check_model_fits(self) -> None:
        """Run the model once on a few samples and validate the loss against ALL targets, so a
        bad shape, an out-of-range class or a NaN target is refused before step 1."""
        src = self.bundle.train
        xb, yb = next(iter(src.batches(0)))
        n_probe = min(8, len(xb) if torch.is_tensor(xb) else 8)
        probe_x = xb[:n_probe] if torch.is_tensor(xb) else xb
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                out = self.model(probe_x)
        except RuntimeError as e:
            shape = tuple(probe_x.shape) if torch.is_tensor(probe_x) else "?"
            raise InputError(
                message(
                    "the model",
                    "must accept the data's feature batches",
                    f"an error on a batch of shape {shape}: {str(e).splitlines()[0]}",
                    "check the model's first layer against the number of features "
                    f"({self.bundle.n_features})",
                )
            ) from None
        finally:
            self.model.train(was_training)
        if not torch.is_tensor(out):
            raise InputError(
                message(
                    "the model's output",
                    "must be a tensor",
                    describe(out),
                    "return the prediction tensor from forward()",
                )
            )
        if out.shape[0] != probe_x.shape[0]:
            raise InputError(
                message(
                    "the model's output",
                    "must have one row per sample",
                    f"output of shape {tuple(out.shape)} for {probe_x.shape[0]} samples",
                    "do not reduce over the batch dimension inside the model",
                )
            )
        y_all = src.y if (src.resident and src.y is not None) else yb
        if y_all is None:
            return
        y_all = self._shape_targets(out, y_all)
        # A zero-cost expanded prediction lets the loss check every target (range, NaN, shape)
        # against the model's real output width, without running the model on all of the data.
        fake = out[:1].float().expand(y_all.shape[0], *out.shape[1:])
        self.loss.validate(fake, y_all)
        if (
            self.bundle.val is not None
            and self.bundle.val.resident
            and self.bundle.val.y is not None
        ):
            yv = self._shape_targets(out, self.bundle.val.y)
            self.loss.validate(out[:1].float().expand(yv.shape[0], *out.shape[1:]), yv)

    def _shape_targets(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A regression model usually ends in Linear(k, 1) while y is 1-D: (N,1) vs (N,) would
        # silently broadcast to (N,N) in a loss. Adapt y's view once, explicitly.
        if (
            self.loss.target_kind != "index"
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

    # ---- the step ----------------------------------------------------------------------

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor | None):
        with self._autocast():
            out = self.model(xb)
            if yb is not None and self._y_unsqueeze:
                yb = yb.unsqueeze(-1)
            value = self.loss(out.float() if self.precision == "bf16" else out, yb, validate=False)
        grads = torch.autograd.grad(value, self._plist, allow_unused=True)
        g = {n: gr for n, gr in zip(self._names, grads) if gr is not None}
        norms = torch._foreach_norm(list(g.values())) if g else []
        gnorm = torch.linalg.vector_norm(torch.stack(norms)) if norms else value.new_zeros(())
        updates, self.opt_state = self.tx.update(g, self.opt_state, self.params)
        apply_updates(self.params, updates)
        self.step += 1
        return value.detach(), gnorm.detach()

    # ---- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, src: D.Source) -> tuple[float, float | None]:
        """Mean loss and metric over a whole source, in eval mode, chunked to bound memory."""
        was_training = self.model.training
        self.model.eval()
        total = None
        count = 0
        m_acc = None
        y_sum = y_sq = None
        try:
            for xb, yb in self._eval_batches(src):
                with self._autocast():
                    out = self.model(xb)
                out = out.float()
                if yb is not None and self._y_unsqueeze:
                    yb = yb.unsqueeze(-1)
                n = out.shape[0]
                v = self.loss(out, yb, validate=False).float() * n
                total = v if total is None else total + v
                count += n
                if self._metric_fn == "accuracy" and yb is not None:
                    if self.loss.name == "binary_cross_entropy":
                        hit = (
                            ((out > 0) == (yb > 0.5)).float().mean(dim=tuple(range(1, out.dim())))
                            if out.dim() > 1
                            else ((out > 0) == (yb > 0.5)).float()
                        )
                        hit = hit.sum()
                    elif out.dim() == 2 and out.shape[1] > 1 and yb.dim() == 1:
                        hit = (out.argmax(1) == yb).sum()
                    elif out.dim() == 2 and out.shape[1] > 1 and yb.dim() == 2:
                        hit = (out.argmax(1) == yb.argmax(1)).sum()
                    else:
                        hit = out.new_zeros(())
                    m_acc = hit.float() if m_acc is None else m_acc + hit.float()
                elif self._metric_fn == "r2" and yb is not None:
                    yf = yb.float()
                    sse = ((out - yf) ** 2).sum(0)
                    ys, ysq = yf.sum(0), (yf**2).sum(0)
                    m_acc = sse if m_acc is None else m_acc + sse
                    y_sum = ys if y_sum is None else y_sum + ys
                    y_sq = ysq if y_sq is None else y_sq + ysq
                elif callable(self._metric_fn) and yb is not None:
                    val = torch.as_tensor(self._metric_fn(out, yb), dtype=torch.float32) * n
                    m_acc = val if m_acc is None else m_acc + val
        finally:
            self.model.train(was_training)
        if total is None:
            return math.nan, None
        loss_val = float(total / count)
        metric = None
        if m_acc is not None:
            if self._metric_fn == "r2":
                sst = y_sq - y_sum**2 / count
                r2 = 1 - m_acc / sst.clamp_min(1e-12)
                metric = float(r2.mean())
            else:
                metric = float(m_acc / count)
        return loss_val, metric

    def _eval_batches(self, src: D.Source) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        if src.resident:
            n = src.X.shape[0]
            for i in range(0, n, _EVAL_CHUNK):
                yield (
                    src.X[i : i + _EVAL_CHUNK],
                    (None if src.y is None else src.y[i : i + _EVAL_CHUNK]),
                )
        else:
            yield from src.batches(0)

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

    def request_stop(self, why: str = "a callback asked to stop") -> None:
        """Ask the run to stop after the current step (stop reason ``callback``)."""
        self._stop_request = why

    def _save_best(self) -> None:
        if not self.restore_best:
            return
        sd = self.model.state_dict()
        if self._best_state is None:
            self._best_state = {k: v.detach().clone() for k, v in sd.items()}
        else:
            for k, v in sd.items():
                self._best_state[k].copy_(v)

    def _restore_best(self) -> None:
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _end_epoch(
        self, step_losses: list, step_norms: list, lrs: list[float]
    ) -> StopReason | None:
        """Read the epoch's numbers (one sync), evaluate, and decide whether to stop."""
        h = self.history
        losses = torch.stack(step_losses).float().cpu().tolist() if step_losses else []
        norms = torch.stack(step_norms).float().cpu().tolist() if step_norms else []
        h.step_loss.extend(losses)
        h.step_grad_norm.extend(norms)
        h.step_lr.extend(lrs)
        train_loss = sum(losses) / len(losses) if losses else math.nan
        self.epoch += 1
        h.epoch.append(self.epoch)
        h.train_loss.append(train_loss)
        metric = None
        if self.bundle.val is not None:
            val_loss, metric = self.evaluate(self.bundle.val)
            h.val_loss.append(val_loss)
            monitored = val_loss
        else:
            monitored = train_loss
            if self._metric_fn is not None and self.bundle.train.resident:
                _, metric = self.evaluate(self.bundle.train)
        if metric is not None:
            h.metric.append(metric)
        h.time.append(self._elapsed())

        if not math.isfinite(train_loss):
            self.improved = False
            return StopReason.DIVERGED
        threshold = self.best_loss - max(self.tol * abs(self.best_loss), 0.0)
        self.improved = math.isfinite(monitored) and (
            monitored < threshold or not math.isfinite(self.best_loss)
        )
        if self.improved:
            self.best_loss = monitored
            self.best_epoch = self.epoch
            self._since_best = 0
            self._save_best()
        else:
            self._since_best += 1
        if norms and max(norms[-1:]) < 1e-10:
            return StopReason.CONVERGED
        if self.patience is not None and self._since_best >= self.patience:
            return StopReason.PATIENCE if self.bundle.val is not None else StopReason.CONVERGED
        return None

    def _sentence(self, reason: StopReason) -> str:
        m = self.monitor
        best = f"{m} {self.best_loss:.4g} at epoch {self.best_epoch}"
        kept = f"restored the best weights ({best})" if self.restore_best else f"best was {best}"
        if reason is StopReason.PATIENCE:
            return (
                f"Stopped early after epoch {self.epoch}: the validation loss did not improve "
                f"by more than {self.tol:g} (relative) for {self.patience} epochs; {kept}."
            )
        if reason is StopReason.CONVERGED:
            if self.history.step_grad_norm and self.history.step_grad_norm[-1] < 1e-10:
                return (
                    f"Converged after epoch {self.epoch}: the gradient norm fell below 1e-10; "
                    f"{kept}."
                )
            return (
                f"Converged after epoch {self.epoch}: the training loss changed by less than "
                f"{self.tol:g} (relative) for {self.patience} epochs; {kept}."
            )
        if reason is StopReason.MAX_EPOCHS:
            tail = (
                " It was still improving at the end: more epochs may help."
                if self.best_epoch == self.epoch
                else ""
            )
            return f"Used the whole budget of {self.max_epochs} epochs; {kept}.{tail}"
        if reason is StopReason.MAX_TIME:
            return f"Stopped after {self._elapsed():.1f}s, the max_time budget; {kept}."
        if reason is StopReason.DIVERGED:
            return (
                f"Diverged in epoch {self.epoch}: the training loss became non-finite; "
                f"{kept}. Try a lower learning rate or max_grad_norm=1.0."
            )
        if reason is StopReason.INTERRUPTED:
            return f"Interrupted by the user during epoch {self.epoch + 1}; {kept}."
        return f"Stopped after epoch {self.epoch}: {self._stop_request}; {kept}."

    def run(self) -> Result:
        self._t0 = time.perf_counter()
        self.check_model_fits()
        reason: StopReason | None = None
        # The starting point counts as "epoch 0" so a run that only gets worse keeps it.
        self._save_best()
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            self.model.train()
            src = self.bundle.train
            lr_state = self._lr_state
            while reason is None and self.epoch < self.max_epochs:
                step_losses: list[torch.Tensor] = []
                step_norms: list[torch.Tensor] = []
                lrs: list[float] = []
                for xb, yb in src.batches(self.epoch):
                    value, gnorm = self.train_step(xb, yb)
                    step_losses.append(value)
                    step_norms.append(gnorm)
                    lrs.append(float(lr_state["lr"]) if lr_state is not None else math.nan)
                    for cb in self.step_callbacks:
                        cb.on_step_end(self)
                    if self._stop_request is not None:
                        break
                    if self.max_time is not None and self._elapsed() > self.max_time:
                        break
                reason = self._end_epoch(step_losses, step_norms, lrs)
                for cb in self.callbacks:
                    cb.on_epoch_end(self)
                if reason is None and self._stop_request is not None:
                    reason = StopReason.CALLBACK
                if reason is None and self.max_time is not None and self._elapsed() > self.max_time:
                    reason = StopReason.MAX_TIME
            if reason is None:
                reason = StopReason.MAX_EPOCHS
        except KeyboardInterrupt:
            reason = StopReason.INTERRUPTED
        finally:
            if reason is None:  # an exception is propagating: still restore and tell callbacks
                self._restore_best()
                self.stop_message = "Training failed with an error; restored the best weights."
                for cb in self.callbacks:
                    cb.on_fit_end(self)
        self._restore_best()
        self.stop_message = self._sentence(reason)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return Result(
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
) -> Result:
    """Train ``model`` on ``data`` by minimizing ``loss``; return a :class:`Result`.

    Args:
        model: a ``torch.nn.Module`` (trained in place, moved to ``device``), or a plain
            function ``fn(x, params)`` together with ``params={name: initial value}``.
        data: ``(X, y)`` (numpy, torch, pandas, pyarrow, lists), ``X`` alone for a loss that
            needs no targets, a ``torch.utils.data.Dataset`` or a ``DataLoader``. In-memory data
            is moved to the device once and sliced by a seeded permutation.
        loss: a registry name (``"mse"``, ``"cross_entropy"``, ``"mae"``, ``"huber"``,
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
            in-memory data and none of streamed data (a DataLoader cannot be split). Early stopping watches the validation loss,
            or the training loss when there is no validation data.
        patience: epochs without a relative improvement of more than ``tol`` before stopping;
            ``None`` never stops early.
        restore_best: put the best weights back into the model at the end (default on).
        metric: ``"auto"`` (accuracy for classification, R² for regression), a name, a callable
            ``(pred, target) -> float`` averaged over samples, or ``None``.
        callbacks: :class:`descend.train.Callback` objects.
        verbose: 0 silent; 1 a progress bar on a terminal or one plain line per epoch in a log;
            2 also keeps one line per epoch on a terminal.
        seed: makes the run reproducible (split, batch order, dropout). Seeds torch's global
            generator. When not given one is drawn and recorded in ``Result.seed``.
        device: ``"cpu"``, ``"cuda"``, ... ; default: the model's device if it is on an
            accelerator, else CUDA when available, else CPU.
        precision: ``"bf16"`` runs forward passes under bfloat16 autocast (opt-in).
        max_time: wall-clock budget in seconds.
        params: the parameters of a function model (see ``model``).
        shuffle: reshuffle the training data every epoch (default on).

    Returns:
        Result: the trained model, history, stop reason and sentence, best epoch, seed.

    Example:
        >>> import torch, descend
        >>> X = torch.randn(256, 3); y = X @ torch.tensor([1.0, -2.0, 0.5])
        >>> r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=5, verbose=0, seed=0)
        >>> r.history.val_loss[-1] < r.history.val_loss[0]
        True
    """
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
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError(
            message(
                "fit: patience",
                "must be an integer >= 1 or None",
                describe(patience),
                "pass e.g. patience=10",
            )
        )
    check_choice("precision", precision, ("fp32", "bf16"), owner="fit")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)

    module = _as_module(model, params)
    loss_obj = L.get(loss)
    dev = D.resolve_device(device, module)
    module.to(dev)
    if torch.is_tensor(data):
        D.check_devices(module, data)
    elif isinstance(data, tuple) and data and torch.is_tensor(data[0]):
        D.check_devices(module, data[0])
    if isinstance(validation, str):
        check_choice("validation", validation, ("auto",), owner="fit")
        validation = None if D.is_streamed(data) else 0.2
    bundle = D.prepare(
        data,
        validation=validation,
        target_kind=loss_obj.target_kind,
        stratify=True,
        device=dev,
        dtype=torch.float32,
        seed=seed,
        batch_size=batch_size,
        shuffle=shuffle,
    )

    autopilot = None
    extra_callbacks: list[Callback] = []
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
        )
        decision = _autopilot.plan(ctx)
        tx, desc, autopilot = decision.tx, decision.description, decision.record
        extra_callbacks = list(decision.callbacks)
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
        desc = getattr(optimizer, "name", None) or "user optimizer"
    else:
        raise ConfigError(
            message(
                "fit(optimizer)",
                "must be a descend Transform, a registry name, or None",
                describe(optimizer),
                "use e.g. descend.optim.adamw(lr=3e-4) or optimizer='sgd'",
            )
        )

    progress = default_progress(verbose)
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
    )
    return loop.run()
