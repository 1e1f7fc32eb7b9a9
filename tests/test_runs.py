"""Run directories and the fit pipeline behind the `descend` command (descend.runs), in-process."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch
import typer

from descend import cli, runs
from descend._errors import CheckpointError, ConfigError


def write_linear_csv(path: Path, n: int = 80, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = X @ np.array([1.5, -2.0]) + rng.normal(scale=0.1, size=n)
    pcsv.write_csv(pa.table({"u": X[:, 0], "v": X[:, 1], "y": y}), path)


# ----------------------------------------------------------------------------- configuration


def test_resolve_config_later_layers_win_and_values_are_normalized():
    cfg = runs.resolve_config(
        {"epochs": 5, "hidden": [32, 16], "ignore": ["id"], "batch-size": 8},
        {"epochs": 7, "categorical": "zip,state", "optimizer": " AdamW "},
    )
    assert cfg.epochs == 7 and cfg.hidden == [32, 16] and cfg.batch_size == 8
    assert cfg.ignore == ["id"] and cfg.categorical == ["zip", "state"]
    assert cfg.optimizer == "adamw"
    assert runs.resolve_config({}).hidden is None  # default_hidden decides
    assert runs.resolve_config({"hidden": "none"}).hidden == []
    assert runs.resolve_config({"hidden": "512, 256"}).hidden == [512, 256]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"epochs": 0}, "--epochs must be an integer >= 1"),
        ({"batch_size": -1}, "--batch-size must be an integer >= 0"),
        ({"hidden": "64,-1"}, "--hidden must be"),
        ({"hidden": "wide"}, "--hidden must be"),
        ({"hidden": "8,,8"}, "--hidden must be comma-separated layer widths"),  # was [8, 8]
        ({"hidden": "8,"}, "--hidden must be comma-separated layer widths"),
        ({"task": "regresion"}, "--task must be one of"),
        ({"validation_fraction": 1.0}, "--validation-fraction must be a number in"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
        ({"activation": "relu6"}, "--activation must be one of"),
        ({"dropout": 1.0}, "--dropout must be in"),
        ({"lr": -1.0}, "--lr must be a finite number > 0"),
        ({"lr": math.inf}, "--lr must be a finite number > 0"),
        ({"optimizer": "adamm"}, "did you mean 'adam'"),
        ({"max_time": 0}, "--max-time must be"),
        ({"precision": "fp16"}, "--precision must be"),
        ({"seed": -3}, r"--seed must be an integer in \[0, 2\*\*63\)"),
        ({"seed": 2**64}, r"--seed must be an integer in \[0, 2\*\*63\); got 18446744073709551616"),
        ({"epochz": 3}, "must be an option of descend fit"),
    ],
)
def test_resolve_config_refuses_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        runs.resolve_config(values)


def test_load_config_file_accepts_dashes_and_a_fit_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('data = "x.csv"\nmax-time = 30\n[fit]\nepochs = 4\nhidden = "auto"\n')
    assert runs.load_config_file(path) == {
        "data": "x.csv",
        "max_time": 30,
        "epochs": 4,
        "hidden": "auto",
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epoch = 3\n", r"key 'epoch' must be an option of descend fit.*did you mean 'epochs'"),
        ("epochs = 3.5\n", "epochs must be an integer"),
        ("quiet = 1\n", "quiet must be true or false"),
        ("hidden = [1, true]\n", "hidden must be a list of layer widths"),
        ("ignore = [1]\n", "ignore must be a string or a list of strings"),
        ("epochs = \n", "must be valid TOML"),
    ],
)
def test_load_config_file_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        runs.load_config_file(path)
    assert str(path) in str(info.value)


def test_load_config_file_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* must exist"):
        runs.load_config_file(tmp_path / "nope.toml")


def test_reproduce_argv_parses_back_to_the_same_config():
    cfg = runs.resolve_config(
        {
            "data": "/data/x.csv",
            "target": "y",
            "task": "regression",
            "epochs": 9,
            "hidden": [8, 4],
            "dropout": 0.1,
            "batch_norm": True,
            "lr": 0.003,
            "seed": 11,
            "ignore": ["id", "name"],
            "max_time": 12.5,
            "validation_fraction": 0.1,
            "test_fraction": 0.3,
        }
    )
    argv = cfg.to_argv()
    command = typer.main.get_command(cli.app)
    ctx = command.commands["fit"].make_context("fit", argv[1:])
    parsed = runs.resolve_config(
        {k: v for k, v in ctx.params.items() if k in runs.FitConfig.__dataclass_fields__}
    )
    assert parsed == cfg


# ----------------------------------------------------------------------------- files and dirs


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runs.atomic_write_json(path, {"a": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        runs.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_atomic_write_json_is_strict_json(tmp_path):
    runs.atomic_write_json(
        tmp_path / "x.json", {"nan": math.nan, "inf": [math.inf, 1.5], "np": np.float32(2.0)}
    )
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": [None, 1.5], "np": 2.0}


def test_model_file_bytes_do_not_depend_on_the_process(tmp_path):
    # safetensors keeps the metadata in a Rust HashMap whose order is seeded per map: two runs
    # with the same seed wrote the same weights in files that differed in their header.
    import struct

    from safetensors.torch import load_file

    from descend.models import mlp

    model = mlp(3, 2, hidden=(4,), seed=0)
    written = set()
    for i in range(16):  # 16 maps: without the sorting, both orders show (all but 2**-15)
        runs._save_model(model, tmp_path / f"m{i}.safetensors")
        written.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(written) == 1
    data = written.pop()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    assert list(meta) == sorted(meta)
    loaded = load_file(str(tmp_path / "m0.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_make_run_dir_names_and_out_rules(tmp_path):
    a = runs.make_run_dir("my data!", runs_dir=tmp_path / "runs")
    b = runs.make_run_dir("my data!", runs_dir=tmp_path / "runs")
    assert a != b and a.name.startswith("my_data-") and b.parent == tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs.make_run_dir("x", out=empty) == empty
    assert runs.make_run_dir("x", out=tmp_path / "new" / "deep").is_dir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "f").write_text("x")
    with pytest.raises(ConfigError, match="must be a new or empty directory"):
        runs.make_run_dir("x", out=full)
    with pytest.raises(ConfigError, match="an existing file"):
        runs.check_out_dir(full / "f")


def _fake_run(
    d: Path,
    *,
    status: str = "completed",
    summary: str | None = None,
    config: str | None = None,
    model: bool = True,
) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        config
        if config is not None
        else json.dumps(
            {
                "format": "descend.run",
                "created_at": "2026-01-02T03:04:05+00:00",
                "data": {"kind": "file", "path": "x.csv"},
                "task": {"task": "regression"},
            }
        )
    )
    if summary is not False:
        (d / "summary.json").write_text(
            summary
            if summary is not None
            else json.dumps(
                {
                    "format": "descend.run",
                    "status": status,
                    "data": "x",
                    "task": "regression",
                    "loss": "mse",
                    "best_loss": 0.25,
                    "metric": "r2",
                    "test": {"r2": 0.9},
                    "total_seconds": 3.0,
                }
            )
        )
    if model:
        for name in ("model.safetensors", "model.json", "preprocess.json"):
            (d / name).write_text("{}")
    return d


def test_list_runs_reports_each_status_without_raising(tmp_path):
    base = tmp_path / "runs"
    _fake_run(base / "a-done")
    _fake_run(base / "b-int", status="interrupted")
    _fake_run(base / "c-failed", status="failed", model=False)
    _fake_run(base / "d-bad-summary", summary="{")
    _fake_run(base / "e-bad-config", config="[1,")
    _fake_run(base / "f-running", summary=False, model=False)
    _fake_run(base / "g-no-model", model=False)
    _fake_run(base / "h-no-status", summary="{}")
    (base / "i-empty").mkdir()
    (base / "stray.txt").write_text("not a dir")
    got = {r.dir.name: r for r in runs.list_runs(base)}
    assert {k: v.status for k, v in got.items()} == {
        "a-done": "completed",
        "b-int": "interrupted",
        "c-failed": "failed",
        "d-bad-summary": "corrupt",
        "e-bad-config": "corrupt",
        "f-running": "incomplete",
        "g-no-model": "incomplete",
        "h-no-status": "corrupt",
    }
    assert got["a-done"].metric == "r2 0.9 (test)" and got["a-done"].loss == "0.25 mse"
    assert got["a-done"].data == "x" and got["a-done"].time == "3.0s"
    assert "must be valid JSON" in got["d-bad-summary"].problem
    assert runs.list_runs(tmp_path / "nothing") == []


def test_read_metrics_skips_a_cut_off_last_line_but_not_a_damaged_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"ep\n{"epoch": 3}\n')
    with pytest.raises(CheckpointError, match="line 2"):
        runs.read_metrics(tmp_path)


def test_load_run_errors(tmp_path):
    base = tmp_path / "runs"
    _fake_run(base / "failed", status="failed", model=False)
    with pytest.raises(CheckpointError, match="must have finished to have a model"):
        runs.load_run(base / "failed", need_model=True)
    with pytest.raises(CheckpointError, match=r"did you mean '.*failed'"):
        runs.load_run("faild", runs_dir=base)
    _fake_run(base / "foreign", summary=json.dumps({"status": "completed"}))
    with pytest.raises(CheckpointError, match="must be written by descend fit"):
        runs.load_run(base / "foreign")


# ----------------------------------------------------------------------------- the pipeline


def test_train_writes_metrics_live_and_a_complete_run(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "d.csv")
    monkeypatch.chdir(tmp_path)
    seen = []
    original = runs.RunRecorder.on_epoch_end

    def spy(self, loop):
        original(self, loop)
        # Already on disk when the epoch ends, not only at the end of the run.
        seen.append(len((self.dir / "metrics.jsonl").read_text().splitlines()))

    monkeypatch.setattr(runs.RunRecorder, "on_epoch_end", spy)
    notes: list[str] = []
    cfg = runs.resolve_config(
        {
            "data": "d.csv",
            "target": "y",
            "epochs": 3,
            "seed": 1,
            "hidden": [8],
            "patience": 0,
            "quiet": True,
        }
    )
    outcome = runs.train(cfg, notify=notes.append)
    assert seen == [1, 2, 3]
    assert outcome.summary["status"] == "completed" and outcome.summary["epochs"] == 3
    assert any(n.startswith("task: regression") for n in notes)
    assert outcome.run_dir.parent.name == "runs" and outcome.run_dir.name.startswith("d-")
    run = runs.load_run(outcome.run_dir, need_model=True)
    assert run.model()(torch.zeros(1, 2)).shape == (1, 1)


def test_train_failure_mid_run_writes_a_failed_summary(tmp_path, monkeypatch):
    write_linear_csv(tmp_path / "d.csv")
    monkeypatch.chdir(tmp_path)

    def boom(self, loop):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runs.RunRecorder, "on_epoch_end", boom)
    cfg = runs.resolve_config(
        {
            "data": "d.csv",
            "target": "y",
            "epochs": 3,
            "seed": 1,
            "hidden": [8],
            "quiet": True,
            "out": "r",
        }
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        runs.train(cfg)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "disk on fire"
    assert [(r.dir.name, r.status) for r in runs.list_runs(tmp_path)] == [("r", "failed")]
    with pytest.raises(CheckpointError, match="failed: disk on fire"):
        runs.load_run(tmp_path / "r", need_model=True)


def test_multi_output_regression_predicts_every_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = runs.resolve_config(
        {"data": "linnerud", "epochs": 2, "seed": 0, "hidden": [8], "quiet": True, "out": "r"}
    )
    outcome = runs.train(cfg)
    assert outcome.summary["task"] == "regression" and outcome.summary["n_outputs"] == 3
    assert set(outcome.summary["test"]) == {"rmse", "mae", "r2"}
    table, _ = runs.predict("r", "linnerud")
    assert table.column_names == ["Weight", "Waist", "Pulse"] and table.num_rows == 20
    assert np.isfinite(table["Pulse"].to_numpy()).all()


@pytest.mark.parametrize("name", ["schedulefree_adamw", "muon", "lion", "prodigy", "lamb"])
def test_every_registry_optimizer_trains_from_the_cli(tmp_path, monkeypatch, name):
    # The CLI accepts each optimizer optim.get knows (the modern ones too), builds it, and the
    # run records it: the config names it, and training lowered the loss (at each one's own
    # default rate: Lion's 1e-4 and LAMB's trust ratio learn far slower than AdamW here).
    write_linear_csv(tmp_path / "d.csv", n=400)
    monkeypatch.chdir(tmp_path)
    cfg = runs.resolve_config(
        {
            "data": "d.csv",
            "target": "y",
            "epochs": 20,
            "seed": 1,
            "hidden": [16, 16],
            "optimizer": name.upper(),
            "quiet": True,
        }
    )
    assert cfg.optimizer == name
    outcome = runs.train(cfg)
    config = json.loads((outcome.run_dir / "config.json").read_text())
    assert name in json.dumps(config)
    lines = (outcome.run_dir / "metrics.jsonl").read_text().splitlines()
    val = [json.loads(x)["val_loss"] for x in lines]
    assert len(val) >= 5 and val[-1] < 0.9 * val[0]  # every one of them moved the weights
