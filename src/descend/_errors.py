"""Errors raised by descend, and the helpers that build their messages.

Every message has one shape (DESIGN.md): **what** (the argument or input), **the rule**, **what
was received**, and **the fix**. Build messages with :func:`message` so they stay uniform::

    raise InputError(message(
        "cross_entropy targets", "must be class indices of shape (N,)",
        "shape (32, 10) with values in {0, 1}", "these look one-hot; pass targets.argmax(1)"))
    # cross_entropy targets must be class indices of shape (N,); got shape (32, 10) with
    # values in {0, 1} — these look one-hot; pass targets.argmax(1)
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DescendError",
    "InputError",
    "check_choice",
    "check_in_range",
    "check_positive",
    "describe",
    "message",
]


class DescendError(Exception):
    """Base class of every error descend raises on purpose."""


class InputError(DescendError, ValueError):
    """Data, targets or model output that cannot be used as given."""


class ConfigError(DescendError, ValueError):
    """A setting (hyperparameter, option, argument) outside its valid range."""


class CheckpointError(DescendError):
    """A checkpoint that cannot be written, read or matched to the model."""


def message(what: str, rule: str, got: str, fix: str | None = None) -> str:
    """Build ``"<what> <rule>; got <got> — <fix>"``, the one message shape of descend."""
    text = f"{what} {rule}; got {got}"
    if fix:
        text += f" — {fix}"
    return text


def describe(value: Any) -> str:
    """A short, readable description of a received value for error messages."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        if tuple(shape) == () and hasattr(value, "item"):
            # a numpy scalar or a 0-d tensor: its value says more than "of shape ()"
            try:
                return f"{value.item()!r} ({type(value).__name__} of dtype {dtype})"
            except (TypeError, ValueError, RuntimeError):
                pass
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    if isinstance(value, str):
        return repr(value)
    text = repr(value)
    if "\n" in text:  # a module's, an optimizer's or a container's repr: name the type
        kind, module = type(value).__name__, type(value).__module__
        if isinstance(value, (tuple, list, dict)):
            return f"a {kind} of {len(value)} items"
        return f"{kind} ({module})" if module != "builtins" else f"a {kind}"
    return text if len(text) <= 60 else text[:57] + "..."


def check_bool(name: str, value: Any, *, owner: str) -> bool:
    """``value`` if it is True or False, else a ConfigError (a string such as "off" is true)."""
    if not isinstance(value, bool):
        raise ConfigError(
            message(f"{owner}: {name}", "must be True or False", describe(value), None)
        )
    return value


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (``np.int64(3)`` -> ``3``,
    ``np.float32(0.1)`` -> ``0.1``); anything else as it is. Settings read from arrays
    (``np.logspace``, a loop over ``np.arange``) are numbers like any other."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, numbers.Integral):  # np.integer (np.bool_ is not registered)
        return int(value)
    if isinstance(value, numbers.Real):  # np.floating
        return float(value)
    return value


def is_int(value: Any) -> bool:
    """An integer (a NumPy one too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (a NumPy one too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(
    name: str,
    value: float,
    *,
    owner: str,
    allow_zero: bool = False,
    rule: str | None = None,
    example: str | None = None,
) -> float:
    """Refuse a non-positive (or negative, with ``allow_zero``) number with a clear message;
    ``rule`` and ``example`` replace the generic wording (e.g. a number of seconds)."""
    value = plain(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and value == value and value not in (float("inf"), float("-inf"))
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        if rule is None:
            rule = "must be a finite number >= 0" if allow_zero else "must be a finite number > 0"
        fix = f"pass e.g. {example or f'{name}=1e-3'}"
        raise ConfigError(message(f"{owner}: {name}", rule, describe(value), fix))
    return float(value)


def check_in_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    owner: str,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    example: str | None = None,
) -> float:
    """Refuse a number outside ``[low, high)`` (bounds' inclusivity configurable)."""
    value = plain(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (
            value <= high if high_inclusive else value < high
        )
    if not ok:
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        fix = f"pass e.g. {example}" if example else f"pick a value in {lb}{low}, {high}{hb}"
        raise ConfigError(
            message(f"{owner}: {name}", f"must be in {lb}{low}, {high}{hb}", describe(value), fix)
        )
    return float(value)


def check_choice(name: str, value: Any, choices: list[str] | tuple[str, ...], *, owner: str) -> Any:
    """Refuse a string option that is not one of ``choices``, listing the close matches."""
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
        fix = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
        fix = fix or f"use one of {', '.join(repr(c) for c in choices)}"
        raise ConfigError(
            message(f"{owner}: {name}", f"must be one of {list(choices)}", describe(value), fix)
        )
    return value
