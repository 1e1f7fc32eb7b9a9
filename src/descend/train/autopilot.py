"""The default optimization policy, used when the user leaves ``optimizer`` and ``lr`` unset.

This first policy is deliberately simple and documented so that every run says what it chose:
AdamW (lr 1e-3, weight decay 0.01 on matrices only) with a linear warmup over the first 5% of
the step budget (at least one epoch's worth when the budget is short) and cosine decay to 0 at
the end of the budget, so an early stop still sees a sensible learning rate. The zero-tuning
issue replaces the constants with choices made from the data and the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from descend import optim, schedules
from descend.transforms import Transform

if TYPE_CHECKING:
    from descend.data import Bundle
    from descend.losses import Loss
    from descend.train.callbacks import Callback
    from descend.train.result import Result

__all__ = ["Plan", "PlanContext", "default_optimizer", "plan"]


@dataclass
class PlanContext:
    """What the policy may look at: the model (do not train it in place: trials use copies),
    the prepared data, the loss, the budget, and ``run_trial`` to train a copy briefly."""

    model: torch.nn.Module
    bundle: Bundle
    loss: Loss
    epochs: int
    seed: int
    device: torch.device
    lr: float | None
    #: ``run_trial(tx, epochs, model=None) -> Result``: trains a deep copy of the model (or the
    #: given module) with ``tx`` for ``epochs`` epochs, silently, without early stopping.
    run_trial: Callable[..., Result]


@dataclass
class Plan:
    """The policy's decision: the optimizer, a description, the record shown to the user
    (``Result.autopilot``), and callbacks to add to the run (e.g. a safety net)."""

    tx: Transform
    description: str
    record: dict[str, Any] | None
    callbacks: list[Callback] = field(default_factory=list)


def plan(ctx: PlanContext) -> Plan:
    """Choose the optimizer for a run where the user gave no optimizer."""
    tx, desc, record = default_optimizer(
        lr=ctx.lr, steps_per_epoch=ctx.bundle.train.num_batches, epochs=ctx.epochs
    )
    return Plan(tx, desc, record)


def default_optimizer(
    *, lr: float | None, steps_per_epoch: int | None, epochs: int
) -> tuple[Transform, str, dict[str, Any] | None]:
    """Return ``(transform, description, autopilot_record)`` for a run with no optimizer given.

    With ``lr`` given the user gets exactly that learning rate, held constant (AdamW), and no
    autopilot record.
    """
    if lr is not None:
        return optim.adamw(lr=lr), f"adamw(lr={lr:g})", None
    if not steps_per_epoch:  # a stream of unknown length: no budget to shape a schedule over
        record = {
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.01,
            "schedule": "constant",
            "why": "default policy; the data has no known length, so no schedule",
        }
        return optim.adamw(lr=1e-3), "adamw(lr=0.001)", record
    total = max(1, steps_per_epoch * epochs)
    warmup = min(max(1, round(0.05 * total)), max(1, total // 2))
    base_lr = 1e-3
    schedule = schedules.cosine(total_steps=total, warmup_steps=warmup)
    record = {
        "optimizer": "adamw",
        "lr": base_lr,
        "weight_decay": 0.01,
        "schedule": f"linear warmup {warmup} steps, cosine decay to 0 at step {total}",
        "why": "default policy: AdamW with warmup and cosine decay over the step budget",
    }
    desc = f"adamw(lr={base_lr:g}, warmup {warmup} steps + cosine over {total})"
    return optim.adamw(lr=base_lr, schedule=schedule), desc, record
