"""The `descend` command, end to end: the real command in a subprocess for the flows a person
runs (fit, predict, runs, Ctrl-C), and the same app in-process (typer's CliRunner) for the many
refused inputs, which would otherwise each pay torch's import time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from descend import cli, runs
from descend.models import mlp
from descend.tabular import Preprocessor

SRC = Path(__file__).resolve().parents[1] / "src"
# Control characters other than newline (ANSI escapes, carriage returns, backspaces ...).
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "COLUMNS")
    }
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    # Tiny models: one thread avoids torch's thread contention on a loaded 2-core machine.
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def descend(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real command: ``python -m descend ARGS`` with stdout/stderr captured (not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "descend", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


MODEL = "model.safetensors"


def invoke(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch):
    """The same app in-process (no new interpreter)."""
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli.app, args, prog_name="descend")


def write_linear_csv(path: Path, n: int = 300, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) + 3.0 + rng.normal(scale=0.1, size=n)
    pcsv.write_csv(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "price": y}), path)


def iris_table() -> pa.Table:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    cols = {f"f{i}": bunch.data[:, i] for i in range(4)}
    cols["species"] = [str(bunch.target_names[t]) for t in bunch.target]
    return pa.table(cols)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory):
    """One real regression run, shared by the tests that read a finished run directory."""
    work = tmp_path_factory.mktemp("reg")
    write_linear_csv(work / "lin.csv")
    proc = descend(
        "fit",
        "lin.csv",
        "--target",
        "price",
        "--epochs",
        "40",
        "--seed",
        "0",
        "--out",
        "runs/lin",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    return work, work / "runs" / "lin", proc


# ----------------------------------------------------------------------------- subprocess flows


def test_fit_regression_end_to_end(reg_run):
    _, run_dir, proc = reg_run
    summary = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    assert summary["status"] == "completed"
    assert summary["task"] == "regression" and summary["loss"] == "mse"
    assert summary["test"]["r2"] > 0.9
    assert summary["test"]["rmse"] > 0 and summary["test"]["mae"] > 0
    out = proc.stdout
    assert "task: regression" in out and "pass --task classification to override" in out
    assert f"run saved to {Path('runs') / 'lin'}" in out
    assert "test (60 rows): rmse" in out
    assert summary["stop_message"] in out
    # Not a terminal: one plain line per epoch and no control characters anywhere.
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == summary["epochs"]
    assert not CONTROL.search(out) and not CONTROL.search(proc.stderr)
    assert proc.stderr == ""


def test_run_directory_is_complete_and_loadable(reg_run):
    work, run_dir, _ = reg_run
    assert {p.name for p in run_dir.iterdir()} == {*runs.RUN_FILES, runs.CHECKPOINT_DIR}
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    summary = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    spec = json.loads((run_dir / runs.MODEL_SPEC_FILE).read_text())
    prep = json.loads((run_dir / runs.PREPROCESS_FILE).read_text())
    metrics = [json.loads(line) for line in (run_dir / runs.METRICS_FILE).read_text().splitlines()]
    # config.json: enough to reproduce exactly.
    opts = config["options"]
    assert opts["seed"] == 0 and opts["epochs"] == 40 and opts["task"] == "regression"
    assert opts["hidden"] == [64, 64] and opts["target"] == "price"
    assert config["data"]["sha256"] == hashlib.sha256((work / "lin.csv").read_bytes()).hexdigest()
    assert Path(config["data"]["absolute_path"]) == (work / "lin.csv").resolve()
    assert {"descend", "torch", "numpy", "python"} <= set(config["versions"])
    assert config["reproduce"].startswith("descend fit ") and "--seed 0" in config["reproduce"]
    assert config["split"] == {
        "train": 180,
        "validation": 60,
        "test": 60,
        "seed": 0,
        "stratified": False,
    }
    # metrics.jsonl: one object per epoch.
    assert [m["epoch"] for m in metrics] == list(range(1, summary["epochs"] + 1))
    assert all({"train_loss", "val_loss", "r2", "lr", "time", "best"} <= set(m) for m in metrics)
    # The model: safetensors keyed by parameter name, matching model.json.
    state = load_file(str(run_dir / runs.MODEL_FILE))
    assert {k: list(v.shape) for k, v in state.items()} == spec["parameters"]
    model = mlp(**{**spec["spec"], "hidden": tuple(spec["spec"]["hidden"])})
    model.load_state_dict(state)
    assert Preprocessor.from_dict(prep).feature_names == ["a", "b", "c"]
    assert summary["model_bytes"] == (run_dir / runs.MODEL_FILE).stat().st_size
    assert summary["n_parameters"] == sum(v.numel() for v in state.values())
    assert (run_dir / runs.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob(".*"))  # no temporary files left behind


def test_predict_round_trip_matches_the_model_in_process(reg_run, tmp_path):
    _, run_dir, _ = reg_run
    new = tmp_path / "new.csv"
    write_linear_csv(new, n=25, seed=7)
    table = pcsv.read_csv(new).drop_columns(["price"])
    pcsv.write_csv(table, new)
    proc = descend("predict", str(run_dir), str(new), "-o", "pred.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 25 predictions to pred.csv" in proc.stdout
    got = pcsv.read_csv(tmp_path / "pred.csv")
    assert got.column_names == ["price"]
    # In-process: rebuild from model.json + safetensors, apply preprocess.json, call the model.
    spec = json.loads((run_dir / "model.json").read_text())["spec"]
    model = mlp(
        spec["in_features"],
        spec["out_features"],
        hidden=tuple(spec["hidden"]),
        activation=spec["activation"],
    )
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    model.eval()
    pre = Preprocessor.load(run_dir / "preprocess.json")
    X, _ = pre.transform(table)
    with torch.no_grad():
        expected = pre.inverse_transform_target(model(torch.from_numpy(X))[:, 0].numpy())
    np.testing.assert_allclose(got["price"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_parquet_files_pandas_index_is_no_feature(tmp_path, monkeypatch):
    # A filtered DataFrame saved with to_parquet carries its index as a column: trained on as a
    # feature, it made predictions on the same data as CSV fail ("no column __index_level_0__").
    pytest.importorskip("pandas")
    df = iris_table().to_pandas()
    df = df[df.f0 > 4.5]
    df.to_parquet(tmp_path / "iris.parquet")
    df.to_csv(tmp_path / "iris.csv", index=False)
    args = ["--target", "species", "--epochs", "3", "--seed", "0", "--quiet"]
    result = invoke(["fit", "iris.parquet", *args, "--out", "runs/a"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "runs/a/preprocess.json").read_text())
    assert "__index_level_0__" not in json.dumps(spec)
    result = invoke(["predict", "runs/a", "iris.csv", "-o", "p.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert pcsv.read_csv(tmp_path / "p.csv").num_rows == len(df)
    result = invoke(
        ["fit", "iris.parquet", "--target", "species", "--epochs", "1", "--out", "runs/b"],
        tmp_path,
        monkeypatch,
    )
    assert "Left out the pandas index stored in the Parquet file (['__index_level_0__'])" in (
        result.output
    )


def test_fit_classification_parquet_with_text_labels(tmp_path, monkeypatch):
    table = iris_table()
    pq.write_table(table, tmp_path / "iris.parquet")
    proc = descend(
        "fit",
        "iris.parquet",
        "--target",
        "species",
        "--epochs",
        "30",
        "--lr",
        "0.01",
        "--batch-size",
        "16",
        "--seed",
        "0",
        "--out",
        "runs/iris",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task: classification — target 'species': text labels" in proc.stdout
    summary = json.loads((tmp_path / "runs/iris/summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8
    assert 0 < summary["test"]["log_loss"] < 1.0
    assert summary["classes"] == ["setosa", "versicolor", "virginica"]
    # Predictions: labels in their original form, one probability column per class.
    pq.write_table(table.drop_columns(["species"]), tmp_path / "new.parquet")
    result = invoke(
        ["predict", "runs/iris", "new.parquet", "-o", "pred.csv"], tmp_path, monkeypatch
    )
    assert result.exit_code == 0, result.output
    pred = pcsv.read_csv(tmp_path / "pred.csv")
    assert pred.column_names == ["species", "prob_setosa", "prob_versicolor", "prob_virginica"]
    assert set(pred["species"].to_pylist()) <= {"setosa", "versicolor", "virginica"}
    probs = np.stack([pred[c].to_numpy() for c in pred.column_names[1:]], axis=1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    accuracy = np.mean(
        np.asarray(pred["species"].to_pylist()) == np.asarray(table["species"].to_pylist())
    )
    assert accuracy > 0.8
    # -o x.parquet writes Parquet (it wrote CSV bytes into a .parquet file), the same table
    result = invoke(
        ["predict", "runs/iris", "new.parquet", "-o", "pred.parquet"], tmp_path, monkeypatch
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "pred.parquet").equals(pred)
    # an extension predict does not write is refused before any work, nothing written
    result = invoke(["predict", "runs/iris", "new.parquet", "-o", "p.json"], tmp_path, monkeypatch)
    assert result.exit_code == 2 and "must end in .csv or .parquet" in result.output
    assert not (tmp_path / "p.json").exists()


def test_a_pandas_category_target_in_parquet_is_classification(tmp_path, monkeypatch):
    # A pandas `category` column is dictionary-encoded in Parquet: fit crashed in pyarrow's
    # count_distinct (no dictionary kernel). An unused category is no class.
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    codes = pa.array((x > 0).astype(np.int8))
    labels = pa.DictionaryArray.from_arrays(codes, pa.array(["no", "yes", "unused"]))
    pq.write_table(pa.table({"x": x, "label": labels}), tmp_path / "cat.parquet")
    args = ["fit", "cat.parquet", "-t", "label", "--epochs", "2", "--seed", "0", "--out", "r"]
    result = invoke(args, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "task: classification" in result.stdout
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert summary["classes"] == ["no", "yes"]
    result = invoke(["predict", "r", "cat.parquet", "-o", "p.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert pcsv.read_csv(tmp_path / "p.csv").column_names == ["label", "prob_no", "prob_yes"]


def test_ctrl_c_saves_the_best_model_and_exits_130(tmp_path):
    write_linear_csv(tmp_path / "lin.csv", n=600)
    log = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "descend",
            "fit",
            "lin.csv",
            "--target",
            "price",
            "--epochs",
            "100000",
            "--patience",
            "0",
            "--max-time",
            "90",
            "--out",
            "runs/int",
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    metrics = tmp_path / "runs/int/metrics.jsonl"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 130, f"{err}\n{out[-2000:]}"
    assert "Interrupted by the user" in out and "saved the best model so far" in out
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "runs/int/summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "interrupted"
    assert summary["best_epoch"] >= 1
    assert load_file(str(tmp_path / "runs/int/model.safetensors"))


def test_ctrl_c_while_the_learning_rate_is_chosen_keeps_a_run_to_resume(tmp_path, monkeypatch):
    from descend.train import autopilot

    write_linear_csv(tmp_path / "lin.csv", n=200)
    args = ["fit", "lin.csv", "--target", "price", "--epochs", "3", "--seed", "4", "-q"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(autopilot._lr_find, "sweep", interrupted)
        result = invoke([*args, "--out", "run"], tmp_path, monkeypatch)
    assert result.exit_code == 130, result.output
    assert "nothing trained yet" in result.stderr and "descend resume run" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and not (tmp_path / "run" / MODEL).exists()

    resumed = invoke(["resume", "run", "-q"], tmp_path, monkeypatch)
    assert resumed.exit_code == 0, resumed.output
    assert "starting it again" not in resumed.stdout  # --quiet
    ref = invoke([*args, "--out", "ref"], tmp_path, monkeypatch)
    assert ref.exit_code == 0, ref.output
    a, b = load_file(tmp_path / "ref" / MODEL), load_file(tmp_path / "run" / MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_and_runs_point_a_run_interrupted_before_training_to_resume(tmp_path, monkeypatch):
    # predict said "stopped before saving its model; train it again" and runs "model files
    # missing" for a run that `descend resume` continues (what fit itself says at the Ctrl-C)
    from descend.train import autopilot

    write_linear_csv(tmp_path / "lin.csv", n=60)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(autopilot._lr_find, "sweep", interrupted)
        args = ["fit", "lin.csv", "--target", "price", "--out", "runs/r", "-q"]
        assert invoke(args, tmp_path, monkeypatch).exit_code == 130
    result = invoke(["predict", "runs/r", "lin.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert "`descend resume runs/r` continues it" in result.stderr
    assert "train it again" not in result.stderr
    result = invoke(["runs"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "(`descend resume runs/r` continues it)" in result.stdout


def test_resume_prints_the_held_out_metrics_as_fit_does(tmp_path, monkeypatch):
    # resume printed the test line alone: a run without a test split ended with no metrics
    from descend.train import autopilot

    write_linear_csv(tmp_path / "lin.csv", n=60)
    args = ["fit", "lin.csv", "-t", "price", "--epochs", "2", "--test-fraction", "0", "-q"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(autopilot._lr_find, "sweep", interrupted)
        assert invoke([*args, "--out", "r"], tmp_path, monkeypatch).exit_code == 130
    resumed = invoke(["resume", "r", "-q"], tmp_path, monkeypatch)
    assert resumed.exit_code == 0, resumed.output
    assert "validation (12 rows, no test split): rmse " in resumed.stdout


def test_resume_commands_in_messages_quote_a_path_with_spaces(tmp_path, monkeypatch):
    # "`descend resume my run` starts it again": pasted, resume got two arguments
    from descend.train import autopilot

    write_linear_csv(tmp_path / "lin.csv", n=60)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(autopilot._lr_find, "sweep", interrupted)
        args = ["fit", "lin.csv", "--target", "price", "--out", "my run", "-q"]
        result = invoke(args, tmp_path, monkeypatch)
    assert result.exit_code == 130
    assert "`descend resume 'my run'` starts it again" in result.stderr
    result = invoke(["predict", "my run", "lin.csv"], tmp_path, monkeypatch)
    assert "`descend resume 'my run'` continues it" in result.stderr
    (tmp_path / "my run" / "summary.json").unlink()  # as if killed
    result = invoke(["show", "my run"], tmp_path, monkeypatch)
    assert "`descend resume 'my run'`" in result.stderr


def test_a_cli_run_killed_during_the_race_goes_on_from_the_race(tmp_path, monkeypatch):
    from descend.train import autopilot

    class Killed(BaseException):  # a kill -9 stand-in: nothing catches it
        pass

    args = ["fit", "digits", "--hidden", "64", "--epochs", "30", "--seed", "2", "-q"]
    ref = invoke([*args[:-1], "--out", "ref"], tmp_path, monkeypatch)  # not quiet: the log
    assert ref.exit_code == 0, ref.output
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    k = summary["autopilot"]["race_epochs"]
    assert k > 2  # a race ran
    # metrics.jsonl holds every epoch of the run, the race winner's first ones included
    lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, summary["epochs"] + 1))
    # ... and so does the plain log, one line per epoch (it began after the race's epochs),
    # the race winner's marked as such
    logged = re.findall(r"^epoch +(\d+)/30 .*$", ref.stdout, flags=re.M)
    assert [int(e) for e in logged] == list(range(1, summary["epochs"] + 1))
    marked = [ln for ln in ref.stdout.splitlines() if ln.endswith("(race winner)")]
    assert len(marked) == k and marked[0].startswith("epoch  1/30  train_loss ")
    save = autopilot._Race._save

    def save_then_die(race):
        save(race)
        if race.epoch == 2:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(autopilot, "RACE_CHECKPOINT_RATIO", 0.0)
        m.setattr(autopilot._Race, "_save", save_then_die)
        with pytest.raises(Killed):
            invoke([*args, "--out", "run"], tmp_path, monkeypatch)
    assert (tmp_path / "run" / "checkpoints" / "race" / "ckpt-000000002").is_dir()
    resumed = invoke(["resume", "run"], tmp_path, monkeypatch)
    assert resumed.exit_code == 0, resumed.output
    assert "the race goes on from its checkpoint" in resumed.stdout
    a, b = load_file(tmp_path / "ref" / MODEL), load_file(tmp_path / "run" / MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def epochs(run):
        text = (tmp_path / run / "metrics.jsonl").read_text()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in text.splitlines()]

    assert epochs("run") == epochs("ref")


def test_bad_input_in_a_real_process_is_one_line_exit_2(tmp_path):
    proc = descend("fit", "missing.csv", "--target", "y", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data file 'missing.csv' must exist")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- in-process


def test_runs_lists_completed_corrupt_and_incomplete_runs(reg_run, tmp_path, monkeypatch):
    _, run_dir, _ = reg_run
    base = tmp_path / "runs"
    shutil.copytree(run_dir, base / "good")
    shutil.copytree(run_dir, base / "broken")
    (base / "broken" / "summary.json").write_text('{"status": "compl')
    shutil.copytree(run_dir, base / "cut")
    (base / "cut" / "summary.json").unlink()
    (base / "not-a-run").mkdir()
    proc = invoke(["runs"], tmp_path, monkeypatch)
    assert proc.exit_code == 0, proc.output
    lines = {
        name: line
        for line in proc.stdout.splitlines()
        for name in ("good", "broken", "cut", "not-a-run")
        if f" {name} " in line
    }
    assert "completed" in lines["good"] and "r2 0.9" in lines["good"]
    assert "lin" in lines["good"] and "regression" in lines["good"]
    assert "corrupt" in lines["broken"]
    assert "incomplete" in lines["cut"]
    assert "not-a-run" not in lines
    assert "broken: corrupt — run file" in proc.stdout
    assert "`descend resume runs/cut` continues a killed run" in proc.stdout.replace("\n", " ")
    assert not CONTROL.search(proc.stdout)


def test_runs_lists_names_with_brackets_as_they_are(reg_run, tmp_path, monkeypatch):
    # rich read the cells as markup: a run 'exp[lr]' was listed as 'exp', 'x[bold]' as 'x'
    _, run_dir, _ = reg_run
    base = tmp_path / "runs[a]"
    for name in ("exp[lr]", "x[bold]"):
        shutil.copytree(run_dir, base / name)
    proc = invoke(["runs", "-d", "runs[a]"], tmp_path, monkeypatch)
    assert proc.exit_code == 0, proc.output
    assert "runs in runs[a]/" in proc.stdout
    assert " exp[lr] " in proc.stdout and " x[bold] " in proc.stdout


def test_show_prints_summary_and_loss_curve(reg_run, monkeypatch):
    work, run_dir, _ = reg_run
    result = invoke(["show", str(run_dir)], work, monkeypatch)
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    out = result.stdout
    # (the table wraps a long sentence at the terminal's width)
    assert " ".join(summary["stop_message"].split()) in " ".join(out.split())
    assert "rmse" in out and "r2" in out and "completed" in out
    assert "epoch" in out  # the x axis of the plot, or the column of the fallback table
    assert not CONTROL.search(out)
    # The same run by name under --runs-dir.
    by_name = invoke(["show", "lin", "--runs-dir", "runs"], work, monkeypatch)
    assert by_name.exit_code == 0
    assert " ".join(summary["stop_message"].split()) in " ".join(by_name.stdout.split())


def test_show_a_one_epoch_run_prints_its_losses(tiny_run, tmp_path, monkeypatch):
    # A one-epoch run's plot had a single point per curve, drawn under the legend box: the
    # training loss was nowhere on screen.
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    (tiny_run / "metrics.jsonl").write_text(lines[0] + "\n")
    record = json.loads(lines[0])
    result = invoke(["show", "r"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    row = [ln for ln in result.stdout.splitlines() if re.match(r"\W*1\W", ln)]
    assert row and f"{record['train_loss']:.4g}" in row[0], result.stdout
    assert f"{record['val_loss']:.4g}" in row[0]


def test_show_a_run_that_stopped_before_training(tmp_path, monkeypatch):
    # A run that failed before its first epoch (no metrics.jsonl) was refused by show with
    # "must contain metrics.jsonl ... train it again", hiding the error it failed with; one
    # interrupted then showed its model as 'mlp None → … → None; 0 parameters'.
    import descend

    write_linear_csv(tmp_path / "lin.csv", n=40)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as m:
        m.setattr(descend, "fit", out_of_memory)
        failed = invoke(
            ["fit", "lin.csv", "-t", "price", "--out", "r", "-q"], tmp_path, monkeypatch
        )
    assert failed.exit_code == 1 and not (tmp_path / "r" / "metrics.jsonl").exists()
    result = invoke(["show", "r"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "failed" in result.stdout and "CUDA out of memory" in result.stdout
    assert "no epochs recorded" in result.stdout
    assert re.search(r"model +mlp 3 → .* → 1, relu; [1-9][\d,]* parameters", result.stdout)
    assert "24 train, 8 validation, 8 test" in result.stdout


def test_show_falls_back_to_a_table_without_plotext(reg_run, monkeypatch):
    work, run_dir, _ = reg_run
    monkeypatch.setitem(sys.modules, "plotext", None)  # import fails
    result = invoke(["show", str(run_dir)], work, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "loss per epoch" in result.stdout and "train_loss" in result.stdout


def test_datasets_lists_builtins(tmp_path, monkeypatch):
    result = invoke(["datasets"], tmp_path, monkeypatch)
    assert result.exit_code == 0
    for name in ("iris", "digits", "diabetes", "wine"):
        assert name in result.stdout
    assert "1,797" in result.stdout and "10 classes" in result.stdout


def test_help_documents_every_option_with_its_default(tmp_path, monkeypatch):
    result = invoke(["fit", "--help"], tmp_path, monkeypatch)
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.stdout))
    for flag in (
        "--target",
        "--task",
        "--config",
        "--epochs",
        "--batch-size",
        "--hidden",
        "--activation",
        "--dropout",
        "--batch-norm",
        "--optimizer",
        "--lr",
        "--patience",
        "--validation-fraction",
        "--test-fraction",
        "--seed",
        "--device",
        "--max-time",
        "--max-categories",
        "--categorical",
        "--ignore",
        "--out",
        "--runs-dir",
        "--quiet",
    ):
        assert flag in text, flag
    for default in (
        "default: 100",
        "default: 32",
        "default: 0.2",
        "default: relu",
        "drawn and recorded",
        "auto: the default policy",
    ):
        assert default in text, default


def test_out_existing_nonempty_dir_is_refused_untouched(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "summary.json").write_text("{}")
    before = snapshot(out)
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--out", "mine", "--epochs", "1"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 2
    assert "error: --out 'mine' must be a new or empty directory" in result.stderr
    assert snapshot(out) == before
    assert not (tmp_path / "runs").exists()


def test_config_toml_and_command_line_precedence(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=60)
    (tmp_path / "run.toml").write_text(
        'data = "lin.csv"\ntarget = "price"\nepochs = 3\nhidden = [8]\nseed = 5\n'
        'batch-size = 8\nactivation = "tanh"\n[fit]\npatience = 4\n'
    )
    result = invoke(
        [
            "fit",
            "--config",
            "run.toml",
            "--epochs",
            "2",
            "--activation",
            "gelu",
            "--out",
            "runs/c",
            "-q",
        ],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    opts = json.loads((tmp_path / "runs/c/config.json").read_text())["options"]
    assert opts["epochs"] == 2 and opts["activation"] == "gelu"  # the command line wins
    assert opts["hidden"] == [8] and opts["seed"] == 5 and opts["batch_size"] == 8
    assert opts["patience"] == 4 and opts["data"] == str((tmp_path / "lin.csv").resolve())
    spec = json.loads((tmp_path / "runs/c/model.json").read_text())["spec"]
    assert spec["hidden"] == [8] and spec["activation"] == "gelu"
    # Quiet: no progress lines, only the summary.
    assert "epoch 1/2" not in result.stdout and "run saved to" in result.stdout


def test_config_toml_errors_name_the_file_and_key(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    (tmp_path / "bad.toml").write_text("epoch = 3\n")
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--config", "bad.toml"], tmp_path, monkeypatch
    )
    assert result.exit_code == 2
    assert "config file 'bad.toml': key 'epoch'" in result.stderr
    assert "did you mean 'epochs'" in result.stderr
    (tmp_path / "bad.toml").write_text("epochs = 'many'\n")
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--config", "bad.toml"], tmp_path, monkeypatch
    )
    assert result.exit_code == 2 and "epochs must be an integer" in result.stderr
    (tmp_path / "bad.toml").write_text("epochs = = 3\n")
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--config", "bad.toml"], tmp_path, monkeypatch
    )
    assert result.exit_code == 2 and "must be valid TOML" in result.stderr


def _rows(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


BAD_FILES = {
    "empty.csv": "",
    "header.csv": "a,b,y\n",
    "nan_target.csv": _rows("a,b,y", [f"{i},{i * 2},{i * 0.5}" for i in range(30)]).replace(
        "\n4,8,2.0\n", "\n4,8,\n"
    ),
    "many_missing.csv": _rows("a,y", [f"{i},{'' if i % 4 == 1 else i}" for i in range(30)]),
    "one_class.csv": _rows("a,b,y", [f"{i},{i * 2},yes" for i in range(30)]),
    "unknown_marks.csv": _rows("a,y", [f"{i},{'?' if i % 10 == 3 else i / 4}" for i in range(30)]),
    "junk.csv": _rows("a,b,y", [f"{i},{'abc' if i == 6 else i * 2},{i % 2}" for i in range(30)]),
    "no_features.csv": _rows("b,y", [f",{i % 2}" for i in range(30)]),
    "dup.csv": _rows("a,a,y", [f"{i},{i},{i % 2}" for i in range(10)]),
    "tiny.csv": _rows("a,y", ["1,2.5", "2,3.5"]),
    "few_per_class.csv": _rows("a,y", ["1,a", "2,b", "3,c", "4,a"]),
    "ok.csv": _rows("a,b,y", [f"{i},{i * 2},{i * 0.5}" for i in range(30)]),
    "data.xlsx": "not a spreadsheet",
    "bad_fields.csv": "a,b,y\n1,2,3\n4,5\n",
}

BAD_CASES = [
    (["fit", "missing.csv", "--target", "y"], "data file 'missing.csv' must exist"),
    (["fit", "irsi"], "did you mean 'iris'?"),
    (["fit", "data.xlsx", "--target", "y"], "must be CSV or Parquet"),
    (["fit", "empty.csv", "--target", "y"], "an empty file"),
    (["fit", "header.csv", "--target", "y"], "a header only"),
    (["fit", "bad_fields.csv", "--target", "y"], "line 3 has 2"),
    (["fit", "ok.csv", "--target", "Y"], "did you mean 'y'?"),
    (
        ["fit", "ok.csv"],
        "needs --target COLUMN, the column to predict; got no --target — pass "
        "e.g. --target y; the columns are 'a', 'b', 'y'",
    ),
    (  # an IndexError traceback: no target column was left to infer the task from
        ["fit", "ok.csv", "--target", ","],
        "needs --target COLUMN, the column to predict; got an empty --target ',' — pass "
        "e.g. --target y; the columns are 'a', 'b', 'y'",
    ),
    (  # two model outputs for one column, and a predictions file that kept one of them
        ["fit", "ok.csv", "--target", "y,a,y"],
        "--target must name each column once; got ['y'] more than once in 'y,a,y' — pass "
        "--target y,a",
    ),
    (
        ["fit", "nan_target.csv", "--target", "y"],
        "target 'y' must have a value in every row; got 1 missing at row 4",
    ),
    (
        # every missing value of the file counted (it counted those among the training rows)
        ["fit", "many_missing.csv", "--target", "y", "--seed", "0"],
        "target 'y' must have a value in every row; got 8 missing at rows 1, 5, 9, 13, 17 "
        "and 3 more (0-based data rows; lines 3, 7, 11, 15, 19 of many_missing.csv) — fill "
        "those values, or remove those rows from the file",
    ),
    (["fit", "one_class.csv", "--target", "y"], "must have at least 2 classes"),
    (  # it was a classifier with a class per number ('?' among them)
        ["fit", "unknown_marks.csv", "--target", "y"],
        "target 'y' looks numeric (most values are numbers) so every value must be a number; "
        "got ['?'] at rows 3, 13, 23 (0-based data rows; lines 5, 15, 25 of unknown_marks.csv) "
        "— write a number in those rows or remove them ('?' or '-' is no number), or pass "
        "--task classification to treat every value as a label",
    ),
    (["fit", "junk.csv", "--target", "y"], "column 'b'"),
    (
        ["fit", "junk.csv", "--target", "y"],
        "['abc'] at row 6 (0-based data rows; line 8 of junk.csv)",
    ),
    # the fix as the command's flag (it said "pass categorical=['b']", Python's spelling)
    (  # (seed 0 puts row 6 among the training rows)
        ["fit", "junk.csv", "--target", "y", "--seed", "0"],
        "or pass --categorical b to treat it as text",
    ),
    (["fit", "tiny.csv", "--target", "y"], "or set --validation-fraction/--test-fraction to 0"),
    (["fit", "no_features.csv", "--target", "y"], "'b': every value is missing"),
    (["fit", "dup.csv", "--target", "y"], "duplicate column name ['a']"),
    (["fit", "tiny.csv", "--target", "y"], "must have at least 3 rows to split"),
    (
        ["fit", "few_per_class.csv", "--target", "y", "--task", "classification"],
        "must have at least one training row per class (3 classes)",
    ),
    (["fit", "ok.csv", "--target", "y", "--hidden", "64,x"], "--hidden must be"),
    (["fit", "ok.csv", "--target", "y", "--optimizer", "adamm"], "did you mean 'adam'"),
    (  # a traceback from torch's manual_seed (exit 1)
        ["fit", "ok.csv", "--target", "y", "--seed", "18446744073709551616"],
        "--seed must be an integer in [0, 2**63); got 18446744073709551616 — pass e.g. --seed 0",
    ),
    (["fit", "ok.csv", "--target", "y", "--task", "clasification"], "--task must be one of"),
    (
        [
            "fit",
            "ok.csv",
            "--target",
            "y",
            "--validation-fraction",
            "0.6",
            "--test-fraction",
            "0.5",
        ],
        "must be below 1",
    ),
    (  # "no runs in ok.csv/ yet", exit 0
        ["runs", "--runs-dir", "ok.csv"],
        "runs directory 'ok.csv' must be a directory; got a file — pass the directory given "
        "to descend fit's --runs-dir",
    ),
    (["show", "runs/nothing"], "run directory 'runs/nothing' must exist"),
    (["predict", "runs/nothing", "ok.csv"], "run directory 'runs/nothing' must exist"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_CASES, ids=[" ".join(a) for a, _ in BAD_CASES])
def test_bad_input_exits_2_with_a_message(args, expected, tmp_path, monkeypatch):
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    result = invoke(args, tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was saved


def test_a_header_that_is_not_utf8_is_refused_without_a_traceback(tmp_path, monkeypatch):
    # A Latin-1 column name (a European spreadsheet's export) raised UnicodeDecodeError from
    # inside pyarrow: a traceback and exit status 1.
    rows = [f"{i},{i % 2}" for i in range(30)]
    (tmp_path / "eu.csv").write_bytes(_rows("Größe,y", rows).encode("latin-1"))
    result = invoke(["fit", "eu.csv", "--target", "y"], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: data file 'eu.csv' must be UTF-8 text; got bytes")
    assert "re-save it as UTF-8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_an_empty_target_list_in_a_config_file_is_refused(tmp_path, monkeypatch):
    # `target = []` was an IndexError traceback (exit 1) after the data was read
    (tmp_path / "ok.csv").write_text(BAD_FILES["ok.csv"])
    (tmp_path / "run.toml").write_text("target = []\n")
    result = invoke(["fit", "ok.csv", "--config", "run.toml"], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "needs --target COLUMN, the column to predict; got an empty --target []" in (
        result.stderr
    )
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_one_row_is_one_row_in_the_log(tmp_path, monkeypatch):
    # "1 rows, 2 columns" and "whole numbers with 1 distinct values"
    (tmp_path / "one.csv").write_text("a,y\n1,3\n")
    result = invoke(["fit", "one.csv", "-t", "y"], tmp_path, monkeypatch)
    assert "data: 'one.csv' — 1 row, 2 columns\n" in result.stdout
    assert "whole numbers with 1 distinct value;" in result.stdout
    assert result.exit_code == 2  # too few rows to split


def test_messages_name_fixes_as_the_commands_flags():
    cases = {
        "pass categorical=['b'] to treat it as text": "pass --categorical b to treat it as text",
        "pass categorical=['my col', 'z']": "pass --categorical 'my col,z'",
        "leave it out with ignore=['id']": "leave it out with --ignore id",
        "for a numeric target use task='regression'": "for a numeric target use --task regression",
        "pass device='cpu', or device=None to pick the best available": (
            "pass --device cpu, or leave --device out to pick the best available"
        ),
        "pass e.g. max_categories=50": "pass e.g. --max-categories 50",
        "set validation_fraction/test_fraction to 0": (
            "set --validation-fraction/--test-fraction to 0"
        ),
        "column 'b' must be a number": "column 'b' must be a number",  # untouched
    }
    for text, want in cases.items():
        assert cli._as_flags(text) == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("out", [None, "deep/er/run"])
def test_input_that_fit_refuses_leaves_no_run_directory(out, tmp_path, monkeypatch):
    # The run directory is made before fit starts (a run killed while the learning rate is
    # chosen keeps its config); what fit itself refuses removes it and the folders made for it.
    (tmp_path / "ok.csv").write_text(BAD_FILES["ok.csv"])
    args = ["fit", "ok.csv", "--target", "y", "--device", "cuda", "--epochs", "2"]
    result = invoke(args + (["--out", out] if out else []), tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "CUDA is not available" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "deep").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_empty_out_directory_made_beforehand_survives_a_refusal(tmp_path, monkeypatch):
    # The refusal's clean-up removed the --out directory itself, though the user had made it
    # (a place prepared for the run): only what the run wrote may go.
    (tmp_path / "ok.csv").write_text(BAD_FILES["ok.csv"])
    (tmp_path / "mine").mkdir()
    args = ["fit", "ok.csv", "--target", "y", "--device", "cuda", "--epochs", "2", "--out", "mine"]
    result = invoke(args, tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "CUDA is not available" in result.stderr
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_a_column_entirely_missing_is_dropped_with_a_note(tmp_path, monkeypatch):
    rows = [f"{i},,{i % 2}" for i in range(40)]
    (tmp_path / "d.csv").write_text(_rows("a,empty,y", rows))
    result = invoke(
        ["fit", "d.csv", "--target", "y", "--epochs", "2", "--out", "r"], tmp_path, monkeypatch
    )
    assert result.exit_code == 0, result.output
    assert "Dropped column 'empty': every value is missing" in result.stdout


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--epochs", "2", "--out", "r", "-q"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "r"


def test_predict_with_mismatched_columns_names_file_and_column(tiny_run, tmp_path, monkeypatch):
    pcsv.write_csv(pa.table({"a": [1.0], "c": [2.0]}), tmp_path / "new.csv")
    result = invoke(["predict", "r", "new.csv", "-o", "pred.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert "prediction data 'new.csv'" in result.stderr and "no column ['b']" in result.stderr
    assert not (tmp_path / "pred.csv").exists()


def test_predict_and_show_refuse_incomplete_or_corrupt_runs(tiny_run, tmp_path, monkeypatch):
    pcsv.write_csv(pa.table({"a": [1.0], "b": [0.0], "c": [2.0]}), tmp_path / "new.csv")
    model = tiny_run / "model.safetensors"
    model.write_bytes(model.read_bytes()[:50])  # cut off
    result = invoke(["predict", "r", "new.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 2 and "model.safetensors' must be a complete" in result.stderr
    (tiny_run / "summary.json").write_text("{oops")
    for args in (["show", "r"], ["predict", "r", "new.csv"]):
        result = invoke(args, tmp_path, monkeypatch)
        assert result.exit_code == 2
        assert "summary.json' must be valid JSON" in result.stderr
    (tiny_run / "summary.json").unlink()
    result = invoke(["show", "r"], tmp_path, monkeypatch)
    assert result.exit_code == 2 and "must contain summary.json" in result.stderr


def test_a_directory_that_holds_no_run_is_not_called_an_unfinished_run(
    tiny_run, tmp_path, monkeypatch
):
    # `descend show runs` (the runs directory, not a run in it) said "the run did not finish:
    # it is still running, failed before saving, or was killed; train it again"
    (tmp_path / "runs").mkdir()
    shutil.move(tiny_run, tmp_path / "runs" / "r")
    for args in (["show", "runs"], ["predict", "runs", "lin.csv"], ["resume", "runs"]):
        result = invoke(args, tmp_path, monkeypatch)
        assert result.exit_code == 2, result.output
        assert "run directory 'runs' must be a run made by descend fit" in result.stderr
        assert "e.g. 'runs/r'" in result.stderr and "did not finish" not in result.stderr
    assert invoke(["show", "r"], tmp_path, monkeypatch).exit_code == 0  # a name under runs/


def test_predict_refuses_to_write_over_the_data_it_reads(tiny_run, tmp_path, monkeypatch):
    # `-o` naming the input file silently replaced the user's data with the predictions.
    pcsv.write_csv(pa.table({"a": [1.0], "b": [0.0], "c": [2.0]}), tmp_path / "new.csv")
    kept = {n: (tmp_path / n).read_bytes() for n in ("new.csv", "lin.csv")}
    for data, out, what in (
        ("new.csv", "new.csv", "got the prediction data file 'new.csv'"),
        ("new.csv", "./sub/../new.csv", "got the prediction data file 'new.csv'"),
        ("new.csv", "lin.csv", "got the training data file of run 'r'"),
    ):
        (tmp_path / "sub").mkdir(exist_ok=True)
        result = invoke(["predict", "r", data, "-o", out], tmp_path, monkeypatch)
        assert result.exit_code == 2, result.output
        assert "must not be a file that predict reads" in result.stderr and what in result.stderr
        assert "-o " in result.stderr.split("—")[-1]  # the fix: another -o
    assert {n: (tmp_path / n).read_bytes() for n in kept} == kept
    result = invoke(["predict", "r", "new.csv", "-o", "pred.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output


def test_predict_refuses_an_unknown_or_unavailable_device_as_the_option(
    tiny_run, tmp_path, monkeypatch
):
    # --device foo said model.safetensors was damaged ("train it again"); --device cuda on a
    # machine without CUDA was a traceback from torch
    pcsv.write_csv(pa.table({"a": [1.0], "b": [0.0], "c": [2.0]}), tmp_path / "new.csv")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, expected in (
        ("foo", "device must be a torch device string"),
        ("cuda", "pass --device cpu"),
    ):
        result = invoke(["predict", "r", "new.csv", "--device", device], tmp_path, monkeypatch)
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and "train it again" not in result.stderr
    result = invoke(["predict", "r", "new.csv", "--device", "cpu"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output


def test_predict_to_stdout(tiny_run, tmp_path, monkeypatch):
    pcsv.write_csv(
        pa.table({"a": [1.0, 2.0], "b": [0.0, 1.0], "c": [2.0, 3.0]}), tmp_path / "new.csv"
    )
    result = invoke(["predict", "r", "new.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == '"price"' and len(lines) == 3


def test_default_run_directories_are_new_each_time(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    for _ in range(2):
        result = invoke(
            ["fit", "lin.csv", "--target", "price", "--epochs", "2", "-q"], tmp_path, monkeypatch
        )
        assert result.exit_code == 0, result.output
    made = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(made) == 2 and all(re.fullmatch(r"lin-\d{8}-\d{6}(-\d+)?", n) for n in made)
    listing = invoke(["runs"], tmp_path, monkeypatch)
    assert listing.exit_code == 0 and listing.stdout.count("completed") == 2


def test_without_held_out_rows_training_loss_decides(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    args = ["fit", "lin.csv", "--target", "price", "--epochs", "2", "--batch-size", "0"]
    args += ["--validation-fraction", "0", "--test-fraction", "0", "--out", "r", "-q"]
    result = invoke(args, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "no held-out metrics" in result.stdout
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert summary["monitor"] == "train_loss" and summary["test"] is None
    assert summary["rows"] == {"train": 40, "validation": 0, "test": 0}


def test_a_run_directory_that_cannot_be_made_is_refused_before_training(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "lin.csv", n=40)
    (tmp_path / "afile").write_text("x")
    for option in (["--out", "afile/run"], ["--runs-dir", "afile/runs"]):
        result = invoke(
            ["fit", "lin.csv", "--target", "price", "--epochs", "2", *option],
            tmp_path,
            monkeypatch,
        )
        assert result.exit_code == 2
        assert "must be creatable" in result.stderr and "afile' is a file" in result.stderr
        assert "epoch" not in result.stdout  # refused before any training
    # The probe leaves nothing behind where it can create.
    result = invoke(
        ["fit", "lin.csv", "--target", "price", "--epochs", "2", "-q", "--out", "new/run"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["run"]


def test_an_output_file_that_cannot_be_written_is_a_clean_error(tiny_run, tmp_path, monkeypatch):
    pcsv.write_csv(pa.table({"a": [1.0], "b": [0.0], "c": [2.0]}), tmp_path / "new.csv")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(runs.tempfile, "mkstemp", denied)
    result = invoke(["predict", "r", "new.csv", "-o", "pred.csv"], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "could not use 'pred.csv': Permission denied" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_fit_keeps_a_small_network_on_the_cpu_unless_a_device_is_given(tmp_path, monkeypatch):
    # A small tabular network trains faster on the CPU than on a GPU (session 11, H200): with
    # --device unset the run passes "cpu" to fit for a small step and the user's device as given.
    import descend

    seen = []
    real_fit = descend.fit

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        return real_fit(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(descend, "fit", spy)
    write_linear_csv(tmp_path / "lin.csv", n=60)
    # (--device auto, which fit and the config file take for "pick one", was passed on as
    # 'auto': a small network went to the accelerator)
    for extra in ([], ["--device", "cpu"], ["--device", "auto"]):
        r = invoke(
            ["fit", "lin.csv", "--target", "price", "--epochs", "2", "--quiet", *extra],
            tmp_path,
            monkeypatch,
        )
        assert r.exit_code == 0, r.output
    assert seen == ["cpu", "cpu", "cpu"]
    r = invoke(
        [
            "fit",
            "lin.csv",
            "--target",
            "price",
            "--epochs",
            "1",
            "--quiet",
            "--hidden",
            "1500,1500",
            "--lr",
            "1e-3",
        ],
        tmp_path,
        monkeypatch,
    )
    assert r.exit_code == 0, r.output
    assert seen[-1] is None  # 2.3 million weights x 32 rows: the accelerator, if any


def test_several_targets_offer_no_classification_override(tmp_path, monkeypatch):
    # Two 0/1 target columns are multi-output regression; the task line must not suggest
    # --task classification, which takes one target column (it is refused, naming that).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    table = {"a": X[:, 0], "b": X[:, 1], "l1": (X[:, 0] > 0) * 1, "l2": (X[:, 1] > 0) * 1}
    pcsv.write_csv(pa.table(table), tmp_path / "ml.csv")
    r = invoke(["fit", "ml.csv", "--target", "l1,l2", "--epochs", "1"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert "task: regression — target 'l1', 'l2': 2 target columns\n" in r.output
    assert "pass --task" not in r.output
    r = invoke(
        ["fit", "ml.csv", "--target", "l1,l2", "--task", "classification"], tmp_path, monkeypatch
    )
    assert r.exit_code == 2 and "needs one target column" in r.output


def test_runs_takes_the_same_runs_dir_option_as_fit(reg_run, tmp_path, monkeypatch):
    # `descend fit --runs-dir X` then `descend runs --runs-dir X` (it knew only --dir).
    _, run_dir, _ = reg_run
    shutil.copytree(run_dir, tmp_path / "elsewhere" / "mine")
    for flag in ("--runs-dir", "--dir", "-d"):
        proc = invoke(["runs", flag, "elsewhere"], tmp_path, monkeypatch)
        assert proc.exit_code == 0, proc.output
        assert " mine " in proc.stdout and "completed" in proc.stdout


def test_ignore_and_categorical_columns_are_checked_as_the_options_typed(tmp_path, monkeypatch):
    # It said "Preprocessor ignore must be a column ..." after printing the split.
    write_linear_csv(tmp_path / "lin.csv", n=40)
    r = invoke(["fit", "lin.csv", "-t", "price", "--ignore", "zz,A"], tmp_path, monkeypatch)
    assert r.exit_code == 2
    assert (
        "--ignore must name columns of the table; got no column ['zz', 'A'] — for 'A' did you "
        "mean 'a'?" in r.output
    )
    assert "split:" not in r.output and not (tmp_path / "runs").exists()
    r = invoke(["fit", "lin.csv", "-t", "price", "--categorical", "q"], tmp_path, monkeypatch)
    assert r.exit_code == 2 and "--categorical must name columns of the table" in r.output


def test_runs_refuses_a_runs_directory_that_does_not_exist(tmp_path, monkeypatch):
    # A mistyped --runs-dir said "no runs in DIR/ yet" (exit 0), as if the runs were gone;
    # the default directory before any fit still says so.
    r = invoke(["runs", "-d", "elsewere"], tmp_path, monkeypatch)
    assert r.exit_code == 2
    assert "--runs-dir must name an existing runs directory; got 'elsewere'" in r.output
    r = invoke(["runs"], tmp_path, monkeypatch)
    assert r.exit_code == 0 and "no runs in runs/ yet" in r.output
