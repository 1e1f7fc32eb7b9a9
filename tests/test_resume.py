"""Kill a training run with SIGKILL at many points, resume it, and demand bit-identical results.

Each kill sequence runs the child script (tests/helpers/resume_child.py) repeatedly in the same
checkpoint directory: the first run is killed at step k1, the resumed run at k2 > k1, ... and
the last one finishes. Final parameters and the full per-step history must equal an
uninterrupted run exactly (CPU). The sabotage tests show the comparison can fail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CHILD = Path(__file__).parent / "helpers" / "resume_child.py"
SRC = str(Path(__file__).resolve().parents[1] / "src")
STEPS_PER_EPOCH = 10  # 320 training rows / batch 32
TOTAL_STEPS = 6 * STEPS_PER_EPOCH


def run_child(ckdir, out, kill_step=-1, kill_in_write=-1, sabotage=""):
    env = dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        DESCEND_SABOTAGE=sabotage,
    )
    return subprocess.run(
        [sys.executable, str(CHILD), str(ckdir), str(out), str(kill_step), str(kill_in_write)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(out):
    return load_file(f"{out}/params.safetensors"), json.loads(Path(out, "history.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    p = run_child(d / "ck", d / "out")
    assert p.returncode == 0, p.stderr
    params, hist = load(d / "out")
    assert hist["steps"] == TOTAL_STEPS
    return params, hist


def kill_sequence(tmp_path, kills, *, kill_in_write=None, sabotage=""):
    ck, out = tmp_path / "ck", tmp_path / "out"
    for i, k in enumerate(kills):
        w = kill_in_write if (kill_in_write is not None and i == 0) else -1
        p = run_child(ck, out, kill_step=k, kill_in_write=w, sabotage=sabotage)
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr[-2000:])
        assert not out.exists()
    p = run_child(ck, out, sabotage=sabotage)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not list(ck.glob(".tmp-ckpt-*")), "stale temporary checkpoint left behind"
    return load(out)


def assert_identical(got, ref):
    params, hist = got
    rparams, rhist = ref
    assert params.keys() == rparams.keys()
    for k in params:
        assert torch.equal(params[k], rparams[k]), f"parameter {k} differs after resume"
    for key in ("step_loss", "step_lr", "step_grad_norm", "train_loss", "val_loss", "metric"):
        assert hist[key] == rhist[key], f"history {key} differs after resume"
    assert hist["steps"] == rhist["steps"] and hist["best_epoch"] == rhist["best_epoch"]


def test_random_kill_points_resume_bit_identical(tmp_path, reference):
    rnd = random.Random(2026)
    kills = sorted(rnd.sample(range(2, TOTAL_STEPS - 1), 7))
    assert_identical(kill_sequence(tmp_path, kills), reference)


def test_forced_kill_points_resume_bit_identical(tmp_path, reference):
    kills = [
        3,  # before the first checkpoint (step 7): restarts from scratch
        STEPS_PER_EPOCH,  # at an epoch boundary (last step of epoch 1)
        40,  # right after the learning-rate change at step 40
        41,
        2 * STEPS_PER_EPOCH + 1,  # first step of an epoch, just after its checkpoint
    ]
    kills = sorted(set(kills))
    assert_identical(kill_sequence(tmp_path, kills), reference)


def test_kill_inside_checkpoint_write_keeps_a_loadable_checkpoint(tmp_path, reference):
    # Killed while writing the 2nd checkpoint (tensors written, manifest not): the first
    # checkpoint must still load, the temporary directory must be cleaned, results identical.
    got = kill_sequence(tmp_path, [TOTAL_STEPS], kill_in_write=2)
    assert_identical(got, reference)


@pytest.mark.parametrize("sabotage", ["rng", "opt"])
def test_the_comparison_can_fail(tmp_path, reference, sabotage):
    got = kill_sequence(tmp_path, [23], sabotage=sabotage)
    with pytest.raises(AssertionError):
        assert_identical(got, reference)
