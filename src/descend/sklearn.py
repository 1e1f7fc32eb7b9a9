"""scikit-learn estimators: :class:`Classifier` and :class:`Regressor`.

Drop-in replacements for ``MLPClassifier`` / ``MLPRegressor`` that follow the estimator
contract (``get_params``/``set_params``/``clone``, ``fit`` returns ``self``, learned attributes
end in ``_``), work inside ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``, and need no
tuning. Nothing about training is decided here: every fit is one call of :func:`descend.fit`
with the library's default policy (``optimizer=None``: the learning rate and schedule are chosen
from the data), :func:`descend.models.mlp` sized by :func:`descend.models.default_hidden`, and the
library's losses (``cross_entropy``, ``mse``). What the estimators add is the tabular glue an MLP
needs and scikit-learn users expect:

* **Standardized features** (``mean_``, ``scale_``, weighted by ``sample_weight``); for
  regression the targets too (``y_mean_``, ``y_scale_``), undone in ``predict``.
* **Budget and batches sized for tabular data**: ``max_epochs=50``, full batches up to 512
  training rows and ``min(256, ceil(n/4))`` rows per step above, unless told otherwise (the
  default policy shapes its schedule over that budget).
* **Early stopping where it helps the score.** The :class:`Regressor` holds out
  ``validation_fraction=0.1`` and restores the weights with the best validation loss, which is
  its score (R²) up to a constant. The :class:`Classifier` holds out nothing by default and
  runs its whole budget: accuracy usually keeps improving after the validation log loss has
  passed its minimum, and the held-out rows are missed on small sets (measured in
  benchmarks/RESULTS.md). Unlike ``MLPClassifier`` it does not stop when the *training* loss
  stalls: the default schedule holds its rate and decays it over the last 20% of
  ``max_epochs``, and its weight decay makes the training loss rise mid-run while the model
  still improves (``patience="auto"``: 10 epochs of
  validation loss with a split, no early stop without one; see ``AUTO_PATIENCE``). Pass
  ``validation_fraction=0.1`` for early stopping. A split under ``_MIN_VALIDATION`` rows is
  never made (too noisy to stop on).
* **Sparse features** (``scipy.sparse``, e.g. a ``TfidfVectorizer``'s output), as
  ``MLPClassifier`` takes them: densified for training (up to ``SPARSE_DENSE_LIMIT`` bytes of
  float64, refused with the fix above that) and in chunks for prediction.
* **Warm starts that keep the optimizer.** ``warm_start=True`` and ``partial_fit`` continue the
  previous run's optimizer: its transform, Adam's moments and the schedule position
  (``fit(opt_state=...)``), unlike scikit-learn's MLP, which restarts Adam on a warm start.
  The default schedule is shaped over the first fit's ``max_epochs``; a warm start continues
  along it (at its final, zero rate once a previous fit's decay reached zero — the fit warns
  that it left the weights unchanged: pass ``lr=`` or an ``optimizer`` for a constant rate, or
  fit afresh). A warm ``fit`` on the same rows holds out the same validation rows as the fit
  before it (a new split would watch rows already trained on). A warm start (or
  ``partial_fit``) after ``set_params`` changed ``optimizer`` or ``lr`` keeps the weights and starts the optimizer now
  named afresh: new moments, step count and schedule from step 0 (the old state belongs to the
  old optimizer); with both unchanged the optimizer goes on. ``partial_fit`` runs one epoch per call
  and, since the number of calls is unknown, starts with the library's constant-rate AdamW for
  data of unknown length (or the ``optimizer``/``lr`` given); features are standardized with the
  first call's statistics.

Example:
    >>> from sklearn.datasets import load_iris
    >>> from descend.sklearn import Classifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = Classifier(random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from descend import losses as L
from descend._errors import ConfigError, describe, message
from descend.data import auto_device
from descend.models import ACTIVATIONS, default_hidden, mlp
from descend.train import Callback, fit
from descend.train import autopilot as _autopilot

__all__ = ["Classifier", "Regressor"]

#: A validation split smaller than this is too noisy to stop on: train on every row instead.
_MIN_VALIDATION = 10
#: ``patience="auto"`` with a validation split: stop after this many epochs without a better
#: validation loss (the best weights are restored). Without a split, "auto" never stops early:
#: the default schedule anneals over ``max_epochs`` and the weight decay (timescale half the
#: budget) makes the *training* loss rise mid-run while the model still improves, so a stop on
#: the training loss there kept the weights of a half-trained, un-annealed model. Measured with
#: the Classifier (5 seeds, benchmarks/RESULTS.md): the first 1,000 digits stopped at epochs
#: 22-24 with accuracy 0.970 (log loss 0.097), running the budget gave 0.975 (0.089); wine,
#: which also stopped early, scored the same; iris, breast cancer, digits and four generated
#: sets ran the whole budget anyway.
AUTO_PATIENCE = 10
#: Rows per forward pass in predict (bounds memory on large inputs).
_PREDICT_CHUNK = 65536
# Sparse features are trained on dense: at most this many bytes of float64 (the training
# copy is made once, plus its float32 standardized copy: 1.5x this in all).
SPARSE_DENSE_LIMIT = 2 * 2**30
_SPARSE = ("csr", "csc", "coo")


#: The library losses the Regressor takes (``loss=``), by canonical name, and the names it
#: suggests (scikit-learn's).
_REGRESSION_LOSSES = ("mse", "mae", "huber", "poisson")
_LOSS_NAMES = ("squared_error", "absolute_error", "huber", "poisson")

#: Up to this many training rows, every step takes the whole set (see _auto_batch_size).
FULL_BATCH_ROWS = 512


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow warnings."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor sharing its memory, or a copy's when ``a`` is read-only (pandas'
    copy-on-write arrays, joblib's memmaps): torch warns that writing to those is undefined."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _dense(X: Any, who: str) -> np.ndarray:
    """``X`` as a float64 array; a scipy sparse matrix is densified if it fits
    ``SPARSE_DENSE_LIMIT``, else refused naming its dense size and the fix."""
    if not sp.issparse(X):
        return np.asarray(X, dtype=np.float64)
    n, d = X.shape
    need = n * d * 8
    if need > SPARSE_DENSE_LIMIT:
        raise ValueError(
            message(
                f"{who}: X",
                f"is trained on dense features, at most {SPARSE_DENSE_LIMIT / 2**30:g} GiB of "
                "float64 (descend.sklearn.SPARSE_DENSE_LIMIT)",
                f"a sparse matrix of {n:,} x {d:,} ({need / 2**30:.1f} GiB dense)",
                "reduce the columns first, e.g. TfidfVectorizer(max_features=20000) or "
                "TruncatedSVD(n_components=300) in a Pipeline",
            )
        )
    return X.toarray().astype(np.float64, copy=False)


def _auto_batch_size(n: int) -> int:
    """Rows per step when ``batch_size=None``: all ``n`` up to ``FULL_BATCH_ROWS`` rows, else
    ``min(256, ceil(n / 4))``.

    On a small MLP a step's cost is almost all fixed overhead (on the 2-core CPU box a step on
    112 rows costs what one on 28 does), so the time of a fit is its number of steps. Up to
    512 rows the full batch is the same price as any mini-batch and its gradient is exact: 50
    full-batch epochs (plus a 20-step range test) matched or beat 50 epochs of 4 steps on iris,
    wine, breast_cancer and diabetes at 1/2-1/3 of the time (benchmarks/RESULTS.md). Above
    that, sets want the steps (digits, friedman1 and the 3-output set lost 0.2-3 points with 1-3
    steps per epoch): 256 rows (about scikit-learn's 200), at least 4 steps per epoch.
    """
    if n <= FULL_BATCH_ROWS:
        return max(1, n)
    return max(1, min(256, -(-n // 4)))


class _KeepOptimizer(Callback):
    """Remembers the run's optimizer transform, so a warm start can continue with it."""

    wants_steps = False

    def __init__(self) -> None:
        self.tx = None

    def on_fit_end(self, loop: Any) -> None:
        self.tx = loop.tx


# MLPClassifier/MLPRegressor parameters that descend names otherwise, or decides itself: a
# user switching over gets the counterpart instead of Python's bare "unexpected keyword".
_MLP_PARAMS = {
    "max_iter": "use max_epochs= (e.g. max_epochs={v!r})",
    "learning_rate_init": "use lr= (e.g. lr={v!r}), or leave it out: the default policy "
    "chooses the rate from the data",
    "alpha": "pass optimizer=descend.optim.adamw(lr=1e-3, weight_decay={v!r}) to set the weight "
    "decay yourself, or leave it out: the default policy chooses it with the rate",
    "solver": "pass optimizer= (a registry name such as 'adamw', 'sgd', 'nesterov', or a "
    "descend.optim transform), or leave it out: the default policy trains with AdamW",
    "learning_rate": "leave it out (the default policy shapes the schedule), or pass "
    "optimizer=descend.optim.adamw(lr=..., schedule=...)",
    "early_stopping": "use validation_fraction= (e.g. validation_fraction=0.1) and patience=",
    "n_iter_no_change": "use patience= (e.g. patience={v!r})",
    "beta_1": "pass optimizer=descend.optim.adamw(lr=1e-3, betas=(beta_1, beta_2), eps=...)",
    "beta_2": "pass optimizer=descend.optim.adamw(lr=1e-3, betas=(beta_1, beta_2), eps=...)",
    "epsilon": "pass optimizer=descend.optim.adamw(lr=1e-3, eps={v!r})",
    "momentum": "pass optimizer=descend.optim.nesterov(lr=0.01, momentum={v!r})",
    "nesterovs_momentum": "pass optimizer=descend.optim.nesterov(...) or descend.optim.sgd(...)",
    "shuffle": "leave it out: batches are always drawn from a seeded permutation (random_state=)",
    "power_t": "leave it out: the default policy shapes the schedule",
    "max_fun": "leave it out: descend has no lbfgs solver",
}


def _mlp_param_message(who: str, name: str, value: Any) -> str:
    return message(
        f"{who}: {name}",
        "is an MLPClassifier/MLPRegressor parameter that descend's estimators do not take",
        f"{name}={describe(value)}",
        _MLP_PARAMS[name].format(v=value),
    )


class _RefuseMLPParams:
    """Refuses MLPClassifier/MLPRegressor-only parameters before ``__init__`` runs, naming the
    counterpart. A base placed after the estimator class in the MRO, so that
    ``inspect.signature`` keeps reading ``__init__`` (scikit-learn's checks do: no
    ``**kwargs`` is allowed there)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        for name in kwargs:
            if name in _MLP_PARAMS:
                raise TypeError(_mlp_param_message(cls.__name__, name, kwargs[name]))
        return super().__new__(cls)


class _Estimator(BaseEstimator, _RefuseMLPParams):
    """The shared fit/partial_fit machinery of :class:`Classifier` and :class:`Regressor`."""

    _is_classifier = False

    # The Regressor's parameters and defaults (it inherits this __init__). scikit-learn reads
    # the parameters from each estimator's own __init__ signature, so the Classifier repeats
    # them for its default validation_fraction=None.
    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] | None = None,
        activation: str = "relu",
        max_epochs: int = 50,
        batch_size: int | None = None,
        validation_fraction: float | None = 0.1,
        patience: int | str | None = "auto",
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        optimizer: Any = None,
        lr: float | None = None,
        device: str | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.optimizer = optimizer
        self.lr = lr
        self.device = device

    def set_params(self, **params: Any) -> _Estimator:
        # GridSearchCV(param_grid={"max_iter": ...}) lands here: name the counterpart.
        for name in params:
            if name in _MLP_PARAMS:
                who = f"{type(self).__name__}.set_params"
                raise ValueError(_mlp_param_message(who, name, params[name]))
        return super().set_params(**params)

    # ---- subclass hooks ------------------------------------------------------------------

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        raise NotImplementedError

    def _loss(self, y: np.ndarray) -> Any:
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _multilabel(self) -> bool:
        return False

    def _scale_targets(
        self, targets: np.ndarray, sample_weight: np.ndarray | None, first: bool
    ) -> np.ndarray:
        return targets

    def _check_two_classes(self, targets: np.ndarray, sample_weight: np.ndarray | None) -> None:
        return None

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _Estimator:
        """Train on ``(X, y)``; with ``warm_start=True`` continue the previous fit.

        Args:
            X: array-like or DataFrame of shape (n_samples, n_features).
            y: targets (n_samples,) — or (n_samples, n_outputs) for regression, or a 0/1
                multi-label indicator matrix (n_samples, n_labels) for classification.
            sample_weight: one weight >= 0 per sample (the loss becomes the weighted mean).

        Returns:
            self
        """
        warm = bool(self.warm_start) and hasattr(self, "model_")
        return self._fit(X, y, sample_weight, incremental=False, warm=warm)

    def _fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any,
        *,
        incremental: bool,
        warm: bool,
        classes: Any = None,
    ) -> _Estimator:
        try:
            return self._fit_run(
                X, y, sample_weight, incremental=incremental, warm=warm, classes=classes
            )
        except Exception:
            if not warm:
                # The model is built before descend.fit checks its settings: a first fit that
                # raised leaves the estimator unfitted (not an untrained model_ that predict
                # would answer from and a warm start or the next partial_fit would continue).
                self.__dict__.pop("model_", None)
            raise

    def _fit_run(
        self,
        X: Any,
        y: Any,
        sample_weight: Any,
        *,
        incremental: bool,
        warm: bool,
        classes: Any = None,
    ) -> _Estimator:
        self._check_params()
        if warm:
            self._check_same_architecture()
        X, y = validate_data(
            self,
            X,
            y,
            reset=not warm,
            accept_sparse=_SPARSE,
            dtype=(np.float64, np.float32),
            multi_output=True,  # a classifier's 2-D y is a multi-label indicator matrix
            y_numeric=not self._is_classifier,
        )
        X = _dense(X, type(self).__name__)
        if sp.issparse(y):  # a sparse multi-label indicator (or multi-output) matrix
            y = y.toarray()
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        targets = self._targets(y, first=not warm, classes=classes)
        if self._is_classifier and not incremental and not self._multilabel():
            self._check_two_classes(targets, sample_weight)

        if not warm:
            self.mean_, self.scale_ = _weighted_moments(X, sample_weight)
            self._n_calls = 0
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_: list[float] = []
            self.validation_loss_curve_: list[float] = []
            self._tx = None
            self._opt_state = None
            self._split_seed = None
        targets = self._scale_targets(targets, sample_weight, first=not warm)
        Xs = torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32))

        seed = self._seed()
        if not incremental:
            # The seed draws the validation split: a warm fit keeps the split of the fit before
            # (a new one would hold out rows that fit trained on, and early stopping and the
            # best-weight restore would watch rows the model has learned).
            if getattr(self, "_split_seed", None) is None:
                self._split_seed = seed
            seed = self._split_seed
        # Rows of weight 0 are dropped by the data layer: size everything by the rows that count.
        n = X.shape[0] if sample_weight is None else int(np.count_nonzero(sample_weight))
        if not warm:
            hidden = self._hidden_param()
            if hidden is None:
                hidden = default_hidden(
                    n, X.shape[1], self._n_outputs(), classification=self._is_classifier
                )
            self.model_ = mlp(
                X.shape[1], self._n_outputs(), tuple(hidden), self.activation, seed=seed
            )
            self._architecture = self._arch_now()

        # The optimizer goes on only while optimizer= and lr= are the ones that made it: a new
        # value (set_params(lr=0.05) after a default fit whose rate decayed to zero) starts the
        # optimizer it names afresh on the kept weights (it was silently ignored).
        settings = (self.optimizer, self.lr)
        continuing = (
            warm
            and getattr(self, "_tx", None) is not None
            and self._opt_state is not None
            and _same_settings(getattr(self, "_tx_settings", None), settings)
        )
        optimizer, lr, opt_state = self.optimizer, self.lr, None
        if continuing:
            optimizer, lr, opt_state = self._tx, None, self._opt_state
        elif incremental and optimizer is None:
            # The number of partial_fit calls is unknown, so no schedule can be shaped over
            # it: the library's policy for data of unknown length (constant AdamW).
            optimizer, _, _ = _autopilot.default_optimizer(lr=lr, steps_per_epoch=None, epochs=1)
            lr = None

        validation = None if incremental else self._validation(n, targets, sample_weight)
        n_train = n if validation is None else n - int(np.floor(validation * n + 0.5))
        keep = _KeepOptimizer()
        batch_size = self.batch_size or _auto_batch_size(n_train)
        result = fit(
            self.model_,
            (Xs, _tensor(targets)),
            self._loss(targets),
            optimizer=optimizer,
            lr=lr,
            epochs=1 if incremental else int(self.max_epochs),
            batch_size=batch_size,
            validation=validation,
            patience=self._patience(validation, incremental),
            tol=self.tol,
            restore_best=not incremental,
            metric=None,
            callbacks=[keep],
            verbose=self.verbose,
            seed=seed,
            device=auto_device(self.device, batch_size, self.model_),
            sample_weight=None if sample_weight is None else _tensor(sample_weight),
            opt_state=opt_state,
        )
        self._tx = keep.tx
        self._opt_state = result.opt_state
        self._tx_settings = settings
        self._n_calls += 1
        before = self.n_iter_
        self.n_iter_ += result.epochs
        self.t_ += result.epochs * n_train  # rows the run's steps saw, as MLPClassifier counts
        self.loss_curve_ = [*self.loss_curve_, *result.history.train_loss]
        self.validation_loss_curve_ = [*self.validation_loss_curve_, *result.history.val_loss]
        self.stop_reason_ = str(result.stop_reason)
        self.stop_message_ = result.stop_message
        self.best_loss_ = result.best_loss
        # Counted across warm starts, as n_iter_ and the curves are (validation_loss_curve_
        # [best_epoch_ - 1] is the best); a fit with no best epoch of its own (0: none
        # finite) leaves the earlier one.
        if result.best_epoch or not before:
            self.best_epoch_ = before + result.best_epoch
        if result.autopilot is not None or not continuing:
            self.autopilot_ = result.autopilot
        self.optimizer_ = result.optimizer
        return self

    def _check_params(self) -> None:
        def bad(name: str, rule: str, fix: str) -> ValueError:
            got = describe(getattr(self, name))
            return ValueError(message(f"{type(self).__name__}: {name}", rule, got, fix))

        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if not is_int(self.max_epochs) or self.max_epochs < 1:
            raise bad("max_epochs", "must be an integer >= 1", "pass e.g. max_epochs=50")
        if self.batch_size is not None and (not is_int(self.batch_size) or self.batch_size < 1):
            raise bad(
                "batch_size",
                "must be an integer >= 1, or None to size it from the data",
                "pass e.g. batch_size=128",
            )
        lr = self.lr
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < float("inf")
        ):
            raise bad(
                "lr",
                "must be a finite number > 0, or None for the default policy's choice",
                "pass e.g. lr=1e-3, or leave it unset",
            )
        vf = self.validation_fraction
        if vf is not None and (
            isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 <= vf < 1
        ):
            raise bad(
                "validation_fraction",
                "must be in [0, 1), or None for no split",
                "pass e.g. validation_fraction=0.1",
            )
        if self.patience is not None and not (
            (is_int(self.patience) and self.patience >= 1) or self.patience == "auto"
        ):
            raise bad(
                "patience",
                'must be an integer >= 1, "auto", or None to never stop early',
                "pass e.g. patience=10",
            )
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            close = difflib.get_close_matches(str(self.activation), list(ACTIVATIONS), n=2)
            raise bad(
                "activation",
                f"must be one of {list(ACTIVATIONS)}",
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else "pass e.g. activation='relu'",
            )
        h = self.hidden_layer_sizes
        widths = [h] if isinstance(h, numbers.Number) else h  # one int: one layer, as in MLP
        if h is not None and (
            isinstance(h, str)
            or not np.iterable(widths)
            or not all(is_int(w) and w >= 1 for w in widths)
        ):
            raise bad(
                "hidden_layer_sizes",
                "must be layer widths (a sequence of integers >= 1, or one int), or None to "
                "size it from the data",
                "pass e.g. (64, 64)",
            )

    def _hidden_param(self) -> tuple[int, ...] | None:
        h = self.hidden_layer_sizes
        if h is None:
            return None
        if isinstance(h, numbers.Integral):  # one hidden layer, as in MLPClassifier
            return (int(h),)
        return tuple(int(w) for w in h)

    #: What a warm start cannot change (the model and the targets' scaling are built from it).
    _ARCH_NAMES: tuple[str, ...] = ("hidden_layer_sizes", "activation")

    def _arch_now(self) -> tuple[Any, ...]:
        return (self._hidden_param(), self.activation)

    def _check_same_architecture(self) -> None:
        """A warm start or a later partial_fit continues the model built first: refuse new
        ``hidden_layer_sizes`` or ``activation`` rather than silently keep the old ones."""
        built = getattr(self, "_architecture", None)
        now = self._arch_now()
        if built is None or built == now:
            return
        names = self._ARCH_NAMES
        changed = [f"{n}={b!r} then, {c!r} now" for n, b, c in zip(names, built, now) if b != c]
        raise ValueError(
            message(
                f"{type(self).__name__}: a warm start",
                "continues the model built by the first fit, so its architecture cannot change",
                ", ".join(changed),
                "set warm_start=False (or clone the estimator) to build the new architecture",
            )
        )

    def _seed(self) -> int:
        # A fresh generator from random_state each call: an int gives the same seed every fit
        # (deterministic refits); partial_fit calls get successive seeds (new batch orders); a
        # warm fit reuses its first fit's seed (see _fit: the same validation split).
        base = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        return (base + getattr(self, "_n_calls", 0)) % np.iinfo(np.int32).max

    def _patience(self, validation: float | None, incremental: bool) -> int | None:
        """The run's patience: ``"auto"`` is ``AUTO_PATIENCE`` epochs of the validation loss when
        there is a split, and no early stop on the training loss (see ``AUTO_PATIENCE``)."""
        if incremental:
            return None
        if self.patience == "auto":
            return AUTO_PATIENCE if validation is not None else None
        return self.patience

    def _validation(
        self, n: int, targets: np.ndarray, sample_weight: np.ndarray | None
    ) -> float | None:
        vf = self.validation_fraction
        if not vf:
            return None
        n_val = int(np.floor(vf * n + 0.5))
        if n_val < _MIN_VALIDATION or n - n_val < _MIN_VALIDATION:
            return None
        if self._is_classifier and not self._multilabel():  # multi-label: a random split
            labels = targets if sample_weight is None else targets[sample_weight > 0]
            counts = np.bincount(labels)
            present = int(np.count_nonzero(counts))
            # Stratification needs room for every class on both sides of the split.
            if n_val < int(np.count_nonzero(counts >= 2)) or n - n_val < present:
                return None
        return float(vf)

    # ---- prediction ----------------------------------------------------------------------

    def _forward(self, X: Any) -> tuple[np.ndarray, type]:
        """``(the model's outputs in float64, the dtype to return them in)``: float32 for
        float32 features, as scikit-learn's MLP returns them, else float64."""
        check_is_fitted(self)
        X = validate_data(
            self, X, reset=False, accept_sparse=_SPARSE, dtype=(np.float64, np.float32)
        )
        if sp.issparse(X):
            X = X.tocsr()  # row slices, densified one chunk at a time below

        def chunk(i: int) -> torch.Tensor:
            part = X[i : i + _PREDICT_CHUNK]
            part = part.toarray() if sp.issparse(part) else part
            return torch.from_numpy(
                ((np.asarray(part, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)
            )

        model = self.model_
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outs = []
        try:
            with torch.no_grad():
                for i in range(0, X.shape[0], _PREDICT_CHUNK):
                    xb = chunk(i).to(device)
                    outs.append(model(xb).double().cpu().numpy())
        finally:
            model.train(was_training)
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        if not outs:
            return np.zeros((0, self._n_outputs())), dtype
        return np.concatenate(outs, axis=0), dtype

    # ---- MLPClassifier/MLPRegressor's fitted attributes, read from model_ -------------------

    def _linears(self) -> list[torch.nn.Linear]:
        check_is_fitted(self)
        return [m for m in self.model_.modules() if isinstance(m, torch.nn.Linear)]

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Layer weights as ``MLPClassifier`` lays them out: ``coefs_[i]`` of shape ``(n_in,
        n_out)``, acting on the standardized features ((X - mean_) / scale_); a copy."""
        return [m.weight.detach().cpu().double().numpy().T.copy() for m in self._linears()]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Layer biases, ``intercepts_[i]`` of shape ``(n_out,)``; a copy."""
        return [m.bias.detach().cpu().double().numpy().copy() for m in self._linears()]

    @property
    def n_layers_(self) -> int:
        """Layers counting input and output, as ``MLPClassifier`` counts them."""
        return len(self._linears()) + 1

    @property
    def loss_(self) -> float:
        """The last epoch's training loss (the standardized targets' for the Regressor)."""
        check_is_fitted(self)
        return float(self.loss_curve_[-1]) if self.loss_curve_ else float("nan")

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __getstate__(self) -> dict[str, Any]:
        # The optimizer transform holds closures (not picklable); an unpickled estimator's warm
        # start continues the weights with a new optimizer. copy.deepcopy keeps it: a copy's
        # partial_fit or warm start continues the optimizer as the original's would.
        state = self.__dict__.copy()
        if not _copier_keeps_closures(("copy",)):
            state.pop("_tx", None)
            state.pop("_tx_settings", None)
        if not isinstance(self.optimizer, (str, type(None))) and not _copier_keeps_closures():
            _check_picklable_optimizer(type(self).__name__, self.optimizer)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = True
        return tags


#: Modules whose copiers save closures (copy.deepcopy keeps them; cloudpickle, which joblib's
#: n_jobs>1 uses, and dill pickle them by value): an optimizer transform passes through them.
_CLOSURE_COPIERS = ("copy", "cloudpickle", "dill")


def _copier_keeps_closures(copiers: tuple[str, ...] = _CLOSURE_COPIERS) -> bool:
    """Whether ``__getstate__`` was called by one of ``copiers`` (by default copy.deepcopy,
    cloudpickle or dill; found on the stack: the pickler is not passed to ``__getstate__``),
    not by pickle or joblib.dump."""
    import sys

    frame = sys._getframe(2)
    for _ in range(64):
        if frame is None:
            return False
        parts = str(frame.f_globals.get("__name__", "")).split(".")
        if parts[0] in copiers or ("cloudpickle" in copiers and "cloudpickle" in parts):
            return True
        frame = frame.f_back
    return False


def _check_picklable_optimizer(who: str, optimizer: Any) -> None:
    """A PicklingError naming the fix for an ``optimizer`` pickle cannot save: a
    ``descend.optim`` transform is made of local functions (Python's "Can't pickle local
    object" named neither the parameter nor the fix)."""
    import pickle

    try:
        pickle.dumps(optimizer)
    except Exception:
        import re

        text = repr(optimizer)
        name, lr = text.split("(", 1)[0], re.search(r"\blr=([^,)]+)", text)
        if not name.isidentifier():
            name = "adamw"
        example = f"optimizer={name!r}, lr={lr.group(1) if lr else '...'}"
        raise pickle.PicklingError(
            message(
                f"{who}: optimizer",
                "must be a registry name (or None) for the estimator to be pickled (pickle, "
                "joblib.dump)",
                f"{describe(optimizer)}, a descend.optim transform made of local functions that "
                "pickle cannot save",
                f"pass the optimizer by name with its rate, e.g. {who}({example}); "
                "cross_val_score(n_jobs=...) and copy.deepcopy take the transform as it is",
            )
        ) from None


def _same_settings(before: Any, now: tuple[Any, Any]) -> bool:
    """Whether ``(optimizer, lr)`` are still the values the kept optimizer was made from: equal
    names and rates, the same transform object."""
    if before is None:
        return False

    def same(a: Any, b: Any) -> bool:
        if a is b:
            return True
        plain = (str, numbers.Number)
        return isinstance(a, plain) and isinstance(b, plain) and bool(a == b)

    return same(before[0], now[0]) and same(before[1], now[1])


def _weighted_moments(
    X: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (weighted); a constant column gets scale 1."""
    mean = np.average(X, axis=0, weights=sample_weight)
    var = np.average((X - mean) ** 2, axis=0, weights=sample_weight)
    scale = np.sqrt(var)
    scale[~(scale > 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean)))] = 1.0
    return mean, scale


class Classifier(ClassifierMixin, _Estimator):
    """A multi-layer perceptron classifier trained by :func:`descend.fit` (cross-entropy).

    A drop-in for ``sklearn.neural_network.MLPClassifier`` that needs no tuning: the
    architecture comes from :func:`descend.models.default_hidden`, the optimizer, learning rate
    and schedule from the library's default policy. Like ``MLPClassifier`` it trains on every
    row; it runs the whole ``max_epochs`` budget that its schedule is shaped over (it does not stop
    on a stalled training loss; pass ``patience=10`` for that). ``validation_fraction=0.1``
    holds out a stratified split instead: 9 epochs without a better validation loss (its
    running mean over 3 epochs) start the rate's decay over the rest of the budget, 10 more
    without a better epoch stop the run, and the weights with the best validation loss are
    restored.

    Args:
        hidden_layer_sizes: widths of the hidden layers (one int: one layer, as in
            ``MLPClassifier``); None = sized from the data
            (:func:`descend.models.default_hidden`).
        activation: ``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"``, ``"leaky_relu"``, or
            scikit-learn's ``"logistic"`` (sigmoid) and ``"identity"`` (no activation).
        max_epochs: the epoch budget; the default policy's schedule decays over it.
        batch_size: rows per step; None = all rows up to 512, else ``min(256, ceil(n / 4))``.
        validation_fraction: share of the rows held out (stratified) for early stopping and
            best-weight restore; None (the classifier's default) or 0 trains on every row and
            watches the training loss. Splits under 10 rows are not made.
        patience: epochs without improvement of the watched loss before stopping; None never
            stops early; ``"auto"`` (default) is 10 with a validation split and None without
            (the training loss is not a stop signal under the default schedule).
        tol: the relative improvement that counts.
        random_state: int for reproducible fits (initialization, split, batch order).
        warm_start: continue from the previous fit: its weights AND its optimizer state (the
            architecture stays the first fit's: a new ``hidden_layer_sizes`` or ``activation``
            is refused; a new ``optimizer`` or ``lr`` trains the kept weights with that
            optimizer, its state started afresh).
        verbose: 0 silent, 1 progress, 2 one line per epoch.
        optimizer: None (the library's choice), a registry name or a ``descend.optim``
            transform (made of local functions: pickle and ``joblib.dump`` refuse such an
            estimator, naming the fix — a name with ``lr=``; ``copy.deepcopy`` and
            ``n_jobs > 1``, which uses cloudpickle, take it).
        lr: a learning rate (AdamW at exactly this rate with ``optimizer=None``).
        device: ``"cpu"``, ``"cuda"``, ...; None picks the accelerator if there is one and
            a step is big enough to gain from it (batch rows x weights of at least
            ``descend.data.GPU_MIN_STEP_WORK``, 8 million), else the CPU: the bundled
            datasets' networks fit 1-5x faster on the CPU of an H200 machine than on its GPU.

    Attributes:
        classes_, n_features_in_, feature_names_in_ (DataFrames with string column names),
        model_ (the trained ``torch.nn.Module``), mean_, scale_ (feature standardization),
        loss_curve_ (training loss per epoch, across warm starts), validation_loss_curve_,
        best_loss_, best_epoch_ (counted across warm starts, as n_iter_), stop_reason_
        (``"patience_exhausted"``, ``"max_epochs"``, ...),
        stop_message_ (the sentence), n_iter_ (epochs run, across warm starts), t_ (training
        rows seen by those epochs' steps), n_outputs_ (output units), optimizer_,
        autopilot_ (what the default policy chose and why); and, read from ``model_`` as
        ``MLPClassifier`` names them, coefs_ and intercepts_ (copies; on the standardized
        features), n_layers_, out_activation_ (``"softmax"``, binary too) and loss_;
        multilabel_ (True when y was a 0/1 indicator matrix: then classes_ are the column
        indices, one logistic output per label, as in ``MLPClassifier``).

    Example:
        >>> from sklearn.datasets import load_wine
        >>> from descend.sklearn import Classifier
        >>> X, y = load_wine(return_X_y=True)
        >>> clf = Classifier(random_state=0).fit(X, y)
        >>> clf.predict_proba(X[:2]).sum(axis=1).round(6).tolist()
        [1.0, 1.0]
    """

    _is_classifier = True

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] | None = None,
        activation: str = "relu",
        max_epochs: int = 50,
        batch_size: int | None = None,
        validation_fraction: float | None = None,
        patience: int | str | None = "auto",
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        optimizer: Any = None,
        lr: float | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            max_epochs=max_epochs,
            batch_size=batch_size,
            validation_fraction=validation_fraction,
            patience=patience,
            tol=tol,
            random_state=random_state,
            warm_start=warm_start,
            verbose=verbose,
            optimizer=optimizer,
            lr=lr,
            device=device,
        )

    @property
    def out_activation_(self) -> str:
        """``"softmax"``: the output layer gives one score per class, binary tasks too (where
        ``MLPClassifier`` has one logistic unit); ``"logistic"`` for multi-label targets."""
        check_is_fitted(self)
        return "logistic" if self._multilabel() else "softmax"

    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> Classifier:
        """One epoch over ``(X, y)``, continuing the weights and the optimizer state.

        Args:
            X, y, sample_weight: as in :meth:`fit`.
            classes: every class label; required on the first call (later calls may hold a
                subset of them).

        Returns:
            self
        """
        first = not hasattr(self, "model_")
        # A multi-label indicator matrix names its classes itself: its column indices.
        multilabel = len(getattr(y, "shape", np.shape(y))) == 2 and np.shape(y)[1] > 1
        if first and classes is None and not multilabel:
            raise ValueError(
                "Classifier.partial_fit: classes must be passed on the first call to "
                "partial_fit; got classes=None — pass classes=numpy.unique(y_all)"
            )
        if first and classes is not None and not multilabel and len(unique_labels(classes)) < 2:
            raise ValueError(
                message(
                    "Classifier.partial_fit: classes",
                    "must name at least 2 labels (a one-class problem has nothing to learn)",
                    f"{unique_labels(classes).tolist()}",
                    "pass every label of the task, e.g. classes=numpy.unique(y_all)",
                )
            )
        return self._fit(X, y, sample_weight, incremental=True, warm=not first, classes=classes)

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if y.ndim == 2 and kind != "multilabel-indicator":
            raise ValueError(
                message(
                    "Classifier: y",
                    "must be labels of shape (n_samples,) or a multi-label indicator matrix of "
                    "0/1 of shape (n_samples, n_labels)",
                    f"{kind} targets of shape {y.shape}",
                    "fit one Classifier per output column (sklearn.multioutput."
                    "MultiOutputClassifier(Classifier()))",
                )
            )
        if first:
            self.multilabel_ = kind == "multilabel-indicator"
        elif (kind == "multilabel-indicator") != self.multilabel_:
            raise ValueError(
                message(
                    "Classifier: y",
                    "must keep the first fit's form on a warm start or a later partial_fit",
                    f"{'a multi-label indicator matrix' if y.ndim == 2 else 'labels'} after "
                    f"{'a multi-label matrix' if self.multilabel_ else 'labels'}",
                    "fit afresh (warm_start=False)",
                )
            )
        if self.multilabel_:
            # MLPClassifier's convention: classes_ are the column indices; one logit and a
            # binary cross-entropy per label.
            values = np.unique(y)
            if not np.isin(values, (0, 1)).all():
                raise ValueError(
                    message(
                        "Classifier: y",
                        "as a multi-label indicator matrix must hold 0 and 1 only",
                        f"values {values.tolist()[:5]}",
                        "pass (y > 0).astype(int), or one label per row for a multi-class task",
                    )
                )
            labels = np.arange(y.shape[1])
            if first:
                self.classes_ = labels
            if (classes is not None and not np.array_equal(unique_labels(classes), labels)) or (
                y.shape[1] != len(self.classes_)
            ):
                raise ValueError(
                    message(
                        "Classifier: y",
                        "must have one 0/1 column per label of classes_",
                        f"{y.shape[1]} columns for classes_ {self.classes_.tolist()}",
                        "pass the same label columns on every call",
                    )
                )
            return np.asarray(y, dtype=np.float32)
        if first:
            self.classes_ = unique_labels(y) if classes is None else unique_labels(classes)
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(
                f"Classifier.partial_fit: classes must stay the same across calls; got "
                f"{unique_labels(classes).tolist()} after {self.classes_.tolist()}"
            )
        unseen = np.setdiff1d(unique_labels(y), self.classes_)
        if unseen.size:
            raise ValueError(
                f"Classifier: y holds labels not in classes_ {self.classes_.tolist()}: "
                f"{unseen.tolist()[:5]} (a warm start or a later partial_fit call keeps the "
                "first fit's classes) — pass every label in classes= on the first partial_fit "
                "call, or fit afresh (warm_start=False)"
            )
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _check_two_classes(self, targets: np.ndarray, sample_weight: np.ndarray | None) -> None:
        present = targets if sample_weight is None else targets[sample_weight > 0]
        if np.unique(present).size < 2:
            only = self.classes_[present[0]].item() if present.size else None
            where = " among the samples of weight > 0" if sample_weight is not None else ""
            raise ValueError(
                "Classifier needs samples of at least 2 classes to train; got one class "
                f"({only!r}){where} — a one-class problem has nothing to learn"
            )

    def _multilabel(self) -> bool:
        return bool(getattr(self, "multilabel_", False))

    def _loss(self, targets: np.ndarray) -> Any:
        if self._multilabel():
            return L.get("binary_cross_entropy")
        loss = L.get("cross_entropy")
        if np.unique(targets).size != len(self.classes_):
            # Some classes are absent from this call's rows (partial_fit): keep the indices as
            # they are instead of letting the data layer re-encode the labels it sees.
            loss = dataclasses.replace(loss, target_kind="any")
        return loss

    def _n_outputs(self) -> int:
        return len(self.classes_)

    @property
    def n_outputs_(self) -> int:
        """Output units, as ``coefs_[-1]`` has them: one per class (two for a binary task, a
        softmax over two scores, where ``MLPClassifier`` has one logistic unit), one per
        label for multi-label targets."""
        check_is_fitted(self)
        return self._n_outputs()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), each row summing to 1 (multi-label:
        each label's own probability, shape (n_samples, n_labels))."""
        logits, dtype = self._forward(X)
        if self._multilabel():
            return _sigmoid(logits).astype(dtype, copy=False)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype, copy=False)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        logits, dtype = self._forward(X)
        if self._multilabel():
            out = -np.logaddexp(0.0, -logits)  # log sigmoid, stable for large |logit|
            p = _sigmoid(logits)
        else:
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            out = logits - np.log(e.sum(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        if dtype == np.float32:
            # predict_proba rounds to float32 (a probability within 3e-8 of 1 becomes 1.0):
            # the log of what it returns wherever that is > 0, as scikit-learn's MLP gives, so
            # that predict_log_proba == log(predict_proba); the exact log where it underflows.
            p = p.astype(np.float32)
            out = np.where(p > 0, np.log(np.where(p > 0, p, 1)), out)
        return out.astype(dtype, copy=False)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label of each row (multi-label: the 0/1 indicator matrix,
        1 where a label's probability is above 0.5)."""
        if self._multilabel():
            return (self._forward(X)[0] > 0).astype(np.int64)
        index = self._forward(X)[0].argmax(axis=1)
        return self.classes_[index]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = True
        return tags


class Regressor(RegressorMixin, _Estimator):
    """A multi-layer perceptron regressor trained by :func:`descend.fit`.

    A drop-in for ``sklearn.neural_network.MLPRegressor`` that needs no tuning; features and
    targets are standardized inside (``y_mean_``, ``y_scale_``) and predictions are returned
    in the targets' units. Multi-output targets of shape (n_samples, n_outputs) are supported.
    The parameters are those of :class:`Classifier`, plus ``loss``, and ``validation_fraction``
    defaults to 0.1 (a random split): the validation loss is the score here, so early stopping
    with best-weight restore pays off.

    Args:
        loss: what is minimized, as ``MLPRegressor``'s ``loss``: ``"squared_error"`` (default,
            the mean), ``"absolute_error"`` (the median: robust to outliers), ``"huber"``
            (squared near the fit, absolute beyond one standard deviation of the targets), or
            ``"poisson"`` (counts and rates >= 0: the network predicts the log of the expected
            value, ``out_activation_ == "exp"``, and the targets are divided by their mean, not
            standardized); any descend name or alias of these (``"mse"``, ``"mae"``...) or a
            :func:`descend.losses.get` of one with options (``get("huber", delta=0.5)``, in
            standardized units). A loss function of your own: train with :func:`descend.fit`.
        (the others): see :class:`Classifier`.

    Attributes:
        n_outputs_, y_mean_, y_scale_, and those of :class:`Classifier` but ``classes_``.

    Example:
        >>> from sklearn.datasets import load_diabetes
        >>> from descend.sklearn import Regressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> reg = Regressor(random_state=0).fit(X, y)
        >>> reg.predict(X[:3]).shape
        (3,)
    """

    _ARCH_NAMES = ("hidden_layer_sizes", "activation", "loss")

    def __init__(
        self,
        loss: str | Any = "squared_error",
        hidden_layer_sizes: tuple[int, ...] | None = None,
        activation: str = "relu",
        max_epochs: int = 50,
        batch_size: int | None = None,
        validation_fraction: float | None = 0.1,
        patience: int | str | None = "auto",
        tol: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        optimizer: Any = None,
        lr: float | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            max_epochs=max_epochs,
            batch_size=batch_size,
            validation_fraction=validation_fraction,
            patience=patience,
            tol=tol,
            random_state=random_state,
            warm_start=warm_start,
            verbose=verbose,
            optimizer=optimizer,
            lr=lr,
            device=device,
        )
        self.loss = loss

    @property
    def out_activation_(self) -> str:
        """``"identity"``: the output is the standardized targets (times y_scale_, plus
        y_mean_, in predict); ``"exp"`` for ``loss="poisson"`` (the log of the expected value
        over y_scale_, the targets' mean)."""
        check_is_fitted(self)
        return "exp" if self._poisson() else "identity"

    def _resolved_loss(self) -> L.Loss:
        """``self.loss`` as a descend regression loss, or a ValueError naming the choices."""
        spec = self.loss
        choices = "'squared_error', 'absolute_error', 'huber' or 'poisson'"
        resolved = None
        if isinstance(spec, (str, L.Loss)):
            try:
                resolved = L.get(spec)
            except ConfigError:
                resolved = None
        if resolved is None or L._BUILTIN_NAMES.get(resolved.fn) not in _REGRESSION_LOSSES:
            names = [*_LOSS_NAMES, *_REGRESSION_LOSSES]
            names += [a for a, c in L.ALIASES.items() if c in _REGRESSION_LOSSES]
            close = (
                difflib.get_close_matches(spec.lower(), list(dict.fromkeys(names)), n=2)
                if isinstance(spec, str)
                else []
            )
            if resolved is not None and resolved.task == "classification":
                fix = f"{resolved.name} is a classification loss: use descend.sklearn.Classifier"
            elif close:
                fix = f"did you mean {' or '.join(repr(c) for c in close)}?"
            else:
                fix = "for a loss function of your own, train a model with descend.fit"
            raise ValueError(
                message(
                    "Regressor: loss",
                    f"must be {choices} (or a descend.losses regression loss)",
                    describe(spec),
                    fix,
                )
            )
        return resolved

    def _poisson(self) -> bool:
        return L._BUILTIN_NAMES.get(self._resolved_loss().fn) == "poisson"

    def _arch_now(self) -> tuple[Any, ...]:
        loss = self._resolved_loss()  # by what it computes: "mse" and "squared_error" agree
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(loss.kwargs.items()))
        return (*super()._arch_now(), f"{loss.name}({options})" if options else loss.name)

    def _check_params(self) -> None:
        super()._check_params()
        self._resolved_loss()

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> Regressor:
        """One epoch over ``(X, y)``, continuing the weights and the optimizer state."""
        first = not hasattr(self, "model_")
        return self._fit(X, y, sample_weight, incremental=True, warm=not first)

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if first:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        n_out = 1 if y.ndim == 1 else y.shape[1]
        if n_out != self.n_outputs_:
            raise ValueError(
                f"Regressor: y must keep its {self.n_outputs_} output(s) across warm starts; "
                f"got {n_out} — fit afresh (warm_start=False) for a new target"
            )
        if self._poisson() and (y < 0).any():
            raise ValueError(
                message(
                    "Regressor: y",
                    "must be counts or rates >= 0 for loss='poisson'",
                    f"{int((y < 0).sum())} negative value(s), the smallest {y.min():.4g}",
                    "use loss='squared_error' or 'huber' for targets that can be negative",
                )
            )
        return y.reshape(y.shape[0], -1)

    def _scale_targets(
        self, targets: np.ndarray, sample_weight: np.ndarray | None, first: bool
    ) -> np.ndarray:
        if first and self._poisson():
            # A log link: divide by the mean (the expected value the zero output starts at)
            # and keep zero at zero; a shift would turn counts into negative values.
            mean = np.average(targets, axis=0, weights=sample_weight)
            if not (mean > 0).all():
                raise ValueError(
                    message(
                        "Regressor: y",
                        "must have a positive mean in every output for loss='poisson' (the "
                        "log of a mean of 0 is -inf)",
                        f"means {np.round(mean, 6).tolist()}",
                        "drop the all-zero output, or use loss='squared_error'",
                    )
                )
            self.y_mean_, self.y_scale_ = np.zeros_like(mean), mean
        elif first:
            self.y_mean_, self.y_scale_ = _weighted_moments(targets, sample_weight)
        return ((targets - self.y_mean_) / self.y_scale_).astype(np.float32)

    def _loss(self, targets: np.ndarray) -> Any:
        return self._resolved_loss()

    def _n_outputs(self) -> int:
        return int(self.n_outputs_)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the targets' units: (n_samples,) for 1-D y, else (n_samples, k)."""
        out, dtype = self._forward(X)
        if self._poisson():
            out = np.exp(out)
        out = (out * self.y_scale_ + self.y_mean_).astype(dtype, copy=False)
        return out.ravel() if self._y_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
