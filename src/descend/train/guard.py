"""The divergence guard: catch a non-finite or exploding loss, roll back, lower the rate, go on.

How it decides (on by default, ``fit(guard=False)`` turns it off):

- **Non-finite**: a NaN/inf batch loss or gradient norm is always an event.
- **Spike**: the guard tracks the running level of log(loss) (an exponential moving average and
  its mean absolute deviation). A batch whose log-loss exceeds the level by more than
  ``max(log(spike_factor), 6 × deviation)`` is suspicious; ``confirm`` suspicious batches in a
  row are an event (one noisy batch is not). Working in log space makes the test scale-free: a
  noisy small loss (0.005–0.05 per batch) is not flagged, while a loss that sits at 2.5× its
  steady level is — the typical first sign of a learning rate far too high. A spike must also
  be large in absolute terms: above the running level by ``abs_floor`` (half) of the loss level
  the run started from. A rate that is too high drives the loss back toward where it started,
  while a healthy run's batches can be many times its running level: near zero training loss
  a single hard batch is 10x it (0.003 → 0.03 on a memorized digits set), and with noisy
  labels the batches that hold a few of them are 3–10x it (0.044 → 0.15–0.46 on a sequence task
  with 5% of its labels random, half its batches holding two or more: at a floor of 5% of the
  start, session 1's rule, the guard rolled back 7 times in 20 steps at epoch 11 of 30 and
  ended a healthy run as "diverged").
- **Rollback**: the guard keeps one snapshot of the model and optimizer state, taken every
  ``snapshot_every`` steps, at the start of every epoch that is ``snapshot_every`` steps or
  longer (of every ``snapshot_every // steps_per_epoch``-th epoch when epochs are shorter:
  on a full-batch run the copy at every epoch start was ~10% of each step), at the run's
  start and at every checkpoint, and only after the steps since the previous snapshot passed
  the checks. The points depend on step and epoch counts only (the loop writes its ``"auto"``
  checkpoints only at epochs that are snapshot points), so a resumed run rolls back to exactly
  the state the uninterrupted run would. On an event it restores that snapshot, scales
  the learning rate by ``lr_factor`` (via the learning-rate state's ``scale``), and carries on
  with the next batch — the offending batch is skipped.
- **Hard batches**: a first spike is looked at again, at the rollback point's weights (the same
  batch, a forward pass without a graph): where its loss was about as high there, the updates
  since did not cause it, and the guard takes it into its level, widens its tolerance, records
  a ``recalibrated`` event and goes on — no rollback, the rate stays (on CPU, one process).
- **False alarms**: the step right after a spike's rollback is measured at the snapshot's own
  weights, before any update at the lowered rate acts. If it spikes too, the batches simply
  vary that much (a level read off one lucky batch): the guard puts the rate back as it was
  before that rollback, widens its tolerance to cover such a batch, takes the loss into its
  level, and records a ``recalibrated`` event (the stop sentence counts them).
- **Giving up**: after ``max_retries`` events with no clean snapshot in between, or
  ``max_events`` in all, the run stops with stop reason ``diverged`` (best weights kept).
  A snapshot point reached before any step was judged clean since the last rollback keeps
  the old snapshot and its retry count (else a run whose every check window fails, as on an
  accelerator, would never give up). With the guard on, only the guard ends a run as
  diverged: an epoch whose every step was non-finite (a full-batch epoch is one step) has been
  rolled back, and training goes on.

Checks read the loss on the host: every step on CPU (free), every ``check_every`` steps on an
accelerator (one sync per window), so the hot path stays asynchronous there.

Memory: one extra copy of the parameters, buffers and optimizer state (the snapshot).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch

from descend.transforms._util import is_sharded, local

if TYPE_CHECKING:
    from descend.train.loop import Loop

__all__ = ["Guard"]


def clone_tree(tree: Any) -> Any:
    """A copy of a state tree: every tensor cloned (detached), containers rebuilt."""
    if torch.is_tensor(tree):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: clone_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(clone_tree(v) for v in tree)
    if isinstance(tree, list):
        return [clone_tree(v) for v in tree]
    return copy.copy(tree)


def _copy_into(dst: Any, src: Any) -> Any:
    """Copy ``src`` into ``dst`` in place where shapes allow; returns the tree to use.

    The tensor copies are batched into one ``torch._foreach_copy_``: a small model's state is
    dozens of tiny tensors, and one dispatch per tensor was most of a copy's cost.
    """
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    out = _pair_into(dst, src, pairs)
    copy_pairs(pairs)
    return out


def _pair_into(dst: Any, src: Any, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    if torch.is_tensor(dst) and torch.is_tensor(src) and dst.shape == src.shape:
        pairs.append((dst, src))
        return dst
    if isinstance(dst, dict) and isinstance(src, dict) and dst.keys() == src.keys():
        for k in src:
            dst[k] = _pair_into(dst[k], src[k], pairs)
        return dst
    if isinstance(dst, (tuple, list)) and type(dst) is type(src) and len(dst) == len(src):
        items = [_pair_into(a, b, pairs) for a, b in zip(dst, src)]
        return type(dst)(items) if isinstance(dst, tuple) else items
    return clone_tree(src)


def copy_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``dst.copy_(src)`` for every pair, in one ``torch._foreach_copy_`` call (it takes mixed
    dtypes and devices, copying those pairs one by one)."""
    if not pairs:
        return
    if any(is_sharded(d) for d, _ in pairs):  # a sharded model: copy the local shards
        pairs = [(local(d), local(s)) for d, s in pairs]
    with torch.no_grad():
        if _FOREACH_COPY:
            torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])
        else:  # pragma: no cover - torch without _foreach_copy_
            for d, s in pairs:
                d.copy_(s)


_FOREACH_COPY = hasattr(torch, "_foreach_copy_")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's whole state (parameters and buffers; a sharded model's shards)."""
    return {k: t.detach().clone() for k, t in model.state_dict(keep_vars=True).items()}


def restore(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    """Put a :func:`snapshot` back into ``model``, in place."""
    sd = model.state_dict(keep_vars=True)
    copy_pairs([(sd[k].detach(), v) for k, v in snap.items()])


def save_into(snap: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Refresh a :func:`snapshot` from ``model``, in place."""
    sd = model.state_dict(keep_vars=True)
    copy_pairs([(v, sd[k].detach()) for k, v in snap.items()])


class Guard:
    """Watches batch losses and gradient norms; rolls the run back when they go bad."""

    def __init__(
        self,
        *,
        check_every: int = 1,
        snapshot_every: int = 25,
        spike_factor: float = 2.5,
        warmup: int = 1,
        confirm: int = 2,
        lr_factor: float = 0.3,
        max_retries: int = 6,
        max_events: int = 30,
        abs_floor: float = 0.5,
    ) -> None:
        self.check_every = check_every
        self.snapshot_every = snapshot_every
        self.spike_factor = spike_factor
        self.warmup = warmup
        self.confirm = confirm
        self.suspicious = 0
        self.lr_factor = lr_factor
        self.max_retries = max_retries
        self.max_events = max_events
        self.abs_floor = abs_floor
        # The first accepted loss: the scale the absolute floor is measured against.
        self.start: float | None = None
        # Running statistics of log(loss) over accepted steps (part of checkpoints).
        self.level: float | None = None
        self.dev = 0.0
        self.seen = 0
        self.events = 0
        self.retries = 0
        # False from a rollback until a step is judged clean again: a snapshot taken in between
        # (an epoch start) would reset the retries without any progress, and a run whose every
        # window fails (checks every 16 steps on an accelerator) would never give up.
        self.clean_since_event = True
        # The learning-rate scale before the last rollback, while the first step after it has
        # not been judged yet (that step's loss is measured at the snapshot's own weights).
        self._fresh: float | None = None
        self.false_alarms = 0
        self._first_why = ""  # why the first of the suspicious batches in a row was one
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._snapshot: tuple[dict[str, torch.Tensor], Any] | None = None

    # ---- state for checkpoints ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "dev": self.dev,
            "seen": self.seen,
            "events": self.events,
            "retries": self.retries,
            "suspicious": self.suspicious,
            "start": self.start,
            "clean_since_event": self.clean_since_event,
            "false_alarms": self.false_alarms,
            # A checkpoint can fall between the two batches of a confirmed spike, or between a
            # rollback and the step after it (judged as a possible false alarm): the resumed
            # run must judge the next step as the uninterrupted one does.
            "fresh": None if self._fresh is None else float(self._fresh),
            "first_why": self._first_why,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.level = d["level"]
        self.dev = d["dev"]
        self.seen = d["seen"]
        self.suspicious = d.get("suspicious", 0)
        self.start = d.get("start")
        self.clean_since_event = d.get("clean_since_event", True)
        self.false_alarms = d.get("false_alarms", 0)
        self._fresh = d.get("fresh")
        self._first_why = d.get("first_why", "")
        self.events = d["events"]
        self.retries = d["retries"]

    # ---- snapshots -----------------------------------------------------------------------

    def epoch_period(self, steps_per_epoch: int | None) -> int:
        """Take an epoch-start snapshot every this many epochs (1 when epochs are at least
        ``snapshot_every`` steps long, or of unknown length)."""
        if not steps_per_epoch:
            return 1
        return max(1, self.snapshot_every // steps_per_epoch)

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    @property
    def rollback_point(self) -> tuple[dict[str, torch.Tensor], Any] | None:
        """The snapshot ``(model state, optimizer state)`` a rollback restores, or None."""
        return self._snapshot

    def load_rollback_point(self, model_state: dict[str, torch.Tensor], opt_state: Any) -> None:
        """Make ``(model_state, opt_state)`` (from a checkpoint) the rollback point, as it was
        in the run that wrote it (retries and all: no snapshot was taken)."""
        self._snapshot = (model_state, opt_state)

    def snapshot(self, loop: Loop, force: bool = False) -> None:
        """Remember the current model and optimizer state as the rollback point (kept as it is,
        retries and all, while no step has been judged clean since the last rollback or while a
        spike waits for its confirmation, unless ``force``: a checkpoint's state must be the
        rollback point a resumed run starts from)."""
        # A suspicious batch's loss was measured at weights already bad, and its update was
        # applied: an epoch-start snapshot between it and the batch that confirms the spike
        # would be the state the rollback restores (and the step after it, judged at those
        # weights, then reads as a false alarm and puts the rate back up).
        if (
            self._snapshot is not None
            and not force
            and (not self.clean_since_event or self.suspicious)
        ):
            return
        sd = loop.state_tensors()
        if self._snapshot is None:
            self._snapshot = (
                {k: v.detach().clone() for k, v in sd.items()},
                clone_tree(loop.opt_state),
            )
        else:
            model_copy, opt_copy = self._snapshot
            pairs: list[tuple[torch.Tensor, torch.Tensor]] = [
                (model_copy[k], v) for k, v in sd.items()
            ]
            opt_copy = _pair_into(opt_copy, loop.opt_state, pairs)
            copy_pairs(pairs)
            self._snapshot = (model_copy, opt_copy)
        self.retries = 0

    def _rollback(self, loop: Loop, factor: float) -> None:
        assert self._snapshot is not None
        model_copy, opt_copy = self._snapshot
        lr_state = loop.lr_state
        scale = float(lr_state["scale"]) if lr_state is not None else 1.0
        with torch.no_grad():
            for k, v in loop.model.state_dict().items():
                v.copy_(model_copy[k])
        loop.opt_state = _copy_into(loop.opt_state, opt_copy)
        loop.refresh_lr_state()
        if loop.lr_state is not None:
            loop.lr_state["scale"] = scale * factor

    # ---- checks --------------------------------------------------------------------------

    def after_step(
        self, loop: Loop, loss: torch.Tensor, gnorm: torch.Tensor, batch: tuple | None = None
    ) -> str | None:
        """Called after every step (``batch``: the step's batch, for a look at a spiking one
        at the last good weights). Returns ``"diverged"`` when the run should stop."""
        if self.start is None and loop.history.step_loss:
            # A run continued from a race (or earlier epochs) starts from its first step's loss.
            first = loop.history.step_loss[0]
            if math.isfinite(first):
                self.start = max(first, 0.0)
        self._pending.append((loss, gnorm))
        if len(self._pending) < self.check_every:
            return None
        pending, self._pending = self._pending, []
        if len(pending) == 1:  # check_every=1 (CPU): two host reads, no stacking
            values = [(float(pending[0][0]), float(pending[0][1]))]
        else:  # one device sync for the whole window
            values = torch.stack([torch.stack([a.float(), b.float()]) for a, b in pending]).tolist()
        for i, (lv, gv) in enumerate(values):
            kind, why = self._judge(lv, gv)
            fresh, self._fresh = self._fresh, None
            if fresh is not None and kind in ("spike", "elevated"):
                self._false_alarm(loop, loop.step - len(values) + i + 1, lv, fresh)
                continue
            if kind is None:
                self.suspicious = 0
                self._accept(lv)
                continue
            step = loop.step - len(values) + i + 1
            if kind == "nonfinite":
                self.suspicious = 0
                return self._event(loop, step, why, kind)
            if (
                kind == "spike"
                and not self.suspicious
                and batch is not None
                and len(values) == 1
                and self._hard_batch(loop, batch, lv, step)
            ):
                continue
            self.suspicious += 1
            if self.suspicious == 1:
                self._first_why = why
            if self.suspicious >= self.confirm:
                self.suspicious = 0
                return self._event(loop, step, self._first_why)
        # A window that reached a multiple of snapshot_every (its last step or an earlier one:
        # windows of 16 steps end on a multiple of 25 only every 400 steps) passed the checks.
        crossed = (
            loop.step // self.snapshot_every > (loop.step - len(values)) // self.snapshot_every
        )
        if crossed and self.suspicious == 0:
            self.snapshot(loop)
        return None

    def flush(self, loop: Loop) -> str | None:
        """Check the steps still pending (end of an epoch); returns ``"diverged"`` or None."""
        if not self._pending:
            return None
        saved, self.check_every = self.check_every, len(self._pending)
        try:
            last = self._pending.pop()
            return self.after_step(loop, *last)
        finally:
            self.check_every = saved

    def _judge(self, loss: float, gnorm: float) -> tuple[str | None, str]:
        """``(kind, text)``: kind is None (fine), "nonfinite", "spike" or "elevated" (still
        above half the spike threshold, in log space, right after a spike)."""
        if not math.isfinite(loss):
            return "nonfinite", f"the batch loss was {loss}"
        if not math.isfinite(gnorm):
            return "nonfinite", f"the gradient norm was {gnorm}"
        if self.level is not None and self.seen >= self.warmup and loss > 0:
            z = math.log(loss) - self.level
            threshold = max(math.log(self.spike_factor), 6.0 * self.dev)
            floor = self.abs_floor * (self.start or 0.0)
            if loss - math.exp(self.level) <= floor:
                return None, ""
            if z > threshold:
                return "spike", (
                    f"the batch loss {loss:.4g} was {math.exp(z):.1f}x its running level "
                    f"{math.exp(self.level):.4g}"
                )
            if self.suspicious and z > threshold / 2:
                return "elevated", ""
        return None, ""

    def _accept(self, loss: float) -> None:
        self.clean_since_event = True
        x = math.log(max(loss, 1e-30))
        if self.level is None:
            self.level = x
            if self.start is None:
                self.start = max(loss, 0.0)
        else:
            self.dev = 0.95 * self.dev + 0.05 * abs(x - self.level)
            self.level = 0.9 * self.level + 0.1 * x
        self.seen += 1

    def _hard_batch(self, loop: Loop, batch: tuple, loss: float, step: int) -> bool:
        """A first spike, looked at again: the same batch's loss at the rollback point's
        weights. Where it was about as high there (within half the spike threshold, in log
        space), the updates since did not cause it — the batch is hard, not the run diverging:
        take it into the level, widen the tolerance to cover it, and record a ``recalibrated``
        event; no rollback, the rate stays. (A level read off one or two easy first batches
        made the next ordinary ones "spikes": an MLP regression on batches of 8 at an explicit
        lr=0.01 was rolled back twice and trained at 0.09x its rate to a loss of 1.06 where it
        reaches 0.005; 10 of 176 runs at rates 0.001-0.01 were cut so, in
        benchmarks/guard_alarms.py, none now.) Only where the model can be swapped in
        place (one process, not sharded) and the check is per step (CPU); the probe runs in
        train mode under a forked random state, so the run's own stream is untouched."""
        assert self.level is not None
        then = self._loss_at_snapshot(loop, batch)
        if then is None or not math.isfinite(then) or then <= 0:
            return False
        z = math.log(loss) - self.level
        threshold = max(math.log(self.spike_factor), 6.0 * self.dev)
        if math.log(loss / then) > threshold / 2:
            return False
        self.dev = max(self.dev, z / 6.0)
        self.false_alarms += 1
        self._accept(loss)
        loop.record_event(
            "recalibrated",
            f"step {step}: the batch loss {loss:.4g} was {math.exp(z):.1f}x its running level, "
            f"but the same batch's loss at the last good weights was {then:.4g}: the batch is "
            "hard, the run is not diverging; no rollback, the rate stays, and the guard "
            "tolerates such batches",
        )
        return True

    def _loss_at_snapshot(self, loop: Loop, batch: tuple) -> float | None:
        """``batch``'s loss at the rollback point's weights, the model's own put back after (no
        step, no graph); None where the model cannot be swapped in place."""
        if self._snapshot is None or loop.world.active or is_sharded(loop.model):
            return None
        model_copy = self._snapshot[0]
        sd = loop.state_tensors()
        if set(sd) != set(model_copy):
            return None
        now = {k: v.detach().clone() for k, v in sd.items()}
        xb, yb, *rest = batch
        try:
            copy_pairs([(v, model_copy[k]) for k, v in sd.items()])
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                value, _, _ = loop._forward_loss(loop.model, xb, yb, rest[0] if rest else None)
            return float(value)
        finally:
            copy_pairs([(v, now[k]) for k, v in sd.items()])

    def _false_alarm(self, loop: Loop, step: int, loss: float, scale: float | None) -> None:
        """The first step after a spike's rollback spiked too — at the snapshot's own weights,
        before any update at the new rate could act: the batches vary this much, and the rate
        was not the cause. Put the rate back, widen the tolerance to cover such a batch, and
        take the loss into the running level. (A Poisson loss on batches of 4 goes 0.03-0.66
        from batch to batch; judged against a lucky first batch of 0.055, every ordinary batch
        was a "spike", and seven rollbacks ended a healthy run as diverged.)"""
        assert self.level is not None
        z = math.log(max(loss, 1e-30)) - self.level
        self.dev = max(self.dev, z / 6.0)
        self.false_alarms += 1
        self.suspicious = 0
        self.retries = 0
        if scale is not None and loop.lr_state is not None:
            loop.lr_state["scale"] = scale
        self._accept(loss)
        loop.record_event(
            "recalibrated",
            f"step {step}: the batch loss {loss:.4g} at the rolled-back weights was as high as "
            "the spike: the batches vary this much, the rate was not the cause; the learning "
            f"rate is back at x{loop.lr_state['scale'] if loop.lr_state is not None else 1:.3g} "
            "of the planned rate and the guard tolerates such batches",
        )

    def _event(self, loop: Loop, step: int, why: str, kind: str = "spike") -> str | None:
        self.events += 1
        self.retries += 1
        if (
            self._snapshot is None
            or self.retries > self.max_retries
            or self.events > self.max_events
        ):
            loop.record_event(
                "diverged", f"step {step}: {why}; giving up after {self.events} rollbacks"
            )
            return "diverged"
        # A lone non-finite batch is usually bad data: skip it at the same rate. A spike, or a
        # second failure before the next clean snapshot, means the rate is too high.
        lower = kind != "nonfinite" or self.retries > 1
        scale = loop.lr_state["scale"] if loop.lr_state is not None else None
        self._rollback(loop, self.lr_factor if lower else 1.0)
        self.clean_since_event = False
        self._fresh = scale if kind != "nonfinite" else None
        new_lr = loop.lr_state["scale"] if loop.lr_state is not None else float("nan")
        action = (
            f"scaled the learning rate by {self.lr_factor} (now x{new_lr:.3g} of the planned rate)"
            if lower
            else "kept the learning rate"
        )
        loop.record_event(
            "rollback",
            f"step {step}: {why}; rolled back to the last good state, skipped the batch and "
            f"{action}",
        )
        return None
