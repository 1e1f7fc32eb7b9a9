"""The training loop and what it returns."""

from descend.train.callbacks import Callback, PlainProgress, RichProgress
from descend.train.loop import Loop, fit
from descend.train.result import History, Result, StopReason

__all__ = [
    "Callback",
    "History",
    "Loop",
    "PlainProgress",
    "Result",
    "RichProgress",
    "StopReason",
    "fit",
]
