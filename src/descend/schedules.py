"""Learning-rate schedules: pure functions of the 0-based step returning a multiplier.

A schedule is any ``Callable[[int], float]``; it multiplies the optimizer's base learning rate
(``scale_by_learning_rate(lr, schedule=...)`` or ``optim.adamw(lr, schedule=...)``). Steps count
optimizer updates from 0, never epochs. The schedules here are small callable objects with a
readable ``repr``, validate their arguments when built, and hold their final value for steps
past ``total_steps``.

Example:
    >>> from descend import schedules
    >>> s = schedules.cosine(total_steps=100, warmup_steps=10)
    >>> round(s(0), 3), s(9), round(s(55), 3), s(100)
    (0.1, 1.0, 0.5, 0.0)
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from descend._errors import ConfigError, check_in_range, check_positive, describe, message, plain

__all__ = [
    "Schedule",
    "constant",
    "cosine",
    "join",
    "linear_warmup",
    "one_cycle",
    "warmup_stable_decay",
]


class Schedule:
    """A named schedule: ``schedule(step) -> multiplier``, with a readable ``repr``."""

    __slots__ = ("_fn", "_text")

    def __init__(self, fn: Callable[[int], float], text: str):
        self._fn = fn
        self._text = text

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ConfigError(
                message("schedule step", "must be >= 0 (0-based)", describe(step), None)
            )
        return self._fn(step)

    def __repr__(self) -> str:
        return self._text


def _steps(name: str, value: Any, owner: str, minimum: int) -> int:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            message(
                f"{owner}: {name}",
                f"must be an integer >= {minimum}",
                describe(value),
                f"pass e.g. {name}={max(minimum, 100)}",
            )
        )
    return value


def _fraction(name: str, value: Any, owner: str, example: str) -> float:
    return check_in_range(name, value, 0.0, 1.0, owner=owner, high_inclusive=True, example=example)


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps


def constant() -> Schedule:
    """``m(t) = 1``: the base learning rate at every step."""
    return Schedule(lambda step: 1.0, "constant()")


def linear_warmup(warmup_steps: int) -> Schedule:
    """Linear warmup, then constant: ``m(t) = min(1, (t + 1) / W)``.

    The first step already uses ``lr / W`` (a zero learning rate would waste it) and step
    ``W − 1`` reaches the full rate. ``W = 0`` is :func:`constant`.

    Args:
        warmup_steps: W, an integer >= 0.
    """
    w = _steps("warmup_steps", warmup_steps, "linear_warmup", 0)
    if w == 0:
        return Schedule(lambda step: 1.0, "linear_warmup(warmup_steps=0)")
    return Schedule(lambda step: min(1.0, (step + 1) / w), f"linear_warmup(warmup_steps={w})")


def cosine(total_steps: int, final: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Cosine decay (Loshchilov & Hutter 2017) after an optional linear warmup.

    With T = ``total_steps``, W = ``warmup_steps`` and f = ``final``::

        m(t) = (t + 1) / W                                      for t < W
        m(t) = f + (1 − f) · ½ (1 + cos(π (t − W) / (T − W)))  for W <= t < T
        m(t) = f                                                for t >= T

    so ``m(W) = 1`` and the curve reaches f exactly at step T (continuous there).

    Args:
        total_steps: T >= 1, the number of optimizer steps of the run.
        final: f in [0, 1], the multiplier at the end.
        warmup_steps: W in [0, T).
    """
    owner = "cosine"
    t_total = _steps("total_steps", total_steps, owner, 1)
    final = _fraction("final", final, owner, "final=0.0")
    w = _steps("warmup_steps", warmup_steps, owner, 0)
    if w >= t_total:
        raise ConfigError(
            message(
                f"{owner}: warmup_steps",
                f"must be < total_steps={t_total}",
                str(w),
                "shorten the warmup or lengthen the run",
            )
        )
    span = t_total - w

    def fn(step: int) -> float:
        if step < w:
            return _warmup(step, w)
        if step >= t_total:
            return final
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * (step - w) / span))

    return Schedule(fn, f"cosine(total_steps={t_total}, final={final}, warmup_steps={w})")


def warmup_stable_decay(
    total_steps: int, warmup_steps: int, decay_fraction: float = 0.2, final: float = 0.0
) -> Schedule:
    """Warmup–stable–decay ("trapezoid", Hu et al. 2024): warm up, hold, then decay linearly.

    With T = ``total_steps``, W = ``warmup_steps``, D = T − round(``decay_fraction`` · T) the
    first decay step and f = ``final``::

        m(t) = (t + 1) / W                       for t < W
        m(t) = 1                                 for W <= t < D
        m(t) = 1 − (1 − f) · (t − D) / (T − D)   for D <= t < T
        m(t) = f                                 for t >= T

    Args:
        total_steps: T >= 1.
        warmup_steps: W >= 0, at most D.
        decay_fraction: share of the run spent decaying, in [0, 1].
        final: f in [0, 1].
    """
    owner = "warmup_stable_decay"
    t_total = _steps("total_steps", total_steps, owner, 1)
    w = _steps("warmup_steps", warmup_steps, owner, 0)
    decay_fraction = _fraction("decay_fraction", decay_fraction, owner, "decay_fraction=0.2")
    final = _fraction("final", final, owner, "final=0.0")
    d = t_total - round(decay_fraction * t_total)
    if w > d:
        raise ConfigError(
            message(
                f"{owner}: warmup_steps",
                f"must be <= the first decay step {d} (total_steps − decay steps)",
                str(w),
                "shorten the warmup or lower decay_fraction",
            )
        )
    decay_len = t_total - d

    def fn(step: int) -> float:
        if step < w:
            return _warmup(step, w)
        if step < d:
            return 1.0
        if step >= t_total:
            return final
        return 1.0 - (1.0 - final) * (step - d) / decay_len

    return Schedule(
        fn,
        f"warmup_stable_decay(total_steps={t_total}, warmup_steps={w}, "
        f"decay_fraction={decay_fraction}, final={final})",
    )


def one_cycle(
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The 1cycle policy (Smith & Topin 2019), as ``torch.optim.lr_scheduler.OneCycleLR``.

    The multiplier is relative to the PEAK learning rate (pass the peak as the optimizer's
    ``lr``). With T = ``total_steps``, P = ``pct_start`` · T − 1 the peak step,
    s = 1 / ``div_factor`` and e = s / ``final_div_factor``, and the cosine interpolation
    ``c(a, b, x) = b + (a − b) · ½ (1 + cos(π x))``::

        m(t) = c(s, 1, t / P)                  for t <= P
        m(t) = c(1, e, (t − P) / (T − 1 − P))  for P < t < T
        m(t) = e                               for t >= T − 1

    Args:
        total_steps: T >= 2.
        pct_start: share of the run spent rising, in (0, 1).
        div_factor: peak / initial learning rate, >= 1.
        final_div_factor: initial / final learning rate, >= 1 / ``div_factor`` (the final
            rate at most the peak).
    """
    owner = "one_cycle"
    t_total = _steps("total_steps", total_steps, owner, 2)
    pct_start = check_in_range(
        "pct_start", pct_start, 0.0, 1.0, owner=owner, low_inclusive=False, example="pct_start=0.3"
    )
    div_factor = check_positive("div_factor", div_factor, owner=owner, example="div_factor=25")
    final_div_factor = check_positive(
        "final_div_factor", final_div_factor, owner=owner, example="final_div_factor=1e4"
    )
    start = 1.0 / div_factor
    end = start / final_div_factor
    # Both divide: a fraction (div_factor=0.04 meant as "start at 4%") would start or end the
    # run above the peak rate it was given (25x for 0.04).
    if start > 1.0:
        raise ConfigError(
            message(
                f"{owner}: div_factor",
                "must be >= 1 (the peak over the starting rate)",
                describe(div_factor),
                "it divides the peak: pass e.g. div_factor=25 to start at 4% of it",
            )
        )
    if end > 1.0:
        raise ConfigError(
            message(
                f"{owner}: final_div_factor",
                f"must be >= 1 / div_factor = {1 / div_factor:g} (the final rate may not exceed "
                "the peak)",
                describe(final_div_factor),
                "it divides the starting rate: pass e.g. final_div_factor=1e4",
            )
        )
    peak = float(pct_start * t_total) - 1
    last = t_total - 1
    if peak <= 0 or peak >= last:
        raise ConfigError(
            message(
                f"{owner}: pct_start",
                f"must leave at least one step before and after the peak of a {t_total}-step run",
                f"pct_start={pct_start} (peak at step {peak:g})",
                "raise total_steps or move pct_start toward 0.3",
            )
        )

    def cos_interp(a: float, b: float, x: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * x) + 1)

    def fn(step: int) -> float:
        if step <= peak:
            return cos_interp(start, 1.0, step / peak)
        if step >= last:
            return end
        return cos_interp(1.0, end, (step - peak) / (last - peak))

    return Schedule(
        fn,
        f"one_cycle(total_steps={t_total}, pct_start={pct_start}, div_factor={div_factor}, "
        f"final_div_factor={final_div_factor})",
    )


def join(schedules: Sequence[Callable[[int], float]], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` between ``boundaries[i-1]`` and ``boundaries[i]``.

    Each schedule sees its own 0-based step: for ``b[i-1] <= t < b[i]`` the multiplier is
    ``schedules[i](t − b[i-1])`` (with ``b[-1] = 0``), and the last schedule runs from the last
    boundary on. ``len(boundaries) == len(schedules) − 1``, strictly increasing, > 0.

    Example:
        >>> from descend.schedules import join, linear_warmup, cosine
        >>> s = join([linear_warmup(10), cosine(90)], [10])
        >>> s(9), s(10)
        (1.0, 1.0)
    """
    owner = "join"
    # (a lone schedule or an int boundary is not iterable: say so in the message's shape)
    schedules = list(schedules) if isinstance(schedules, Iterable) else schedules
    if not isinstance(schedules, list) or not schedules or any(not callable(s) for s in schedules):
        raise ConfigError(
            message(
                f"{owner}: schedules",
                "must be a non-empty list of callables step -> float",
                describe(schedules),
                "pass e.g. [linear_warmup(100), cosine(900)]",
            )
        )
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Iterable):
        raise ConfigError(
            message(
                f"{owner}: boundaries",
                "must be a list of integers",
                describe(boundaries),
                "pass one boundary per switch, e.g. boundaries=[100]",
            )
        )
    bounds = list(boundaries)
    if len(bounds) != len(schedules) - 1:
        raise ConfigError(
            message(
                f"{owner}: boundaries",
                f"must have len(schedules) − 1 = {len(schedules) - 1} entries",
                f"{len(bounds)} entries {bounds}",
                "give one boundary between each pair of consecutive schedules",
            )
        )
    bounds = [plain(b) for b in bounds]  # NumPy integers too
    ints = all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
    if (
        not ints
        or any(b <= 0 for b in bounds)
        or any(a >= b for a, b in itertools.pairwise(bounds))
    ):
        raise ConfigError(
            message(
                f"{owner}: boundaries",
                "must be strictly increasing integers > 0",
                describe(bounds),
                "e.g. boundaries=[100, 900]",
            )
        )
    starts = [0, *bounds]

    def fn(step: int) -> float:
        i = bisect.bisect_right(bounds, step)
        return float(schedules[i](step - starts[i]))

    return Schedule(fn, f"join({schedules!r}, boundaries={bounds})")
