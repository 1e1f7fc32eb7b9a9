"""Callbacks: small hooks into the training loop, and the progress display.

A callback subclasses :class:`Callback` and overrides any of ``on_fit_start``,
``on_step_end``, ``on_epoch_end`` and ``on_fit_end`` (no-ops by default). Each receives the
:class:`~descend.train.loop.Loop`, whose attributes (``model``, ``epoch``, ``step``,
``history``, ``best_loss`` ...) describe the run so far; ``loop.request_stop(message)`` ends the
run after the current step with stop reason ``callback``. ``on_fit_end`` runs in a ``finally``.
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from descend.train.loop import Loop

__all__ = ["Callback", "PlainProgress", "RichProgress", "default_progress"]


class Callback:
    """Base class with no-op hooks."""

    #: Set to False when ``on_step_end`` does nothing, so the loop can skip calling it.
    wants_steps: bool = True

    def on_fit_start(self, loop: Loop) -> None:
        pass

    def on_step_end(self, loop: Loop) -> None:
        pass

    def on_epoch_end(self, loop: Loop) -> None:
        pass

    def on_fit_end(self, loop: Loop) -> None:
        pass


def wants_steps(cb: Any) -> bool:
    """Whether the loop must call ``cb.on_step_end``: ``wants_steps`` as set on the instance, or
    by the class whose ``on_step_end`` is in use, so that a subclass overriding ``on_step_end``
    of a class with ``wants_steps = False`` (``PlainProgress``) is called."""
    if "wants_steps" in getattr(cb, "__dict__", {}):
        return bool(cb.wants_steps)
    for klass in type(cb).__mro__:
        own = vars(klass)
        if "on_step_end" in own or "wants_steps" in own:
            return bool(own.get("wants_steps", True))
    return bool(getattr(cb, "wants_steps", True))


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def epoch_line(loop: Loop) -> str:
    """One plain-text line describing the epoch just finished (no control characters)."""
    h = loop.history
    parts = [
        f"epoch {h.epoch[-1]:>{len(str(loop.max_epochs))}}/{loop.max_epochs}",
        f"train_loss {_fmt(h.train_loss[-1])}",
    ]
    if h.val_loss:
        parts.append(f"val_loss {_fmt(h.val_loss[-1])}")
    if h.metric and h.metric_name:
        parts.append(f"{h.metric_name} {_fmt(h.metric[-1])}")
    if h.step_lr:
        parts.append(f"lr {h.step_lr[-1]:.3g}")
    parts.append(f"{h.time[-1]:.1f}s")
    if loop.improved:
        parts.append("*")
    return "  ".join(parts)


def stdout_gone() -> None:
    """The reader of stdout went away (``descend fit data.csv | head``): send the rest of the
    output to the null device, so training goes on — its run directory and Result hold
    everything — instead of failing on BrokenPipeError (Python's own advice for the case, which
    also keeps the flush at exit quiet)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a captured stream): nothing to redirect
        pass


def new_events(cb: Any, loop: Loop) -> list[dict[str, Any]]:
    """The history events a progress display has not shown yet (from ``loop.events_shown``,
    set at its ``on_fit_start``: a resumed run's earlier ones were shown by the run that wrote
    its checkpoint)."""
    seen = getattr(cb, "_events_seen", 0)
    events = loop.history.events[seen:]
    cb._events_seen = len(loop.history.events)
    return events


class PlainProgress(Callback):
    """One plain line per epoch, for logs and pipes (used when stdout is not a terminal)."""

    wants_steps = False

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def _print(self, text: str) -> None:
        if self.stream is False:  # its reader went away: the run goes on without progress lines
            return
        try:
            print(text, file=self.stream or sys.stdout, flush=True)
        except BrokenPipeError:
            if self.stream is None:
                stdout_gone()
            self.stream = False

    def planning(self, text: str) -> None:
        """A line from the default policy while it chooses the learning rate (before step 1)."""
        self._print(f"descend: {text}")

    def on_fit_start(self, loop: Loop) -> None:
        self._events_seen = getattr(loop, "events_shown", 0)
        self._print(loop.describe_start())

    def on_epoch_end(self, loop: Loop) -> None:
        self._print(epoch_line(loop))
        for event in new_events(self, loop):
            self._print(f"  ! {event['message']}")

    def on_fit_end(self, loop: Loop) -> None:
        if loop.stop_message:
            self._print(loop.stop_message)


class RichProgress(Callback):
    """A live progress bar (rich) for terminals: one bar over epochs, updated every epoch,
    with the latest losses in the description; a line per epoch is kept above the bar when
    ``lines=True``."""

    wants_steps = False

    def __init__(self, lines: bool = False) -> None:
        self.lines = lines
        self._progress = None
        self._task = None

    def planning(self, text: str) -> None:
        """A line from the default policy while it chooses the learning rate (before the bar)."""
        from rich.console import Console
        from rich.markup import escape

        Console().print(f"[bold]descend[/bold] {escape(text)}", highlight=False)

    def on_fit_start(self, loop: Loop) -> None:
        self._events_seen = getattr(loop, "events_shown", 0)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]descend[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("<"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._progress.console.print(loop.describe_start(), markup=False)
        self._task = self._progress.add_task("", total=loop.max_epochs)

    def on_epoch_end(self, loop: Loop) -> None:
        from rich.markup import escape  # texts are printed as they are, never as markup

        if self._progress is None:
            return
        h = loop.history
        desc = f"loss {_fmt(h.train_loss[-1])}"
        if h.val_loss:
            desc += f"  val {_fmt(h.val_loss[-1])}"
        if h.metric and h.metric_name:
            desc += f"  {h.metric_name} {_fmt(h.metric[-1])}"
        self._progress.update(self._task, completed=len(h.epoch), description=escape(desc))
        if self.lines:
            self._progress.console.print(epoch_line(loop), markup=False)
        for event in new_events(self, loop):
            self._progress.console.print(
                f"[yellow]! {escape(event['message'])}[/yellow]", markup=True, highlight=False
            )

    def on_fit_end(self, loop: Loop) -> None:
        if self._progress is None:
            return
        self._progress.stop()
        if loop.stop_message:
            self._progress.console.print(loop.stop_message, markup=False)
        self._progress = None


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal: not when it is None (pythonw, a service) or a bare
    writer without ``isatty`` (a logging shim)."""
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def default_progress(verbose: int, callbacks: Any = ()) -> Callback | None:
    """The progress display for a verbosity level: none at 0; a rich bar on a terminal, plain
    lines otherwise, at 1; at 2 the bar also keeps one line per epoch. None when ``callbacks``
    already hold a progress display (the user's own, configured: two would print every epoch
    twice)."""
    if verbose <= 0 or any(isinstance(c, (PlainProgress, RichProgress)) for c in callbacks):
        return None
    if is_terminal(sys.stdout):
        return RichProgress(lines=verbose >= 2)
    return PlainProgress()
