"""The default optimization policy, used when the user leaves ``optimizer`` and ``lr`` unset.

What it does (every number it decides by is in ``Result.autopilot``):

1. **Range test.** A short learning-rate sweep (:mod:`descend.train.lr_find`) on a copy of the
   model: 5% of the step budget, within [50, 100] steps (at most a quarter of a small budget,
   at least 20), of AdamW with the rate growing from
   1e-6 to 1 (a usual network blows up near 0.1–1 and the sweep ends there); if nothing in
   that range moved the loss (e.g. raw regression targets in the hundreds), a second sweep goes
   on to 100 (if that one bottoms inside the first one's range, the first curve was noisy, not
   flat, and the higher of the two sweeps' minima is read: one at rates too small to move the
   weights is the luckiest batch); if the loss was still falling at 1
   (its minimum the sweep's last point) and the targets are raw (root mean square above 10,
   an mse/mae/huber loss), a sweep goes on to 100 as well, read where it bottoms above 1. The
   rate at the minimum of the smoothed loss, divided by 10, is the *ceiling* ``s``.
2. **Race.** AdamW candidates log-spaced over ``[s/4, s]`` (decoupled weight decay on matrices
   set so that AdamW's averaging timescale ``1/(lr·wd)`` is half the step budget, see
   :func:`weight_decay` — none for a regression with at least 20 training samples per parameter,
   too small to memorize its data, see :func:`decay_share`, and never on a recurrent net's
   state-to-state matrices, see :func:`recurrent_weights`; linear warmup over 5% of the step
   budget, then the peak rate held: the run's final schedule, see 4.), each on its own copy of
   the model and of the random streams (its dropout masks are the ones it would draw alone), in
   the run's own batch order. They train in lockstep, one epoch at a time, judged by their best
   validation loss so far. The number of candidates is what the budget affords: the whole plan
   (range test, every candidate-epoch, and the rest of the winner's run) may cost
   ``RACE_BUDGET`` = 1.4× the epoch budget, and every candidate must be able to race for
   ``MIN_RACE_FRACTION`` = 25% of it — in practice two candidates, ``s/4`` and ``s``. Where the
   budget affords more (the slack left after the pair's quarter lets a third race at least 2
   epochs and 5% of the budget), a third candidate runs the span's lowest rate again (``s/4``;
   ``s/2`` for a regression loss) with a 2.5x stronger weight decay (timescale
   ``STRONG_DECAY_TIMESCALE`` = a fifth of the budget); it is judged early — beyond two, the
   worst candidate goes as soon as keeping it would leave the last two unable to race a quarter
   of the budget (about a tenth in, successive halving). A candidate that stops improving for
   ``max(3, 15% of the budget)`` epochs (never more than the run's patience) is finished (its
   best stands); when the budget runs short, the candidate with the worst best-so-far is dropped
   — except that a lower rate within ``TIE`` (1%) of the leader that improved in that very epoch
   is kept instead of the leader (higher rates descend first and flatten first; a dropped
   candidate never wins); a last survivor that has not yet beaten a finished candidate keeps
   going alone until it does or stops improving. The lowest best loss wins. Beside them (with
   a budget of at least 20 epochs) a *probe* races at ``PROBE_FACTOR`` = 4x the span's top,
   its probation paid on top of the budget: it goes unless ``PROBE_MARGIN`` = 30% below the
   span's best after 2 epochs, when more than 10% behind it later, and after a tenth of the
   budget unless 30% below it again (while it leads by less and pulls away, to a quarter at
   most); it wins only under that margin and with a validation loss at least ``PROBE_RATIO``
   = 0.7 of its training loss (session 30: sin(x) with tanh sat on a plateau below the
   ceiling; see PROBE_FACTOR).
3. **Continue, do not restart.** The winner goes on from where it is: at the start of the run
   ``fit``'s loop adopts its weights, optimizer state, step count, epoch, history and best
   weights through the checkpoint-resume path (``Loop.load_checkpoint``), so the schedule is
   simply at the step it reached and the run is exactly the winner's run from epoch 1. From
   there the run's own rules (patience, budget, ``max_time``) decide when it ends. Callbacks
   and the progress display see the run from the adopted epoch on, as after a resume; the
   start line says what was raced.
4. **Hold, then decay when the loss stalls** (:class:`StableDecay`, warmup-stable-decay: Hu et
   al. 2024, Hägele et al. 2024). The peak rate is held while the validation loss improves;
   when its running mean over 3 epochs has not improved for ``stall_epochs`` (a fifth of the
   budget, at least 3, one fewer than the patience) the rate decays linearly to 0 over the rest
   of the budget, from the best weights kept so far (session 13: the held rate had wandered off
   them — an overfitting transformer, a noisy CNN), with a patience of its own from there (the
   run ends with the budget, or earlier on that patience). Without a stall the decay takes the
   last 20% of the budget, also with its own patience; without validation data or early
   stopping, always. Session 12 changed two things, for a small CNN with batch norm and
   dropout whose validation loss jumps 2-4x from one epoch to the next
   (benchmarks/RESULTS.md): the stall is read on the running
   mean (a single lucky early epoch started the decay while the mean still fell), and the
   decay lasts the rest of the budget instead of a quarter of the epochs run so far (the run
   ended at 22-28 of 40 epochs, before any annealing); the six MLP workloads moved by at most
   1%. Measured against the cosine decay over the budget this replaces (benchmarks/RESULTS.md, session 9): the cosine annealed fits that were still
   improving (a sine-product regression, R² 0.835 → 0.875; 3-class 0.867 → 0.880), and the held
   rate reached lower validation *and* test losses on four of the six suite workloads
   (synthetic-clf-20k 0.881 → 0.794 of tuned AdamW's validation loss, test 0.868 → 0.768).
   The decay's start is in ``record["decay"]``: checkpoints carry it, and a resumed run
   re-takes a decision its checkpoint was written just before.
5. **Polish a curve fit** (:func:`polish`, session 28). A model too small to memorize its
   data (at least ``SAMPLES_PER_PARAMETER`` training samples per parameter; a module on a
   regression loss, a plain function on any loss, at most ``POLISH_MAX_PARAMS`` parameters, no train/eval behaviour, data in
   memory) is finished with full-batch L-BFGS from where the run ended: a plain function's
   polish is kept unless the validation loss is clearly worse, a module's only where that is
   lower; ``record["polish"]``. So is a small one, whatever its samples per parameter, whose
   run fit its data almost exactly (``POLISH_NEAR_EXACT``, session 31: sin(x) from 200 exact
   points, 34x the best explicit rate's error -> 0.002x).

When the budget affords no race (a few epochs), or there is no validation data to judge a
race by, the range test alone decides and the run is an ordinary run from step 1, at the span's
geometric middle ``s/2``.

A regression loss (``task == "regression"``) judged on validation data aims higher: its
ceiling is ``REGRESSION_CEILING`` = 2× the range test's reading, so it races ``[s/2, 2s]``
and, with no race, trains at ``2s``, the top of its span. Regression losses were flat to
falling up to 2–4× the reading on every set measured, short budgets want fast rates, and the
best validation epoch is kept (without validation data nothing stops an overfit, and the
reading is not raised).
With ``max_time`` the race ends after 30% of it.

Why this shape (measured on the workloads of ``benchmarks/suite.py``, 2-core CPU, see
``benchmarks/RESULTS.md``):

- the best AdamW rate moved from 2e-4 to 5e-2 across workloads and with the seed, so it has to
  come from the data; no constant is within 1% everywhere;
- on full learning-rate grids (11 rates, ×2 apart, 16 workload-seeds) the range test's min/10
  ``s`` was a reliable *ceiling*: overfitting classification sets were best at ``s/4``–``s``,
  regression sets were flat (within 1–5%) from ``s/2`` up; hence candidates in ``[s/4, s]``
  (and, since session 5, ``[s/2, 2s]`` for a regression loss, whose short-budget fits kept
  improving up to ``2s``);
- a race judged early crowns the highest rate (it descends first and overfits later: on
  digits the curves cross after ~25–30% of the budget), so two candidates raced for a quarter
  of the budget beat four raced for a tenth in replays of those grids (mean ratio to the
  best grid rate 1.00–1.01 against 1.01–1.05);
- batching the candidates with ``torch.func.vmap`` cost 3–4× one copy per step here (2 CPU
  cores, small MLPs), no cheaper than running them one after another, so the race is
  sequential and works for any module;
- AdamW's usual weight decay 0.01 averages over 10^3–10^5 steps, longer than these budgets:
  no decay at all. Setting the timescale to half the budget instead lowered the validation
  loss on five of the six suite workloads (0.87–0.99 of tuned AdamW where it was 1.00–1.07)
  and raised every scikit-learn estimator's metric but one (session 6);
- decisions count epochs, never seconds, so they are a pure function of (seed, data, model).

Explicit settings always win: with ``lr=`` the user gets AdamW at exactly that rate, constant,
and no autopilot record; with ``optimizer=`` this module is not consulted at all.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from descend import distributed as dist_
from descend import optim, schedules
from descend.checkpoint import RACE_DIR
from descend.train import guard as _G
from descend.train import lr_find as _lr_find
from descend.train.callbacks import Callback
from descend.train.result import StopReason
from descend.transforms import Transform

if TYPE_CHECKING:
    from descend.data import Bundle
    from descend.losses import Loss
    from descend.train.loop import Loop
    from descend.train.result import Result

__all__ = ["Plan", "PlanContext", "default_optimizer", "plan", "rebuild"]

#: AdamW's weights are an exponential moving average of its updates over ``τ = 1/(lr·λ)``
#: steps (Wang & Aitchison, "How to set AdamW's weight decay as you scale model and dataset
#: size", ICML 2025): the decoupled weight decay ``λ`` is set so that ``τ`` is this share of the
#: step budget, whatever the rate. See :func:`weight_decay`.
DECAY_TIMESCALE = 0.5
#: The timescale is never shorter than this many steps (a decay of at most 10% a step).
MIN_DECAY_STEPS = 10
#: The weight decay when the budget has no known length (a stream): AdamW's usual value.
WEIGHT_DECAY = 0.01
#: Linear warmup over this share of the step budget.
WARMUP_FRACTION = 0.05
#: The default schedule holds the peak rate, then decays it linearly to 0 at the end of the
#: budget (warmup-stable-decay, Hu et al. 2024; Hägele et al. 2024). The decay takes this share
#: of the budget — or starts earlier, when the validation loss stalls for ``stall_epochs``
#: epochs, and then runs over the rest of the budget.
DECAY_FRACTION = 0.2
#: The stall is read on the validation loss's running mean over this many epochs: with batch
#: norm and dropout one epoch's loss can jump 2-4x, and the best single epoch is then an early
#: lucky one that starts the decay while the mean still falls (session 12: a small CNN on
#: digits ended at 22-28 of 40 epochs, its kept weights' test loss 1.8x tuned AdamW's).
STALL_SMOOTHING = 3
#: The whole plan (range test, race, the winner's remaining epochs) may spend at most this many
#: times the epoch budget. 1.35 was tried (replays of full grids lost nothing) but on the suite
#: synthetic-clf-20k fell from 0.995 to 1.006 of tuned AdamW (seed 2: 1.008 -> 1.036) for a
#: CPU ratio of 1.12 instead of 1.22: the 1.5x time goal is met at 1.4, the quality one is not
#: at 1.35.
RACE_BUDGET = 1.4
#: Candidates span [ceiling / SPAN, ceiling].
SPAN = 4.0
#: When the budget affords it, the race adds one candidate with a stronger weight decay: the
#: span's lowest rate with a timescale of this share of the budget (2.5x the decay of its
#: twin). It races only while the last two can still race MIN_RACE_FRACTION of the budget
#: (about a tenth of it), so it stays only where it leads early. Session 15: matrix
#: factorization overfits within a few epochs at the default timescale (best validation loss
#: 1.14x tuned AdamW's) and wants a short one (0.92x at 0.2); the MLPs want 0.5.
STRONG_DECAY_TIMESCALE = 0.2
#: A regression model with at least this many training samples per trainable parameter trains
#: without weight decay (see decay_share). Weight decay regularizes a model that can memorize
#: its data; one this small next to it cannot (a linear model on thousands of rows: least
#: squares is already the best unbiased fit), and the decay only pulls its weights toward zero
#: — session 16: a 21-parameter linear regression on 1,600 rows reached 1.05x tuned AdamW's
#: validation loss with the default decay, 1.00x without (AdamW's usual 0.01 is, on these
#: budgets, no decay).
SAMPLES_PER_PARAMETER = 20
#: A regression loss judged on validation data puts its ceiling at this multiple of the range
#: test's suggestion (its race spans [s/2, 2s]; with no race it trains at the ceiling, 2s).
#: Regression losses were flat to falling up to 2-4x the suggestion on every set measured, and
#: short budgets want fast rates; with validation data the best epoch is kept. Measured with
#: the Regressor's 50-epoch budgets, 5 seeds (benchmarks/RESULTS.md): R² from s/2 to 2s
#: friedman1 0.925 -> 0.935, 3-output 0.986 -> 0.990, friedman3 0.876 -> 0.888, a
#: sine-product set 0.55 -> 0.76; friedman2, sparse-uncorrelated, friedman1-8k and diabetes
#: unchanged within noise; 4s was unstable (3-output seed 4: R² 0.84). Without validation
#: data nothing stops an overfit (diabetes' test loss rose 3% at s, 11% at 2s): no multiple.
REGRESSION_CEILING = 2.0
MAX_CANDIDATES = 4
#: The race adds a *probe* above the span: ``PROBE_FACTOR`` x its top rate (session 30). The
#: span's ceiling sat below a plateau the run had to leave on sin(x) with a tanh MLP (every
#: rate in the span stopped at a straight line's error; 0.03, 30x the ceiling, fit the curve
#: 780x better) and was too slow for full-batch runs on short budgets; races that simply
#: included higher rates crowned them on small noisy validation sets (breast cancer's test log
#: loss 0.12 -> 0.24). So the probe stays only where it is *clearly* ahead: ``PROBE_MARGIN``
#: below the span's best so far after ``PROBE_FIRST_LOOK`` epochs (most probes go there: a
#: higher rate that leads leads early), never more than ``PROBE_BEHIND`` behind it after that,
#: and that margin again after ``PROBE_FRACTION`` of the budget — while it leads by less and
#: pulls away, to ``MIN_RACE_FRACTION`` at most; it wins only under the same margin at the end.
#: A validation loss far below the training loss of the same epoch (below ``PROBE_RATIO`` of
#: it) is a small validation set's luck, not a better fit (iris and wine: validation losses
#: near 0 whose test losses were 3-11x the span's): such a probe neither stays nor wins. Its
#: epochs on probation are paid on top of ``RACE_BUDGET``; it races only where
#: ``PROBE_FRACTION`` of the budget is at least ``PROBE_FIRST_LOOK`` epochs (at least 20).
PROBE_FACTOR = 4.0
PROBE_FRACTION = 0.1
PROBE_MARGIN = 0.3
PROBE_BEHIND = 1.1
PROBE_FIRST_LOOK = 2
PROBE_RATIO = 0.7
#: Every candidate must be able to race for at least this share of the epoch budget.
MIN_RACE_FRACTION = 0.25
#: When the budget forces a drop, a lower rate still improving within this relative distance
#: of the leader's best loss is kept instead of the leader (see _Race._drop_for_budget).
TIE = 0.01
#: The range test sweeps AdamW over [RT_START, RT_END]; over [RT_START, RT_FAR] when nothing
#: up to RT_END moved the loss.
RT_START, RT_END, RT_FAR = 1e-6, 1.0, 100.0
#: With ``max_time``, the race ends after this share of it.
RACE_TIME_SHARE = 0.3
#: A race never holds more than this many bytes of candidate copies (weights + Adam moments).
MAX_RACE_BYTES = 2 * 2**30
#: The race checkpoints after its first epoch, then once this many times the last write's
#: duration has passed (as the run's "auto" checkpoints: writing costs ~5% of the time).
RACE_CHECKPOINT_RATIO = 20.0
#: A race reports its standings at most this often (seconds; its start always): a long race
#: on a large model is not silent, a short one adds no lines.
RACE_REPORT_SECONDS = 10.0


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
    #: The run's own settings, so the race trains and judges candidates as the run will:
    #: ``precision`` and ``metric`` (recorded in each candidate's history), ``tol`` (what
    #: counts as an improvement), ``patience`` (a candidate is finished after at most this
    #: many epochs without one) and ``max_time`` (the race ends after 30% of it).
    precision: str = "fp32"
    metric: Any = "auto"
    tol: float = 1e-4
    patience: int | None = 10
    max_time: float | None = None
    #: The run's checkpoint directory: the race writes its own checkpoints under
    #: ``checkpoint / RACE_DIR`` (None: no checkpoints), and ``race_resume`` is the newest one
    #: there when the run resumes before its first checkpoint — the race goes on from it.
    checkpoint: Any = None
    race_resume: Any = None
    #: ``report(text)``: a progress line while the policy works before step 1 (None: quiet).
    report: Callable[[str], None] | None = None


@dataclass
class Plan:
    """The policy's decision: the optimizer, a description, the record shown to the user
    (``Result.autopilot``), and callbacks to add to the run (e.g. a safety net)."""

    tx: Transform
    description: str
    record: dict[str, Any] | None
    callbacks: list[Callback] = field(default_factory=list)


# ---------------------------------------------------------------------------------- helpers


class StableDecay:
    """The default schedule's multiplier: linear warmup over ``warmup`` steps, the peak held,
    then a linear decay to 0 over ``length`` steps from ``start`` (0 after it).

    ``start`` is ``total − round(DECAY_FRACTION · total)`` until :class:`_DecayOnStall` moves
    it earlier (:meth:`begin`): the rate is held while the validation loss improves, however
    long that is within the budget, and annealed once it stalls.
    """

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup
        length = max(1, round(DECAY_FRACTION * total))
        self.start = max(warmup, total - length)
        self.length = max(1, total - self.start)
        self.moved = False

    def begin(self, step: int, length: int) -> None:
        """Start the decay at ``step``, over ``length`` steps (once; never past the budget)."""
        self.start, self.length = step, max(1, min(length, self.total - step))
        self.moved = True

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return schedules._warmup(step, self.warmup)
        if step < self.start:
            return 1.0
        return max(0.0, 1.0 - (step - self.start) / self.length)


def _schedule(total: int) -> tuple[StableDecay, int]:
    warmup = min(max(1, round(WARMUP_FRACTION * total)), max(0, total - 1))
    return StableDecay(total, warmup), warmup


def weight_decay(lr: float, total: int | None, timescale: float | None = None) -> float:
    """AdamW's decoupled weight decay ``λ`` for peak rate ``lr`` over a budget of ``total`` steps.

    ``λ = 1 / (lr · τ)`` with the EMA timescale ``τ = max(DECAY_TIMESCALE · total,
    MIN_DECAY_STEPS)`` steps: the weights average the updates of the last half of the budget
    and forget the start (Wang & Aitchison 2025: ``τ`` between one epoch and the whole run, the
    best ``τ`` in epochs about constant across model and data sizes). ``λ`` follows the rate, so
    every race candidate decays on the same timescale — except the stronger-decay candidate,
    whose ``timescale`` share is ``STRONG_DECAY_TIMESCALE``. A share of ``math.inf`` is no
    decay (``0.0``): the policy's choice for a model with at least ``SAMPLES_PER_PARAMETER``
    training samples per parameter (:func:`decay_share`). Without a known budget:
    ``WEIGHT_DECAY``.

    Measured (benchmarks/RESULTS.md): AdamW's usual 0.01 is a timescale of 10^3–10^5 steps on
    budgets of 10^2–10^4, i.e. no decay at all; the timescale rule lowered the validation loss
    on 5 of 6 suite workloads (synthetic-clf-20k 0.997 → 0.872 of tuned AdamW) and raised
    friedman1's R² from 0.935 to 0.942 in the scikit-learn estimators.

    Example:
        >>> round(weight_decay(1e-3, 2000), 6)  # τ = 1000 steps
        1.0
    """
    if total is None:
        return WEIGHT_DECAY
    tau = _timescale(total, timescale)
    return 0.0 if math.isinf(tau) else 1.0 / (lr * tau)


def decay_share(n_params: int, n_samples: int | None, regression: bool) -> float:
    """The weight-decay timescale, as a share of the step budget, for a model of ``n_params``
    trainable parameters on ``n_samples`` training samples: ``DECAY_TIMESCALE``, or
    ``math.inf`` (no decay) for a regression loss with at least ``SAMPLES_PER_PARAMETER``
    samples per parameter — too few parameters to memorize the data, and a squared error
    that, unlike a classifier's log loss, does not keep falling as the weights grow (on
    separable classes the log loss does, and only the decay bounds them: a logistic
    regression, 28 samples per parameter, lost 0.3% of validation loss without it).

    Example:
        >>> decay_share(21, 1600, True), decay_share(21, 1600, False)
        (inf, 0.5)
    """
    if regression and n_samples and n_params and n_samples >= SAMPLES_PER_PARAMETER * n_params:
        return math.inf
    return DECAY_TIMESCALE


def _recorded(share: float) -> float | None:
    """A timescale share as the record states it: None for no decay (JSON has no infinity)."""
    return None if math.isinf(share) else share


def _timescale(total: int, share: float | None = None) -> float:
    share = DECAY_TIMESCALE if share is None else share
    return max(share * total, MIN_DECAY_STEPS)


def _decay_text(
    total: int | None, timescale: float | None = None, exempt: Sequence[str] = ()
) -> str:
    text = _decay_rule(total, timescale)
    if exempt:
        text += (
            f"; not on the recurrent matrices ({', '.join(exempt)}): decaying them shortens "
            "what the net remembers"
        )
    return text


def _decay_rule(total: int | None, timescale: float | None = None) -> str:
    if total is None:
        return f"{WEIGHT_DECAY:g} (AdamW's usual value: the budget has no known length)"
    tau = _timescale(total, timescale)
    if math.isinf(tau):
        return (
            f"none: at least {SAMPLES_PER_PARAMETER} training samples per parameter, too few "
            "parameters to memorize the data (decay would only bias them)"
        )
    return f"1/(lr x {tau:g}): the weights average the updates of the last {tau:g} steps"


def recurrent_weights(model: torch.nn.Module) -> list[str]:
    """The names of ``model``'s recurrent weight matrices (``weight_hh`` of every ``nn.RNN``,
    ``nn.LSTM``, ``nn.GRU`` and their cells), which the default policy does not decay.

    A recurrent matrix carries the state from one step to the next: decaying it toward zero
    shortens what the network remembers (the state fades by its norm at every step), so it
    fights the very thing a recurrent net is for. Session 16 (benchmarks/RESULTS.md, 6 seeds):
    a one-layer LSTM that must sum a feature over 12 steps reached 1.25x tuned AdamW's
    validation loss with them decayed and 1.14x without (its test loss 1.16x -> 1.04x tuned
    AdamW's), a GRU 1.002x -> 0.996x; not decaying the input matrices as well gained nothing
    more (LSTM 1.22x in a screen).

    Example:
        >>> recurrent_weights(torch.nn.Sequential(torch.nn.LSTM(4, 8, num_layers=2)))
        ['0.weight_hh_l0', '0.weight_hh_l1']
    """
    kinds = (torch.nn.RNNBase, torch.nn.RNNCellBase)
    return [
        f"{mod}.{name}" if mod else name
        for mod, m in model.named_modules()
        if isinstance(m, kinds)
        for name, p in m.named_parameters(recurse=False)
        if name.startswith("weight_hh") and p.requires_grad
    ]


def _decay_mask(exempt_names: Sequence[str]) -> Any:
    """The AdamW decay mask of the default policy: weight matrices (``ndim >= 2``) except
    ``exempt_names`` (the recurrent ones, :func:`recurrent_weights`); ``"default"`` for none."""
    exempt = frozenset(exempt_names)
    if not exempt:
        return "default"
    return lambda name, tensor: tensor.ndim >= 2 and name not in exempt


def _adamw(
    lr: float,
    total: int | None,
    wd: float | None = None,
    schedule: Callable[[int], float] | None = None,
    timescale: float | None = None,
    mask: Any = "default",
) -> Transform:
    wd = weight_decay(lr, total, timescale) if wd is None else wd
    if total is None:
        return optim.adamw(lr=lr, weight_decay=wd, mask=mask)
    sched = schedule if schedule is not None else _schedule(total)[0]
    return optim.adamw(lr=lr, weight_decay=wd, schedule=sched, mask=mask)


#: How the schedule's text says that a stall starts the decay early (only where one can).
_STALL_NOTE = " (started earlier if the validation loss stalls)"


def _schedule_text(total: int | None) -> str:
    if total is None:
        return "constant (the data has no known length, so no schedule)"
    sched, warmup = _schedule(total)
    return (
        f"linear warmup {warmup} steps, the peak held, linear decay to 0 over steps "
        f"{sched.start}-{total}{_STALL_NOTE}"
    )


def stall_epochs(epochs: int, patience: int | None) -> int | None:
    """Epochs without a better validation loss, at the held rate, that start the decay: a fifth
    of the budget, at least 3, and one fewer than the patience (the decay then gets a patience
    of its own). None without early stopping: the run keeps its whole budget, as asked."""
    if not patience:
        return None
    return max(1, min(patience - 1, max(3, math.ceil(0.2 * epochs))))


class _SmoothedBest:
    """The running-mean stall count of :func:`_since_smoothed_best`, extended epoch by epoch:
    the callback asks at every epoch end, and recomputing from the first epoch each time was
    quadratic (6 s over a 4,000-epoch held phase). Derived from the history alone, so a fresh
    one (a resumed run) reaches the same state."""

    def __init__(self) -> None:
        self.n, self.best, self.best_at, self.since = 0, math.inf, 0, 0

    def update(self, val: Sequence[float], tol: float) -> tuple[int, int]:
        if len(val) < self.n:  # a shorter history than seen: start over
            self.__init__()
        for i in range(self.n, len(val)):
            window = [v for v in val[max(0, i - STALL_SMOOTHING + 1) : i + 1] if math.isfinite(v)]
            mean = sum(window) / len(window) if window else math.inf
            if math.isfinite(self.best):
                better = mean < self.best - max(tol * abs(self.best), 0.0)
            else:
                better = math.isfinite(mean)
            if better:
                self.best, self.best_at, self.since = mean, i + 1, 0
            else:
                self.since += 1
        self.n = len(val)
        return self.since, self.best_at


def _since_smoothed_best(val: Sequence[float], tol: float) -> tuple[int, int]:
    """``(epochs since the running mean of the validation loss last improved, the epoch
    (1-based) its best window ends at)``: the mean over the last ``STALL_SMOOTHING`` epochs
    (fewer at the start), an improvement by more than ``tol`` relative as in the loop's own
    early stopping. Non-finite epochs are left out of a window; a window of none counts as no
    improvement."""
    return _SmoothedBest().update(val, tol)


class _DecayOnStall(Callback):
    """Starts the schedule's decay, over the rest of the budget and from the best weights so
    far, when the running mean of the validation loss has not improved for ``stall`` epochs
    (holding early stopping off until then), and gives the budget's own final decay a patience
    of its own when no stall came first.

    The decision reads only the loop's state at an epoch end (its epoch, step, validation
    history and epochs since the best), and is also taken at ``on_fit_start``: a run resumed from a checkpoint written
    at that epoch end (before the callbacks ran) takes it at the same step, so it continues
    exactly. The decay's start is in ``record["decay"]`` (``Result.autopilot``, and every
    later checkpoint, from which :func:`rebuild` restores it).
    """

    wants_steps = False

    def __init__(self, sched: StableDecay, record: dict[str, Any], stall: int) -> None:
        self.sched, self.record, self.stall = sched, record, stall
        self._smoothed = _SmoothedBest()

    def _check(self, loop: Loop) -> None:
        sched = self.sched
        if loop.bundle.val is None:
            return
        if not sched.moved and loop.step < sched.start:
            since, best = self._smoothed.update(loop.history.val_loss, loop.tol)
            if since < self.stall:
                # Early stopping waits for the decay: a noisy curve may go `patience` epochs
                # without a better single epoch while its running mean still improves.
                loop._since_best = min(loop._since_best, self.stall - 1)
                return
            # The decay starts from the best weights, not from where the held rate has
            # wandered since (overfitting, or noise): on the suite the rewind took the
            # transformer 1.019 -> 1.010 of tuned AdamW, the CNN 1.051 -> 1.036 (test loss 1.27
            # -> 0.99) and breast cancer 1.46 -> 1.39, the others unchanged (session 13).
            rewound = loop.rewind_to_best()
            self._begin(
                loop,
                loop.step,
                f"the validation loss (its mean over {STALL_SMOOTHING} epochs) had not "
                f"improved for {_epochs(self.stall)} (best ending at epoch {best}), so the "
                f"decay started after epoch {loop.epoch} instead of at step "
                f"{self.record.get('decay_default_start')}"
                + (f", from the best weights (epoch {rewound})" if rewound else ""),
                "stall",
            )
            if rewound:
                self.record["decay"]["weights_from_epoch"] = rewound
            # One line in the progress output and the history, like the guard's rollbacks.
            loop.record_event(
                "decay",
                f"the validation loss has not improved for {_epochs(self.stall)}: "
                + (f"back to epoch {rewound}'s weights (the best); " if rewound else "")
                + f"the learning rate now decays to 0 over {sched.length} steps",
            )
        elif not sched.moved:
            # The budget's last share began without a stall: recorded too (a resume rebuilds
            # the same schedule), with its own patience, or a best from before it would end
            # the run a few epochs into it.
            self._begin(
                loop,
                sched.start,
                f"the validation loss (its mean over {STALL_SMOOTHING} epochs) was still "
                f"improving, so the decay took the budget's last steps, from step {sched.start}",
                "budget",
            )
        if sched.moved and loop.step >= sched.start + sched.length < sched.total:
            # (a decay that ends before the budget: one started under session 9-11's rule, a
            # quarter of the epochs run so far, in a checkpoint resumed now)
            loop.request_stop(
                f"the learning rate finished its decay, started after epoch "
                f"{self.record['decay']['epoch']} when the validation loss stalled",
                StopReason.DECAYED,
            )

    def _begin(self, loop: Loop, step: int, why: str, cause: str) -> None:
        """Start the decay at ``step``, over the rest of the budget (``StableDecay.begin``
        caps it there), with a patience of its own from now, and record when and why
        (``cause``: ``"stall"``, or ``"budget"`` for the budget's own last share)."""
        self.sched.begin(step, self.sched.total - step)
        loop._since_best = 0
        self.record["decay"] = {
            "start_step": self.sched.start,
            "steps": self.sched.length,
            "epoch": loop.epoch,
            "cause": cause,
            "why": why,
        }

    def on_fit_start(self, loop: Loop) -> None:
        # Only at an epoch end: a checkpoint written mid-epoch holds the decisions of the epoch
        # end before it, and taking the next one now (before the epoch's end is judged) moved
        # the budget's decay to an epoch early and reset the patience count a judgement early.
        if loop.batch == 0:
            self._check(loop)

    def on_epoch_end(self, loop: Loop) -> None:
        self._check(loop)


def _with_decay(plan: Plan, sched: StableDecay, ctx: PlanContext) -> Plan:
    """Add the stall-started decay to a plan whose optimizer follows ``sched``."""
    stall = stall_epochs(ctx.epochs, _ctx_get(ctx, "patience", 10))
    plan.record["decay_default_start"] = plan.record.get("decay_default_start", sched.start)
    # (rebuild passes no data: the callback itself does nothing in a run without validation)
    if stall is not None and getattr(ctx.bundle, "val", True) is not None:
        plan.record["decay_stall_epochs"] = stall
        plan.callbacks.append(_DecayOnStall(sched, plan.record, stall))
    elif isinstance(plan.record.get("schedule"), str):
        # No validation data or no early stopping: nothing starts the decay early.
        plan.record["schedule"] = plan.record["schedule"].replace(_STALL_NOTE, "")
    return plan


def range_test_steps(total: int | None) -> int:
    """Steps of the range test for a budget of ``total`` steps (None: unknown length).

    5% of the budget within [50, 100] steps, but never more than a quarter of the budget (at
    least 20): on a budget of 50 full-batch steps a 20-step sweep still finds where the loss
    blows up, and the 25 steps of the former half-the-budget rule were a third of the fit.
    """
    if total is None:
        return 100
    return max(20, min(100, max(50, round(0.05 * total)), total // 4))


#: Targets whose root mean square is above this are "raw" (not standardized): a range test
#: still falling at its top rate is then swept on (see _raw_targets).
RAW_TARGETS_RMS = 10.0


def _raw_targets(ctx: PlanContext) -> bool:
    """Whether a loss in the targets' own units (mse, mae, huber) meets targets far from
    standardized (root mean square above ``RAW_TARGETS_RMS``, read off the training targets in
    memory): the case where a range test's loss is still falling at its top rate because the
    rate that fits lies beyond it. Not where the loss has another scale (classes, Poisson's
    log-rate, a custom loss), and not where the targets are standardized: raw *features*
    (inputs ~300 +- 100, standardized targets) also keep a sweep falling at its top, and
    sweeping on read rates that fit worse there (test R² 0.84 -> 0.65 on one of three seeds);
    classifiers' 20-step sweeps put their minimum at the top by the smoothing's lag alone.
    A stream's targets are not read (False)."""
    if getattr(ctx.loss, "name", None) not in ("mse", "mae", "huber"):
        return False
    src = ctx.bundle.train
    y = getattr(src, "y", None) if src.resident else None
    if not torch.is_tensor(y) or not y.is_floating_point() or y.numel() == 0:
        return False
    return float(y.detach().float().pow(2).mean().sqrt()) > RAW_TARGETS_RMS


def slower_sweep_steps(steps: int, total: int | None) -> int:
    """Steps of the second, slower sweep over the same range when the first neither descended
    nor blew up: twice the first, within half the budget (never fewer than the first)."""
    if total is None:
        return 2 * steps
    return max(steps, min(2 * steps, total // 2))


def _ctx_get(ctx: PlanContext, name: str, default: Any) -> Any:
    return getattr(ctx, name, default)


def _make_loop(ctx: PlanContext, model: torch.nn.Module, tx: Transform, patience: int | None):
    from descend.train.loop import Loop  # the loop imports this module

    return Loop(
        model,
        ctx.bundle,
        ctx.loss,
        tx,
        optimizer_desc="autopilot candidate",
        max_epochs=0,
        patience=patience,
        tol=_ctx_get(ctx, "tol", 1e-4),
        restore_best=False,
        callbacks=(),
        device=ctx.device,
        seed=ctx.seed,
        precision=_ctx_get(ctx, "precision", "fp32"),
        max_time=None,
        metric=_ctx_get(ctx, "metric", "auto"),
        autopilot=None,
    )


def _fmt(lr: float) -> str:
    return f"{lr:.3g}"


def _epochs(n: int) -> str:
    """``"1 epoch"``, ``"5 epochs"`` (as the loop's own sentences count)."""
    return f"{n} epoch" if n == 1 else f"{n} epochs"


# ---------------------------------------------------------------------------------- the policy


def plan(ctx: PlanContext) -> Plan:
    """Choose the optimizer for a run where the user gave no optimizer (see the module doc)."""
    if ctx.lr is not None:
        tx, desc, record = default_optimizer(lr=ctx.lr, steps_per_epoch=None, epochs=ctx.epochs)
        return Plan(tx, desc, record)
    try:
        return _plan(ctx)
    except KeyboardInterrupt:
        # Ctrl-C while planning: start the run and let it end at once as interrupted, with
        # the model as it was (the same outcome as a Ctrl-C before the first step).
        tx, _, record = default_optimizer(
            lr=None, steps_per_epoch=ctx.bundle.train.num_batches, epochs=ctx.epochs
        )
        record = dict(record or {}, why="interrupted while planning")
        return Plan(tx, "autopilot (interrupted while planning)", record, [_Handover(None)])


def _plan(ctx: PlanContext) -> Plan:
    t_start = time.perf_counter()
    spe = ctx.bundle.train.num_batches
    total = spe * ctx.epochs if spe else None

    # 1. The range test, on a copy.
    rt_steps = range_test_steps(total)

    def sweep(end: float, steps: int = rt_steps) -> tuple[list[float], list[float]]:
        return _lr_find.sweep(
            ctx.model,
            ctx.bundle,
            ctx.loss,
            make_tx=lambda lr: optim.adamw(lr=lr, weight_decay=WEIGHT_DECAY),
            start_lr=RT_START,
            end_lr=end,
            steps=steps,
            device=ctx.device,
            seed=ctx.seed,
            precision=_ctx_get(ctx, "precision", "fp32"),
        )

    _report(ctx, f"choosing the learning rate: a {rt_steps}-step range test on a copy of the model")
    lrs, losses = sweep(RT_END)
    found = _lr_find.analyze(lrs, losses)
    noisy_note = None
    swept = len(lrs)
    slower = slower_sweep_steps(rt_steps, total)
    if not found["descended"] and not found["diverged"] and slower > rt_steps:
        # A plateau the sweep was too short to leave: the same range, twice as slowly. (A GRU
        # on a sequence task sat at its starting loss through a 50-step sweep, read a noisy
        # minimum, trained at 7e-4 and stayed at chance; in 100 steps the loss fell from 1.1
        # to 0.8 and the reading was 0.014, tuned AdamW's best being 0.01: session 12.)
        slow_lrs, slow_losses = sweep(RT_END, slower)
        swept += len(slow_lrs)
        slow = _lr_find.analyze(slow_lrs, slow_losses)
        if slow["descended"] or slow["diverged"]:
            lrs, losses, found = slow_lrs, slow_losses, slow
            noisy_note = (
                f"a {rt_steps}-step sweep did not clearly descend; one of {slower} steps did"
            )
    if found["at_top"] and _raw_targets(ctx):
        # Still falling at the top rate: RT_END is no ceiling. (Raw regression targets in the
        # thousands: Adam moves each weight by about the rate per step, so a sweep to 1 has only
        # begun to fit targets of that size; 50 rows of targets with a spread of 3,000 read a
        # ceiling of 0.1, trained at 0.05 and reached R² 0.02 where rates of 0.3-3 reach
        # 0.99.) Sweep on, at the same number of steps; the far reading counts only where its
        # minimum lies above the first sweep's top, otherwise the first reading stands. Only
        # where the targets' size is the cause (see _raw_targets).
        near_lrs, near = lrs, found
        far_lrs, far_losses = sweep(RT_FAR, len(near_lrs))
        swept += len(far_lrs)
        far = _lr_find.analyze(far_lrs, far_losses)
        top_note = (
            f"the loss was still falling at the sweep's top (lr={near_lrs[-1]:.3g}), so a sweep "
            f"went on to {RT_FAR:g}"
        )
        if far["descended"] and far["min_lr"] > near_lrs[-1]:
            lrs, losses, found = far_lrs, far_losses, far
            top_note += f" and bottomed at {far['min_lr']:.3g}, which is read"
        else:
            top_note += (
                f"; it bottomed at {far['min_lr']:.3g}, not above the first sweep's top, so the "
                "first reading stands"
            )
        noisy_note = top_note if noisy_note is None else f"{noisy_note}; {top_note}"
    if not found["descended"] and not found["diverged"]:
        # Nothing up to RT_END moved the loss (e.g. raw regression targets in the hundreds):
        # sweep again, further. Not always: where a sweep to RT_END does descend, rates far
        # above it often "win" a short sweep by fitting the targets' mean and nothing else.
        near_lrs, near = lrs, found
        lrs, losses = sweep(RT_FAR)
        swept += len(lrs)
        found = _lr_find.analyze(lrs, losses)
        if found["min_lr"] <= near_lrs[-1]:
            # The far sweep's minimum lies inside the range the first sweep covered: the first
            # curve was noisy, not flat (its rates were not all too small). Both minima are
            # then a noisy curve's lowest points, and the higher one is read: a minimum where
            # the rates were too small to move the weights is the luckiest batch, nothing more.
            # (A noisy regression, a sine product of 1,000 rows: the far sweep bottomed at
            # 0.0083, the first at 0.079, and a fit at the far reading reached R² 0.31 where
            # the other seeds' 0.76-0.92. Heavy-tailed noise under huber, session 29: the first
            # bottomed at 0.00061, the far at 0.18; trained at 1.2e-4 the fit's error on the
            # true curve was 1.33, where rates of 0.003-0.03 reach 0.07.)
            far_min, far_lrs, far = found["min_lr"], lrs, found
            if far_min > near["min_lr"]:
                found = {**far, "suggestion": max(far_lrs[0], far_min / 10.0)}
                read, which = far_min, "the far one's"
            else:
                lrs = near_lrs
                found = {**near, "suggestion": max(near_lrs[0], near["min_lr"] / 10.0)}
                read, which = near["min_lr"], "the first one's"
            noisy_note = (
                f"the first sweep (to {near_lrs[-1]:.3g}) did not clearly descend, and a sweep "
                f"on to {RT_FAR:g} bottomed at {far_min:.3g}, inside the first one's range: "
                f"the first curve was noisy, not flat; of the two minima ({near['min_lr']:.3g} "
                f"and {far_min:.3g}) the higher, {which} ({read:.3g}), is read (a minimum at "
                "rates too small to move the weights is the luckiest batch)"
            )
    # A regression loss judged on validation data aims higher (see REGRESSION_CEILING).
    # (Not for a stream of unknown length: its rate stays constant, with no decay to settle.)
    fast = (
        total is not None
        and ctx.bundle.val is not None
        and getattr(ctx.loss, "task", "any") == "regression"
    )
    ceiling = found["suggestion"] * (REGRESSION_CEILING if fast else 1.0)
    ceiling_text = _fmt(ceiling) + (
        f" ({REGRESSION_CEILING:g}x its suggestion, for a regression loss)" if fast else ""
    )
    rt_record = {
        "steps": swept,
        "end_lr": lrs[-1],
        "min_lr": found["min_lr"],
        "suggestion": found["suggestion"],
        "descended": found["descended"],
        "diverged": found["diverged"],
    }
    if found.get("flat_bottom"):
        lo, hi = found["valley"]
        rt_record["valley"] = [lo, hi]
        rt_record["flat_bottom"] = (
            f"the loss was within 10% of its minimum from lr={lo:.3g} to {hi:.3g}, more than a "
            "decade: a flat bottom, read at its left edge"
        )
    if noisy_note is not None:
        rt_record["note"] = noisy_note
    elif not found["descended"] and not found["diverged"]:
        rt_record["note"] = (
            f"the loss neither fell nor blew up up to lr={lrs[-1]:.3g}: every rate swept was "
            "too small, so the ceiling is the top of the sweep / 10"
        )
    middle = ceiling / math.sqrt(SPAN)
    span_text = f"[{_fmt(ceiling / SPAN)}, {_fmt(ceiling)}]"
    exempt = recurrent_weights(ctx.model)  # matrices that are not decayed

    if total is None:  # a stream of unknown length: no epochs to race over
        record = {
            "policy": "range test",
            "optimizer": "adamw",
            "lr": middle,
            "weight_decay": WEIGHT_DECAY,
            "weight_decay_exempt": exempt,
            "schedule": _schedule_text(None),
            "total_steps": None,
            "range_test": rt_record,
            "planning_seconds": time.perf_counter() - t_start,
            "why": (
                f"the range test put the ceiling at {_fmt(ceiling)}; the data has no known "
                f"length, so no race: the geometric middle of {span_text} is used"
            ),
        }
        tx = _adamw(middle, None, mask=_decay_mask(exempt))
        return Plan(tx, f"autopilot adamw(lr={_fmt(middle)}, constant)", record)

    # 2. How many candidates the budget affords: each one beyond the first costs one
    #    model-epoch per race epoch, and the race must be able to last MIN_RACE_FRACTION of the
    #    budget (a shorter race crowns the highest rate: it descends first, overfits later).
    E = ctx.epochs
    spent = swept / spe
    n_params = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    by_memory = max(1, int(MAX_RACE_BYTES // max(1, 16 * n_params)))
    slack = RACE_BUDGET * E - E - spent
    min_race = max(1.0, MIN_RACE_FRACTION * E)
    K = max(1, min(MAX_CANDIDATES, by_memory, 1 + int(slack // min_race)))
    # The weight decay: none for a model too small to memorize its data (decay_share).
    regression = getattr(ctx.loss, "task", "any") == "regression"
    share = decay_share(n_params, ctx.bundle.train.n_samples, regression)
    # The strong-decay candidate, when what the pair of rates leaves of the slack lets it race
    # two epochs and 5% of the budget (and the model is one that decay helps).
    strong = (
        K == 2
        and by_memory > 2
        and slack - min_race >= max(2.0, 0.05 * E)
        and not math.isinf(share)
    )
    # Without held-out data there is nothing to race on: judged by the training loss, the race
    # crowned the fastest-fitting rate (s on 11 of 12 suite seeds) at 1.4-1.8x the time, and
    # that rate's test loss was higher on all four workloads measured (benchmarks/RESULTS.md).
    no_val = ctx.bundle.val is None
    if no_val:
        K = 1
    if K == 1:
        _, warmup = _schedule(total)
        reason = (
            "there is no validation data to race candidates on (a race judged by the "
            "training loss picks the fastest-fitting rate, not the one that generalizes)"
            if no_val
            else f"a budget of {_epochs(E)} affords no race after it"
        )
        # Without a race a regression loss takes the top of its span (short budgets want fast
        # rates); classification, whose log loss rises with the rate, and any run without
        # validation data take the span's geometric middle.
        lr = ceiling if fast else middle
        choice = (
            "the top of the span is used (a regression loss; the best validation epoch is kept)"
            if fast
            else f"the geometric middle of {span_text} is used"
        )
        record = {
            "policy": "range test",
            "optimizer": "adamw",
            "lr": lr,
            "weight_decay": weight_decay(lr, total, share),
            "weight_decay_timescale": _recorded(share),
            "weight_decay_rule": _decay_text(total, share, exempt),
            "weight_decay_exempt": exempt,
            "schedule": _schedule_text(total),
            "warmup_steps": warmup,
            "total_steps": total,
            "range_test": rt_record,
            "planning_seconds": time.perf_counter() - t_start,
            "why": f"the range test put the ceiling at {ceiling_text}; {reason}, so {choice}",
        }
        sched, _ = _schedule(total)
        desc = (
            f"autopilot adamw(lr={_fmt(lr)}, wd {_fmt(weight_decay(lr, total, share))}, "
            f"warmup {warmup}, held, decay to 0 by step {total}) — range test ceiling "
            f"{_fmt(ceiling)}, no race"
        )
        tx = _adamw(lr, total, schedule=sched, timescale=share, mask=_decay_mask(exempt))
        return _with_decay(Plan(tx, desc, record), sched, ctx)
    cands = _candidates(ceiling, K, strong, share)
    # The probe above the span (see PROBE_FACTOR), where memory holds one more copy.
    probe = by_memory > len(cands) and PROBE_FRACTION * E >= PROBE_FIRST_LOOK
    if probe:
        cands.append((ceiling * PROBE_FACTOR, share))
    # A candidate is finished when it has not improved for this many epochs: 15% of the
    # budget, at least 3, and never more than the run's own patience.
    patience = _ctx_get(ctx, "patience", 10)
    race_patience = max(3, round(0.15 * E))
    if patience:
        race_patience = max(1, min(race_patience, patience))
    max_time = _ctx_get(ctx, "max_time", None)
    deadline = None if max_time is None else t_start + RACE_TIME_SHARE * max_time
    race = _Race(ctx, cands, total, race_patience, spent, t_start, deadline, probe=probe)
    resume = getattr(ctx, "race_resume", None)
    if resume is not None and race.load(resume):
        _report(ctx, f"the race goes on from its checkpoint after epoch {race.epoch}")
    else:
        shown = ", ".join(
            _label(lr, tau, probe and i == len(cands) - 1) for i, (lr, tau) in enumerate(cands)
        )
        _report(
            ctx,
            f"the range test put the ceiling at {ceiling_text}; racing {len(cands)} candidates "
            f"({shown}) for about {max(1, round(MIN_RACE_FRACTION * E))} of {_epochs(E)}",
        )
    race.run()
    return race.plan(rt_record, ceiling, ceiling_text)


def _label(lr: float, tau: float, probe: bool = False) -> str:
    """A race candidate as the progress lines name it."""
    return (
        f"lr {_fmt(lr)}"
        + (" (stronger decay)" if tau == STRONG_DECAY_TIMESCALE else "")
        + (" (probe)" if probe else "")
    )


def _report(ctx: PlanContext, text: str) -> None:
    report = getattr(ctx, "report", None)
    if report is not None:
        report(text)


def _candidates(
    ceiling: float, k: int, strong: bool = False, share: float = DECAY_TIMESCALE
) -> list[tuple[float, float]]:
    """The race's ``(rate, weight-decay timescale)`` pairs: ``k`` rates log-spaced over
    ``[ceiling / SPAN, ceiling]`` at the timescale ``share`` (the default, or no decay), and
    with ``strong`` the lowest rate again at ``STRONG_DECAY_TIMESCALE``."""
    cands = [(ceiling / SPAN ** (1 - i / (k - 1)), share) for i in range(k)]
    if strong:
        cands.append((ceiling / SPAN, STRONG_DECAY_TIMESCALE))
    return cands


@dataclass
class _Candidate:
    lr: float
    loop: Loop
    sched: StableDecay | None = None  # its schedule (the winner's goes on into the run)
    tau: float = DECAY_TIMESCALE  # its weight-decay timescale, a share of the budget
    rng: dict[str, Any] = field(default_factory=dict)  # its own random streams (dropout, ...)
    status: str = "racing"
    best: float = math.inf
    best_epoch: int = 0
    times: list[float] = field(default_factory=list)
    #: the probe above the span (see PROBE_FACTOR), and whether it has passed its probation
    probe: bool = False
    cleared: bool = False
    #: the probe's best over the span's best at its last judgement (its lead must grow)
    lead: float = math.inf
    #: its model state while another candidate trains (a sharded model: one for all)
    stash: dict[str, torch.Tensor] | None = None

    def state(self) -> dict[str, torch.Tensor]:
        """Its model's state (parameters and buffers)."""
        return self.stash if self.stash is not None else self.loop.model.state_dict()

    @property
    def alive(self) -> bool:
        return self.status == "racing"


class _Race:
    """Lockstep race of AdamW candidates; see the module doc."""

    def __init__(
        self,
        ctx: PlanContext,
        cands: list[tuple[float, float]],
        total: int,
        patience: int,
        spent: float,
        t_start: float,
        deadline: float | None = None,
        *,
        probe: bool = False,
    ) -> None:
        self.ctx = ctx
        self.total = total
        self.patience = patience
        self.spent = spent
        self.t_start = t_start
        self.deadline = deadline
        self.interrupted = False
        self.out_of_time = False
        self.epoch = 0
        self.cands = []
        self.exempt = recurrent_weights(ctx.model)  # matrices that are not decayed
        mask = _decay_mask(self.exempt)
        # A model sharded with fully_shard cannot be copied: the candidates take turns on it,
        # each one's state put in before its epoch and taken out after (_Candidate.stash).
        self.shared = dist_.is_sharded(ctx.model)
        start_state = _G.snapshot(ctx.model) if self.shared else None
        for lr, tau in cands:
            sched, _ = _schedule(total)
            tx = _adamw(lr, total, schedule=sched, timescale=tau, mask=mask)
            model = ctx.model if self.shared else copy.deepcopy(ctx.model)
            loop = _make_loop(ctx, model, tx, patience)
            cand = _Candidate(lr, loop, sched, tau)
            if start_state is not None:
                cand.stash = {k: t.clone() for k, t in start_state.items()}
            self.cands.append(cand)
        if probe:  # the last one is the probe above the span
            self.cands[-1].probe = True
        E = ctx.epochs
        self.probation = max(PROBE_FIRST_LOOK, round(PROBE_FRACTION * E))
        # epochs the probe spent on probation: paid on top of RACE_BUDGET
        self.probe_spent = 0.0
        # Every candidate draws its random numbers (dropout masks, ...) from its own copy of the
        # streams as they are now, so its run is the same whoever else races — the one it would
        # have alone — and the winner's streams go on into the run with its state.
        if self.cands:
            start = self.cands[0].loop._rng_state()
            for c in self.cands:
                c.rng = start
        self.best_states: dict[int, dict[str, torch.Tensor]] = {}
        # Checkpoints of the race (every candidate's exact state after a race epoch), so a run
        # killed during the race goes on from there: written under the run's checkpoint
        # directory at most as often as the run's own "auto" rule allows (~5% of the time).
        ck = getattr(ctx, "checkpoint", None)
        self.ckpt_dir = None if ck is None else Path(ck) / RACE_DIR
        self._ckpt_done_at: float | None = None
        self._ckpt_cost = 0.0
        self.resumed_from: Path | None = None
        self.resumed_epoch = 0

    # ---- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> list[list[float]]:
        return [[c.lr, c.tau] for c in self.cands]

    def _save(self) -> None:
        """Checkpoint the race after a race epoch, when the run keeps checkpoints and it is
        due (the first race epoch, then once 20x the last write's time has passed)."""
        if self.ckpt_dir is None:
            return
        world = dist_.current()
        now = time.perf_counter()
        due = RACE_CHECKPOINT_RATIO * self._ckpt_cost
        # (data-parallel: by rank 0's clock, for all; each candidate's random streams hold
        # every process's, gathered by its loop; rank 0 writes)
        if not world.from_main(self._ckpt_done_at is None or now - self._ckpt_done_at >= due):
            return
        from descend import checkpoint as C

        model: dict[str, torch.Tensor] = {}
        best: dict[str, torch.Tensor] = {}
        opt: dict[str, Any] = {}
        rng: dict[str, Any] = {}
        metas: dict[str, Any] = {}
        for i, c in enumerate(self.cands):
            if c.status.startswith("dropped"):
                continue  # out of the race for good: its state is not needed again
            model.update({f"{i}/{k}": t for k, t in c.state().items()})
            kept = self.best_states.get(id(c))
            if kept is not None:
                best.update({f"{i}/{k}": t for k, t in kept.items()})
            opt[str(i)] = c.loop.opt_state
            rng.update({f"{i}/{k}": v for k, v in c.rng.items()})
            metas[str(i)] = {
                "loop": c.loop._meta(),
                "status": c.status,
                "best": c.best,
                "best_epoch": c.best_epoch,
                "times": list(c.times),
                "has_best": kept is not None,
                "cleared": c.cleared,
                "lead": c.lead,
            }
        if self.shared:  # a fully_shard model: the file holds the whole tensors
            model, best, opt = dist_.gathered((model, best, opt))
        meta = {
            "race": {
                "seed": self.ctx.seed,
                "candidates": self._identity(),
                "statuses": [c.status for c in self.cands],
                "epoch": self.epoch,
                "spent": self.spent,
                "probe_spent": self.probe_spent,
                "elapsed": now - self.t_start,
            },
            "candidates": metas,
        }
        ckpt = C.Checkpoint(
            step=self.epoch, model=model, opt_state=opt, best=best, meta=meta, rng=rng
        )
        written = True
        if world.is_main:
            try:
                C.save(self.ckpt_dir, ckpt)
            except OSError as e:  # as the run's own checkpoints: a warning, the race goes on
                import warnings

                warnings.warn(
                    f"descend: could not write a checkpoint of the race after epoch "
                    f"{self.epoch} ({type(e).__name__}: {e.strerror or e}); the previous one "
                    "is kept",
                    RuntimeWarning,
                    stacklevel=3,
                )
                written = False
        if not world.from_main(written):
            return
        self._ckpt_done_at = time.perf_counter()
        self._ckpt_cost = self._ckpt_done_at - now

    def load(self, ckpt: Any) -> bool:
        """Put the race where ``ckpt`` (a race checkpoint) left it; False (and nothing
        changed) when it is a checkpoint of another race: other candidates, another seed."""
        race = (ckpt.meta or {}).get("race") or {}
        same = race.get("seed") == self.ctx.seed and race.get("candidates") == self._identity()
        if not same:
            import warnings

            warnings.warn(
                f"descend: the race checkpoint {ckpt.path} is of another race (other "
                "candidates or seed): the race starts again",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        from descend import checkpoint as C

        metas = ckpt.meta["candidates"]
        for i, c in enumerate(self.cands):
            c.status = race["statuses"][i]
            m = metas.get(str(i))
            if m is None:  # dropped before the checkpoint
                continue
            pre = f"{i}/"
            part = C.Checkpoint(
                step=m["loop"]["step"],
                model={k[len(pre) :]: t for k, t in ckpt.model.items() if k.startswith(pre)},
                opt_state=ckpt.opt_state[str(i)],
                best=None,
                meta=m["loop"],
                rng={},
                path=ckpt.path,
            )
            c.loop.load_checkpoint(part)
            if c.stash is not None:  # the candidates take turns on one sharded model
                _G.save_into(c.stash, c.loop.model)
            c.rng = {k[len(pre) :]: v for k, v in ckpt.rng.items() if k.startswith(pre)}
            c.best, c.best_epoch, c.times = m["best"], m["best_epoch"], list(m["times"])
            c.cleared = bool(m.get("cleared", False))
            c.lead = float(m.get("lead", math.inf))
            if m["has_best"]:
                kept = {
                    k[len(pre) :]: t.to(self.ctx.device)
                    for k, t in ckpt.best.items()
                    if k.startswith(pre)
                }
                if self.shared:
                    kept = dist_.sharded_like(kept, c.loop.model.state_dict())
                self.best_states[id(c)] = kept
        self.epoch, self.spent = int(race["epoch"]), float(race["spent"])
        self.probe_spent = float(race.get("probe_spent", 0.0))
        self.t_start = time.perf_counter() - float(race["elapsed"])
        self.resumed_from, self.resumed_epoch = ckpt.path, self.epoch
        return True

    def _monitored(self, c: _Candidate) -> float:
        h = c.loop.history
        return (h.val_loss if self.ctx.bundle.val is not None else h.train_loss)[-1]

    def _finished_best(self) -> float:
        done = [c.best for c in self.cands if c.status.startswith("stopped improving")]
        return min(done, default=math.inf)

    def _span_best(self) -> float:
        """The best validation loss of the span's candidates (not the probe's)."""
        return min((c.best for c in self.cands if not c.probe), default=math.inf)

    def _by_margin(self, c: _Candidate) -> bool:
        """Whether the probe ``c``'s best loss is ``PROBE_MARGIN`` below the span's best (never
        with a loss that can go negative: no margin to read)."""
        lead = self._span_best()
        if not (math.isfinite(c.best) and c.best >= 0 and math.isfinite(lead) and lead > 0):
            return False
        return c.best <= (1.0 - PROBE_MARGIN) * lead

    def _ahead(self, c: _Candidate) -> bool:
        """Whether the probe ``c`` is clearly ahead of the span: by the margin, and not far
        below its own training loss of that epoch (a small validation set's luck)."""
        return self._by_margin(c) and self._genuine(c)

    @staticmethod
    def _genuine(c: _Candidate) -> bool:
        """Whether ``c``'s best validation loss is at least PROBE_RATIO of its training loss in
        that epoch (far below it is a small validation set's luck, not a better fit)."""
        train = c.loop.history.train_loss
        i = c.best_epoch - 1
        t = train[i] if 0 <= i < len(train) else math.nan
        return math.isfinite(t) and c.best >= PROBE_RATIO * t

    def _judge_probe(self) -> None:
        """After a race epoch: the probe on probation goes unless it is PROBE_MARGIN ahead of
        the span after PROBE_FIRST_LOOK epochs, as soon as it falls more than PROBE_BEHIND
        behind it after that, and at the end of its probation unless it is clearly ahead (or
        still pulling away, up to MIN_RACE_FRACTION of the budget; see PROBE_FACTOR)."""
        for c in self.cands:
            if not (c.probe and c.alive and not c.cleared):
                continue
            lead = self._span_best()
            behind = math.isfinite(lead) and c.best - lead > (PROBE_BEHIND - 1.0) * abs(lead)
            early = self.epoch == PROBE_FIRST_LOOK and not self._by_margin(c)
            if early or (self.epoch > PROBE_FIRST_LOOK and behind):
                c.status = f"dropped after epoch {self.epoch} (the probe was " + (
                    "not clearly ahead)" if early else "behind)"
                )
            elif self.epoch >= self.probation:
                ratio = c.best / lead if math.isfinite(lead) and lead > 0 else math.inf
                if self._ahead(c):
                    c.cleared = True
                elif (
                    ratio < min(1.0, c.lead)
                    and self._genuine(c)
                    and self.epoch < MIN_RACE_FRACTION * self.ctx.epochs
                ):
                    # ahead, not yet clearly, and pulling away: its probation goes on
                    c.lead = ratio
                else:
                    c.status = f"dropped after epoch {self.epoch} (the probe was not clearly ahead)"

    def _drop_for_budget(self) -> None:
        E = self.ctx.epochs
        while True:
            # (the probe on probation is judged by _judge_probe; its epochs are paid apart)
            alive = [c for c in self.cands if c.alive and not (c.probe and not c.cleared)]
            # Beyond two, a candidate goes as soon as keeping it would leave the last two unable
            # to race to MIN_RACE_FRACTION of the budget (successive halving: the extra ones
            # are judged early, the final pair late); the last two race while the budget lasts.
            rest = E - self.epoch - 1
            pair = max(0.0, MIN_RACE_FRACTION * E - self.epoch - 1) if len(alive) > 2 else 0.0
            spent = self.spent - self.probe_spent
            if len(alive) <= 1 or spent + len(alive) + pair + rest <= RACE_BUDGET * E:
                return
            # The worst best-so-far goes; on a tie (nothing measured yet) the highest rate. But
            # a lower rate within TIE of the leader that improved this very epoch is kept over
            # the leader: higher rates descend first and flatten (or overfit) first, so a
            # near-tie early in the run favours the lower rate's final loss.
            lead = min(alive, key=lambda c: (c.best, c.lr))
            tied = [
                c
                for c in alive
                if c.lr < lead.lr
                and c.best_epoch == self.epoch
                and c.best - lead.best <= TIE * abs(lead.best)
            ]
            keep = min(tied, key=lambda c: c.lr) if tied else lead
            worst = max((c for c in alive if c is not keep), key=lambda c: (c.best, c.lr))
            worst.status = f"dropped after epoch {self.epoch} (budget)"

    def run(self) -> None:
        """Advance the candidates epoch by epoch until one is left to continue.

        With two or more racing, all advance (dropping by budget). With one left that has not
        yet beaten the best finished candidate, it goes on alone (its epochs were reserved in
        the budget anyway) until it beats that best, stops improving, or the budget ends.
        """
        from descend.train.result import StopReason

        E = self.ctx.epochs
        while self.epoch < E:
            self._drop_for_budget()
            alive = [c for c in self.cands if c.alive]
            if not alive or (
                len(alive) == 1
                and alive[0].best < self._finished_best()
                # (a probe on probation ends the race only where it is clearly ahead)
                and (not alive[0].probe or alive[0].cleared or self._ahead(alive[0]))
            ):
                break
            # (data-parallel: late on any process is late for all, or they part ways)
            late = self.deadline is not None and dist_.current().any(
                time.perf_counter() > self.deadline
            )
            if late and self.epoch:
                self.out_of_time = True  # max_time: hand the leader over now
                break
            self.epoch += 1
            for c in alive:
                c.loop.max_epochs = self.epoch
                c.loop._set_rng_state(c.rng)
                if c.stash is not None:
                    _G.restore(c.loop.model, c.stash)
                result = c.loop.run()
                c.rng = c.loop._rng_state()
                self.spent += 1
                if c.probe and not c.cleared:
                    self.probe_spent += 1
                c.times.append(time.perf_counter() - self.t_start)
                if result.stop_reason is StopReason.INTERRUPTED:
                    # (maybe mid-epoch, with no epoch of its own to judge: nothing more is
                    # decided; the race's last checkpoint, if any, is where a resume goes on)
                    self.interrupted = True
                    break
                v = self._monitored(c)
                if c.loop.improved:
                    c.best, c.best_epoch = c.loop.best_loss, c.loop.best_epoch
                    self._keep_best(c)
                if c.stash is not None:
                    _G.save_into(c.stash, c.loop.model)
                if result.stop_reason is StopReason.DIVERGED or not math.isfinite(v):
                    c.status = f"diverged in epoch {self.epoch}"
                elif result.stop_reason in (StopReason.PATIENCE, StopReason.CONVERGED):
                    c.status = f"stopped improving (finished after epoch {self.epoch})"
            if self.interrupted:
                break
            self._judge_probe()
            self._save()
            self._standings()

    def _standings(self) -> None:
        """A progress line with each candidate's best loss so far, at most every
        ``RACE_REPORT_SECONDS`` (wall time decides only what is printed, never the race)."""
        if getattr(self.ctx, "report", None) is None:
            return
        now = time.perf_counter()
        last = getattr(self, "_reported_at", self.t_start)
        if now - last < RACE_REPORT_SECONDS:
            return
        self._reported_at = now
        parts = []
        for c in self.cands:
            name = _label(c.lr, c.tau, c.probe)
            if c.alive:
                parts.append(f"{name} {c.best:.4g}")
            else:
                out = next(w for w in ("dropped", "stopped", "diverged") if c.status.startswith(w))
                parts.append(f"{name} {c.best:.4g} ({'finished' if out == 'stopped' else out})")
        _report(self.ctx, f"race epoch {self.epoch}, best losses: " + "; ".join(parts))

    def _keep_best(self, c: _Candidate) -> None:
        # The race loops do not keep best weights themselves (each run() call would reset
        # them), so the race keeps one copy per candidate: the winner's goes to fit's loop.
        sd = c.loop.model.state_dict()
        kept = self.best_states.get(id(c))
        if kept is None:
            self.best_states[id(c)] = {k: t.detach().clone() for k, t in sd.items()}
        else:
            for k, t in sd.items():
                kept[k].copy_(t)

    def winner(self) -> _Candidate:
        # The lowest best loss wins; a candidate still racing beats a finished one on a tie. A
        # candidate dropped for the budget is out (its state was abandoned when it was dropped).
        pool = [c for c in self.cands if not c.status.startswith("dropped")] or self.cands
        # The probe wins only where it is clearly ahead of the span (see PROBE_FACTOR).
        pool = [c for c in pool if not c.probe or self._ahead(c)] or pool
        return min(
            pool,
            key=lambda c: (c.status.startswith("diverged"), c.best, not c.alive, c.lr),
        )

    def plan(self, rt_record: dict[str, Any], ceiling: float, ceiling_text: str) -> Plan:
        from descend import checkpoint as C

        w = self.winner()
        if w.stash is not None:  # a sharded model: the winner's state goes back into it
            _G.restore(w.loop.model, w.stash)
        finished = not w.alive
        w.status = "winner (continues)" if w.alive else f"winner; {w.status}"
        loop = w.loop
        hist = loop.history.to_dict()
        hist["time"] = list(w.times)
        elapsed = time.perf_counter() - self.t_start
        # What fit's loop adopts: exactly the state a checkpoint of the winner would hold.
        meta = {
            "epoch": loop.epoch,
            "batch": 0,
            "step": loop.step,
            "best_loss": loop.best_loss,
            "best_epoch": loop.best_epoch,
            "since_best": loop.epoch - loop.best_epoch,
            "elapsed": elapsed,
            "history": hist,
            "partial": {"loss": [], "norm": [], "lr": []},
            "guard": None,
            "opt_signature": C.tree_signature(loop.opt_state),
        }
        best_state = self.best_states.get(id(w))
        ckpt = C.Checkpoint(
            step=loop.step,
            model=dict(loop.model.state_dict()),
            opt_state=loop.opt_state,
            best=best_state,
            meta=meta,
            rng=w.rng,
        )
        _, warmup = _schedule(self.total)
        K = len(self.cands)
        cands = [
            {
                "lr": c.lr,
                "timescale": _recorded(c.tau),
                "best": c.best,
                "best_epoch": c.best_epoch,
                "epochs": c.loop.epoch,
                "status": c.status,
                **({"probe": True} if c.probe else {}),
            }
            for c in self.cands
        ]
        strong = [c for c in self.cands if c.tau == STRONG_DECAY_TIMESCALE]
        probes = [c for c in self.cands if c.probe]
        raced = (
            f"{K - len(strong) - len(probes)} rates in [{_fmt(ceiling / SPAN)}, {_fmt(ceiling)}]"
            + (
                f", the lowest again with a {DECAY_TIMESCALE / STRONG_DECAY_TIMESCALE:g}x "
                "stronger weight decay"
                if strong
                else ""
            )
            + (
                f" and a probe at {PROBE_FACTOR:g}x the ceiling ({_fmt(probes[0].lr)}; it "
                f"stays only {PROBE_MARGIN:.0%} ahead of the span)"
                if probes
                else ""
            )
        )
        won = f"lr={_fmt(w.lr)}" + (" with the stronger decay" if w in strong else "")
        if w.probe:
            won += (
                f" (the probe, {1 - w.best / self._span_best():.0%} below the span's best "
                f"{self._span_best():.4g})"
            )
        if K > 1 and "diverged" in w.status:
            # (the winner diverged only when every candidate still in the race did)
            why = (
                f"the range test put the ceiling at {ceiling_text}; {raced} raced for "
                f"{_epochs(self.epoch)} and every candidate diverged (a loss that was not "
                f"finite); {won} "
                + (
                    f"had the lowest best loss ({w.best:.4g}) before it did"
                    if math.isfinite(w.best)
                    else "is kept, the lowest rate: no epoch of theirs ended with a finite loss"
                )
            )
        elif K > 1:
            why = (
                f"the range test put the ceiling at {ceiling_text}; {raced} raced for "
                f"{_epochs(self.epoch)} and {won} had the lowest best loss ({w.best:.4g}); "
                + (
                    f"it continues from epoch {loop.epoch} with its optimizer state"
                    if not finished
                    else "it had already stopped improving, so the run's patience ends it soon"
                    if _ctx_get(self.ctx, "patience", 10)
                    else (
                        "it had already stopped improving; without early stopping it continues "
                        f"from epoch {loop.epoch} to the end of the budget"
                    )
                )
            )
        else:
            why = (
                f"the range test put the ceiling at {ceiling_text}; the budget affords no "
                f"race, so the geometric middle of [{_fmt(ceiling / SPAN)}, {_fmt(ceiling)}] "
                f"is used"
            )
        record: dict[str, Any] = {
            "policy": "range test + race" if K > 1 else "range test",
            "optimizer": "adamw",
            "lr": w.lr,
            "weight_decay": weight_decay(w.lr, self.total, w.tau),
            "weight_decay_timescale": _recorded(w.tau),
            "weight_decay_rule": _decay_text(self.total, w.tau, self.exempt),
            "weight_decay_exempt": self.exempt,
            "schedule": _schedule_text(self.total),
            "warmup_steps": warmup,
            "total_steps": self.total,
            "range_test": rt_record,
            "candidates": cands,
            "race_epochs": self.epoch,
            "continued_from_epoch": loop.epoch,
            "planning_seconds": elapsed,
            "why": why,
        }
        desc = (
            f"autopilot adamw(lr={_fmt(w.lr)}, wd {_fmt(weight_decay(w.lr, self.total, w.tau))}, "
            f"warmup {warmup}, held, decay to 0 by step {self.total})"
        )
        if K > 1:
            desc += (
                f" — range test ceiling {_fmt(ceiling)}, raced {K} candidates for "
                f"{_epochs(self.epoch)}, continuing the winner from epoch {loop.epoch}"
            )
        if self.resumed_from is not None:
            record["why"] += (
                f"; the race went on from its checkpoint after epoch {self.resumed_epoch} "
                "(the run had been stopped during it)"
            )
        if self.interrupted:
            record["why"] += "; interrupted during the race"
        elif self.out_of_time:
            record["why"] += f"; the race ended at {RACE_TIME_SHARE:.0%} of max_time"
        callbacks: list[Callback] = [_Handover(ckpt, interrupt=self.interrupted)]
        # _Handover runs first: the decay's check at the start sees the adopted state.
        return _with_decay(Plan(w.loop.tx, desc, record, callbacks), w.sched, self.ctx)


class _Handover(Callback):
    """At the start of the real run, adopt the race winner's exact state (weights, optimizer
    state, step, epoch, history, best weights) through the loop's checkpoint-resume path.

    From there the run's own rules decide when it ends: a winner that had already stopped
    improving in the race meets the run's patience within a few epochs (the race's patience
    is never longer than the run's), and a run without early stopping goes on to its budget.
    """

    wants_steps = False

    def __init__(self, ckpt: Any, *, interrupt: bool = False) -> None:
        self.ckpt = ckpt
        # A Ctrl-C during planning ends the run at once, as an interrupt (None: no checkpoint).
        self.interrupt = interrupt or ckpt is None

    def on_fit_start(self, loop: Loop) -> None:
        ckpt, self.ckpt = self.ckpt, None  # hand over once; let the race's tensors go after
        if ckpt is not None:
            loop.load_checkpoint(ckpt)
        if self.interrupt:
            raise KeyboardInterrupt


def rebuild(record: dict[str, Any], ctx: PlanContext) -> Plan:
    """The optimizer a recorded plan chose, without any trials (used when resuming a run)."""
    lr = float(record["lr"])
    total = record.get("total_steps")
    # The recorded decay, so a run checkpointed under another rule resumes with its own.
    wd = record.get("weight_decay")
    wd = None if wd is None else float(wd)
    # The recorded exemptions too (a run recorded before them decayed every matrix).
    mask = _decay_mask(record.get("weight_decay_exempt") or ())
    if not total:
        tx = _adamw(lr, None, wd, mask=mask)
        return Plan(tx, f"autopilot adamw(lr={_fmt(lr)}) (resumed)", record)
    total = int(total)
    if "cosine" in str(record.get("schedule", "")):  # a run started under the former rule
        warmup = int(record.get("warmup_steps") or _schedule(total)[1])
        cosine = schedules.cosine(total_steps=total, warmup_steps=warmup)
        tx = _adamw(lr, total, wd, schedule=cosine, mask=mask)
        return Plan(tx, f"autopilot adamw(lr={_fmt(lr)}) (resumed)", record)
    sched, _ = _schedule(total)
    decay = record.get("decay")
    if decay:  # the decay had started early: continue it from where it started
        sched.begin(int(decay["start_step"]), int(decay["steps"]))
    plan = Plan(
        _adamw(lr, total, wd, schedule=sched, mask=mask),
        f"autopilot adamw(lr={_fmt(lr)}) (resumed)",
        record,
    )
    return _with_decay(plan, sched, ctx)


def default_optimizer(
    *, lr: float | None, steps_per_epoch: int | None, epochs: int
) -> tuple[Transform, str, dict[str, Any] | None]:
    """Return ``(transform, description, autopilot_record)`` without running any trial.

    With ``lr`` given the user gets exactly that learning rate, held constant (AdamW), and no
    autopilot record. Without it: AdamW at 1e-3 with warmup, the rate held, and a linear decay
    over the last 20% of the budget
    (the fixed fallback; :func:`plan` chooses the rate from the data instead).
    """
    if lr is not None:
        return optim.adamw(lr=lr), f"adamw(lr={lr:g})", None
    base_lr = 1e-3
    total = max(1, steps_per_epoch * epochs) if steps_per_epoch else None
    record = {
        "policy": "fixed",
        "optimizer": "adamw",
        "lr": base_lr,
        "weight_decay": weight_decay(base_lr, total),
        "weight_decay_rule": _decay_text(total),
        "schedule": _schedule_text(total),
        "total_steps": total,
        "why": "fixed fallback: AdamW 1e-3 with warmup, held, decayed over the last 20% of the budget",
    }
    return _adamw(base_lr, total), f"adamw(lr={base_lr:g})", record


# ------------------------------------------------------------------------- the final polish

#: The polish runs for models of at most this many trainable parameters (L-BFGS keeps 2 x 20
#: vectors of them) and at most this many L-BFGS iterations (about 1.25 objective evaluations,
#: each a pass over the training data, per iteration: a curve fit converges in 10-30, a
#: 49-parameter MLP on 1,280 rows used all 200 — its excess error over the noise-free curve
#: 0.037 without the polish, in float32 0.011 after 100 iterations and 0.008 after 200, in
#: float64 0.0045 — in 0.25 s). The
#: first L-BFGS of a process also pays ~1 s once: torch.optim's optimizers import torch's
#: compiler when the first one is built.
POLISH_MAX_PARAMS = 10_000
POLISH_ITERATIONS = 200
#: ... and training sets of at most this many rows (one forward pass holds all of them).
POLISH_MAX_ROWS = 100_000
#: A module with fewer than SAMPLES_PER_PARAMETER samples per parameter is polished too when
#: its run already fit the data almost exactly — a best validation loss at most
#: ``POLISH_NEAR_EXACT`` of a constant prediction's (R² >= 0.98 under mse): what is left is
#: the optimizer's error, not noise the polish could fit — and the polish is cheap: at most
#: ``POLISH_SMALL_WORK`` training rows x parameters (~0.1 s). The classic first demo, sin(x)
#: from 200 exact points with a 1-32-32-1 tanh MLP (1,153 parameters, 160 rows to train:
#: 0.14 per parameter), ended the run at 34x the error of the best explicit rate, and 0.002x
#: polished (ReLU: 14x -> 0.13x; session 31, benchmarks/RESULTS.md, input kinds: nothing else
#: moved there, in the estimators' sixteen sets or on the suite's regression workloads).
POLISH_NEAR_EXACT = 0.02
POLISH_SMALL_WORK = 1_000_000

#: The run's stop reasons after which the polish runs: training ended on its own rules (not
#: interrupted, diverged, out of time or stopped by a callback).
_POLISH_AFTER = frozenset(
    {StopReason.MAX_EPOCHS, StopReason.PATIENCE, StopReason.CONVERGED, StopReason.DECAYED}
)


def polish(loop: Loop, reason: StopReason) -> tuple[float, str] | None:
    """After a run the policy planned, minimize the training loss of a model too small to
    memorize its data — or of a small one whose run fit its data almost exactly
    (:func:`_near_exact`) — with full-batch L-BFGS, and keep the result where it is better: for a
    plain function unless the validation loss is clearly worse, for a module only where the
    validation loss is lower (without validation data: where the training loss is lower).
    Return ``(the new best loss, a sentence for the stop message)``, or None when it did not
    run or was not kept; the record is ``Result.autopilot["polish"]``.

    Where it runs: the policy chose the optimizer (no ``optimizer=`` or ``lr=``; a warm start
    passes its ``optimizer=``), a regression loss — or any loss for a plain function ``fn(x,
    params)``, whose answer is its loss's minimum (a dose-response curve under binary
    cross-entropy: its maximum likelihood) — at least ``SAMPLES_PER_PARAMETER`` training
    samples per parameter (the rule that also leaves out the weight decay, so the run and the
    polish minimize the same objective; or a near-exact fit, where the decay does not matter
    and there is no noise to fit), at most ``POLISH_MAX_PARAMS`` parameters and
    ``POLISH_MAX_ROWS`` training rows in memory, fp32, one process, and a model with no
    train/eval behaviour (no dropout or batch norm; a plain function ``fn(x, params)``
    counts) whose loss is the same number when evaluated twice.

    Why: such a model is a curve fit, and a curve fit's loss is smooth, deterministic and often
    ill-conditioned — parameters of very different scales (a Michaelis-Menten constant of 150
    next to a rate of 12), or a narrow valley (an exponent on inputs up to 100): Adam moves
    every parameter by about the rate per step, so it crawls where one parameter must travel
    far and oscillates where another is sensitive, and a range test reads the oscillation as
    the top rate. L-BFGS with a strong-Wolfe line search (a quasi-Newton method on the whole
    data, as scipy's curve fitting is) reaches the least-squares optimum from the run's end
    point in tens of milliseconds (benchmarks/curve_fits.py). It runs in float64 where the
    model runs in it (see below), the result put back in the parameters' own dtype.

    Judged how: a plain function ``fn(x, params)`` is a parametric model the user wrote — a
    curve fit, whose answer is the minimum of its loss (what scipy's curve_fit returns) — so
    its polish is refused only when the validation loss is clearly worse: the run's best
    weights won a selection among its epochs on the validation rows, so their validation loss
    reads low, and a paired comparison over runs of those rows (:func:`_chunk_losses`) must put
    the polish above them beyond chance at the 5% level, Bonferroni-corrected for that many
    epochs (:func:`_clearly_positive`). A module is a learner, judged as everywhere else in the
    policy by the validation loss it reaches: its polish is kept only where that is lower
    (measured: a 21-parameter linear regression, 30 seeds, kept on the paired test: validation
    loss 1.009x tuned AdamW's where it was 1.000x, test loss 0.992x where 0.996x — a better
    model by the test rows, a worse one by the issue's measure). A failure inside L-BFGS (out
    of memory, an objective it cannot differentiate) leaves the run's weights as they were and
    is recorded.
    """
    from descend import data as D
    from descend.minimize import minimize
    from descend.train.loop import _FunctionModel, _mode_free

    rec = loop.autopilot
    if rec is None or not str(rec.get("policy", "")).startswith("range test"):
        return None
    model = loop.model
    curve = isinstance(model, _FunctionModel)
    # a module only on a regression loss (a classifier keeps the weight decay its run had: on
    # separable classes only the decay bounds its weights); a curve the user wrote on any loss
    # (its answer is the loss's minimum: a dose-response curve's maximum likelihood)
    if reason not in _POLISH_AFTER or not (
        curve or getattr(loop.loss, "task", "any") == "regression"
    ):
        return None
    src = loop.bundle.train
    if not src.resident or loop.world.active or loop._sharded or loop.precision != "fp32":
        return None
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_params = sum(p.numel() for p in named.values())
    if not named or n_params > POLISH_MAX_PARAMS or (src.n_samples or 0) > POLISH_MAX_ROWS:
        return None
    if not (curve or _mode_free(model)):
        return None
    few = not math.isinf(decay_share(n_params, src.n_samples, True))
    if few and not _near_exact(loop, n_params):
        return None
    if any(not p.is_floating_point() or p.is_complex() for p in named.values()):
        return None

    def at(dtype: torch.dtype | None) -> tuple[Callable, dict[str, torch.Tensor]]:
        """The full-batch training loss as a function of the parameters, and the start, with
        the parameters and floating data in ``dtype`` (None: as they are)."""

        def cast(t: Any) -> Any:
            if dtype is None or not (torch.is_tensor(t) and t.is_floating_point()):
                return t
            return t.to(dtype)

        X, y, w = D.map_inputs(src.X, cast), cast(src.y), cast(src.w)

        def objective(p: dict[str, torch.Tensor]) -> torch.Tensor:
            def call(*args: Any, **kwargs: Any) -> Any:
                return torch.func.functional_call(model, p, args, kwargs)

            return loop._forward_loss(call, X, y, w)[0]  # type: ignore[arg-type]

        return objective, {n: p.detach().to(dtype or p.dtype, copy=True) for n, p in named.items()}

    t0 = time.perf_counter()
    # In float64 where the model runs in it: an ill-conditioned fit (a cubic on inputs up to
    # 100, coefficients from 1e-4 to 5) is beyond float32's precision (67x the least-squares
    # minimum after a float32 polish); the result is put back in the model's own dtype.
    once = twice = math.nan
    for dtype in (torch.float64, None):
        objective, start = at(dtype)
        try:
            with torch.no_grad():
                once, twice = float(objective(start)), float(objective(start))
            break
        except Exception as err:  # (a model that cannot run in float64: its own dtype)
            if dtype is None:
                rec["polish"] = {"ran": False, "why": f"{type(err).__name__}: {err}"}
                return None
    if once != twice or not math.isfinite(once):
        rec["polish"] = {"ran": False, "why": "the training loss is not the same number twice"}
        return None
    val = loop.bundle.val
    # a curve fit the user wrote is judged by a paired comparison (see the docstring)
    paired = curve and val is not None and val.resident and val.y is not None
    before = _chunk_losses(loop, val) if paired else None
    v_before = loop.evaluate(val)[0] if val is not None else once

    own = {n: p.detach().clone() for n, p in named.items()}

    def put(values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(values[n])  # (in the parameter's own dtype)

    try:
        found = minimize(objective, start, steps=POLISH_ITERATIONS)
        put(found.params)
        v_after = loop.evaluate(val)[0] if val is not None else found.best_loss
        if paired:
            assert before is not None
            diffs = [a - b for a, b in zip(_chunk_losses(loop, val), before)]
            worse = _clearly_positive(diffs, loop.epoch)
        else:  # (a module, a validation stream, or none: the loss must not rise)
            worse = not v_after <= v_before
    except Exception as err:  # the run's own result stands; say why nothing changed
        put(own)
        rec["polish"] = {"ran": False, "why": f"L-BFGS failed: {type(err).__name__}: {err}"}
        loop.record_event("polish", f"L-BFGS on the whole training set failed ({err}): not used")
        return None
    kept = (
        math.isfinite(found.best_loss)
        and math.isfinite(v_after)
        and found.best_loss <= once
        and not worse
    )
    if not kept:
        put(own)
    monitor = "validation loss" if val is not None else "training loss"
    rec["polish"] = {
        "ran": True,
        "method": "L-BFGS (strong-Wolfe line search) on the whole training set",
        "iterations": found.steps,
        "train_loss": [once, found.best_loss],
        "judged_by": monitor,
        "before": v_before,
        "after": v_after,
        "kept": kept,
        "seconds": time.perf_counter() - t0,
    }
    text = (
        f"L-BFGS on the whole training set ({found.steps} iterations) took the training loss "
        f"from {once:.4g} to {found.best_loss:.4g}"
        + (
            f" and the validation loss from {v_before:.4g} to {v_after:.4g}"
            if val is not None
            else ""
        )
    )
    if kept and v_after > v_before:
        text += (
            " (higher by less than its noise: with this many samples per parameter the "
            "training loss's minimum is the better fit)"
        )
    if not kept:
        text += (
            ": clearly worse on the validation rows, not kept" if worse else ": no better, not kept"
        )
    loop.record_event("polish", text)
    if not kept:
        return None
    return v_after, f" Then {text}."


#: The losses whose near-exact reading compares with predicting the targets' mean: distances
#: between the prediction and the target.
_DISTANCE_LOSSES = frozenset({"mse", "mae", "huber"})


def _near_exact(loop: Loop, n_params: int) -> bool:
    """Whether the run fit its data almost exactly (``POLISH_NEAR_EXACT``) on a problem small
    enough (``POLISH_SMALL_WORK``) that the polish costs next to nothing: its best validation
    loss at most ``POLISH_NEAR_EXACT`` of the loss of predicting the training targets' mean for
    every validation row. Needs validation data in memory, with targets, and a loss that is a
    distance between prediction and target (``_DISTANCE_LOSSES``)."""
    src, val = loop.bundle.train, loop.bundle.val
    if (src.n_samples or 0) * n_params > POLISH_SMALL_WORK or not math.isfinite(loop.best_loss):
        return False
    if getattr(loop.loss, "name", None) not in _DISTANCE_LOSSES:
        return False  # (a Poisson output is a log-rate: the targets' mean is no prediction)
    if val is None or not val.resident or val.y is None or src.y is None:
        return False
    if not (src.y.is_floating_point() and val.y.is_floating_point()):
        return False

    def as_in_a_step(y: torch.Tensor) -> torch.Tensor:  # (the shape the loss is given)
        return y.unsqueeze(-1) if loop._y_unsqueeze else y

    target = as_in_a_step(loop._like_training(val.y))
    with torch.no_grad():
        mean = as_in_a_step(src.y).mean(0, keepdim=True)
        try:
            base = float(loop.loss(mean.expand_as(target), target, validate=False))
        except Exception:  # a loss that takes no constant prediction: no reading
            return False
    return math.isfinite(base) and base > 0 and loop.best_loss <= POLISH_NEAR_EXACT * base


#: The validation rows are read in this many chunks for the polish's paired comparison.
POLISH_CHUNKS = 20


def _chunk_losses(loop: Loop, val: Any) -> list[float]:
    """The loss of the model on each of ``POLISH_CHUNKS`` equal runs of the validation rows
    (fewer chunks for fewer rows), in order."""
    from descend import data as D

    n = D.n_rows(val.X)
    k = max(1, min(POLISH_CHUNKS, n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    out = []
    with torch.no_grad():
        for lo, hi in itertools.pairwise(bounds):
            xb = D.cut_rows(val.X, lo, hi)
            yb = loop._like_training(val.y[lo:hi])
            wb = None if val.w is None else val.w[lo:hi]
            out.append(float(loop._forward_loss(loop.model, xb, yb, wb)[0]))
    return out


def _clearly_positive(diffs: Sequence[float], looks: int) -> bool:
    """Whether paired differences are above 0 by more than ``z`` standard errors of their mean
    (one difference: above 0 at all), ``z`` the one-sided 5% level after a Bonferroni
    correction for ``looks`` comparisons: the weights they are compared with won a selection
    among ``looks`` epochs on these same rows, so their validation loss is biased low (on
    curve fits whose least-squares optimum was 2-5% lower on all the data, the selected
    epoch read 2.3-2.7 standard errors lower on its validation rows)."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m > 0
    var = sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1)
    z = statistics.NormalDist().inv_cdf(1.0 - 0.05 / max(1, looks))
    return m > z * math.sqrt(var / len(diffs))
