"""The ``descend`` command: parses options, builds a config and calls the library.

``descend fit`` trains a model on a data file or a built-in dataset and saves a run directory;
``predict``, ``runs``, ``show`` and ``datasets`` read what was saved. The work is done by
:mod:`descend.runs` (the pipeline and run directories), :mod:`descend.tabular` and
:func:`descend.fit`; this module only turns arguments into calls and results into text.

Exit status: 0 success; 2 refused input or options (the message names the file, column or row
and the fix; nothing already saved is touched); 130 interrupted (Ctrl-C: the best model so far
is saved); 1 an unexpected internal error. See ``docs/cli.md``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from descend import distributed, runs
from descend._errors import ConfigError, DescendError, message
from descend.checkpoint import RACE_DIR
from descend.train.callbacks import is_terminal, stdout_gone

__all__ = ["app", "main"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

_D = runs.FitConfig()

app = typer.Typer(
    name="descend",
    help="Optimize the loss: train a model on a data file in one command, no hand-tuning.",
    no_args_is_help=True,
    add_completion=False,
    # markdown: a docstring's paragraphs reflow to the terminal (rich mode kept the source's
    # line breaks, so an 80-column help broke every wrapped line in two)
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ----------------------------------------------------------------------------- output helpers


def _console(stderr: bool = False):
    """A rich console: colours and live bars on a terminal; plain text (no control characters,
    no wrapping of long lines) when the output is a pipe or a file."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # `descend fit data.csv | head`: rich would exit(1) mid-run; the output goes to the
            # null device instead and the command finishes its work (a run saves everything)
            self.quiet = True
            stdout_gone()

    stream = sys.stderr if stderr else sys.stdout
    tty = is_terminal(stream)
    return _Console(
        file=stream, highlight=False, soft_wrap=True, width=None if tty else 200, emoji=False
    )


def _quoted_names(inner: str) -> str:
    """``'a', 'b c'`` (a Python list's items) as a flag's value: ``a,'b c'``."""
    import ast
    import shlex

    try:
        names = ast.literal_eval(f"[{inner}]")
    except (ValueError, SyntaxError):
        return inner
    return shlex.quote(",".join(str(n) for n in names))


# The library's messages name the fix as Python (``categorical=['b']``, ``task='regression'``,
# ``device='cpu'``); on the command line the same fix is a flag.
_FLAG_FIXES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (
        re.compile(r"\b(categorical|ignore)=\[([^\]]*)\]"),
        lambda m: f"--{m[1]} {_quoted_names(m[2])}",
    ),
    (re.compile(r"\b(task|device)='([^']*)'"), lambda m: f"--{m[1]} {m[2]}"),
    (re.compile(r"\bdevice=None\b"), lambda m: "leave --device out"),
    (re.compile(r"\bmax_categories=(\d+)"), lambda m: f"--max-categories {m[1]}"),
    (
        re.compile(r"\bvalidation_fraction/test_fraction\b"),
        lambda m: "--validation-fraction/--test-fraction",
    ),
)


def _as_flags(text: str) -> str:
    """``text`` with the library's Python-style fixes written as the command's flags."""
    for pattern, repl in _FLAG_FIXES:
        text = pattern.sub(repl, text)
    return text


def _say(text: str, *, stderr: bool = False) -> None:
    if distributed.is_main():  # under torchrun, rank 0 speaks for the run
        _console(stderr).print(_as_flags(text), markup=False)


def _error(text: str, *, every_rank: bool = False) -> None:
    """``error: text`` on stderr — under torchrun from rank 0 (the processes refuse the same
    input alike), or with ``every_rank`` from each, its rank named."""
    text = _as_flags(text)
    if distributed.is_main():
        print(f"error: {text}", file=sys.stderr, flush=True)
    elif every_rank:
        print(f"error (rank {distributed.rank()}): {text}", file=sys.stderr, flush=True)


def _guard(fn):
    """Turn refused input into ``error: <message>`` and exit 2, and Ctrl-C into exit 130 —
    never a traceback for either."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except DescendError as exc:
            _error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            _error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # `descend runs | head`
            raise typer.Exit(0) from None
        except OSError as exc:  # a path the command cannot create, write or read
            if exc.filename is None:
                raise
            where = repr(str(exc.filename))
            _error(
                f"could not use {where}: {exc.strerror or type(exc).__name__} — choose a path you "
                "can write to (or read from), or fix its permissions or free space; nothing "
                "already saved was changed",
                every_rank=True,
            )
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def _explicit(ctx: typer.Context, names: list[str]) -> dict[str, Any]:
    """The options the user typed (command line wins over the config file; defaults do not)."""
    out = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            out[name] = ctx.params[name]
    return out


# ----------------------------------------------------------------------------- shared options

_Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or notes; only the final summary.")
]
_LookupRunsDir = Annotated[str, typer.Option(help="Where to look up a run given by name.")]


def _test_line(s: dict[str, Any]) -> str:
    return f"test ({runs._count(s['rows']['test'], 'row')}): {runs.format_metrics(s['test'])}"


def _say_held_out(s: dict[str, Any]) -> None:
    """The held-out metrics of a trained run: test, else validation, else why there are none."""
    if s.get("test"):
        _say(_test_line(s))
    elif s.get("validation"):
        _say(
            f"validation ({runs._count(s['rows']['validation'], 'row')}, no test split): "
            f"{runs.format_metrics(s['validation'])}"
        )
    else:
        _say("no validation or test rows (both fractions are 0): no held-out metrics")


def _untrained(run_dir: Any) -> None:
    """The end of a run interrupted before its first epoch ended: nothing trained to save."""
    _error(
        f"interrupted before the first epoch ended: nothing trained yet — "
        f"`descend resume {shlex.quote(str(run_dir))}` starts it again"
    )
    raise typer.Exit(EXIT_INTERRUPTED)


def _say_saved(s: dict[str, Any], run_dir: Any, quiet: bool) -> None:
    """The end of a training summary: the stop reason (which --quiet kept back) and where."""
    if quiet and s.get("stop_message"):
        _say(s["stop_message"])
    _say(f"run saved to {run_dir}")


# ----------------------------------------------------------------------------- fit


@app.command()
@_guard
def fit(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Argument(
            help="A data file (.csv, .tsv, .txt, optionally .gz/.bz2/.zst/.lz4; .parquet) or a "
            "built-in dataset name (see `descend datasets`).",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="The column to predict (several: a,b,c for "
            "multi-output regression). Built-in datasets know theirs.",
            show_default="required for a file",
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="auto, classification or regression. auto infers it from the target and says why."
        ),
    ] = _D.task,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A TOML file setting any of these options (keys "
            "as the option names, e.g. epochs = 50); the command line wins.",
            show_default="none",
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Epoch budget (early stopping usually ends sooner).")
    ] = _D.epochs,
    batch_size: Annotated[
        int, typer.Option(help="Samples per step; 0 = full batch.")
    ] = _D.batch_size,
    hidden: Annotated[
        str | None,
        typer.Option(
            help="Hidden layer widths, e.g. 512,256; 'none' for a linear model.",
            show_default="auto: two layers sized from the data",
        ),
    ] = None,
    activation: Annotated[
        str, typer.Option(help="relu, gelu, tanh, silu, leaky_relu, logistic or identity.")
    ] = _D.activation,
    dropout: Annotated[
        float, typer.Option(help="Dropout after each hidden layer, in [0, 1).")
    ] = _D.dropout,
    batch_norm: Annotated[
        bool, typer.Option(help="BatchNorm after each hidden linear layer.")
    ] = _D.batch_norm,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad, nadam, ...",
            show_default="auto: the default policy",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate (alone: AdamW at exactly this rate).",
            show_default="auto: the default policy",
        ),
    ] = None,
    patience: Annotated[
        int,
        typer.Option(
            help="Stop after this many epochs without "
            "improvement of the validation loss; 0 = never."
        ),
    ] = _D.patience,
    validation_fraction: Annotated[
        float, typer.Option(help="Share of rows held out to pick the best epoch.")
    ] = _D.validation_fraction,
    test_fraction: Annotated[
        float, typer.Option(help="Share of rows held out for the final metrics; 0 = no test split.")
    ] = _D.test_fraction,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the split, initialization and batch order.",
            show_default="drawn and recorded",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda, cuda:1, mps.",
            show_default="auto: an accelerator if there is one and a step is big enough "
            "(batch x weights >= 8 million), else the CPU",
        ),
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, or bf16 (autocast).")] = _D.precision,
    max_time: Annotated[
        float | None,
        typer.Option(help="Wall-clock budget in seconds.", show_default="none"),
    ] = None,
    max_categories: Annotated[
        int, typer.Option(help="Most one-hot columns per text column (the rarest pooled).")
    ] = _D.max_categories,
    categorical: Annotated[
        str | None,
        typer.Option(
            help="Columns to one-hot encode although they hold numbers (a,b).", show_default="none"
        ),
    ] = None,
    ignore: Annotated[
        str | None,
        typer.Option(
            help="Columns that are not features (ids, leaks), comma-separated.", show_default="none"
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="The run directory to create (new or empty).",
            show_default="RUNS_DIR/<data>-<YYYYmmdd-HHMMSS>",
        ),
    ] = None,
    runs_dir: Annotated[str, typer.Option(help="Where new run directories go.")] = _D.runs_dir,
    quiet: _Quiet = _D.quiet,
) -> None:
    """Train a model on a data file or built-in dataset and save a run directory.

    The task is inferred from the target (classification → cross-entropy, regression → MSE);
    rows are split into training, validation (best epoch, early stopping) and test (final
    metrics, in the target's original units); preprocessing is fitted on the training rows.
    """
    names = [n for n in runs.FitConfig.__dataclass_fields__ if n in ctx.params]
    file_values = runs.load_config_file(config) if config is not None else {}
    cfg = runs.resolve_config(file_values, _explicit(ctx, names))
    notify = (lambda s: None) if cfg.quiet else _say
    outcome = runs.train(cfg, notify=notify, argv=sys.argv[1:])
    s = outcome.summary
    if not outcome.trained:
        _untrained(outcome.run_dir)
    _say_held_out(s)
    _say_saved(s, outcome.run_dir, cfg.quiet)
    if outcome.interrupted:
        _say(f"interrupted: saved the best model so far (epoch {s.get('best_epoch', 0)})")
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command()
@_guard
def resume(
    run: Annotated[str, typer.Argument(help="The run directory (or its name under --runs-dir).")],
    runs_dir: Annotated[str, typer.Option(help="Where run directories are.")] = _D.runs_dir,
    quiet: _Quiet = False,
) -> None:
    """Continue an interrupted or killed run from its newest good checkpoint.

    Same data (checked by sha256), same config, same seed: the continued run ends exactly
    where the uninterrupted run would have.
    """
    run_dir, cfg = runs.resume_config(run, runs_dir=runs_dir)
    cfg.quiet = quiet
    notify = (lambda s: None) if quiet else _say
    notify(f"resuming {run_dir}")
    ck = run_dir / runs.CHECKPOINT_DIR
    if not list(ck.glob("ckpt-*")):
        if list((ck / RACE_DIR).glob("ckpt-*")):
            notify(
                "stopped while the learning rate was chosen: the race goes on from its checkpoint"
            )
        else:
            notify("no checkpoint yet (it stopped before its first epoch ended): starting it again")
    outcome = runs.train(cfg, notify=notify, argv=sys.argv[1:], resume_run=run_dir)
    s = outcome.summary
    if not outcome.trained:
        _untrained(run_dir)
    # (it printed the test line alone: a run with --test-fraction 0 ended with no metrics)
    _say_held_out(s)
    _say_saved(s, run_dir, quiet)
    if outcome.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


# ----------------------------------------------------------------------------- predict


@app.command()
@_guard
def predict(
    run: Annotated[
        str,
        typer.Argument(
            help="A run directory made by `descend fit` (or its name under --runs-dir).",
            show_default=False,
        ),
    ],
    data: Annotated[
        str,
        typer.Argument(
            help="A data file with the training columns (the "
            "target may be absent), or a built-in dataset.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="The file to write: .csv, or .parquet ('-' = CSV to stdout).",
            show_default="stdout",
        ),
    ] = None,
    runs_dir: _LookupRunsDir = _D.runs_dir,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...", show_default="cpu")] = None,
) -> None:
    """Predict with a saved run, as CSV (or Parquet for a .parquet file).

    Classification gives the labels in their original form plus one probability column per
    class; regression gives values in the target's original units."""
    # before any work; never over the data it reads (the input, the run's training data)
    runs.check_output(output, protect=runs.predict_inputs(run, data, runs_dir=runs_dir))
    table, notes = runs.predict(run, data, runs_dir=runs_dir, device=device)
    to_stdout = output is None or output == "-"
    for note in notes:
        _say(f"note: {note}", stderr=True)
    runs.write_predictions(table, output)
    if not to_stdout:
        _say(f"wrote {runs._count(table.num_rows, 'prediction')} to {output}")


# ----------------------------------------------------------------------------- runs / show


@app.command("runs")
@_guard
def runs_command(
    dir: Annotated[
        str,
        typer.Option("--runs-dir", "--dir", "-d", help="The runs directory (as fit's --runs-dir)."),
    ] = _D.runs_dir,
) -> None:
    """List past runs: data, task, loss, metric, time, status."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    if dir != _D.runs_dir and not Path(dir).exists():
        # (it said "no runs in DIR/ yet" for a mistyped path, as if the runs were gone)
        raise ConfigError(
            message(
                "--runs-dir",
                "must name an existing runs directory",
                f"'{dir}', which does not exist",
                "check the path (the one given to descend fit's --runs-dir), or run "
                "`descend runs` for the default one (runs)",
            )
        )
    rows = runs.list_runs(dir)
    if not rows:
        _say(f"no runs in {dir}/ yet: train one with `descend fit DATA`")
        return
    table = Table(title=f"runs in {escape(dir)}/", title_justify="left")
    for col in ("run", "data", "task", "loss", "metric", "time", "started", "status"):
        table.add_column(
            col, no_wrap=col in ("run", "status"), justify="right" if col == "time" else "left"
        )
    styles = {
        "completed": "green",
        "interrupted": "yellow",
        "failed": "red",
        "incomplete": "yellow",
        "corrupt": "red",
    }
    for r in rows:
        # Text, not markup: a run or data file named 'exp[lr]' was listed as 'exp'
        table.add_row(
            *(Text(v) for v in (r.dir.name, r.data, r.task, r.loss, r.metric, r.time, r.started)),
            Text(r.status, style=styles.get(r.status, "")),
        )
    console = _console()
    console.print(table)
    for r in rows:
        if r.problem:
            console.print(f"{r.dir.name}: {r.status} — {r.problem}", markup=False)


def _plot_text(
    epochs: list[float], series: dict[str, list[float | None]], title: str, colour: bool
) -> str | None:
    """A terminal line plot with plotext, or None when plotext is missing or fails."""
    try:
        import plotext as plt

        fig = plt.figure
        fig.clear.all()
        markers = ("dot", "x", "+", "*")
        top, right = -math.inf, -math.inf
        for (label, ys), marker in zip(series.items(), markers):
            pts = [(e, y) for e, y in zip(epochs, ys) if y is not None and math.isfinite(y)]
            if pts:
                xs, vals = zip(*pts)
                top, right = max(top, *vals), max(right, *xs)
                # Without colour the curves differ by their marker.
                sig = fig.signal(list(xs), list(vals), marker=None if colour else marker)
                fig.draw(sig.label(label).lines())
        if not math.isfinite(top):
            return None
        # Losses fall from the top left: the legend goes top right, in data coordinates.
        fig.legend(x=right, y=top, ha="right", va="top", relative=True)
        fig.title(title)
        fig.label("epoch", axis=0)
        import shutil

        width = min(100, max(40, shutil.get_terminal_size((100, 24)).columns - 2))
        fig.plot_size(width, 18)
        return fig.build().string(colorless=not colour)
    except Exception:  # plotext missing or its API changed: the table below replaces it
        return None


@app.command()
@_guard
def show(
    run: Annotated[
        str,
        typer.Argument(help="A run directory (or its name under --runs-dir).", show_default=False),
    ],
    runs_dir: _LookupRunsDir = _D.runs_dir,
) -> None:
    """Show a run: summary, stop reason, test metrics and the loss curve in the terminal."""
    from rich.table import Table

    r = runs.load_run(run, runs_dir=runs_dir)
    # A run that failed or was interrupted before training began has no metrics.jsonl: its
    # summary (the error, the stop reason) is what there is to show.
    has_metrics = (r.dir / runs.METRICS_FILE).is_file()
    records = runs.read_metrics(r.dir) if has_metrics else []
    s, c = r.summary, r.config
    # The model's size as model.json records it, for a run whose summary has none (stopped
    # before its first epoch ended: it showed 'mlp None → 64 → None; 0 parameters')
    spec_path = r.dir / runs.MODEL_SPEC_FILE
    m = runs._read_json(spec_path, r.dir) if spec_path.is_file() else {}
    spec = m.get("spec") if isinstance(m.get("spec"), dict) else {}
    opts, src = c.get("options") or {}, c.get("data") or {}
    console = _console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()

    def row(key: str, value: Any) -> None:
        from rich.text import Text

        grid.add_row(key, Text(str(value)))

    row("run", r.dir)
    row("status", s.get("status", "?"))
    if src.get("kind") == "file":
        row("data", f"{src.get('path')} (sha256 {str(src.get('sha256', ''))[:12]}…)")
    else:
        row("data", f"built-in dataset {src.get('name', s.get('data'))}")
    targets = ", ".join(c.get("targets") or [])
    row("task", f"{s.get('task')} on {targets!s}, loss {s.get('loss')}")
    hidden = opts.get("hidden")
    row(
        "model",
        f"mlp {s.get('n_features', spec.get('in_features', '?'))} → "
        f"{' → '.join(map(str, hidden or []))}{' → ' if hidden else ''}"
        f"{s.get('n_outputs', spec.get('out_features', '?'))}, {opts.get('activation')}; "
        f"{s.get('n_parameters', m.get('n_parameters', 0)):,} parameters",
    )
    row("optimizer", s.get("optimizer", "-"))
    rows = s.get("rows") or c.get("split") or {}
    row(
        "rows",
        f"{rows.get('train', '-')} train, {rows.get('validation', '-')} validation, "
        f"{rows.get('test', '-')} test; seed {s.get('seed', opts.get('seed'))}",
    )
    if s.get("status") == "failed":
        row("error", s.get("error", "-"))
    if s.get("stop_message"):
        row("stopped", s["stop_message"])
    if s.get("best_epoch") is not None:
        row(
            "best",
            f"epoch {s['best_epoch']} of {s.get('epochs')}: {s.get('monitor')} "
            f"{s.get('best_loss', math.nan):.4g}",
        )
    if s.get("test"):
        row("test", runs.format_metrics(s["test"]))
    if s.get("validation"):
        row("validation", runs.format_metrics(s["validation"]))
    if isinstance(s.get("total_seconds"), (int, float)):
        row(
            "time",
            f"{s['total_seconds']:.1f}s (training {s.get('train_seconds', 0):.1f}s), "
            f"started {s.get('started_at', '-')}",
        )
    console.print(grid)
    if not records:
        console.print("no epochs recorded", markup=False)
        return
    epochs = [rec.get("epoch", i + 1) for i, rec in enumerate(records)]
    series = {"train": [rec.get("train_loss") for rec in records]}
    if any(rec.get("val_loss") is not None for rec in records):
        series["validation"] = [rec.get("val_loss") for rec in records]
    # One epoch is one point a curve cannot show (the legend box covered it): the table does
    text = (
        _plot_text(epochs, series, f"loss ({s.get('loss')})", colour=is_terminal(sys.stdout))
        if len(records) > 1
        else None
    )
    if text is not None:
        console.print()
        console.out(text, highlight=False)
        return
    metric = s.get("metric")
    table = Table(title="loss per epoch", title_justify="left")
    for col in ("epoch", "train_loss", "val_loss", metric or "metric", ""):
        table.add_column(col, justify="right")
    for rec in records:

        def fmt(v: Any) -> str:
            return f"{v:.4g}" if isinstance(v, (int, float)) else "-"

        table.add_row(
            str(rec.get("epoch")),
            fmt(rec.get("train_loss")),
            fmt(rec.get("val_loss")),
            fmt(rec.get(metric)) if metric else "-",
            "*" if rec.get("best") else "",
        )
    console.print(table)


# ----------------------------------------------------------------------------- datasets


@app.command()
@_guard
def datasets() -> None:
    """List the built-in datasets (no download needed)."""
    from rich.table import Table

    from descend import datasets as ds

    table = Table(title="built-in datasets: descend fit NAME", title_justify="left")
    for col, just in (
        ("name", "left"),
        ("task", "left"),
        ("rows", "right"),
        ("features", "right"),
        ("outputs", "right"),
        ("description", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=col == "name")
    for name in ds.names():
        i = ds.info(name)
        outputs = (
            f"{i.n_classes} classes"
            if i.n_classes
            else (f"{i.n_targets} targets" if i.n_targets > 1 else "1 target")
        )
        table.add_row(name, i.task, f"{i.n_samples:,}", str(i.n_features), outputs, i.description)
    _console().print(table)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """The console entry point (``descend`` and ``python -m descend``).

    SIGTERM (``kill``) is handled like Ctrl-C: training stops, the best model so far is saved,
    the summary says ``interrupted`` and the exit status is 130.
    """
    import signal

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _terminate)
    app(args=argv, prog_name="descend")


if __name__ == "__main__":  # pragma: no cover
    main()
