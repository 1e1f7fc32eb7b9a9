"""Checkpoint format: atomic writes, verification, fallback, no pickle, mismatch errors."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch

import descend
from descend import CheckpointError
from descend import checkpoint as C


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    return X, X @ np.array([1.0, -1.0, 0.5, 2.0], dtype=np.float32)


def train(tmp, epochs=3, model=None, optimizer=None, **kw):
    kw.setdefault("checkpoint_every", "epoch")
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    return descend.fit(
        model,
        data(),
        "mse",
        optimizer=optimizer or descend.optim.adam(lr=1e-2),
        epochs=epochs,
        patience=None,
        verbose=0,
        seed=1,
        checkpoint=tmp,
        **kw,
    )


def test_tree_round_trip_keeps_structure_and_names():
    tree = (
        {"count": 3, "mu": {"w": torch.ones(2, 2), "b": torch.zeros(2)}},
        (),
        {"lr": 0.1, "scale": float("nan"), "x": None, "l": [1, "a", torch.arange(3)]},
    )
    skel, tensors = C.flatten_tree(tree, "opt/")
    back = C.unflatten_tree(skel, tensors)
    assert C.tree_signature(back) == C.tree_signature(tree)
    assert back[0]["mu"]["w"] is tree[0]["mu"]["w"] and back[1] == ()
    assert isinstance(back[0], dict) and isinstance(back[1], tuple) and np.isnan(back[2]["scale"])


def test_only_latest_two_checkpoints_kept_and_each_verifies(tmp_path):
    train(tmp_path, epochs=4)
    found = C.list_checkpoints(tmp_path)
    assert len(found) == 2
    for p in found:
        assert {f.name for f in p.iterdir()} == {C.TENSORS, C.STATE, C.MANIFEST}
        assert C._verify(p) is None
    ck = C.latest(tmp_path)
    assert ck.meta["epoch"] == 4 and ck.step == int(found[0].name.split("-")[1])


def test_resuming_a_run_that_stopped_early_trains_nothing_more(tmp_path):
    def run(**kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        X, y = data()
        y = y + torch.randn(len(y), generator=torch.Generator().manual_seed(0)).numpy()
        return descend.fit(
            model,
            (X, y),
            "mse",
            optimizer=descend.optim.adam(lr=5e-2),
            epochs=200,
            patience=2,
            verbose=0,
            seed=1,
            checkpoint=tmp_path,
            **kw,
        )

    first = run()
    assert str(first.stop_reason) == "patience_exhausted" and first.epochs < 200
    again = run(resume=True)
    assert str(again.stop_reason) == "patience_exhausted"
    assert (again.epochs, again.steps, again.best_loss) == (
        first.epochs,
        first.steps,
        first.best_loss,
    )
    assert again.history.val_loss == first.history.val_loss


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "manifest_shape"])
def test_damaged_latest_checkpoint_falls_back_with_warning(tmp_path, damage):
    train(tmp_path, epochs=3)
    newest, previous = C.list_checkpoints(tmp_path)
    target = newest / C.TENSORS
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # one bit, deep inside the tensor data
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "manifest_shape":  # valid JSON, entries not objects (was an AttributeError)
        (newest / C.MANIFEST).write_text('{"tensors.safetensors": 5, "state.json": 5}')
    else:
        (newest / C.MANIFEST).unlink()
    with pytest.warns(RuntimeWarning, match=str(newest.name)) as caught:
        ck = C.latest(tmp_path)
    assert ck.path == previous
    assert "trying the one before it" in str(caught[0].message)


def test_resume_uses_previous_checkpoint_when_latest_is_corrupt(tmp_path):
    r_full = train(tmp_path / "a", epochs=4)
    train(tmp_path / "b", epochs=3)
    newest = C.list_checkpoints(tmp_path / "b")[0]
    raw = bytearray((newest / C.STATE).read_bytes())
    raw[10] ^= 0xFF
    (newest / C.STATE).write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checksum"):
        r = train(tmp_path / "b", epochs=4, resume=True)
    assert r.history.step_loss == r_full.history.step_loss


def test_checkpoints_written_after_skipping_damaged_ones_are_kept(tmp_path):
    """Both checkpoints of a run damaged (say a copy of the directory cut short): the resumed
    run starts again and writes new ones at lower steps. They were rotated away at once (the
    damaged ones counted as the newest two), so a second kill lost everything again."""
    full = train(tmp_path / "full", epochs=4)  # 5 steps per epoch
    ck = tmp_path / "run"
    train(ck, epochs=4)
    damaged = C.list_checkpoints(ck)
    assert [p.name for p in damaged] == ["ckpt-000000020", "ckpt-000000015"]
    for p in damaged:
        (p / C.TENSORS).write_bytes((p / C.TENSORS).read_bytes()[:-10])

    class Kill(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 12:
                raise KeyboardInterrupt  # the second Ctrl-C: no final checkpoint

    with pytest.warns(RuntimeWarning, match="damaged") as caught:
        train(ck, epochs=4, resume=True, callbacks=[Kill()])
    said = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(said) == 2 and "trying the one before it" in said[0]
    assert "no earlier checkpoint is left" in said[1]  # not "using the previous one"
    good = [p.name for p in C.list_checkpoints(ck) if C._verify(p) is None]
    assert good == ["ckpt-000000010", "ckpt-000000005"]
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = train(ck, epochs=4, resume=True)
    assert again.history.step_loss == full.history.step_loss
    assert [p.name for p in C.list_checkpoints(ck)] == ["ckpt-000000020", "ckpt-000000015"]
    assert all(C._verify(p) is None for p in C.list_checkpoints(ck))


def test_an_optimizer_state_that_cannot_be_checkpointed_is_refused_before_step_1(tmp_path):
    # A user's transform keyed by position: refused when the first checkpoint was written,
    # after a whole epoch of training (hours into a long run), not at the start.
    from descend.transforms import Transform

    def init(params):
        return {"momentum": {i: torch.zeros_like(p) for i, p in enumerate(params.values())}}

    def update(grads, state, params):
        return {k: -0.01 * g for k, g in grads.items()}, state

    steps = []

    class Count(descend.Callback):
        def on_step_end(self, loop):
            steps.append(loop.step)

    with pytest.raises(CheckpointError, match="must use string keys to be checkpointed"):
        train(tmp_path, optimizer=Transform(init, update), callbacks=[Count()])
    assert steps == [] and C.list_checkpoints(tmp_path) == []


def test_planted_pickle_is_never_unpickled(tmp_path):
    train(tmp_path, epochs=1)
    ck = C.list_checkpoints(tmp_path)[0]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"x": Evil()})
    (ck / C.TENSORS).write_bytes(payload)
    # Even with a manifest that matches the planted file, loading must refuse it.
    import hashlib
    import json

    mf = json.loads((ck / C.MANIFEST).read_text())
    mf[C.TENSORS] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    (ck / C.MANIFEST).write_text(json.dumps(mf))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert C.latest(tmp_path) is None
    assert any("could not be read" in str(w.message) for w in caught)
    assert not marker.exists()


def test_resume_refuses_a_different_model_listing_names_and_shapes(tmp_path):
    train(tmp_path, epochs=1)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with pytest.raises(CheckpointError, match=r"0\.weight \(16, 4\) vs model \(8, 4\)"):
        train(tmp_path, epochs=2, model=other, resume=True)


def test_resume_refuses_a_model_of_another_dtype_naming_it(tmp_path):
    # Before: the same model in float64 was refused as "another optimizer" (its Adam moments
    # differ in dtype), with the fix "use the original optimizer" — the one already in use.
    train(tmp_path, epochs=1)
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with pytest.raises(
        CheckpointError,
        match=r"dtypes of the original run.*0\.weight float32 vs model float64.*"
        r"model\.to\(torch\.float32\)",
    ):
        train(tmp_path, epochs=2, model=wide.double(), resume=True)


def test_resume_refuses_a_different_optimizer(tmp_path):
    train(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="same optimizer"):
        train(tmp_path, epochs=2, optimizer=descend.optim.sgd(lr=0.1), resume=True)


def test_resume_refuses_a_different_loss_naming_both(tmp_path):
    # Before: a run resumed with another loss went on, its early stopping comparing the new
    # loss's values with the best loss (and history) in the first loss's units.
    train(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match=r"same loss.*'huber'.*minimized 'mse'.*\('mse'\)"):
        descend.fit(
            torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)),
            data(), "huber", optimizer=descend.optim.adam(lr=1e-2), epochs=2, patience=None,
            verbose=0, seed=1, checkpoint=tmp_path, resume=True,
        )  # fmt: skip
    assert train(tmp_path, epochs=2, resume=True).epochs == 2  # the same loss resumes


def test_resume_with_other_sample_weights_warns(tmp_path):
    # Before: the data signature left the weights out, so a run resumed with other (or no)
    # sample weights went on silently, not as the checkpoint's run would have.
    weights = np.linspace(0.1, 2.0, 200)
    train(tmp_path, epochs=1, sample_weight=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(tmp_path, epochs=2, sample_weight=weights, resume=True)
    with pytest.warns(RuntimeWarning, match=r"other training data.*w_sum"):
        train(tmp_path, epochs=3, resume=True)


def test_resume_on_other_data_warns_and_records_it(tmp_path):
    train(tmp_path / "a", epochs=1)
    # Same data: no warning, no event (the kill-and-resume tests demand bit-identical runs).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = train(tmp_path / "a", epochs=2, resume=True)
    assert not any(e["kind"] == "resumed_on_other_data" for e in same.history.events)
    # Other rows of the same shape: the run goes on, and says it is not an exact continuation.
    train(tmp_path / "b", epochs=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with pytest.warns(RuntimeWarning, match=r"other training data.*x_sum") as caught:
        other = descend.fit(
            model, data(seed=1), "mse", optimizer=descend.optim.adam(lr=1e-2), epochs=2,
            patience=None, verbose=0, seed=1, checkpoint=tmp_path / "b", resume=True,
        )  # fmt: skip
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert [e["kind"] for e in other.history.events] == ["resumed_on_other_data"]
    assert other.epochs == 2


def test_a_new_run_in_a_directory_of_another_runs_checkpoints_is_refused(tmp_path):
    # Before: the new run's checkpoint at a step both runs reached was skipped as "already on
    # disk" (the other run's state), and a resume took the newest checkpoint of either run.
    X, y = data()
    descend.fit(torch.nn.Linear(4, 1), (X, y), "mse", epochs=2, verbose=0, checkpoint=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="must not hold another run's checkpoints"):
        descend.fit(
            torch.nn.Linear(4, 1), (2 * X, y), "mse", epochs=2, verbose=0, checkpoint=tmp_path
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing touched
    # continuing it is what the directory is for
    r = descend.fit(
        torch.nn.Linear(4, 1), (X, y), "mse", epochs=3, verbose=0, checkpoint=tmp_path, resume=True
    )
    assert r.epochs == 3


def test_a_resumed_run_writing_into_another_runs_directory_is_refused(tmp_path):
    """resume= one directory, checkpoint= another that holds a second run's checkpoints: the
    two runs' files would mix (its fallback deleted by the rotation, a later resume picking
    the newest of either), so it is refused and nothing is touched."""
    X, y = data()
    mine, other = tmp_path / "mine", tmp_path / "other"
    descend.fit(torch.nn.Linear(4, 1), (X, y), "mse", epochs=2, verbose=0, checkpoint=mine)
    descend.fit(torch.nn.Linear(4, 1), (2 * X, y), "mse", epochs=3, verbose=0, checkpoint=other)
    before = sorted(p.name for p in other.iterdir())
    with pytest.raises(CheckpointError, match=r"when the run resumed from .*mine.* writes there"):
        descend.fit(
            torch.nn.Linear(4, 1), (X, y), "mse", epochs=4, verbose=0, resume=mine,
            checkpoint=other,
        )  # fmt: skip
    assert sorted(p.name for p in other.iterdir()) == before
    # into an empty directory (or its own) it goes on
    r = descend.fit(
        torch.nn.Linear(4, 1), (X, y), "mse", epochs=3, verbose=0, resume=mine,
        checkpoint=tmp_path / "new",
    )  # fmt: skip
    assert r.epochs == 3


def test_resume_from_missing_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="must name a checkpoint directory"):
        descend.fit(
            torch.nn.Linear(4, 1), data(), "mse", epochs=1, verbose=0, resume=tmp_path / "nope"
        )


def test_resume_from_one_checkpoint_folder_is_refused_naming_its_parent(tmp_path):
    # Before: a ckpt-* folder holds no ckpt-* folders, so resume=<it> started a new run from
    # scratch without a word (and wrote that run's checkpoints inside the checkpoint).
    train(tmp_path, epochs=1)
    one = C.list_checkpoints(tmp_path)[0]
    with pytest.raises(CheckpointError, match=r"one checkpoint — pass resume='.*' \(a resume"):
        train(tmp_path / "new", epochs=2, resume=one)
    with pytest.raises(CheckpointError, match=r"fit\(checkpoint=\.\.\.\).*one checkpoint"):
        train(one, epochs=2)
    assert [p.name for p in one.iterdir() if p.is_dir()] == []
    assert train(tmp_path, epochs=2, resume=True).epochs == 2  # its parent resumes


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_checkpoint_directory_is_refused_at_start(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(CheckpointError, match="writable"):
        train(ro / "ck", epochs=1)


def test_checkpoint_path_that_is_a_file_is_refused_at_start(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="must be a writable directory"):
        train(f, epochs=1)


def test_full_disk_mid_run_warns_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = C._write_bytes

    def flaky(path, data):
        if str(path).endswith(C.STATE):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(C, "_write_bytes", flaky)
    with pytest.warns(RuntimeWarning, match="No space left"):
        r = train(tmp_path, epochs=3)
    assert r.epochs == 3
    assert any(e["kind"] == "checkpoint_failed" for e in r.history.events)
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    kept = [C._read(p).meta["epoch"] for p in C.list_checkpoints(tmp_path)]
    assert kept == [3, 1]  # epoch 2's write failed; epoch 1's stayed until epoch 3's was whole


def test_full_disk_in_the_tensors_write_warns_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    # safetensors reports I/O errors as SafetensorError, not OSError: a full disk while the
    # tensors were written ended the run with that raw error instead of a warning.
    import safetensors.torch
    from safetensors import SafetensorError

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def flaky(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    with pytest.warns(RuntimeWarning, match="No space left"):
        r = train(tmp_path, epochs=3)
    assert r.epochs == 3
    assert any(e["kind"] == "checkpoint_failed" for e in r.history.events)
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    assert [C._read(p).meta["epoch"] for p in C.list_checkpoints(tmp_path)] == [3, 1]


def test_auto_cadence_writes_after_epoch_one_then_by_cost(tmp_path, monkeypatch):
    # "auto" writes at the first epoch end, then only once 20x the last write's duration has
    # passed: with the ratio made huge, a 6-epoch run of millisecond epochs writes after
    # epoch 1 and at the stop, not at every epoch.
    from descend.train import loop as L

    saved: list[int] = []
    real_save = C.save

    def counting_save(directory, ckpt):
        saved.append(ckpt.meta["epoch"])
        return real_save(directory, ckpt)

    monkeypatch.setattr(C, "save", counting_save)
    monkeypatch.setattr(L, "AUTO_CHECKPOINT_RATIO", 1e6)
    # 8-row batches: 20 steps per epoch, so every epoch start is a guard snapshot point.
    train(tmp_path / "auto", epochs=6, checkpoint_every="auto", batch_size=8)
    assert saved == [1, 6]
    saved.clear()
    train(tmp_path / "epoch", epochs=6, checkpoint_every="epoch")
    assert saved == [1, 2, 3, 4, 5, 6]
    saved.clear()
    # The real ratio on a fast disk still writes at least the first and the last epoch.
    monkeypatch.setattr(L, "AUTO_CHECKPOINT_RATIO", 20)
    train(tmp_path / "real", epochs=6, checkpoint_every="auto")
    assert saved[-1] == 6 and saved[0] in (1, 5)
    saved.clear()
    # Epochs shorter than the guard's snapshot_every (25 steps): "auto" writes only at the
    # epoch ends where the guard snapshots anyway, here every 25 // 5 = 5th epoch, so the
    # rollback point never depends on wall time.
    monkeypatch.setattr(L, "AUTO_CHECKPOINT_RATIO", 0.0)
    train(tmp_path / "short", epochs=12, checkpoint_every="auto")
    assert saved == [5, 10, 12]


@pytest.mark.parametrize("bad", ["hourly", 0, 2.5, True])
def test_bad_checkpoint_every_is_refused_naming_the_choices(tmp_path, bad):
    with pytest.raises(descend.ConfigError) as e:
        train(tmp_path, epochs=1, checkpoint_every=bad)
    text = str(e.value)
    assert "checkpoint_every must be 'auto', 'epoch' or an integer >= 1" in text
    assert "checkpoint_every=500" in text


def test_resume_on_other_streamed_data_warns_too(tmp_path):
    # A DataLoader has no sums to compare, only sizes; those may be None-free ints or not.
    from torch.utils.data import DataLoader, TensorDataset

    X, y = (torch.as_tensor(a) for a in data())
    loader = lambda n: DataLoader(TensorDataset(X[:n], y[:n]), batch_size=20)  # noqa: E731
    kw = dict(optimizer=descend.optim.adam(lr=1e-2), verbose=0, checkpoint=tmp_path)
    descend.fit(torch.nn.Linear(4, 1), loader(200), "mse", epochs=1, seed=0, **kw)
    with pytest.warns(RuntimeWarning, match="steps_per_epoch 10 then, 5 now"):
        r = descend.fit(torch.nn.Linear(4, 1), loader(100), "mse", epochs=2, resume=True, **kw)
    assert r.history.events[-1]["kind"] == "resumed_on_other_data"


def test_resuming_past_a_smaller_budget_says_there_was_nothing_to_train(tmp_path):
    # A 5-epoch run resumed with epochs=2: it said "Used the whole budget of 2 epochs ...
    # (val_loss at epoch 5)"; now the sentence says why nothing trained and what to pass.
    X = np.random.default_rng(0).normal(size=(60, 3))
    kw = dict(lr=1e-2, verbose=0, seed=0, checkpoint=tmp_path / "ck")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    descend.fit(model, (X, X[:, 0]), "mse", epochs=5, **kw)
    r = descend.fit(model, (X, X[:, 0]), "mse", epochs=2, resume=True, **kw)
    assert r.stop_message.startswith(
        "Nothing to train: the checkpoint resumed had already run 5 epochs, more than epochs=2"
    )
    assert r.stop_message.endswith("Pass a larger epochs= to train on.")
    same = descend.fit(model, (X, X[:, 0]), "mse", epochs=5, resume=True, **kw)
    assert same.stop_message.startswith("Used the whole budget of 5 epochs")


def test_a_resumed_run_shows_only_its_own_events(tmp_path):
    # The progress display printed the events of the run that wrote the checkpoint again at
    # the resumed run's first epoch end.
    import io

    from descend.train.callbacks import PlainProgress

    X = torch.randn(64, 3)
    y = X.sum(1, keepdim=True)

    class Note(descend.Callback):
        wants_steps = False

        def __init__(self, at):
            self.at = at

        def on_epoch_end(self, loop):
            if loop.epoch == self.at:
                loop.record_event("note", f"a note at epoch {self.at}")

    def run(epochs, at, **kw):
        torch.manual_seed(0)
        buf = io.StringIO()
        descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", optimizer=descend.optim.adam(lr=1e-2),
                    epochs=epochs, seed=0, checkpoint=tmp_path, patience=None,
                    callbacks=[Note(at), PlainProgress(buf)], **kw)  # fmt: skip
        return buf.getvalue()

    first = run(2, at=1)
    assert first.count("! a note at epoch 1") == 1
    again = run(4, at=3, resume=True)
    assert "a note at epoch 1" not in again
    assert again.count("! a note at epoch 3") == 1


def test_an_interrupted_run_resumes_to_the_same_rollback_point(tmp_path):
    # Ctrl-C / SIGTERM writes a checkpoint between the guard's snapshot points (step 10; the
    # last snapshot was the step-9 checkpoint). The resumed run took its own state at step 10
    # as the rollback point, so the rollback (then at step 11) restored another state than the
    # uninterrupted run's and every later weight and loss differed.
    import signal

    rng = np.random.default_rng(0)
    X = rng.standard_normal((320, 6)).astype(np.float32)
    y = X @ rng.standard_normal(6).astype(np.float32)
    X[::37] *= 30  # outlier rows: loss spikes the guard rolls back

    class Term(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 10:
                os.kill(os.getpid(), signal.SIGTERM)

    def run(ck, callbacks=()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        r = descend.fit(model, (X, y), "mse", optimizer=descend.optim.sgd(lr=0.05), epochs=5,
                        batch_size=32, patience=None, verbose=0, seed=3, checkpoint=ck,
                        checkpoint_every=3, resume=True, callbacks=callbacks)  # fmt: skip
        return model, r

    ref_model, ref = run(tmp_path / "ref")
    # step 10's outlier batch is as high at the step-9 snapshot (a hard batch: recalibrated),
    # its update blows the weights up, and step 11's spike (confirmed at 12) is rolled back
    assert [(e["step"], e["kind"]) for e in ref.history.events] == [
        (10, "recalibrated"),
        (12, "rollback"),
    ]
    stopped = run(tmp_path / "ck", [Term()])[1]
    assert str(stopped.stop_reason) == "interrupted" and stopped.steps == 10
    model, r = run(tmp_path / "ck")
    assert r.history.step_loss == ref.history.step_loss
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_default_plan_interrupted_mid_epoch_resumes_with_the_same_decay_record(tmp_path):
    # 7 epochs of 8 steps: the budget's decay starts at step 45, inside epoch 6, and the
    # uninterrupted run records it at epoch 6's end. Resumed from a checkpoint at step 46, the
    # plan's start-of-run check took that decision at once (epoch 5, the patience count reset
    # before epoch 6 was judged), so Result.autopilot differed from the uninterrupted run's.
    import signal

    rng = np.random.default_rng(0)
    X = rng.standard_normal((320, 6)).astype(np.float32)
    y = X @ rng.standard_normal(6).astype(np.float32) + 0.1 * rng.standard_normal(320)

    class Term(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 46:
                os.kill(os.getpid(), signal.SIGTERM)

    def run(ck, callbacks=()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        r = descend.fit(model, (X, y), "mse", epochs=7, patience=3, batch_size=32, verbose=0,
                        seed=3, checkpoint=ck, resume=True, callbacks=callbacks)  # fmt: skip
        return model, r

    ref_model, ref = run(tmp_path / "ref")
    assert ref.autopilot["decay"]["start_step"] == 45 and ref.autopilot["decay"]["epoch"] == 6
    stopped = run(tmp_path / "ck", [Term()])[1]
    assert str(stopped.stop_reason) == "interrupted" and stopped.steps == 46
    model, r = run(tmp_path / "ck")
    assert r.autopilot["decay"] == ref.autopilot["decay"]
    assert r.history.step_loss == ref.history.step_loss and r.stop_message == ref.stop_message
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_training_metric_of_an_interrupted_epoch_is_summed_as_without_the_interrupt(tmp_path):
    # Without validation data the metric (R²) is summed over the epoch's training outputs,
    # batched until the epoch ends. The interrupt's checkpoint summed the batches before it
    # early, so the resumed epoch's R² was summed in another order and differed in its last
    # bits from the uninterrupted run's.
    import signal

    X, y = data(n=320)
    y = y + np.random.default_rng(1).standard_normal(320).astype(np.float32)

    class Term(descend.Callback):
        def __init__(self, at):
            self.at = at

        def on_step_end(self, loop):
            if loop.step == self.at:
                os.kill(os.getpid(), signal.SIGTERM)

    def run(ck, callbacks=()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        return descend.fit(model, (X, y), "mse", optimizer=descend.optim.adam(lr=1e-2), epochs=3,
                           validation=None, patience=None, verbose=0, seed=1, checkpoint=ck,
                           resume=True, callbacks=callbacks)  # fmt: skip

    ref = run(tmp_path / "ref")
    for at in (3, 7):  # (one of them is not enough: some orders happen to round alike)
        assert str(run(tmp_path / f"ck{at}", [Term(at)]).stop_reason) == "interrupted"
        r = run(tmp_path / f"ck{at}")
        assert r.history.step_loss == ref.history.step_loss
        assert r.history.metric == ref.history.metric


def test_resuming_a_run_that_used_its_max_time_trains_nothing_more(tmp_path):
    # Before: every resume of the finished run trained one more step and recorded it as an
    # epoch of its own (the budget was spent, so the run stopped after that step).
    import time

    class Slow(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 3:
                time.sleep(0.3)  # past max_time: the run stops after this step

    first = train(tmp_path, epochs=50, max_time=0.2, callbacks=[Slow()])
    assert str(first.stop_reason) == "max_time" and first.steps == 3
    again = train(tmp_path, epochs=50, max_time=0.2, resume=True)
    assert str(again.stop_reason) == "max_time"
    assert (again.steps, again.epochs) == (first.steps, first.epochs)
    assert again.history.step_loss == first.history.step_loss
    assert again.history.train_loss == first.history.train_loss
    longer = train(tmp_path, epochs=2, max_time=60, resume=True)  # a larger budget goes on
    assert longer.steps > first.steps
