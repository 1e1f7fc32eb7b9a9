"""Runs of the ``descend`` command: the resolved configuration, the training pipeline from a data
file (or built-in dataset) to a saved model, and the run directory that records it all.

The path of ``descend fit data.csv --target y`` through this module::

    FitConfig (defaults < TOML file < command line)
        │  prepare_data: read_table / datasets.load(as_frame=True) ─► infer_task
        │                split_indices (train/validation/test, seeded, stratified)
        │                Preprocessor.fit(rows=train) ─► transform(every row)
        ▼
    train: mlp(default_hidden(...)) ─► descend.fit(..., validation=(X_val, y_val),
                                                    callbacks=[RunRecorder])
        │  RunRecorder.on_fit_start: create the run directory, write config.json,
        │                            preprocess.json, model.json; metrics.jsonl line per epoch
        ▼
    test metrics in original units ─► model.safetensors, loss.png, summary.json (last)

A run directory holds:

=====================  ===================================================================
``config.json``        every option as resolved (the seed actually used), the data file's
                       path and sha256, the split sizes, library versions, a command line
                       that reproduces the run
``metrics.jsonl``      one JSON object per finished epoch, appended and flushed live
``model.json``         the :func:`descend.models.mlp` spec that rebuilds the model
``model.safetensors``  the model's ``state_dict``, keyed by parameter name
``preprocess.json``    :meth:`descend.tabular.Preprocessor.to_dict`
``loss.png``           :meth:`descend.History.plot`
``summary.json``       status (completed / interrupted / failed), stop reason and sentence,
                       best epoch, test metrics in original units, times, sizes; written
                       last, so a directory without it is an unfinished run
=====================  ===================================================================

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), except ``metrics.jsonl`` which grows a line at a time. Nothing is pickled.
The directory is created only once ``descend.fit`` has checked the data and the model, so a
refused input leaves nothing behind; an existing non-empty directory is never written into.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from descend import distributed
from descend._errors import (
    CheckpointError,
    ConfigError,
    DescendError,
    InputError,
    describe,
    message,
)
from descend.data import auto_device
from descend.train.callbacks import Callback, is_terminal

__all__ = [
    "RUN_FILES",
    "FitConfig",
    "PreparedData",
    "Run",
    "RunListing",
    "RunOutcome",
    "RunRecorder",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_out_dir",
    "list_runs",
    "load_config_file",
    "load_run",
    "make_run_dir",
    "predict",
    "prepare_data",
    "read_metrics",
    "resolve_config",
    "train",
]

RUN_FORMAT = "descend.run"
RUN_VERSION = 1
MODEL_FORMAT = "descend.models.mlp"

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
MODEL_SPEC_FILE = "model.json"
PREPROCESS_FILE = "preprocess.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
PLOT_FILE = "loss.png"
RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    PREPROCESS_FILE,
    SUMMARY_FILE,
    PLOT_FILE,
)

TASKS = ("auto", "classification", "regression")
# Rows pushed through the model at once when evaluating or predicting (bounds memory).
_CHUNK = 8192


# ----------------------------------------------------------------------------- configuration


@dataclass
class FitConfig:
    """Every option of ``descend fit``; the field names are the TOML keys.

    ``None`` means "let descend choose" (the seed is drawn and recorded, the hidden widths come
    from :func:`descend.models.default_hidden`, the optimizer and learning rate from fit's
    default policy). See ``docs/cli.md`` for each option.
    """

    data: str | None = None
    target: str | list[str] | None = None
    task: str = "auto"
    epochs: int = 100
    batch_size: int = 32
    hidden: list[int] | None = None
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    optimizer: str | None = None
    lr: float | None = None
    patience: int = 10
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int | None = None
    device: str | None = None
    precision: str = "fp32"
    max_time: float | None = None
    max_categories: int = 50
    categorical: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    out: str | None = None
    runs_dir: str = "runs"
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_argv(self) -> list[str]:
        """The ``descend fit`` arguments that reproduce this (resolved) configuration."""
        argv = ["fit", str(self.data)]
        skip = {"data", "out", "runs_dir", "quiet"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in skip or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    argv.append(flag)
            elif isinstance(value, list):
                if value or f.name == "hidden":
                    argv += [flag, ",".join(str(v) for v in value) if value else "none"]
            else:
                argv += [flag, str(value)]
        return argv


_FIELDS = {f.name: f for f in dataclasses.fields(FitConfig)}
# What each TOML key must hold, for the messages: (check, description, example).
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", "10")
_NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", "0.1")
_STR = (lambda v: isinstance(v, str), "a string", '"relu"')
_BOOL = (lambda v: isinstance(v, bool), "true or false", "true")
_STRS = (
    lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "a string or a list of strings",
    '["id", "name"]',
)
_HIDDEN = (
    lambda v: (
        isinstance(v, str)
        or (isinstance(v, list) and all(isinstance(h, int) and not isinstance(h, bool) for h in v))
    ),
    'a list of layer widths or "auto"',
    "[512, 256]",
)
_KINDS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "data": _STR,
    "target": _STRS,
    "task": _STR,
    "epochs": _INT,
    "batch_size": _INT,
    "hidden": _HIDDEN,
    "activation": _STR,
    "dropout": _NUM,
    "batch_norm": _BOOL,
    "optimizer": _STR,
    "lr": _NUM,
    "patience": _INT,
    "validation_fraction": _NUM,
    "test_fraction": _NUM,
    "seed": _INT,
    "device": _STR,
    "precision": _STR,
    "max_time": _NUM,
    "max_categories": _INT,
    "categorical": _STRS,
    "ignore": _STRS,
    "out": _STR,
    "runs_dir": _STR,
    "quiet": _BOOL,
}
assert set(_KINDS) == set(_FIELDS)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into ``{option: value}``, checking every key and value type.

    Keys are the option names with ``_`` or ``-`` (``batch_size`` or ``batch-size``); the
    options may also sit under a ``[fit]`` table. Paths in the file are relative to the directory
    descend runs in, as on the command line.

    Raises:
        ConfigError: the file is missing or not valid TOML; a key is unknown (close matches
            listed); a value has the wrong type.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            message(f"config file '{p}'", "must exist", "no such file", "check the path")
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            message(f"config file '{p}'", "must be a file", "a directory", "pass a .toml file")
        ) from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            message(
                f"config file '{p}'",
                "must be valid TOML",
                str(exc),
                "write one option per line, e.g. epochs = 50 and hidden = [512, 256]",
            )
        ) from None
    if isinstance(doc.get("fit"), dict):
        nested = doc.pop("fit")
        doc = {**doc, **nested}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, list(_FIELDS), n=3)
            fix = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            fix = fix or f"the options are {', '.join(_FIELDS)}"
            raise ConfigError(
                message(
                    f"config file '{p}': key {key!r}",
                    "must be an option of descend fit",
                    "an unknown key",
                    fix,
                )
            )
        check, kind, example = _KINDS[name]
        if not check(value):
            raise ConfigError(
                message(
                    f"config file '{p}': {key}",
                    f"must be {kind}",
                    describe(value),
                    f"write e.g. {key} = {example}",
                )
            )
        values[name] = value
    return values


def _split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(v) for v in value]


def _parse_hidden(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        widths = list(value)
    else:
        text = str(value).strip().lower()
        if text in ("auto", ""):
            return None
        if text in ("none", "linear", "0"):
            return []
        try:
            # an empty part ('8,,8', '8,') is a typo, not a layer to skip
            widths = [int(part) for part in text.split(",")]
        except ValueError:
            widths = None  # type: ignore[assignment]
    if widths is None or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
    ):
        raise ConfigError(
            message(
                "--hidden",
                "must be comma-separated layer widths >= 1, 'auto' or 'none'",
                describe(value),
                "pass e.g. --hidden 512,256 (or hidden = [512, 256] in TOML)",
            )
        )
    return widths


def _check_int(
    name: str, value: Any, low: int, fix: str, *, below: int | None = None, top: str = ""
) -> None:
    """``value`` an int >= ``low`` (and < ``below``, written ``top`` in the rule)."""
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (below is not None and value >= below):
        rule = (
            f"must be an integer >= {low}"
            if below is None
            else f"must be an integer in [{low}, {top or below})"
        )
        raise ConfigError(message(f"--{name.replace('_', '-')}", rule, describe(value), fix))


def _check_fraction(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    if not ok:
        raise ConfigError(
            message(
                f"--{name.replace('_', '-')}",
                "must be a number in [0, 1)",
                describe(value),
                f"pass e.g. --{name.replace('_', '-')} 0.2",
            )
        )


def resolve_config(*layers: Mapping[str, Any]) -> FitConfig:
    """Merge option layers (later ones win: defaults < config file < command line) and check
    every value.

    Raises:
        ConfigError: a value outside its valid range, naming the option and the fix.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(
                    message(
                        "option",
                        "must be an option of descend fit",
                        repr(key),
                        f"use one of {', '.join(_FIELDS)}",
                    )
                )
            merged[name] = value
    cfg = FitConfig(**merged)
    if isinstance(cfg.target, list) and len(cfg.target) == 1:
        cfg.target = cfg.target[0]
    cfg.hidden = _parse_hidden(cfg.hidden)
    cfg.categorical = _split_list(cfg.categorical)
    cfg.ignore = _split_list(cfg.ignore)
    if cfg.task not in TASKS:
        raise ConfigError(
            message(
                "--task",
                f"must be one of {list(TASKS)}",
                repr(cfg.task),
                "pass --task classification or --task regression",
            )
        )
    _check_int("epochs", cfg.epochs, 1, "pass e.g. --epochs 50")
    _check_int("batch_size", cfg.batch_size, 0, "pass e.g. --batch-size 64 (0 = full batch)")
    _check_int("patience", cfg.patience, 0, "pass e.g. --patience 10 (0 = never stop early)")
    _check_int("max_categories", cfg.max_categories, 1, "pass e.g. --max-categories 50")
    _check_fraction("validation_fraction", cfg.validation_fraction)
    _check_fraction("test_fraction", cfg.test_fraction)
    if cfg.validation_fraction + cfg.test_fraction >= 1:
        raise ConfigError(
            message(
                "--validation-fraction + --test-fraction",
                "must be below 1 so rows remain for training",
                f"{cfg.validation_fraction} + {cfg.test_fraction}",
                "lower one of them, e.g. --validation-fraction 0.2 --test-fraction 0.2",
            )
        )
    if cfg.seed is not None:
        # torch's generators take a 64-bit seed (a larger one was a traceback from torch)
        _check_int("seed", cfg.seed, 0, "pass e.g. --seed 0", below=2**63, top="2**63")
    from descend.models import ACTIVATIONS

    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(
            message(
                "--activation",
                f"must be one of {list(ACTIVATIONS)}",
                repr(cfg.activation),
                "pass e.g. --activation relu",
            )
        )
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise ConfigError(
            message(
                "--dropout", "must be in [0, 1)", describe(cfg.dropout), "pass e.g. --dropout 0.1"
            )
        )
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(
            message(
                "--lr",
                "must be a finite number > 0",
                describe(cfg.lr),
                "pass e.g. --lr 1e-3, or leave it out for the default policy",
            )
        )
    if cfg.max_time is not None and not (cfg.max_time > 0):
        raise ConfigError(
            message(
                "--max-time",
                "must be a number of seconds > 0",
                describe(cfg.max_time),
                "pass e.g. --max-time 60",
            )
        )
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(
            message(
                "--precision",
                "must be 'fp32' or 'bf16'",
                repr(cfg.precision),
                "pass --precision fp32",
            )
        )
    if cfg.optimizer is not None:
        from descend import optim

        name = cfg.optimizer.strip().lower()
        known = sorted(optim.names())
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            fix = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(
                message(
                    "--optimizer",
                    "must be a descend optimizer",
                    repr(cfg.optimizer),
                    fix + f"Optimizers: {', '.join(known)}",
                )
            )
        cfg.optimizer = name
    return cfg


# ----------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a
    part: a temporary file in the same directory, flushed to disk, then ``os.replace``."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; a run's files are as readable as any
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _json_text(obj: Any) -> str:
    return json.dumps(_finite(obj), indent=2, allow_nan=False, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN/Infinity become null), atomically."""
    atomic_write_bytes(path, _json_text(obj).encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """The versions that decide a run's numbers."""
    import pyarrow
    import torch

    import descend

    return {
        "descend": descend.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------- run directories


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Refuse an ``--out`` that is a file or a non-empty directory (before any work is done)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            message(
                f"--out '{p}'",
                "must be a new or empty directory",
                "an existing file",
                "pass a new directory name",
            )
        )
    if p.is_dir() and any(p.iterdir()):
        raise ConfigError(
            message(
                f"--out '{p}'",
                "must be a new or empty directory (a run never writes into an existing one)",
                "a directory that is not empty",
                "pass a new directory name, or leave --out out for runs/<data>-<time>",
            )
        )
    return p


def check_can_create(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a run directory that cannot be created: its nearest existing
    ancestor must be a directory in which a directory can be made (tried, then removed — a
    permission check alone says yes to root on a read-only or virtual filesystem)."""
    p = Path(path).absolute()
    base = p
    while not base.exists() and base != base.parent:
        base = base.parent
    problem = None
    if not base.is_dir():
        problem = f"'{base}' is a file"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".descend-probe-"))
        except OSError as exc:
            problem = f"a directory cannot be made in '{base}' ({exc.strerror})"
    if problem is not None:
        raise ConfigError(
            message(
                f"run directory '{path}'",
                "must be creatable",
                problem,
                "pass --out (or --runs-dir) on a disk you can write to",
            )
        )


def make_run_dir(
    name: str,
    *,
    out: str | os.PathLike[str] | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
) -> Path:
    """Create the run's directory: ``out`` if given (new or empty), else a new
    ``<runs_dir>/<name>-<YYYYmmdd-HHMMSS>[-n]``. Creation is atomic (``mkdir``), so two runs
    started in the same second get different directories."""
    if out is not None:
        p = check_out_dir(out)
        p.mkdir(parents=True, exist_ok=True)
        check_out_dir(p)  # another process may have filled it since the first check
        return p
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(name)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        p = base / (stem if n == 1 else f"{stem}-{n}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
    raise ConfigError(
        message(
            f"runs directory '{base}'",
            "must have room for a new run",
            f"{stem} taken 9999 times",
            "pass --out DIR",
        )
    )


# ----------------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """A data file or built-in dataset, split and preprocessed, ready for ``fit``."""

    name: str
    source: dict[str, Any]
    targets: list[str]
    task: str
    task_reason: str
    task_inferred: bool
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    preprocessor: Any
    X: np.ndarray
    y: np.ndarray
    n_rows: int
    columns: list[str]

    def part(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.y[idx]


def _count(n: int, word: str) -> str:
    """``"1 row"``, ``"1,000 rows"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _is_path_like(text: str) -> bool:
    return os.sep in text or "/" in text or bool(Path(text).suffix)


def load_table(data: str) -> tuple[Any, str, dict[str, Any]]:
    """Read a data file, or load a built-in dataset as a table: ``(table, name, source)``.

    A path that exists is a file; otherwise a built-in dataset name is tried; otherwise the
    error names the file and lists close matches among files and datasets.
    """
    from descend import datasets, tabular

    p = Path(data)
    if p.exists() or _is_path_like(data):
        table = tabular.read_table(p)
        name = p.name
        for suffix in reversed(p.suffixes):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        source = {
            "kind": "file",
            "path": str(p),
            "absolute_path": str(p.resolve()),
            "sha256": file_sha256(p),
            "bytes": p.stat().st_size,
        }
        return table, name or p.stem, source
    try:
        info = datasets.info(data)
    except InputError:
        names = datasets.names()
        here = [c.name for c in Path(".").iterdir()] if Path(".").is_dir() else []
        close = difflib.get_close_matches(data, here + names, n=3, cutoff=0.6)
        fix = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise InputError(
            message(
                f"data '{data}'",
                "must be a data file (CSV, Parquet) or a built-in dataset",
                "no such file and no such dataset",
                fix + f"Built-in datasets: {', '.join(names)} (see `descend datasets`)",
            )
        ) from None
    table = datasets.load(info.name, as_frame=True)
    import sklearn

    source = {"kind": "dataset", "name": info.name, "scikit-learn": sklearn.__version__}
    return table, info.name, source


def _resolve_targets(
    target: str | list[str] | None, table: Any, data: str, source: dict[str, Any]
) -> list[str]:
    from descend import datasets, tabular

    columns = table.column_names
    # `--target ,` or `target = []` names no column (it was an IndexError further on)
    empty = target is not None and target not in columns
    empty = empty and not [t for t in _split_list(target) if t.strip()]
    if target is None or empty:
        if target is None and source["kind"] == "dataset":
            return datasets.target_columns(source["name"])
        guess = [c for c in columns if c.lower() in ("target", "y", "label", "class")]
        example = guess[0] if guess else columns[-1]
        shown = ", ".join(repr(c) for c in columns[:30])
        more = f", … {len(columns) - 30} more" if len(columns) > 30 else ""
        raise ConfigError(
            message(
                f"data file '{data}'" if source["kind"] == "file" else f"dataset {data!r}",
                "needs --target COLUMN, the column to predict",
                "no --target" if target is None else f"an empty --target {target!r}",
                f"pass e.g. --target {shlex.quote(example)}; the columns are {shown}{more}",
            )
        )
    names = [target]
    if isinstance(target, list):
        names = [str(t) for t in target]
    elif target not in columns and "," in target:
        parts = [t.strip() for t in target.split(",") if t.strip()]
        if all(t in columns for t in parts):
            names = parts
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        # one column twice made two model outputs, and the predictions file kept one of them
        once = ",".join(dict.fromkeys(names))
        raise ConfigError(
            message(
                "--target",
                "must name each column once",
                f"{tabular._quote_list(repeated)} more than once in {target!r}",
                f"pass --target {shlex.quote(once)}",
            )
        )
    return names


def prepare_data(
    cfg: FitConfig, seed: int, notify: Callable[[str], None] = lambda s: None
) -> PreparedData:
    """Read, split and preprocess the data of ``cfg`` (the statistics from training rows only).

    Raises:
        InputError / ConfigError: anything wrong with the data or the options, with a message
            that names the file, column or rows and the fix.
    """
    from descend import tabular

    if not cfg.data:
        raise ConfigError(
            message(
                "descend fit",
                "needs DATA, a data file or a built-in dataset",
                "none",
                "pass e.g. `descend fit data.csv "
                "--target y` or `descend fit iris` (or data = ... in --config)",
            )
        )
    table, name, source = load_table(cfg.data)
    source.update(rows=table.num_rows, columns=table.num_columns)
    where = f"'{source['path']}'" if source["kind"] == "file" else f"dataset {name}"
    notify(
        f"data: {where} — {_count(table.num_rows, 'row')}, {_count(table.num_columns, 'column')}"
    )
    index = tabular.dropped_index(table)
    if index:
        notify(
            f"Left out the pandas index stored in the Parquet file ({tabular._quote_list(index)}): row "
            "labels, not a feature, as pandas.read_parquet reads them (df.reset_index() before "
            "saving makes it a column)."
        )
    targets = _resolve_targets(cfg.target, table, cfg.data, source)
    if any(t not in table.column_names for t in targets):
        # Raises tabular's message for a missing target: close matches, then the columns.
        tabular.Preprocessor().fit(table, targets)
    for flag, names in (("--ignore", cfg.ignore), ("--categorical", cfg.categorical)):
        unknown = [c for c in names or () if c not in table.column_names]
        if unknown:  # before the split line and the rest: named as the option the user typed
            raise tabular._missing_column_error(
                flag, unknown, table.column_names, rule="must name columns of the table"
            )
    # Every row's target, before the split: the preprocessor sees the training rows first
    # and counted only the missing values among them.
    tabular.check_target_present(
        table, targets, fix="fill those values, or remove those rows from the file"
    )
    target_cols = [table[t] for t in targets]

    if cfg.task != "auto":
        task, reason, inferred = cfg.task, "set by --task", False
    elif len(targets) > 1:
        task, reason, inferred = "regression", f"{len(targets)} target columns", True
    else:
        task, reason = _infer_task(target_cols[0], targets[0], table)
        inferred = True
    if len(targets) > 1 and task == "classification":
        raise ConfigError(
            message(
                "--task classification",
                "needs one target column",
                f"{len(targets)} columns {targets}",
                "pass one --target, or --task regression",
            )
        )
    other = "regression" if task == "classification" else "classification"
    # (several targets: no override to offer, classification takes one target column)
    tail = f"; pass --task {other} to override" if inferred and len(targets) == 1 else ""
    notify(f"task: {task} — target {', '.join(repr(t) for t in targets)}: {reason}{tail}")

    labels = None
    if task == "classification":
        import pyarrow.compute as pc

        # A pandas `category` column is dictionary-encoded in Parquet: count_distinct has no
        # dictionary kernel, and the classes are the labels it holds (not unused categories).
        labels = tabular._decode_dictionary(tabular._chunked(target_cols[0]))

        n_classes = pc.count_distinct(labels).as_py()
    n_val, n_test = cfg.validation_fraction, cfg.test_fraction
    train_idx, val_idx, test_idx = tabular.split_indices(
        table.num_rows, n_val, n_test, seed=seed, stratify_labels=labels
    )
    if task == "classification" and len(train_idx) < n_classes:
        raise InputError(
            message(
                f"data {where}",
                f"must have at least one training row per class ({n_classes} classes)",
                f"{len(train_idx)} training rows of {table.num_rows}",
                "add rows, or lower --validation-fraction/--test-fraction",
            )
        )
    notify(
        f"split: {len(train_idx):,} training, {len(val_idx):,} validation, "
        f"{_count(len(test_idx), 'test row')} (seed {seed})"
    )
    pre = tabular.Preprocessor(
        task, max_categories=cfg.max_categories, categorical=cfg.categorical, ignore=cfg.ignore
    )
    pre.fit(table, targets if len(targets) > 1 else targets[0], rows=train_idx)
    # Transforming every row at once checks the validation and test rows too (junk, missing
    # targets, unseen classes), with row numbers of the file.
    X, y = pre.transform(table)
    # The task line above already says what tabular's task note says (in --task terms).
    task_note = ("Target: regression", f"Target {targets[0]!r}: classification")
    for note in pre.notes:
        if not note.startswith(task_note):
            notify(note)
    return PreparedData(
        name=name,
        source=source,
        targets=targets,
        task=task,
        task_reason=reason,
        task_inferred=inferred,
        train_idx=train_idx,
        val_idx=val_idx,
        test_idx=test_idx,
        preprocessor=pre,
        X=X,
        y=y,
        n_rows=table.num_rows,
        columns=list(table.column_names),
    )


def _infer_task(column: Any, name: str, table: Any = None) -> tuple[str, str]:
    from descend import tabular

    explain = getattr(tabular, "_infer_task_with_reason", None)
    if explain is not None:
        # the table's rows and file lines in messages
        where = tabular._Rows(table, None) if table is not None else None
        task, reason = explain(column, name, where)
        return task, reason
    return tabular.infer_task(column), "inferred from its values"  # pragma: no cover


# ----------------------------------------------------------------------------- model & metrics


def build_model(spec: Mapping[str, Any], *, seed: int | None = None):
    from descend.models import mlp

    return mlp(
        int(spec["in_features"]),
        int(spec["out_features"]),
        hidden=tuple(spec["hidden"]),
        activation=spec["activation"],
        dropout=float(spec["dropout"]),
        batch_norm=bool(spec["batch_norm"]),
        seed=seed,
    )


def _forward(model: Any, X: np.ndarray) -> np.ndarray:
    """The model's raw outputs for ``X`` (eval mode, no gradients, chunked)."""
    import torch

    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - an mlp always has parameters
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, len(X), _CHUNK):
                xb = torch.as_tensor(X[i : i + _CHUNK], dtype=torch.float32, device=device)
                outs.append(model(xb).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    return np.concatenate(outs, axis=0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    import torch

    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def evaluate(model: Any, pre: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """Metrics in the target's original units: accuracy and log loss for classification; RMSE,
    MAE and R² (averaged over targets) for regression. ``None`` for no rows."""
    if len(X) == 0:
        return None
    out = _forward(model, X)
    if pre.task == "classification":
        import torch

        logits = torch.as_tensor(out, dtype=torch.float64)
        codes = torch.as_tensor(y, dtype=torch.int64)
        log_loss = float(torch.nn.functional.cross_entropy(logits, codes))
        accuracy = float((logits.argmax(1) == codes).double().mean())
        return {"accuracy": accuracy, "log_loss": log_loss}
    pred = pre.inverse_transform_target(out[:, 0] if out.shape[1] == 1 else out)
    true = pre.inverse_transform_target(y)
    pred2, true2 = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    err = pred2 - true2
    sst = ((true2 - true2.mean(axis=0)) ** 2).sum(axis=0)
    sse = (err**2).sum(axis=0)
    r2 = np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), np.nan)
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else math.nan,
    }


def headline(task: str) -> str:
    """The metric shown first for a task."""
    return "accuracy" if task == "classification" else "r2"


def format_metrics(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, (int, float)) and v is not None else f"{k} -"
        for k, v in metrics.items()
    )


# ----------------------------------------------------------------------------- training


class RunRecorder(Callback):
    """The callback that makes and fills the run directory while ``fit`` runs.

    ``on_fit_start`` gets the directory from ``make_dir`` (:func:`train` makes it before fit
    starts, so a run killed while the learning rate is chosen keeps its config) and writes
    ``config.json``, ``preprocess.json`` and ``model.json`` there; ``on_epoch_end`` appends
    the epoch to ``metrics.jsonl`` and flushes it, so ``tail -f`` and ``descend show`` see
    progress live.
    """

    wants_steps = False

    def __init__(
        self,
        make_dir: Callable[[], Path],
        files: Mapping[str, Any],
        *,
        resuming: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self._make_dir = make_dir
        self._files = dict(files)
        # The plain log's lines for the epochs the race winner brings into the run: fit's
        # plain progress prints only the epoch that just ended (the recorder runs before it).
        self._echo = echo
        self.dir: Path | None = None
        self._metrics = None
        self._resuming = resuming
        self._written = 0  # epoch records in the metrics file

    def on_fit_start(self, loop: Any) -> None:
        self.dir = self._make_dir()
        for filename, obj in self._files.items():
            atomic_write_json(self.dir / filename, obj)
        if loop.checkpoint_dir is None:
            # Checkpoints live in the run directory.
            loop.checkpoint_dir = self.dir / CHECKPOINT_DIR
        records = loop.history.epoch_records()
        if self._resuming:
            # The checkpoint's history is the truth: rewrite the epochs it holds, so an epoch
            # line written after the last checkpoint (and replayed now) is not duplicated.
            lines = "".join(json.dumps(_finite(r), allow_nan=False) + "\n" for r in records)
            atomic_write_bytes(self.dir / METRICS_FILE, lines.encode())
            self._written = len(records)
        else:
            self._written = 0
        self._metrics = open(self.dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def on_epoch_end(self, loop: Any) -> None:
        if self._metrics is None:
            return
        # Every epoch of the run's history not written yet: the one just ended, and before the
        # first, the epochs the default policy's race winner brings into the run (its history
        # starts at epoch 1, as a resumed run's rewritten file does).
        records = loop.history.epoch_records()
        for record in records[self._written :]:
            self._metrics.write(json.dumps(_finite(record), allow_nan=False) + "\n")
        if self._echo is not None:
            for record in records[self._written : -1]:
                self._echo(adopted_epoch_line(record, loop.max_epochs))
        self._written = len(records)
        self._metrics.flush()

    def on_fit_end(self, loop: Any) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def adopted_epoch_line(record: Mapping[str, Any], max_epochs: int) -> str:
    """The plain log line of an epoch the run adopted from the learning-rate race (the
    winner's epochs 1..k), in the shape of fit's own epoch lines, marked as from the race."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"

    parts = [f"epoch {record.get('epoch'):>{len(str(max_epochs))}}/{max_epochs}"]
    parts.append(f"train_loss {fmt(record.get('train_loss'))}")
    if "val_loss" in record:
        parts.append(f"val_loss {fmt(record.get('val_loss'))}")
    known = {"epoch", "train_loss", "val_loss", "lr", "time", "best"}
    parts += [f"{k} {fmt(v)}" for k, v in record.items() if k not in known]
    if isinstance(record.get("lr"), (int, float)):
        parts.append(f"lr {record['lr']:.3g}")
    if isinstance(record.get("time"), (int, float)):
        parts.append(f"{record['time']:.1f}s")
    if record.get("best"):
        parts.append("*")
    parts.append("(race winner)")
    return "  ".join(parts)


@dataclass
class RunOutcome:
    """What ``train`` did: the run directory, its summary, and the fit Result."""

    run_dir: Path | None
    summary: dict[str, Any]
    result: Any = None
    #: False when the run was interrupted before its first epoch ended (nothing but the
    #: config and the summary saved)
    trained: bool = True

    @property
    def interrupted(self) -> bool:
        return self.summary.get("status") == "interrupted"


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def train(
    cfg: FitConfig,
    *,
    notify: Callable[[str], None] = lambda s: None,
    argv: Sequence[str] | None = None,
    resume_run: Path | None = None,
) -> RunOutcome:
    """Run ``descend fit`` for a resolved config: prepare the data, train, evaluate on the test
    split, and save the run directory. Returns when the run is saved (also when interrupted:
    the best weights so far are saved and the summary says ``interrupted``).

    Raises:
        InputError / ConfigError: refused input, before anything is written.
    """
    import descend
    from descend.models import default_hidden, describe_model, mlp

    started_at, t0 = _now(), time.perf_counter()
    # Launched on several processes (torchrun), the processes train one model: rank 0 draws
    # the seed and makes the run directory for all, and alone writes files; `fit` splits the
    # batches. The group is joined here, before either is chosen.
    # --device auto is --device left out (it skipped the small-step CPU rule of auto_device)
    chosen = None if cfg.device is None or cfg.device.strip().lower() == "auto" else cfg.device
    world, device = distributed.join(chosen)
    main = world.is_main

    def checks() -> None:
        if cfg.out is not None and resume_run is None:
            check_out_dir(cfg.out)
        if resume_run is None:
            check_can_create(cfg.out if cfg.out is not None else cfg.runs_dir)

    _on_main(world, checks)
    seed = cfg.seed
    if seed is None:
        seed = world.from_main(random.SystemRandom().randrange(2**31))
    data = prepare_data(cfg, seed, notify)
    pre = data.preprocessor
    hidden = cfg.hidden
    if hidden is None:
        hidden = list(
            default_hidden(
                len(data.train_idx),
                pre.n_features,
                pre.n_outputs,
                classification=data.task == "classification",
            )
        )
    model = mlp(
        pre.n_features,
        pre.n_outputs,
        hidden=tuple(hidden),
        activation=cfg.activation,
        dropout=float(cfg.dropout),
        batch_norm=cfg.batch_norm,
        seed=seed,
    )
    n_params = _n_params(model)
    notify(f"model: {describe_model(model).splitlines()[0]} — {n_params:,} parameters")

    resolved = dataclasses.replace(
        cfg,
        seed=seed,
        hidden=list(hidden),
        task=data.task,
        target=data.targets[0] if len(data.targets) == 1 else list(data.targets),
    )
    if data.source["kind"] == "file":
        resolved.data = data.source["absolute_path"]
    loss = "cross_entropy" if data.task == "classification" else "mse"
    config_record = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "created_at": started_at,
        "options": resolved.to_dict(),
        "options_given": dataclasses.replace(cfg).to_dict(),
        "data": data.source,
        "task": {"task": data.task, "reason": data.task_reason, "inferred": data.task_inferred},
        "targets": data.targets,
        "loss": loss,
        "split": {
            "train": len(data.train_idx),
            "validation": len(data.val_idx),
            "test": len(data.test_idx),
            "seed": seed,
            "stratified": data.task == "classification",
        },
        "versions": versions(),
        "argv": list(argv) if argv is not None else None,
        "reproduce": "descend " + shlex.join(resolved.to_argv()),
    }
    model_record = {
        "format": MODEL_FORMAT,
        "version": RUN_VERSION,
        "spec": {**model.spec, "hidden": list(model.spec["hidden"])},
        "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        "n_parameters": n_params,
    }
    files = {PREPROCESS_FILE: pre.to_dict(), MODEL_SPEC_FILE: model_record}
    if resume_run is None:
        files[CONFIG_FILE] = config_record
        # The directory exists before fit starts: the default policy's range test and race
        # run before the first epoch (a race can take a quarter of the budget and more), and a
        # run killed then must leave its config, so that `descend resume` can start it again.
        # (Input that fit itself refuses removes it again: see the except clause below.)
        where = Path(cfg.out) if cfg.out is not None else Path(cfg.runs_dir) / "_"
        made = [p for p in where.absolute().parents if not p.exists()]  # folders made for it
        # an empty --out the user made beforehand is theirs: emptied again, never removed
        existed = cfg.out is not None and Path(cfg.out).is_dir()

        def make() -> str:
            new_dir = make_run_dir(data.name, out=cfg.out, runs_dir=cfg.runs_dir)
            for filename, obj in files.items():
                atomic_write_json(new_dir / filename, obj)
            return str(new_dir)

        run_dir = Path(world.text_from_main(_on_main(world, make) or ""))
    else:
        run_dir, made, existed = resume_run, [], True
    # fit's progress is plain lines when stdout is no terminal: the race's epochs get theirs
    plain = not cfg.quiet and not is_terminal(sys.stdout)
    recorder = RunRecorder(
        lambda: run_dir, files, resuming=resume_run is not None, echo=notify if plain else None
    )
    # Checkpoints from the start: the default policy's race writes its own there too, so a
    # run killed while the learning rate is chosen goes on from the race's last checkpoint.
    ckpt_kw: dict[str, Any] = {"checkpoint": run_dir / CHECKPOINT_DIR}
    if resume_run is not None and (resume_run / CHECKPOINT_DIR).is_dir():
        ckpt_kw["resume"] = resume_run / CHECKPOINT_DIR
        # (with no checkpoint in it yet — killed before the race's first one — the run starts
        # again from its beginning: the same seed makes it the same run)
    X_train, y_train = data.part(data.train_idx)
    validation = data.part(data.val_idx) if len(data.val_idx) else None
    summary: dict[str, Any] = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "status": "failed",
        "data": data.name,
        "task": data.task,
        "loss": loss,
        "started_at": started_at,
    }
    try:
        result = descend.fit(
            model,
            (X_train, y_train),
            loss,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size or None,
            validation=validation,
            patience=cfg.patience or None,
            callbacks=[recorder] if main else [],
            verbose=0 if cfg.quiet else 1,
            seed=seed,
            device=device
            if world.active
            else auto_device(chosen, cfg.batch_size or len(data.train_idx), model),
            precision=cfg.precision,
            max_time=cfg.max_time,
            **ckpt_kw,
        )
    except BaseException as exc:
        refused = isinstance(exc, (InputError, ConfigError))
        if not main:
            raise
        if recorder.dir is None and resume_run is None and refused:
            # fit refused the input before training: leave nothing behind, as for input
            # refused before the directory was made
            _remove_new_run_dir(run_dir, files, made, keep=existed)
        elif recorder.dir is None and resume_run is not None:
            # a resume stopped before it trained (refused, or interrupted): the run is as it
            # was, and so is its summary (writing 'failed' over an interrupted run's summary
            # made its saved model one that predict refuses)
            pass
        else:
            summary.update(
                error=str(exc) or type(exc).__name__,
                error_type=type(exc).__name__,
                finished_at=_now(),
                total_seconds=time.perf_counter() - t0,
            )
            if isinstance(exc, KeyboardInterrupt):
                summary["status"] = "interrupted"
            atomic_write_json(run_dir / SUMMARY_FILE, summary)
        raise
    interrupted = result.stop_reason is descend.StopReason.INTERRUPTED
    summary["status"] = "interrupted" if interrupted else "completed"
    if interrupted and not result.history.epoch:
        # interrupted before the first epoch ended: no model worth saving; `descend resume`
        # starts the run again
        summary.update(
            stop_reason=result.stop_reason.value,
            stop_message=result.stop_message,
            seed=seed,
            finished_at=_now(),
            total_seconds=time.perf_counter() - t0,
        )
        if main:
            atomic_write_json(run_dir / SUMMARY_FILE, summary)
        return RunOutcome(run_dir, summary, result, trained=False)

    model_bytes = _save_model(model, run_dir / MODEL_FILE) if main else None
    metrics = {
        "test": evaluate(model, pre, *data.part(data.test_idx)),
        "validation": evaluate(model, pre, *data.part(data.val_idx)),
    }
    plotted = main and _save_plot(result.history, run_dir / PLOT_FILE, title=f"{data.name}: {loss}")
    summary.update(
        stop_reason=result.stop_reason.value,
        stop_message=result.stop_message,
        best_epoch=result.best_epoch,
        best_loss=result.best_loss,
        monitor=result.monitor,
        epochs=result.epochs,
        steps=result.steps,
        metric=headline(data.task),
        test=metrics["test"],
        validation=metrics["validation"],
        test_rows=len(data.test_idx),
        rows={
            "train": len(data.train_idx),
            "validation": len(data.val_idx),
            "test": len(data.test_idx),
        },
        n_features=pre.n_features,
        n_outputs=pre.n_outputs,
        classes=pre.classes,
        n_parameters=n_params,
        model_bytes=model_bytes,
        optimizer=result.optimizer,
        autopilot=result.autopilot,
        seed=seed,
        device=result.device,
        train_seconds=result.elapsed,
        finished_at=_now(),
        total_seconds=time.perf_counter() - t0,
        plot=plotted,
    )
    if main:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return RunOutcome(run_dir, summary, result)


def _on_main(world: distributed.World, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 alone (a check of the run directory, a file written), its error
    raised on every process — the others would wait for rank 0 forever. In one process, just
    ``fn()``."""
    if not world.active:
        return fn()
    out, err = None, None
    if world.is_main:
        try:
            out = fn()
        except Exception as e:  # agreed below, then raised here
            err = e
    if world.from_main(err is not None):
        if err is not None:
            raise err
        raise ConfigError(
            message("descend fit", "stopped on every process", "an error on rank 0", "see rank 0's")
        )
    return out


def _remove_new_run_dir(
    run_dir: Path, files: Mapping[str, Any], made: Sequence[Path], *, keep: bool = False
) -> None:
    """Remove a run directory this process made, if it still holds only the files written at
    its start (never anything else: the user may have put something there meanwhile), and
    the folders made for it (``made``, deepest first) that are empty. With ``keep`` (an empty
    ``--out`` that existed before the run) only those files go."""
    try:
        ck = run_dir / CHECKPOINT_DIR
        if ck.is_dir() and not any(ck.iterdir()):
            ck.rmdir()  # made empty by fit's writability check
        names = {p.name for p in run_dir.iterdir()}
        if names <= set(files):
            for name in names:
                (run_dir / name).unlink()
            if keep:
                return
            run_dir.rmdir()
        for folder in made:
            folder.rmdir()  # OSError when not empty: stop there
    except OSError:
        pass


def _save_model(model: Any, path: Path) -> int:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = _sorted_safetensors_metadata(
        save(tensors, metadata={"format": "pt", "spec": MODEL_SPEC_FILE})
    )
    atomic_write_bytes(path, data)
    return len(data)


def _sorted_safetensors_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` keys in sorted order.

    safetensors keeps the metadata in a Rust HashMap, whose order is seeded per process: two
    runs with the same seed wrote the same weights under headers in different orders, so the
    files differed. The header is rewritten in place (same keys, so the same length; padded
    with spaces as safetensors pads it); the tensors' data offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # pragma: no cover - a reordering keeps the length
        return data
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def _save_plot(history: Any, path: Path, *, title: str) -> bool:
    if not history.epoch:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())
        history.plot(tmp, title=title)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# ----------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """A finished run directory, read and checked."""

    dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    model_spec: dict[str, Any] | None = None
    preprocess: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "?"))

    def preprocessor(self):
        from descend.tabular import Preprocessor

        try:
            return Preprocessor.from_dict(self.preprocess or {})
        except InputError as exc:
            raise CheckpointError(
                f"run '{self.dir}': {PREPROCESS_FILE} is damaged: {exc}"
            ) from None

    def model(self, device: str | None = None):
        """Rebuild the trained model from ``model.json`` + ``model.safetensors``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if device is not None:
            from descend.data import resolve_device

            # an unknown or unavailable device is the option's fault, named as such (it was
            # "model.safetensors ... cannot be read ... train it again", or a traceback from
            # torch for a CUDA device on a machine without one)
            device = str(resolve_device(device))
        spec = (self.model_spec or {}).get("spec")
        try:
            model = build_model(spec)  # type: ignore[arg-type]
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                message(
                    f"run file '{self.dir / MODEL_SPEC_FILE}'",
                    "must hold the model spec written by descend fit",
                    f"a spec that cannot be built ({exc})",
                    "the file was edited or damaged; train the run again",
                )
            ) from None
        path = self.dir / MODEL_FILE
        try:
            state = load_file(str(path), device=device or "cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                message(
                    f"run file '{path}'",
                    "must be a complete safetensors file",
                    f"a file that cannot be read ({exc})",
                    "the run was cut off while saving or the file was damaged; train it again",
                )
            ) from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                message(
                    f"run file '{path}'",
                    f"must match the model described in {MODEL_SPEC_FILE}",
                    first,
                    "the files come from different runs; train the run again",
                )
            ) from None
        if device:
            model.to(device)
        model.eval()
        return model


def _read_json(path: Path, run_dir: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        why = (
            "the run did not finish: it is still running, failed before saving, or was killed"
            if path.name == SUMMARY_FILE
            else "the run directory is incomplete"
        )
        raise CheckpointError(
            message(
                f"run directory '{run_dir}'",
                f"must contain {path.name}",
                "no such file",
                f"{why}; continue a killed run with `descend resume {shlex.quote(str(run_dir))}`"
                if path.name == SUMMARY_FILE and (run_dir / CONFIG_FILE).is_file()
                else f"{why}; train it again with `descend fit`",
            )
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            message(
                f"run file '{path}'", "must be readable", str(exc), "check the file's permissions"
            )
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            message(
                f"run file '{path}'",
                "must be valid JSON",
                f"{exc}",
                "the file is corrupted (cut off or edited); train the run again",
            )
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            message(
                f"run file '{path}'",
                "must hold a JSON object",
                type(obj).__name__,
                "train the run again",
            )
        )
    return obj


def _resolve_run_dir(run: str | os.PathLike[str], runs_dir: str | os.PathLike[str]) -> Path:
    p = Path(run)
    if p.is_dir():
        return _check_run_dir(p)
    alt = Path(runs_dir) / p
    if not p.is_absolute() and alt.is_dir():
        return _check_run_dir(alt)
    if p.exists():
        raise CheckpointError(
            message(
                f"run '{p}'",
                "must be a run directory",
                "a file",
                "pass a directory made by `descend fit`",
            )
        )
    base = Path(runs_dir)
    here = [c.name for c in base.iterdir() if c.is_dir()] if base.is_dir() else []
    close = difflib.get_close_matches(p.name, here, n=3, cutoff=0.5)
    fix = (
        f"did you mean {' or '.join(repr(str(base / c)) for c in close)}?"
        if close
        else "list the runs with `descend runs`"
    )
    raise CheckpointError(message(f"run directory '{p}'", "must exist", "no such directory", fix))


def _check_run_dir(d: Path) -> Path:
    """``d`` if it holds any run file; else refused as no run at all (``descend show runs``
    was told its run 'did not finish' and to train it again)."""
    try:
        names = {c.name for c in d.iterdir()}
    except OSError:
        return d  # the reads that follow name the problem
    if names & {*RUN_FILES, CHECKPOINT_DIR}:
        return d
    inside = sorted(c for c in d.iterdir() if c.is_dir() and _is_run_dir(c))
    fix = (
        f"pass one of the runs in it, e.g. '{inside[-1]}' (`descend runs -d {shlex.quote(str(d))}` "
        "lists them)"
        if inside
        else "pass a directory made by `descend fit` (`descend runs` lists them)"
    )
    raise CheckpointError(
        message(
            f"run directory '{d}'",
            "must be a run made by descend fit",
            f"a directory without any run file ({CONFIG_FILE}, {SUMMARY_FILE}, ...)",
            fix,
        )
    )


def _is_run_dir(d: Path) -> bool:
    try:
        return any((d / name).exists() for name in (CONFIG_FILE, SUMMARY_FILE))
    except OSError:
        return False


def load_run(
    run: str | os.PathLike[str],
    *,
    need_model: bool = False,
    runs_dir: str | os.PathLike[str] = "runs",
) -> Run:
    """Read and check a run directory (``run`` may also be a name under ``runs_dir``).

    Raises:
        CheckpointError: the directory is missing, incomplete (no summary: still running or cut
            off), a file is corrupted, or — with ``need_model`` — the run has no model.
    """
    d = _resolve_run_dir(run, runs_dir)
    summary = _read_json(d / SUMMARY_FILE, d)
    config = _read_json(d / CONFIG_FILE, d)
    for what, obj in ((SUMMARY_FILE, summary), (CONFIG_FILE, config)):
        if obj.get("format") != RUN_FORMAT or "status" not in summary:
            raise CheckpointError(
                message(
                    f"run file '{d / what}'",
                    f"must be written by descend fit (format {RUN_FORMAT!r})",
                    f"format {obj.get('format')!r}",
                    "pass a directory made by `descend fit`",
                )
            )
    out = Run(d, config, summary)
    if need_model:
        if summary.get("status") == "failed":
            raise CheckpointError(
                message(
                    f"run '{d}'",
                    "must have finished to have a model",
                    f"a run that failed: {summary.get('error', 'unknown error')}",
                    "train it again with `descend fit`",
                )
            )
        out.model_spec = _read_json(d / MODEL_SPEC_FILE, d)
        out.preprocess = _read_json(d / PREPROCESS_FILE, d)
        if not (d / MODEL_FILE).is_file():
            # interrupted before its first epoch ended, a run has no model yet but can go on
            fix = (
                f"the run was interrupted before its first epoch ended; `descend resume {shlex.quote(str(d))}` "
                "continues it"
                if summary.get("status") == "interrupted"
                else "the run was stopped before saving its model; train it again"
            )
            raise CheckpointError(
                message(f"run directory '{d}'", f"must contain {MODEL_FILE}", "no such file", fix)
            )
    return out


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (a cut-off last line is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CheckpointError(
            message(
                f"run directory '{run_dir}'",
                f"must contain {METRICS_FILE}",
                "no such file",
                "the run stopped before its first epoch; train it again",
            )
        ) from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:  # killed mid-write: the last line may be cut off
                break
            raise CheckpointError(
                message(
                    f"run file '{path}'",
                    "must hold one JSON object per line",
                    f"line {i + 1}: {exc}",
                    "the file is corrupted; train the run again",
                )
            ) from None
    return records


@dataclass
class RunListing:
    """One row of ``descend runs``."""

    dir: Path
    status: str
    data: str = "-"
    task: str = "-"
    loss: str = "-"
    metric: str = "-"
    time: str = "-"
    started: str = "-"
    problem: str = ""


def _listing(d: Path) -> RunListing | None:
    files = {p.name for p in d.iterdir()}
    if not files & set(RUN_FILES):
        return None  # not a run directory
    row = RunListing(d, "incomplete")
    try:
        config = _read_json(d / CONFIG_FILE, d)
    except CheckpointError as exc:
        row.status = "corrupt" if (d / CONFIG_FILE).exists() else "incomplete"
        row.problem = str(exc)
        if row.status == "corrupt":
            return row
        config = {}
    opts = config.get("options") or {}
    src = config.get("data") or {}
    row.data = str(src.get("name") or Path(str(src.get("path") or opts.get("data") or "-")).name)
    row.task = str((config.get("task") or {}).get("task", "-"))
    row.started = str(config.get("created_at", "-"))[:19].replace("T", " ")
    if SUMMARY_FILE not in files:
        row.problem = (
            f"no {SUMMARY_FILE}: still running, or stopped before it finished "
            f"(`descend resume {shlex.quote(str(d))}` continues a killed run)"
            if config
            else f"no {SUMMARY_FILE}: still running, or stopped before it finished"
        )
        return row
    try:
        s = _read_json(d / SUMMARY_FILE, d)
        status = str(s["status"])
        row.data = str(s.get("data", row.data))
        row.task = str(s.get("task", row.task))
        if isinstance(s.get("best_loss"), (int, float)):
            row.loss = f"{s['best_loss']:.4g} {s.get('loss', '')}".strip()
        test = s.get("test") or s.get("validation") or {}
        name = s.get("metric")
        if name and isinstance(test.get(name), (int, float)):
            split = "test" if s.get("test") else "val"
            row.metric = f"{name} {test[name]:.4g} ({split})"
        total = s.get("total_seconds")
        if isinstance(total, (int, float)):
            row.time = f"{total:.1f}s"
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        row.status = "corrupt"
        row.problem = str(exc)
        return row
    if (
        status in ("completed", "interrupted")
        and not {MODEL_FILE, MODEL_SPEC_FILE, PREPROCESS_FILE} <= files
    ):
        row.status = "incomplete"
        row.problem = "model files missing"
        if status == "interrupted" and MODEL_FILE not in files:
            row.problem = (
                f"no model yet: interrupted before its first epoch ended "
                f"(`descend resume {shlex.quote(str(d))}` continues it)"
            )
        return row
    row.status = status
    return row


def list_runs(runs_dir: str | os.PathLike[str] = "runs") -> list[RunListing]:
    """Every run directory under ``runs_dir`` (oldest first); unreadable ones are listed with
    status ``incomplete`` or ``corrupt`` instead of raising."""
    base = Path(runs_dir)
    if base.exists() and not base.is_dir():
        # (it said "no runs in FILE/ yet", as if the runs had been lost)
        raise ConfigError(
            message(
                f"runs directory '{base}'",
                "must be a directory",
                "a file",
                "pass the directory given to descend fit's --runs-dir (default: runs)",
            )
        )
    if not base.is_dir():
        return []
    rows = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            row = _listing(d)
        except OSError as exc:
            row = RunListing(d, "corrupt", problem=str(exc))
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (r.started if r.started != "-" else "", r.dir.name))
    return rows


# ----------------------------------------------------------------------------- predicting


def predict(
    run: str | os.PathLike[str],
    data: str,
    *,
    runs_dir: str | os.PathLike[str] = "runs",
    device: str | None = None,
):
    """Predictions of a saved run for a data file (or built-in dataset), as a pyarrow Table.

    Classification: the predicted label in its original form (column named after the target)
    and one probability column per class (``prob_<class>``). Regression: one column per target
    in original units. Rows are in the file's order; target columns in the file are ignored.

    Raises:
        CheckpointError: the run directory is missing, incomplete or corrupted.
        InputError: the data cannot be read or its columns do not match the run's (the message
            names the file and the columns).
    """
    import pyarrow as pa

    r = load_run(run, need_model=True, runs_dir=runs_dir)
    pre = r.preprocessor()
    model = r.model(device)
    table, _, _ = load_table(data)
    present = [t for t in pre.targets if t in table.column_names]
    features = table.drop_columns(present) if present else table
    try:
        X, _ = pre.transform(features)
    except InputError as exc:
        raise InputError(f"prediction data '{data}' does not fit run '{r.dir}': {exc}") from None
    out = _forward(model, X)
    columns: dict[str, Any] = {}
    if pre.task == "classification":
        probs = _softmax(out)
        columns[pre.targets[0]] = pa.array(pre.inverse_transform_target(probs.argmax(1)).tolist())
        for i, c in enumerate(pre.classes or []):
            columns[f"prob_{c}"] = pa.array(probs[:, i])
    else:
        values = pre.inverse_transform_target(out[:, 0] if out.shape[1] == 1 else out)
        values = values.reshape(len(values), -1)
        for k, name in enumerate(pre.targets):
            columns[name] = pa.array(values[:, k])
    return pa.table(columns), list(pre.transform_notes)


_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = ("", ".csv", ".txt")


def predict_inputs(
    run: str | os.PathLike[str], data: str, *, runs_dir: str | os.PathLike[str] = "runs"
) -> list[tuple[str, Path]]:
    """The files ``descend predict RUN DATA`` reads and must never write over: ``(what, path)``
    for the prediction data file and the run's recorded training data file. A run that cannot
    be read adds nothing here (:func:`predict` names what is wrong with it)."""
    out: list[tuple[str, Path]] = []
    if Path(data).is_file():
        out.append((f"the prediction data file '{data}'", Path(data)))
    try:
        d = _resolve_run_dir(run, runs_dir)
        source = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8")).get("data") or {}
    except (DescendError, OSError, ValueError, AttributeError):
        return out
    if isinstance(source, dict) and source.get("kind") == "file":
        recorded = source.get("absolute_path") or source.get("path")
        if isinstance(recorded, str) and Path(recorded).is_file():
            out.append((f"the training data file of run '{d}' ('{recorded}')", Path(recorded)))
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike[str] | None, *, protect: Sequence[tuple[str, Path]] = ()
) -> None:
    """Refuse an ``-o`` that predictions cannot be written to, before any work: a directory, a
    missing parent directory, a suffix other than .csv/.txt (or none) and .parquet/.pq, or one
    of the files in ``protect`` (``(what, path)``: the input data, the run's training data —
    the predictions would replace them)."""
    if path is None or str(path) == "-":
        return
    target = Path(path)
    for what, kept in protect:
        if _same_file(target, kept):
            alt = target.with_name(f"{target.stem}.predictions{target.suffix or '.csv'}")
            raise ConfigError(
                message(
                    f"-o '{target}'",
                    "must not be a file that predict reads (the predictions would replace it)",
                    what,
                    f"write the predictions to another file, e.g. -o {shlex.quote(str(alt))}",
                )
            )
    suffix = target.suffix.lower()
    if suffix not in _CSV_SUFFIXES + _PARQUET_SUFFIXES:
        raise ConfigError(
            message(
                f"-o '{target}'",
                "must end in .csv or .parquet (the formats predict writes)",
                f"a {suffix} file",
                f"pass e.g. -o {target.with_suffix('.csv')} or -o {target.with_suffix('.parquet')}",
            )
        )
    if target.is_dir():
        raise ConfigError(
            message(
                f"-o '{target}'",
                "must be a file name",
                "a directory",
                f"pass e.g. -o {target / 'predictions.csv'}",
            )
        )
    if not target.parent.is_dir():
        raise ConfigError(
            message(
                f"-o '{target}'",
                "must be in an existing directory",
                f"no directory '{target.parent}'",
                "create it first",
            )
        )


def write_predictions(table: Any, path: str | os.PathLike[str] | None) -> None:
    """Write a table with pyarrow, atomically: Parquet for a .parquet/.pq ``path``, CSV
    otherwise, and CSV to stdout for None/``-``. See :func:`check_output` for what is refused."""
    import pyarrow as pa

    check_output(path)
    sink = pa.BufferOutputStream()
    parquet = path is not None and Path(path).suffix.lower() in _PARQUET_SUFFIXES
    if parquet:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    data = sink.getvalue().to_pybytes()
    if path is None or str(path) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    atomic_write_bytes(Path(path), data)


# ----------------------------------------------------------------------------- resuming


def resume_config(
    run: str | os.PathLike[str], *, runs_dir: str | os.PathLike[str] = "runs"
) -> tuple[Path, FitConfig]:
    """The run directory and its recorded (resolved) config, for ``descend resume``.

    Refuses a completed run, and a data file that changed since (its sha256 differs):
    resuming on other data would not continue the same run. A run without checkpoints yet
    (stopped while the learning rate was chosen, or in its first epoch) starts again from its
    beginning with its recorded config and seed: the same run.
    """
    d = _resolve_run_dir(run, runs_dir)
    config = _read_json(d / CONFIG_FILE, d)
    if config.get("format") != RUN_FORMAT or "options" not in config:
        raise CheckpointError(
            message(
                f"run file '{d / CONFIG_FILE}'",
                f"must be written by descend fit (format {RUN_FORMAT!r})",
                f"format {config.get('format')!r}",
                "pass a directory made by `descend fit`",
            )
        )
    summary_path = d / SUMMARY_FILE
    if summary_path.is_file():
        summary = _read_json(summary_path, d)
        if summary.get("status") == "completed":
            raise CheckpointError(
                message(
                    f"run '{d}'",
                    "must be unfinished to resume",
                    "a completed run",
                    "start a new run with `descend fit` (add --epochs to train longer)",
                )
            )
    source = config.get("data", {})
    if source.get("kind") == "file":
        path = Path(source["absolute_path"])
        if not path.is_file():
            raise InputError(
                message(
                    f"data file '{path}'",
                    "must still exist to resume the run",
                    "no such file",
                    "put the file back where it was",
                )
            )
        if file_sha256(path) != source.get("sha256"):
            raise InputError(
                message(
                    f"data file '{path}'",
                    "must be unchanged to resume the run",
                    "a file whose sha256 differs from the one recorded",
                    "restore the original file, or start a new run with `descend fit`",
                )
            )
    cfg = resolve_config(config["options"])
    return d, cfg
