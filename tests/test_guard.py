"""The divergence guard: too-high learning rates, poisoned batches, unrecoverable runs."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import descend
from descend import StopReason
from descend.train.callbacks import PlainProgress
from descend.train.guard import Guard


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def run(digits, lr, guard=True, model=None, **kw):
    X, y = digits
    return descend.fit(
        model or mlp(),
        (X, y),
        "cross_entropy",
        optimizer=descend.optim.adam(lr=lr),
        epochs=kw.pop("epochs", 30),
        verbose=0,
        seed=0,
        guard=guard,
        **kw,
    )


def test_learning_rate_100x_too_high_ends_within_5_percent_of_normal(digits):
    normal = run(digits, 1e-3)  # Adam's default rate
    unguarded = run(digits, 1e-1, guard=False)
    guarded = run(digits, 1e-1)
    assert unguarded.best_loss > 1.05 * normal.best_loss  # the bad rate really hurts ...
    assert guarded.best_loss <= 1.05 * normal.best_loss  # ... and the guard recovers from it
    rollbacks = [e for e in guarded.history.events if e["kind"] == "rollback"]
    assert rollbacks and "running level" in rollbacks[0]["message"]
    assert min(guarded.history.step_lr) < 1e-1 * 0.5
    # The stop sentence says the guard had to step in, how often and how far it lowered the rate.
    n = len(rollbacks)
    steps = "one step" if n == 1 else f"{n} steps"
    assert f"The divergence guard rolled back {steps}, lowering" in guarded.stop_message
    assert "lowering the learning rate to x" in guarded.stop_message
    assert "divergence guard" not in normal.stop_message


class Poison(torch.nn.Module):
    """Wraps a model; from ``start`` to ``stop`` (optimizer steps) the output is NaN/inf."""

    def __init__(self, inner, start, stop, value=float("nan")):
        super().__init__()
        self.inner, self.start, self.stop, self.value, self.calls = inner, start, stop, value, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.start <= self.calls < self.stop:
                return out * self.value
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_poisoned_batch_does_not_corrupt_parameters(digits, value):
    clean = run(digits, 1e-3, epochs=5)
    model = Poison(mlp(), start=60, stop=61, value=value)
    buf = io.StringIO()
    r = run(digits, 1e-3, model=model, epochs=5, callbacks=[PlainProgress(buf)])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [e["kind"] for e in r.history.events] == ["rollback"]
    assert "step 60" in r.history.events[0]["message"]
    assert r.stop_reason is StopReason.MAX_EPOCHS
    assert r.best_loss < 1.2 * clean.best_loss
    assert "! step 60" in buf.getvalue()  # the event is shown to the user
    assert "The divergence guard rolled back one step (history.events says why)." in r.stop_message


def test_unrecoverable_run_stops_diverged_and_keeps_best_weights(digits):
    model = Poison(mlp(), start=200, stop=10**9)
    r = run(digits, 1e-3, model=model, epochs=10)
    assert r.stop_reason is StopReason.DIVERGED
    assert "rollbacks" in r.stop_message
    assert "learning rate lowered to x" in r.stop_message  # how far the guard went
    assert r.history.events[-1]["kind"] == "diverged"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The weights in the model are the best epoch's: evaluating them reproduces its loss.
    assert r.best_epoch >= 1 and math.isfinite(r.best_loss)


def test_without_guard_nan_stops_diverged(digits):
    model = Poison(mlp(), start=50, stop=10**9)
    r = run(digits, 1e-3, model=model, epochs=5, guard=False)
    assert r.stop_reason is StopReason.DIVERGED
    assert r.history.events == []


def test_guard_does_not_fire_on_a_healthy_run(digits):
    r = run(digits, 3e-3, epochs=15)
    assert r.history.events == []


class _FakeLoop:
    """Just enough of a Loop for the guard: a model, optimizer state, a history, events."""

    def __init__(self, first_loss):
        from descend.train.result import History

        self.model = torch.nn.Linear(2, 2)
        self.opt_state = {"m": torch.zeros(2)}
        self.lr_state = {"scale": 1.0}
        self.history = History()
        self.history.step_loss.append(first_loss)
        self.step = 0
        self.events = []

    def refresh_lr_state(self):
        pass

    def state_tensors(self):
        return self.model.state_dict()

    def record_event(self, kind, text):
        self.events.append((kind, text))


def _feed(guard, loop, losses):
    for v in losses:
        loop.step += 1
        loop.history.step_loss.append(v)
        if guard.after_step(loop, torch.tensor(v), torch.tensor(1.0)) == "diverged":
            return "diverged"
    return None


def test_near_zero_loss_noise_is_not_a_spike():
    # A memorized training set: batch losses around 0.003 with hard batches 10-20x that. In
    # log space they are spikes; in absolute terms (vs a start of 2.3) they are nothing. This
    # sequence made a digits run stop "diverged" after 7 rollbacks before the absolute floor.
    from descend.train.guard import Guard

    loop = _FakeLoop(2.3)
    guard = Guard()
    steady = [0.003, 0.0025, 0.0031, 0.0028] * 10
    noisy = [0.0176, 0.04585, 0.003, 0.01946, 0.0125, 0.003, 0.05259, 0.0676, 0.003] * 3
    assert _feed(guard, loop, steady + noisy) is None
    assert loop.events == [] and loop.lr_state["scale"] == 1.0
    # ... while a jump back toward the starting level is caught, confirmed by a second batch.
    assert _feed(guard, loop, [*steady, 1.5, 1.8]) is None
    assert [k for k, _ in loop.events] == ["rollback"]
    assert loop.lr_state["scale"] == pytest.approx(0.3)


def test_noisy_label_batches_are_not_spikes():
    # A sequence task with 5% random labels, past the point where the clean pattern is fit:
    # batches run at ~0.045, and those holding a few noisy labels at 0.15-0.46 — 3-10x the
    # running level, two in a row half the time. Under a floor of 5% of the start (1.1) this
    # exact sequence (steps 573-592 of a real run) was 7 rollbacks and "diverged".
    loop = _FakeLoop(1.1)
    guard = Guard()
    steady = [0.045, 0.04, 0.05, 0.042, 0.047] * 8
    noisy = [0.1485, 0.16, 0.2783, 0.05, 0.2465, 0.21, 0.04, 0.1503, 0.19, 0.4649, 0.25]
    noisy += [0.1469, 0.17, 0.04, 0.1661, 0.3]
    assert _feed(guard, loop, steady + noisy * 3) is None
    assert loop.events == [] and loop.lr_state["scale"] == 1.0
    # a rate too high sends the loss back to its start: caught
    assert _feed(guard, loop, [*steady, 1.2, 1.4]) is None
    assert [k for k, _ in loop.events] == ["rollback"]


def test_a_spike_at_the_rolled_back_weights_recalibrates_instead_of_cutting_the_rate():
    # A Poisson loss on batches of 4 (a real stream's first steps): the first batch, 0.055,
    # was a lucky one, and the next ones (0.03-0.66) were "spikes" against it; seven rollbacks
    # cut the rate to x0.0007 and ended a healthy run as diverged. The batch after a rollback
    # is measured at the snapshot's own weights: when it spikes too, the rate was not the cause.
    from descend.train.guard import Guard

    batches = [0.2502, 0.1288, 0.0330, 0.6650, 0.1269, 0.4540, 0.3563, 0.1648, 0.1684, 0.05]
    loop = _FakeLoop(0.0552)
    guard = Guard()
    guard.snapshot(loop)
    assert _feed(guard, loop, [0.0552, *batches * 6]) is None
    kinds = [k for k, _ in loop.events]
    assert kinds.count("recalibrated") == 1 and kinds.count("rollback") <= 2
    assert (
        "the rate was not the cause; the learning rate is back at x"
        in dict(loop.events)["recalibrated"]
    )
    assert loop.lr_state["scale"] >= 0.3  # not x0.0007
    assert guard.false_alarms == 1
    # a blow-up beyond these batches' own spread (6 mean deviations in log space) is caught
    assert _feed(guard, loop, [30.0, 40.0]) is None
    assert loop.events[-1][0] == "rollback"
    # ... and when the batch after a rollback is normal, the rate stays cut: a rate too high
    loop, guard = _FakeLoop(1.1), Guard()
    guard.snapshot(loop)
    steady = [0.045, 0.04, 0.05, 0.042, 0.047] * 8
    assert _feed(guard, loop, [*steady, 1.2, 1.4, 0.046, 0.044]) is None
    assert [k for k, _ in loop.events] == ["rollback"] and loop.lr_state["scale"] == 0.3


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["plain", "dropout"])
def test_a_spike_that_the_batch_had_at_the_last_good_weights_is_not_a_divergence(dropout):
    # The run's first batch (1.76) was an easy one; the second (4.57 after one step at
    # lr=0.01) was read as a 2.6x spike and the third confirmed it: the run was rolled back and
    # its explicit rate cut to 0.3x. The same batch at the rollback point's weights is just as
    # high: the batch is hard, the rate is not the cause. The run is now exactly the unguarded
    # one (the look at the batch runs under a forked random state: dropout draws the same).
    torch.manual_seed(236)
    X = torch.randn(64, 2)
    y = X[:, :1].clone()

    def fit(guard):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 16),
            torch.nn.Dropout(dropout),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )
        r = descend.fit(model, (X, y), "mse", lr=0.01, epochs=3, verbose=0, seed=0, guard=guard)
        return r, model

    guarded, m1 = fit(True)
    bare, m2 = fit(False)
    assert [e["kind"] for e in guarded.history.events] == ["recalibrated"]
    assert "at the last good weights was" in guarded.history.events[0]["message"]
    assert guarded.history.step_lr == bare.history.step_lr  # the rate the user asked for
    assert guarded.history.step_loss == bare.history.step_loss
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )


def test_a_linear_regression_on_small_batches_keeps_its_explicit_rate():
    # Batches of 8 at an explicit lr=0.01, batch losses 0.7-6.4 around 2.9: a hard batch early
    # on was read as a spike against a level of one or two batches (rolled back, the rate cut).
    g = torch.Generator().manual_seed(1)
    X = torch.randn(128, 5, generator=g)
    y = X @ torch.randn(5, 1, generator=g)
    runs = []
    for guard_on in (True, False):
        torch.manual_seed(0)
        runs.append(descend.fit(torch.nn.Linear(5, 1), (X, y), "mse", lr=0.01, epochs=10,
                                batch_size=8, validation=None, verbose=0, seed=0,
                                guard=guard_on))  # fmt: skip
    assert "rollback" not in [e["kind"] for e in runs[0].history.events]
    assert runs[0].history.step_loss == runs[1].history.step_loss


def test_snapshot_points_on_short_epochs_follow_the_step_count(digits, monkeypatch):
    # Full-batch epochs (1 step each): the guard snapshots at the run's start and every 25
    # steps (epoch starts 0, 25, 50), not at every epoch start, where the copy was ~10% of a
    # step. Epochs of >= 25 steps keep a snapshot at every epoch start.
    from descend.train.guard import Guard

    taken: list[tuple[int, int]] = []
    real = Guard.snapshot

    def spy(self, loop):
        taken.append((loop.epoch, loop.step))
        return real(self, loop)

    monkeypatch.setattr(Guard, "snapshot", spy)
    X, y = digits
    run((X[:200], y[:200]), 1e-3, epochs=60, batch_size=200, validation=None, patience=None)
    assert sorted(set(taken)) == [(0, 0), (24, 25), (25, 25), (49, 50), (50, 50)]
    taken.clear()
    run((X[:200], y[:200]), 1e-3, epochs=3, batch_size=8, validation=None, patience=None)
    assert [e for e, s in taken if s == 25 * e] == [0, 1, 2]  # every epoch start


def test_windowed_checks_still_end_an_unrecoverable_run_with_a_diverged_event(digits, monkeypatch):
    # On an accelerator the guard reads losses in windows of 16 steps; its rollbacks then outlast
    # a 45-step epoch of non-finite batches and the loop itself stops the run. The events must
    # still end with "diverged" (seen on an H100 before the loop recorded it).
    from descend.train import loop as loop_mod

    monkeypatch.setattr(loop_mod, "Guard", lambda check_every: Guard(check_every=16))
    model = Poison(mlp(), start=200, stop=10**9)
    r = run(digits, 1e-3, model=model, epochs=10)
    assert r.stop_reason is StopReason.DIVERGED
    kinds = [e["kind"] for e in r.history.events]
    assert kinds[-1] == "diverged" and kinds.count("diverged") == 1
    assert "rollback" in kinds and "giving up" in r.history.events[-1]["message"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_poisoned_full_batch_step_is_rolled_back_not_the_end_of_the_run(digits):
    # One step per epoch: the poisoned step makes the whole epoch's training loss non-finite.
    # The guard rolled it back, so the run goes on (it used to stop as diverged right there).
    model = Poison(mlp(), start=5, stop=6)
    r = run(digits, 1e-2, model=model, epochs=15, batch_size=None, validation=None, patience=None)
    assert r.stop_reason is StopReason.MAX_EPOCHS and r.epochs == 15
    assert [e["kind"] for e in r.history.events] == ["rollback"]
    assert math.isnan(r.history.train_loss[4]) and math.isfinite(r.history.train_loss[-1])
    assert r.history.train_loss[-1] < r.history.train_loss[3]  # it kept learning afterwards
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Spiky(torch.nn.Module):
    """Wraps a model; the training steps numbered in ``bad`` (1-based, as ``loop.step`` after
    them) get outputs 300x too large: a loss spike, not a non-finite one. The step number comes
    from the loop (``_Tick``), so a resumed run spikes at the same steps."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.next_step = inner, bad, 1

    def forward(self, x):
        out = self.inner(x)
        # (a spike of the training step's weights: the guard's look at a spiking batch at the
        # last good weights, a forward pass without a graph, sees the model as it was)
        spike = self.training and torch.is_grad_enabled() and self.next_step in self.bad
        return out * 300.0 if spike else out


class _Tick(descend.Callback):
    def __init__(self, model):
        self.model = model

    def on_fit_start(self, loop):
        self.model.next_step = loop.step + 1

    def on_step_end(self, loop):
        self.model.next_step = loop.step + 1


class _Killed(BaseException):
    """A kill -9 stand-in: nothing in descend catches it."""


class _KillAt(descend.Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, loop):
        if loop.step == self.step:
            raise _Killed


@pytest.mark.parametrize(
    "kill_at",
    [31, 32],  # after step 30 (one suspicious batch), after step 31 (the rollback)
    ids=["between-the-spikes-batches", "right-after-the-rollback"],
)
def test_a_checkpoint_inside_a_guard_event_resumes_exactly(digits, tmp_path, kill_at):
    """Steps 30-32 spike: 30 is suspicious, 31 confirms it (rollback), 32 is measured at the
    rolled-back weights and spikes too (a false alarm: the rate is put back). A checkpoint
    after step 30 or 31 must resume to the same run: it crashed (the first spike's reason was
    not in the checkpoint), or took the false alarm for a real spike and cut the rate."""
    X, y = digits

    def make(checkpoint, callbacks=(), resume=None):
        torch.manual_seed(0)
        inner = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        model = _Spiky(inner, {30, 31, 32})
        return descend.fit(
            model,
            (X[:480], y[:480]),
            "cross_entropy",
            optimizer=descend.optim.adam(lr=1e-3),
            epochs=4,
            verbose=0,
            seed=0,
            checkpoint=checkpoint,
            checkpoint_every=1,
            resume=resume,
            callbacks=[_Tick(model), *callbacks],
        )

    ref = make(tmp_path / "ref")
    assert [(e["step"], e["kind"]) for e in ref.history.events] == [
        (31, "rollback"),
        (32, "recalibrated"),
    ]
    ck = tmp_path / "run"
    with pytest.raises(_Killed):
        make(ck, callbacks=[_KillAt(kill_at)])
    again = make(ck, resume=True)
    assert again.history.events == ref.history.events
    for key in ("step_loss", "step_lr", "step_grad_norm", "train_loss", "val_loss"):
        assert getattr(again.history, key) == getattr(ref.history, key), key
    for a, b in zip(again.model.state_dict().values(), ref.model.state_dict().values()):
        assert torch.equal(a, b)
    assert again.best_epoch == ref.best_epoch and again.stop_reason is ref.stop_reason


class _Poisoned(_Spiky):
    """The steps numbered in ``bad`` give non-finite outputs (``_Tick`` numbers them)."""

    def forward(self, x):
        out = self.inner(x)
        return out * float("nan") if self.training and self.next_step in self.bad else out


class _Interrupt(descend.Callback):
    """Ctrl-C (as the signal handler records it) during step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, loop):
        if loop.step == self.step:
            loop._interrupt = 2


def _windowed_fit(digits, monkeypatch, checkpoint, bad, callbacks=(), resume=None):
    # The guard as on an accelerator: losses read in windows of 4 steps (16 there).
    from descend.train import loop as loop_mod

    monkeypatch.setattr(loop_mod, "Guard", lambda check_every: Guard(check_every=4))
    X, y = digits
    torch.manual_seed(0)
    model = _Poisoned(mlp(), bad)
    return descend.fit(
        model, (X[:480], y[:480]), "cross_entropy", optimizer=descend.optim.adam(lr=1e-3),
        epochs=4, verbose=0, seed=0, checkpoint=checkpoint, checkpoint_every=11, resume=resume,
        callbacks=[_Tick(model), *callbacks],
    )  # fmt: skip


def test_a_checkpoint_inside_a_guard_window_is_never_of_unjudged_steps(
    digits, tmp_path, monkeypatch
):
    """Step 10 is non-finite and the checkpoint after step 11 falls inside the guard's window
    (steps 9-12). It was written before the guard had judged steps 9-11 and made the rollback
    point: each later window rolled back to those NaN weights, the run ended with its starting
    weights. Now the guard judges the window first; a run killed later resumes exactly."""
    ref = _windowed_fit(digits, monkeypatch, tmp_path / "ref", {10, 24})
    assert [e["kind"] for e in ref.history.events] == ["rollback", "rollback"]
    assert all(torch.isfinite(p).all() for p in ref.model.parameters())
    assert ref.best_epoch == ref.epochs == 4  # it trained on after the bad steps
    ck = tmp_path / "run"
    with pytest.raises(_Killed):  # after the checkpoint at step 22, before the bad step 24
        _windowed_fit(digits, monkeypatch, ck, {10, 24}, callbacks=[_KillAt(23)])
    again = _windowed_fit(digits, monkeypatch, ck, {10, 24}, resume=True)
    assert again.history.events == ref.history.events
    for key in ("step_loss", "step_lr", "step_grad_norm", "train_loss", "val_loss"):
        assert np.array_equal(
            getattr(again.history, key), getattr(ref.history, key), equal_nan=True
        ), key
    for a, b in zip(again.model.state_dict().values(), ref.model.state_dict().values()):
        assert torch.equal(a, b)


def test_an_interrupt_inside_a_guard_window_writes_judged_weights(digits, tmp_path, monkeypatch):
    """Ctrl-C right after the non-finite step 10, before its window ended: the final
    checkpoint held the NaN weights, and the resumed run could only roll back to them."""
    from safetensors.torch import load_file

    ck = tmp_path / "run"
    cut = _windowed_fit(digits, monkeypatch, ck, {10}, callbacks=[_Interrupt(10)])
    assert cut.stop_reason is StopReason.INTERRUPTED
    assert [e["kind"] for e in cut.history.events] == ["rollback"]
    newest = descend.checkpoint.list_checkpoints(ck)[0]
    assert newest.name == "ckpt-000000010"
    tensors = load_file(str(newest / "tensors.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    again = _windowed_fit(digits, monkeypatch, ck, {10}, resume=True)
    assert [e["kind"] for e in again.history.events] == ["rollback"]
    assert all(torch.isfinite(p).all() for p in again.model.parameters())
    assert again.best_epoch == again.epochs == 4


def test_windowed_checks_snapshot_every_snapshot_every_steps():
    # On an accelerator the guard judges windows of 16 steps; the snapshot test looked only at
    # the window's last step, which is a multiple of 25 every 400 steps: a rollback went back
    # up to 400 steps instead of 25. A window that reaches a multiple now snapshots at its end.
    taken: list[int] = []
    real = Guard.snapshot

    class Spy(Guard):
        def snapshot(self, loop, force=False):
            taken.append(loop.step)
            return real(self, loop, force)

    loop, guard = _FakeLoop(1.0), Spy(check_every=16)
    guard.snapshot(loop)
    assert _feed(guard, loop, [1.0 / (1 + 0.001 * i) for i in range(200)]) is None
    assert taken == [0, 32, 64, 80, 112, 128, 160, 176]
    # checks every step (CPU): exactly at the multiples, as before
    taken.clear()
    loop, guard = _FakeLoop(1.0), Spy()
    assert _feed(guard, loop, [1.0] * 100) is None
    assert taken == [25, 50, 75, 100]


def test_a_snapshot_point_between_a_spike_and_its_confirmation_keeps_the_good_state():
    # An epoch start (a snapshot point) fell right after the first batch of a spike: the copy
    # was taken of the weights that batch's update had already moved, and the confirmed spike
    # rolled back to them. (Full-batch runs: every step is an epoch start.)
    loop, guard = _FakeLoop(1.0), Guard(snapshot_every=1000)
    with torch.no_grad():
        loop.model.weight.fill_(1.0)
    guard.snapshot(loop)
    assert _feed(guard, loop, [1.0] * 30) is None
    assert _feed(guard, loop, [5.0]) is None and guard.suspicious == 1
    with torch.no_grad():
        loop.model.weight.fill_(99.0)  # the suspicious batch's update
    guard.snapshot(loop)  # the loop's epoch-start snapshot
    assert _feed(guard, loop, [6.0]) is None
    assert [k for k, _ in loop.events] == ["rollback"]
    assert torch.all(loop.model.weight == 1.0)
    # a checkpoint still forces its state to be the rollback point (exact resume)
    with torch.no_grad():
        loop.model.weight.fill_(7.0)
    guard.snapshot(loop, force=True)
    assert _feed(guard, loop, [1.0, 5.0, 6.0]) is None
    assert torch.all(loop.model.weight == 7.0)
