"""`descend resume`: a CLI run killed with SIGKILL continues to the same final model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARGS = ["fit", "digits", "--epochs", "8", "--seed", "5", "--hidden", "64", "--quiet"]


def env():
    return dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")


def descend(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "descend", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_run(tmp_path, args=ARGS, output=subprocess.DEVNULL):
    """``descend <args> --out run`` in a process of its own, stdout and stderr to ``output``."""
    return subprocess.Popen(
        [sys.executable, "-m", "descend", *args, "--out", "run"],
        cwd=tmp_path,
        env=env(),
        stdout=output,
        stderr=output,
    )


def kill_when(tmp_path, ready, poll=0.02):
    """Start the run ``run`` and SIGKILL it as soon as ``ready()`` (it must still be running)."""
    proc = start_run(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(poll)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_completed_run(tmp_path):
    """``run`` ended with ``ref``'s model and epoch lines (times aside), and completed."""
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def epochs(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]

    assert epochs("run") == epochs("ref")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_killed_cli_run_resumes_to_identical_model(tmp_path):
    ref = descend(*ARGS, "--out", "ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    metrics = tmp_path / "run" / "metrics.jsonl"
    kill_when(tmp_path, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
    assert not (tmp_path / "run" / "summary.json").exists()

    res = descend("resume", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert_same_completed_run(tmp_path)

    again = descend("resume", "run", cwd=tmp_path)
    assert again.returncode == 2 and "completed run" in again.stderr


def test_cli_run_killed_before_its_first_epoch_starts_again_as_the_same_run(tmp_path):
    # The default policy's range test and race run before the first epoch (a race can take a
    # quarter of the budget): a run killed then still has its directory and config, and
    # `descend resume` starts it again from the beginning, with the same seed.
    ref = descend(*ARGS, "--out", "ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    kill_when(tmp_path, (tmp_path / "run" / "config.json").exists, poll=0.002)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()  # no epoch had ended
    assert not list((tmp_path / "run" / "checkpoints").glob("ckpt-*"))  # none of the run's own

    shown = descend("show", "run", cwd=tmp_path)
    assert shown.returncode == 2 and "descend resume run" in shown.stderr
    res = descend("resume", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert_same_completed_run(tmp_path)


def test_a_run_whose_output_reader_goes_away_still_completes(tmp_path):
    # `descend fit ... | head`: after the reader is gone every write to stdout fails (EPIPE);
    # the run goes on silently and saves everything, as if nobody had been watching.
    args = ["fit", "digits", "--epochs", "40", "--patience", "0", "--hidden", "64", "--seed", "5"]
    proc = start_run(tmp_path, args, output=subprocess.PIPE)
    assert proc.stdout.readline()  # the first line, then the reader leaves
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 40
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_refused_resume_leaves_the_run_and_its_summary_as_they_were(tmp_path, monkeypatch):
    # A resume that fit refused before training (here: the run's recorded CUDA device on a
    # machine without one) wrote a 'failed' summary over the interrupted run's, and predict
    # then refused the model the run had saved.
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from typer.testing import CliRunner

    from descend import cli

    monkeypatch.chdir(tmp_path)
    X = np.random.default_rng(0).normal(size=(60, 2))
    pcsv.write_csv(pa.table({"a": X[:, 0], "b": X[:, 1], "y": X @ [1.0, -2.0]}), "d.csv")
    runner = CliRunner()
    made = runner.invoke(
        cli.app, ["fit", "d.csv", "-t", "y", "--epochs", "2", "--out", "run", "-q"]
    )
    assert made.exit_code == 0, made.output
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"  # as a Ctrl-C after the first epoch leaves it
    (run / "summary.json").write_text(json.dumps(summary))
    config = json.loads((run / "config.json").read_text())
    config["options"]["device"] = "cuda"  # trained on a GPU machine
    (run / "config.json").write_text(json.dumps(config))
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resumed = runner.invoke(cli.app, ["resume", "run", "-q"])
    assert resumed.exit_code == 2, resumed.output
    assert "CUDA is not available" in resumed.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    predicted = runner.invoke(cli.app, ["predict", "run", "d.csv"])
    assert predicted.exit_code == 0, predicted.output
