"""Tests of descend.sklearn: the scikit-learn estimator contract, and what issue #7 asks of it."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from descend import optim, schedules
from descend.sklearn import Classifier, Regressor
from descend.transforms import find_lr_state

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# scikit-learn's own estimator checks
# ----------------------------------------------------------------------------------------------

SAMPLE_WEIGHT_EQUIVALENCE = (
    "training runs in float32: a weighted loss and repeated rows agree only up to float32 "
    "rounding (summation order), about 1e-6 relative after training, and the check asks for "
    "rtol=1e-7 on predict_proba (scikit-learn's own MLPs pass it only with the float64 "
    "full-batch lbfgs solver). Zero weight == dropping the row holds exactly: see "
    "test_zero_weight_is_the_same_as_dropping_the_row"
)


def expected_failed_checks(estimator) -> dict[str, str]:
    # The Regressor passes both (its check compares predictions at a tolerance float32 meets).
    if not isinstance(estimator, Classifier):
        return {}
    return {
        "check_sample_weight_equivalence_on_dense_data": SAMPLE_WEIGHT_EQUIVALENCE,
        # sparse X is trained on its dense copy: the same check, the same float32 rounding
        "check_sample_weight_equivalence_on_sparse_data": SAMPLE_WEIGHT_EQUIVALENCE,
    }


# The default estimators, as users get them.
@parametrize_with_checks(
    [Classifier(), Regressor()],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------------------
# Data forms: DataFrames, string labels, multi-output
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X, y


def test_classifier_takes_dataframes_and_string_labels(iris):
    X, y = iris
    frame = pd.DataFrame(X, columns=["sepal_l", "sepal_w", "petal_l", "petal_w"])
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = Classifier(max_epochs=40, random_state=0).fit(frame, labels)
    assert clf.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert clf.feature_names_in_.tolist() == list(frame.columns)
    assert clf.n_features_in_ == 4
    pred = clf.predict(frame)
    assert pred.dtype == labels.dtype and set(pred) <= set(labels)
    proba = clf.predict_proba(frame)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(frame)), proba, rtol=1e-10)
    assert clf.score(frame, labels) > 0.9
    # The learned attributes the issue names.
    assert len(clf.loss_curve_) == clf.n_iter_ >= 1
    assert clf.validation_loss_curve_ == []  # the classifier holds out nothing by default
    assert clf.stop_reason_ in {"max_epochs", "converged"}
    assert isinstance(clf.model_, torch.nn.Module)
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)  # fitted with names, given none: scikit-learn's warning


def test_regressor_multi_output_in_the_targets_units():
    X, Y = make_regression(n_samples=300, n_features=6, n_targets=3, noise=1.0, random_state=0)
    Y = Y * 1000.0 + 5000.0  # far from unit scale: the estimator standardizes and undoes it
    reg = Regressor(max_epochs=60, random_state=0).fit(X, Y)
    assert reg.n_outputs_ == 3 and reg.predict(X).shape == (300, 3)
    assert reg.score(X, Y) > 0.95
    assert abs(reg.predict(X).mean() - Y.mean()) < 0.05 * Y.std()
    one = Regressor(max_epochs=5, random_state=0).fit(X, Y[:, 0])
    assert one.predict(X).shape == (300,)
    column = Regressor(max_epochs=5, random_state=0).fit(X, Y[:, :1])
    assert column.predict(X).shape == (300, 1)


# ----------------------------------------------------------------------------------------------
# Composition: params, clone, Pipeline, GridSearchCV, cross_val_score, pickle
# ----------------------------------------------------------------------------------------------


def test_params_clone_and_search(iris):
    X, y = iris
    clf = Classifier(hidden_layer_sizes=(16,), max_epochs=5, lr=0.01, random_state=0)
    assert clf.get_params()["lr"] == 0.01
    assert clf.set_params(lr=0.02) is clf and clf.lr == 0.02
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")

    search = GridSearchCV(
        make_pipeline(Classifier(max_epochs=5, random_state=0)),
        {"classifier__hidden_layer_sizes": [(8,), (16,)]},
        cv=2,
    ).fit(X, y)
    assert search.best_params_["classifier__hidden_layer_sizes"] in [(8,), (16,)]
    scores = cross_val_score(Regressor(max_epochs=5, random_state=0), X[:, :3], X[:, 3], cv=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))


def test_validation_split_early_stopping_and_small_data_fallback(iris):
    X, y = iris
    clf = Classifier(validation_fraction=0.2, patience=3, random_state=0).fit(X, y)
    assert len(clf.validation_loss_curve_) == clf.n_iter_
    assert clf.best_epoch_ <= clf.n_iter_
    # 20 rows: a 10% split would hold 2 rows, too few to stop on: no split is made.
    reg = Regressor(max_epochs=3, random_state=0).fit(X[:20, :3], X[:20, 3])
    assert reg.validation_loss_curve_ == [] and len(reg.loss_curve_) == 3


def test_auto_patience_runs_the_budget_on_the_training_loss_and_stops_on_validation(iris):
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    # Without a split the training loss is watched; under the default schedule it stalls and
    # rises mid-run (the weight decay at work), which stopped wine at epoch 31 with patience=10.
    full = Classifier(random_state=0).fit(X, y)
    assert full.patience == "auto"
    assert full.n_iter_ == 50 and full.stop_reason_ == "max_epochs"
    stopped = Classifier(random_state=0, patience=10).fit(X, y)
    assert stopped.n_iter_ < 50 and stopped.stop_reason_ == "converged"
    # With a split, "auto" is 10 epochs of validation loss (a fixed rate: nothing else stops it).
    Xi, yi = iris
    kw = {"random_state": 0, "validation_fraction": 0.2, "max_epochs": 300}
    clf = Classifier(lr=3e-3, **kw).fit(Xi, yi)
    assert clf.stop_reason_ == "patience_exhausted" and "for 10 epochs" in clf.stop_message_
    assert clf.n_iter_ == clf.best_epoch_ + 10
    # Under the default policy 9 of those epochs (of the running mean) start the decay over
    # the rest of the budget, with 10 epochs of patience of its own.
    auto = Classifier(**kw).fit(Xi, yi)
    decay = auto.autopilot_["decay"]
    assert auto.autopilot_["decay_stall_epochs"] == 9 and "for 9 epochs" in decay["why"]
    assert decay["start_step"] + decay["steps"] == 300  # full batch: a step an epoch
    assert auto.stop_reason_ == "patience_exhausted" and auto.n_iter_ < 300
    assert auto.n_iter_ == auto.best_epoch_ + 10
    assert f"started after epoch {decay['epoch']}" in auto.stop_message_
    # what the decay is for: the anneal found a better validation loss than the held rate
    assert auto.best_epoch_ > decay["epoch"]
    with pytest.raises(ValueError) as bad:
        Classifier(patience="sometimes").fit(Xi, yi)
    text = str(bad.value)
    assert text.startswith('Classifier: patience must be an integer >= 1, "auto", or None')
    assert "got 'sometimes'" in text and "pass e.g. patience=10" in text


def test_fixed_random_state_refits_identically(iris):
    X, y = iris
    a = Classifier(max_epochs=10, random_state=3).fit(X, y).predict_proba(X)
    b = Classifier(max_epochs=10, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_pickle_round_trip_and_warm_start_after_it(iris):
    X, y = iris
    clf = Classifier(max_epochs=5, random_state=0, warm_start=True).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    back.fit(X, y)  # the optimizer transform is not pickled: continues with a fresh one
    assert back.n_iter_ > clf.n_iter_


def test_a_deep_copy_keeps_the_optimizer_state(iris):
    # copy.deepcopy dropped the optimizer transform (as pickle must): the copy's partial_fit or
    # warm start silently restarted the optimizer, so it trained unlike the original.
    import copy

    X, y = iris
    clf = Classifier(random_state=0)
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    twin = copy.deepcopy(clf)
    clf.partial_fit(X, y)
    twin.partial_fit(X, y)
    for a, b in zip(clf.coefs_, twin.coefs_):
        np.testing.assert_array_equal(a, b)

    clf = Classifier(max_epochs=5, lr=1e-2, random_state=0, warm_start=True).fit(X, y)
    twin = copy.deepcopy(clf)
    np.testing.assert_array_equal(clf.fit(X, y).predict_proba(X), twin.fit(X, y).predict_proba(X))


def test_pickling_an_estimator_with_a_transform_optimizer_names_the_fix(iris):
    # It failed with Python's "Can't pickle local object 'fused_adam_chain.<locals>.init'".
    import copy

    import joblib

    cloudpickle = pytest.importorskip("cloudpickle")  # joblib's n_jobs > 1 uses it

    X, y = iris
    clf = Classifier(max_epochs=2, random_state=0, optimizer=optim.adamw(1e-2))
    expected = (
        r"Classifier: optimizer must be a registry name \(or None\) for the estimator to be "
        r"pickled .*got adamw\(lr=0.01.* — pass the optimizer by name with its rate, e\.g\. "
        r"Classifier\(optimizer='adamw', lr=0\.01\)"
    )
    for est in (clf, clf.fit(X, y)):
        with pytest.raises(pickle.PicklingError, match=expected):
            pickle.dumps(est)
        with pytest.raises(pickle.PicklingError, match=expected):
            joblib.dump(est, __import__("io").BytesIO())
    # what copies closures still takes it: copy.deepcopy, and cloudpickle (n_jobs > 1)
    for back in (copy.deepcopy(clf), cloudpickle.loads(cloudpickle.dumps(clf))):
        np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), rtol=1e-6)
    named = Classifier(max_epochs=2, random_state=0, optimizer="adamw", lr=1e-2).fit(X, y)
    pickle.loads(pickle.dumps(named))


# ----------------------------------------------------------------------------------------------
# Warm starts and partial_fit keep the optimizer state
# ----------------------------------------------------------------------------------------------


def _steps(est) -> int:
    return int(find_lr_state(est._opt_state)["count"])


def test_warm_start_continues_weights_and_optimizer_state(iris):
    X, y = iris
    clf = Classifier(max_epochs=8, patience=None, random_state=0, warm_start=True)
    clf.fit(X, y)
    model, steps, epochs = clf.model_, _steps(clf), clf.n_iter_
    first_curve = list(clf.loss_curve_)
    clf.fit(X, y)
    assert clf.model_ is model  # the same network, trained further
    assert _steps(clf) == 2 * steps  # Adam's step count (and moments) went on, not reset
    assert clf.n_iter_ == 2 * epochs and clf.loss_curve_[: len(first_curve)] == first_curve
    # Starting from the trained weights: the second run's first epoch is already low.
    assert clf.loss_curve_[epochs] < first_curve[0]

    cold = clone(clf).set_params(warm_start=False).fit(X, y)
    cold.fit(X, y)
    assert _steps(cold) == steps and cold.n_iter_ == epochs


def test_a_warm_start_with_a_new_lr_or_optimizer_uses_it_on_the_kept_weights(iris):
    # set_params(lr=0.05) after a default fit (whose rate had decayed to zero) was ignored:
    # the old optimizer went on, at rate 0.
    X, y = iris
    clf = Classifier(max_epochs=4, patience=None, random_state=0, warm_start=True).fit(X, y)
    model, steps = clf.model_, _steps(clf)
    weights = [p.detach().clone() for p in model.parameters()]
    clf.set_params(lr=0.05).fit(X, y)
    assert clf.model_ is model  # the weights are kept and trained further...
    assert str(clf.optimizer_).startswith("adamw(lr=0.05")  # ...by the new optimizer,
    assert _steps(clf) == steps  # started afresh (its own step count, moments, schedule)
    assert find_lr_state(clf._opt_state)["lr"] == pytest.approx(0.05)
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    clf.fit(X, y)  # unchanged settings: that optimizer goes on
    assert _steps(clf) == 2 * steps
    clf.set_params(optimizer="sgd", lr=0.1).fit(X, y)
    assert str(clf.optimizer_).startswith("sgd(lr=0.1") and _steps(clf) == steps
    # partial_fit too
    inc = Classifier(random_state=0, batch_size=150)
    inc.partial_fit(X, y, classes=[0, 1, 2])
    inc.set_params(lr=0.2).partial_fit(X, y)
    assert find_lr_state(inc._opt_state)["lr"] == pytest.approx(0.2) and _steps(inc) == 1


def test_a_warm_start_holds_out_the_same_validation_rows(monkeypatch, iris):
    # A warm fit drew a new seed, so a new split: most of its validation rows had been trained
    # on by the fit before, and early stopping and best-weight restore watched rows the model
    # had learned (MLPRegressor with an int random_state keeps its split on a warm start).
    import descend.data

    held_out = []
    real_split = descend.data._split_indices

    def spy(*args):
        train, val = real_split(*args)
        held_out.append(val.tolist())
        return train, val

    monkeypatch.setattr(descend.data, "_split_indices", spy)
    X, _ = iris
    for random_state in (0, None):
        held_out.clear()
        reg = Regressor(max_epochs=2, lr=1e-2, warm_start=True, random_state=random_state)
        reg.fit(X[:, :3], X[:, 3]).fit(X[:, :3], X[:, 3]).fit(X[:, :3], X[:, 3])
        assert len(held_out) == 3 and len(held_out[0]) == 15
        assert held_out[1] == held_out[0] and held_out[2] == held_out[0], random_state


def test_default_batches_are_full_up_to_512_rows_then_a_quarter_capped_at_256():
    rng = np.random.default_rng(0)
    for n, per_epoch in ((150, 1), (512, 1), (600, 4), (2000, 8)):
        X = rng.normal(size=(n, 3))
        y = (X[:, 0] > 0).astype(int)
        clf = Classifier(max_epochs=2, patience=None, random_state=0).fit(X, y)
        assert clf.autopilot_["total_steps"] == 2 * per_epoch, n
        assert _steps(clf) == 2 * per_epoch, n


def test_partial_fit_runs_one_epoch_per_call_and_keeps_the_state(iris):
    X, y = iris
    clf = Classifier(random_state=0, batch_size=50)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    losses = []
    for _ in range(30):
        clf.partial_fit(X, y, classes=[0, 1, 2])
        losses.append(clf.loss_curve_[-1])
    assert clf.n_iter_ == 30 and len(clf.loss_curve_) == 30
    assert _steps(clf) == 30 * 3
    assert losses[-1] < 0.5 * losses[0]
    assert clf.score(X, y) > 0.8
    with pytest.raises(ValueError, match="X has 3 features, but Classifier is expecting 4"):
        clf.partial_fit(X[:, :3], y)
    with pytest.raises(ValueError, match=r"labels not in classes_ \[0, 1, 2\]: \[7\]"):
        clf.partial_fit(X[:2], [0, 7])


def test_partial_fit_chunk_without_some_classes_keeps_the_label_codes(iris):
    X, y = iris
    clf = Classifier(random_state=0, batch_size=32)
    two = y != 1  # classes 0 and 2 only: the data layer must not re-code 2 as 1
    for _ in range(25):
        clf.partial_fit(X[two], y[two], classes=[0, 1, 2])
    pred = clf.predict(X[y == 2])
    assert np.mean(pred == 2) > 0.9


def test_partial_fit_refuses_classes_of_one_label(iris):
    # The loss refused it, telling an estimator user to "give the model's last layer one
    # output per class" (SGDClassifier.partial_fit refuses one class too).
    X, y = iris
    with pytest.raises(
        ValueError,
        match=r"Classifier.partial_fit: classes must name at least 2 labels.*; got \[0\] — ",
    ):
        Classifier().partial_fit(X[:50], y[:50], classes=[0])


def test_regressor_partial_fit(iris):
    X, _ = iris
    reg = Regressor(random_state=0, batch_size=16)
    for _ in range(20):
        reg.partial_fit(X[:, :3], X[:, 3])
    assert reg.n_iter_ == 20 and reg.score(X[:, :3], X[:, 3]) > 0.8


# ----------------------------------------------------------------------------------------------
# Sample weights
# ----------------------------------------------------------------------------------------------


def test_zero_weight_is_the_same_as_dropping_the_row(iris):
    X, y = iris
    w = np.ones(len(y))
    w[::4] = 0
    weighted = Classifier(max_epochs=10, random_state=0).fit(X, y, sample_weight=w)
    dropped = Classifier(max_epochs=10, random_state=0).fit(X[w > 0], y[w > 0])
    np.testing.assert_allclose(weighted.predict_proba(X), dropped.predict_proba(X), atol=1e-6)


def test_sample_weights_move_the_fit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 1))
    y = np.where(np.arange(200) < 100, 0.0, 10.0)  # two groups with the same X distribution
    w = np.where(y == 0, 1.0, 1e-3)
    reg = Regressor(max_epochs=30, random_state=0).fit(X, y, sample_weight=w)
    assert abs(reg.predict(X).mean()) < 1.0  # pulled to the heavy group's 0, not the mean 5


def test_read_only_weights_and_targets_train_without_a_torch_warning(iris):
    # pandas' copy-on-write hands out read-only arrays (as joblib's memmaps are): the weights
    # went to torch.from_numpy as they were, and torch warned that writing to them is
    # undefined behaviour (it warns once per process: set_warn_always shows every one).
    X, y = iris
    w = pd.Series(np.linspace(0.5, 2.0, len(y)), index=np.arange(len(y)) + 100)
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*not writable")
            Classifier(max_epochs=2, random_state=0).fit(X, y, sample_weight=w)
            Regressor(max_epochs=2, random_state=0).fit(X[:, :3], X[:, 3], sample_weight=w)
            labels = pd.DataFrame(np.eye(3, dtype=np.float32)[y])  # multi-label, float32
            Classifier(max_epochs=2, random_state=0).fit(X, labels)
    finally:
        torch.set_warn_always(before)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_errors_name_the_problem(iris):
    X, y = iris
    with pytest.raises(ValueError, match="at least 2 classes to train; got one class"):
        Classifier().fit(X, np.zeros(len(y)))
    with pytest.raises(
        ValueError,
        match=r"Classifier: max_epochs must be an integer >= 1; got 0 — pass e\.g\. max_epochs=50",
    ):
        Classifier(max_epochs=0).fit(X, y)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        Regressor(validation_fraction=1.5).fit(X, y)
    with pytest.raises(ValueError, match=r"Regressor: lr must be a finite number > 0.*got -1"):
        Regressor(lr=-1).fit(X, y)
    # an int is one hidden layer, as MLPClassifier takes it; a string is refused
    one = Classifier(hidden_layer_sizes=32, max_epochs=1, random_state=0).fit(X, y)
    assert [m.out_features for m in one.model_.modules() if isinstance(m, torch.nn.Linear)] == [
        32,
        3,
    ]
    assert one.get_params()["hidden_layer_sizes"] == 32  # the parameter as given
    with pytest.raises(ValueError, match=r"hidden_layer_sizes must be layer widths.*got '32'"):
        Classifier(hidden_layer_sizes="32").fit(X, y)
    with pytest.raises(ValueError, match=r"Classifier: activation must be one of .*'relux'"):
        Classifier(activation="relux").fit(X, y)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        Classifier().fit(np.full_like(X, np.nan), y)


def test_a_fit_that_raised_leaves_the_estimator_unfitted(iris):
    # The model was built before descend.fit refused a setting: predict then answered from an
    # untrained network, and a warm start or the next partial_fit continued that failed fit
    # (MLPClassifier stays unfitted).
    from sklearn.exceptions import NotFittedError

    X, y = iris
    clf = Classifier(max_epochs=2, random_state=0, optimizer="adamx", warm_start=True)
    with pytest.raises(ValueError, match="did you mean 'adam'"):
        clf.fit(X[:, :3], y)
    with pytest.raises(NotFittedError):
        clf.predict(X[:, :3])
    clf.set_params(optimizer="adam").fit(X, y)  # a fresh fit: 4 features now
    assert clf.n_features_in_ == 4 and clf.n_iter_ == 2

    inc = Classifier(random_state=0, tol=-1)
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        inc.partial_fit(X, y, classes=[0, 1, 2])
    inc.set_params(tol=1e-4)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        inc.partial_fit(X, y)


def test_hidden_layer_sizes_must_be_whole_positive_widths(iris):
    # (2.5,) trained a 2-wide layer (int() truncated it; MLPClassifier raises), and a width of
    # 0 was refused as "mlp: hidden", a name the estimator's user never passed.
    X, y = iris
    for bad in ((2.5,), (8, 0), -3, (4, True)):
        with pytest.raises(
            ValueError,
            match=r"Classifier: hidden_layer_sizes must be layer widths.* integers >= 1.*; got",
        ):
            Classifier(hidden_layer_sizes=bad, max_epochs=1).fit(X, y)
    ok = Classifier(hidden_layer_sizes=[np.int64(4)], max_epochs=1, random_state=0).fit(X, y)
    assert ok.model_[0].out_features == 4


def test_default_architecture_is_one_wide_layer_for_classes_and_two_for_values():
    X, y = load_iris(return_X_y=True)
    clf = Classifier(max_epochs=2, random_state=0).fit(X, y)
    widths = [m.out_features for m in clf.model_.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 3]  # one hidden layer of 2 x 64
    Xr, yr = make_regression(n_samples=150, n_features=4, random_state=0)
    reg = Regressor(max_epochs=2, random_state=0).fit(Xr, yr)
    widths = [m.out_features for m in reg.model_.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 64, 1]


def test_a_warm_start_refuses_a_new_architecture(iris):
    # It used to keep the first model silently and ignore the new hidden_layer_sizes.
    X, y = iris
    clf = Classifier(max_epochs=2, warm_start=True, random_state=0).fit(X, y)
    clf.fit(X, y)  # the same settings: continues
    clf.set_params(hidden_layer_sizes=[8])
    with pytest.raises(ValueError, match=r"hidden_layer_sizes=None then, \(8,\) now"):
        clf.fit(X, y)
    clf.set_params(hidden_layer_sizes=None, activation="tanh")
    with pytest.raises(ValueError, match="activation='relu' then, 'tanh' now"):
        clf.partial_fit(X, y)
    clf.set_params(warm_start=False)  # a fresh fit builds the new one
    widths = [m.out_features for m in clf.fit(X, y).model_.modules() if hasattr(m, "out_features")]
    assert isinstance(clf.model_[1], torch.nn.Tanh) and len(widths) == 2


def test_device_none_keeps_small_networks_on_the_cpu(monkeypatch, iris):
    # A GPU machine trains the bundled sets' small networks 1-5x slower than its CPU (measured
    # on an H200, session 11): with device=None a step under GPU_MIN_STEP_WORK (batch rows x
    # weights) trains on the CPU; bigger steps, or an explicit device, are passed on as given.
    import descend.sklearn as sk
    from descend.data import auto_device

    seen = []
    real_fit = sk.fit

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        return real_fit(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(sk, "fit", spy)
    X, y = iris
    Classifier(max_epochs=2, random_state=0).fit(X, y)  # (128,) on <= 150 rows: ~0.1 million
    Classifier(hidden_layer_sizes=(2048, 2048), max_epochs=1, random_state=0).fit(X, y)
    Classifier(max_epochs=2, random_state=0, device="cpu").fit(X, y)
    assert seen == ["cpu", None, "cpu"]
    model = torch.nn.Linear(1000, 100)  # 100,100 weights
    assert auto_device(None, 79, model) == "cpu"
    assert auto_device(None, 80, model) is None  # 8,008,000 >= 8 million
    assert auto_device("cuda", 1, model) == "cuda"


def test_sparse_features_train_as_their_dense_copy_and_too_big_ones_are_refused(monkeypatch):
    # MLPClassifier takes scipy sparse X (a TfidfVectorizer's output): so do the estimators,
    # trained on the dense copy — the same model to the bit as the dense input's.
    import scipy.sparse as sp

    import descend.sklearn as sk

    rng = np.random.default_rng(0)
    dense = rng.random((120, 30)) * (rng.random((120, 30)) < 0.1)  # ~10% non-zero
    y = (dense[:, :5].sum(1) > dense[:, :5].sum(1).mean()).astype(int)
    a = Classifier(max_epochs=5, random_state=0).fit(dense, y)
    b = Classifier(max_epochs=5, random_state=0).fit(sp.csr_matrix(dense), y)
    for fmt in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        np.testing.assert_array_equal(b.predict_proba(fmt(dense)), a.predict_proba(dense))
    yr = dense @ rng.normal(size=(30, 2))
    r = Regressor(max_epochs=5, random_state=0).fit(sp.csc_matrix(dense), yr)
    np.testing.assert_array_equal(
        r.predict(sp.csr_matrix(dense)),
        Regressor(max_epochs=5, random_state=0).fit(dense, yr).predict(dense),
    )
    monkeypatch.setattr(sk, "_PREDICT_CHUNK", 7)  # prediction densifies chunk by chunk
    np.testing.assert_array_equal(b.predict_proba(sp.csr_matrix(dense)), a.predict_proba(dense))
    monkeypatch.setattr(sk, "SPARSE_DENSE_LIMIT", 120 * 30 * 8 - 1)
    with pytest.raises(ValueError, match=r"120 x 30 .*TruncatedSVD"):
        Classifier(max_epochs=1).fit(sp.csr_matrix(dense), y)


def test_mlp_parameters_are_refused_naming_the_counterpart():
    # Someone switching from MLPRegressor writes max_iter=, alpha=, ...: the error names what
    # descend takes instead (Python's bare "unexpected keyword argument" did not).
    with pytest.raises(
        TypeError, match=r"Regressor: max_iter .*got max_iter=300 — use max_epochs="
    ):
        Regressor(max_iter=300)
    with pytest.raises(
        TypeError, match=r"Classifier: alpha .*adamw\(lr=1e-3, weight_decay=0.001\)"
    ):
        Classifier(alpha=1e-3)
    with pytest.raises(TypeError, match=r"early_stopping .*validation_fraction="):
        Classifier(early_stopping=True)
    with pytest.raises(ValueError, match=r"Classifier.set_params: learning_rate_init .*use lr="):
        Classifier().set_params(learning_rate_init=0.01)
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=r"set_params: max_iter .*max_epochs="):
        GridSearchCV(Classifier(), {"max_iter": [10, 20]}, cv=2).fit(X, y)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        Classifier(foo=1)  # anything else: Python's own message
    assert clone(Classifier(max_epochs=3)).max_epochs == 3
    assert pickle.loads(pickle.dumps(Regressor(lr=0.01))).lr == 0.01


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_coefs_and_intercepts_reproduce_the_predictions(iris, activation):
    # MLPClassifier's layout: coefs_[i] is (n_in, n_out). A numpy forward pass through them on
    # the standardized features gives predict_proba / predict to float32 rounding.
    X, y = iris
    act = {"relu": lambda h: np.maximum(h, 0), "tanh": np.tanh}[activation]
    clf = Classifier(hidden_layer_sizes=(8, 5), activation=activation, max_epochs=3, random_state=0)
    clf.fit(X, y)
    h = (X - clf.mean_) / clf.scale_
    for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        h = act(h @ W + b)
    z = h @ clf.coefs_[-1] + clf.intercepts_[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), clf.predict_proba(X), atol=1e-5)
    assert [W.shape for W in clf.coefs_] == [(4, 8), (8, 5), (5, 3)]
    assert clf.n_layers_ == 4 and clf.out_activation_ == "softmax"
    assert clf.loss_ == clf.loss_curve_[-1]
    clf.coefs_[0][:] = 0  # a copy: the model is untouched
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), clf.predict_proba(X), atol=1e-5)

    Xr, yr = make_regression(n_samples=80, n_features=3, n_targets=2, random_state=0)
    reg = Regressor(hidden_layer_sizes=(6,), activation=activation, max_epochs=3, random_state=0)
    reg.fit(Xr, yr)
    h = act(((Xr - reg.mean_) / reg.scale_) @ reg.coefs_[0] + reg.intercepts_[0])
    out = (h @ reg.coefs_[1] + reg.intercepts_[1]) * reg.y_scale_ + reg.y_mean_
    np.testing.assert_allclose(out, reg.predict(Xr), rtol=1e-5, atol=1e-4 * np.abs(yr).max())
    assert reg.out_activation_ == "identity" and reg.n_layers_ == 3
    with pytest.raises(AttributeError):  # NotFittedError is one: hasattr() is False
        _ = Regressor().coefs_


def test_multilabel_indicator_targets_like_mlpclassifier():
    # MLPClassifier takes a 0/1 indicator matrix (one logistic output per label): so does the
    # Classifier — one logit and a binary cross-entropy per label, predict thresholds at 0.5.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 0.5], axis=1).astype(int)
    clf = Classifier(random_state=0).fit(X[:200], Y[:200])
    assert clf.multilabel_ and clf.classes_.tolist() == [0, 1, 2]
    assert clf.out_activation_ == "logistic" and clf.coefs_[-1].shape[1] == 3
    P = clf.predict_proba(X[200:])
    assert P.shape == (100, 3) and np.all((P > 0) & (P < 1))
    assert not np.allclose(P.sum(1), 1.0)  # each label its own probability
    np.testing.assert_allclose(clf.predict_log_proba(X[200:]), np.log(P), rtol=1e-6, atol=1e-9)
    pred = clf.predict(X[200:])
    assert pred.dtype == np.int64 and np.array_equal(pred, (P > 0.5).astype(int))
    assert (pred == Y[200:]).mean() > 0.93  # label-wise accuracy on held-out rows
    assert clf.score(X[200:], Y[200:]) == np.mean(np.all(pred == Y[200:], axis=1))  # subset acc.

    # a weight of 0 is the same as dropping the row (to float32 rounding: the weighted
    # binary cross-entropy sums in another order than the plain one)
    w = np.ones(200)
    w[::4] = 0
    a = Classifier(max_epochs=5, random_state=0).fit(X[:200], Y[:200], sample_weight=w)
    b = Classifier(max_epochs=5, random_state=0).fit(X[:200][w > 0], Y[:200][w > 0])
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-5)
    c = Classifier(max_epochs=5, random_state=0).fit(X[:200], Y[:200])
    assert np.abs(c.predict_proba(X) - b.predict_proba(X)).max() > 1e-3  # the rows mattered

    # a sparse indicator matrix is the same targets; partial_fit needs no classes= for one
    import scipy.sparse as sparse

    d = Classifier(max_epochs=3, random_state=0).fit(X[:200], Y[:200])
    e = Classifier(max_epochs=3, random_state=0).fit(X[:200], sparse.csr_matrix(Y[:200]))
    np.testing.assert_array_equal(d.predict_proba(X), e.predict_proba(X))
    inc = Classifier(random_state=0).partial_fit(X[:200], Y[:200])
    assert inc.classes_.tolist() == [0, 1, 2] and inc.predict(X[:5]).shape == (5, 3)
    with pytest.raises(ValueError, match=r"must hold 0 and 1 only; got values \[0, 2\]"):
        Classifier(max_epochs=1).fit(X, Y * 2)

    with pytest.raises(ValueError, match="keep the first fit's form"):
        Classifier(warm_start=True, max_epochs=1).fit(X, Y).fit(X, Y[:, 0])
    with pytest.raises(ValueError, match=r"one 0/1 column per label"):
        Classifier(max_epochs=1).partial_fit(X, Y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"multiclass-multioutput .*MultiOutputClassifier"):
        Classifier(max_epochs=1).fit(X, np.stack([Y[:, 0], Y[:, 1] * 2], axis=1))


@pytest.mark.parametrize("activation", ["logistic", "identity"])
def test_mlpclassifier_activation_names_work(iris, activation):
    # scikit-learn's "logistic" (sigmoid) and "identity" (no activation); both train on the
    # hand-written step (tests/test_mlp_step.py compares them with autograd).
    X, y = iris
    clf = Classifier(activation=activation, max_epochs=30, random_state=0).fit(X, y)
    acts = [type(m).__name__ for m in clf.model_ if not isinstance(m, torch.nn.Linear)]
    assert acts == (["Sigmoid"] if activation == "logistic" else [])
    assert clf.score(X, y) > 0.85
    reg = Regressor(activation=activation, max_epochs=5, random_state=0)
    reg.fit(X[:, :3], X[:, 3])
    assert reg.predict(X[:2, :3]).shape == (2,)


# ----------------------------------------------------------------------------------------------
# The Regressor's loss (MLPRegressor's loss=)
# ----------------------------------------------------------------------------------------------


def _counts(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = rng.poisson(np.exp(X @ np.array([0.5, -0.3, 0.2]) + 0.7)).astype(np.float64)
    return X, y


def test_regressor_poisson_without_hidden_layers_is_the_poisson_glm():
    # loss="poisson" with no hidden layer is a Poisson GLM with a log link: the oracle is
    # scikit-learn's PoissonRegressor (no penalty), compared by the deviance it minimizes.
    from sklearn.linear_model import PoissonRegressor
    from sklearn.metrics import mean_poisson_deviance

    X, y = _counts()
    reg = Regressor(
        loss="poisson",
        hidden_layer_sizes=(),
        validation_fraction=None,
        max_epochs=200,
        random_state=0,
    ).fit(X, y)
    glm = PoissonRegressor(alpha=0.0, tol=1e-10, max_iter=1000).fit(X, y)
    ours, ref = mean_poisson_deviance(y, reg.predict(X)), mean_poisson_deviance(y, glm.predict(X))
    assert ref <= ours <= ref * 1.005  # the default policy (its weight decay shrinks a little)
    # Without weight decay, trained to convergence: the GLM's predictions
    exact = Regressor(
        loss="poisson",
        hidden_layer_sizes=(),
        validation_fraction=None,
        max_epochs=1000,  # one full-batch step an epoch, the rate annealed to 0
        optimizer=optim.adamw(lr=0.05, weight_decay=0.0, schedule=schedules.cosine(1000)),
        tol=0.0,  # every improvement counts (the best epoch's weights are kept)
        random_state=0,
    ).fit(X, y)
    np.testing.assert_allclose(exact.predict(X), glm.predict(X), rtol=2e-3)
    # the output is the log of the expected value over the targets' mean
    assert reg.out_activation_ == "exp" and reg.y_mean_ == pytest.approx([0.0])
    assert reg.y_scale_ == pytest.approx([y.mean()])
    (w,), (b,) = reg.coefs_, reg.intercepts_
    manual = np.exp(((X - reg.mean_) / reg.scale_) @ w + b).ravel() * y.mean()
    np.testing.assert_allclose(reg.predict(X), manual, rtol=1e-5)


def test_regressor_loss_names_reach_fit(monkeypatch):
    import descend.sklearn as sk
    from descend import losses as L

    seen = []
    real_fit = sk.fit

    def spy(model, data, loss, **kw):
        seen.append((loss.name, dict(loss.kwargs)))
        return real_fit(model, data, loss, **kw)

    monkeypatch.setattr(sk, "fit", spy)
    X, y = _counts(100)
    for spec in ("squared_error", "absolute_error", "huber", "poisson", "mse", "l1"):
        Regressor(loss=spec, max_epochs=1, random_state=0).fit(X, y)
    Regressor(loss=L.get("huber", delta=0.5), max_epochs=1, random_state=0).fit(X, y)
    assert seen == [
        ("mse", {}),
        ("mae", {}),
        ("huber", {}),
        ("poisson", {}),
        ("mse", {}),
        ("mae", {}),
        ("huber", {"delta": 0.5}),
    ]
    assert Regressor().get_params()["loss"] == "squared_error"


def test_regressor_absolute_error_ignores_outliers_that_squared_error_follows():
    # A line with 10% of its targets shifted by +50 standard deviations: the median (mae) fit
    # stays on the line, the mean (mse) fit is pulled up.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 1))
    y = 2 * X[:, 0] + rng.normal(scale=0.1, size=600)
    y[rng.random(600) < 0.1] += 50.0
    Xt = np.linspace(-1.5, 1.5, 50)[:, None]
    kw = dict(hidden_layer_sizes=(), validation_fraction=None, max_epochs=100, random_state=0)
    mae = Regressor(loss="absolute_error", **kw).fit(X, y).predict(Xt)
    mse = Regressor(loss="squared_error", **kw).fit(X, y).predict(Xt)
    assert np.abs(mae - 2 * Xt[:, 0]).max() < 0.3
    assert np.abs(mse - 2 * Xt[:, 0]).mean() > 3.0  # ~ +5: the outliers' share of the mean


def test_regressor_refuses_a_bad_loss_and_bad_poisson_targets():
    X, y = _counts(60)
    with pytest.raises(
        ValueError, match=r"Regressor: loss must be 'squared_error', .*did you mean 'squared_error'"
    ):
        Regressor(loss="squred_error").fit(X, y)
    with pytest.raises(
        ValueError,
        match="got 'cross_entropy' — cross_entropy is a classification loss: use descend",
    ):
        Regressor(loss="cross_entropy").fit(X, y)
    with pytest.raises(ValueError, match=r"of your own, train a model with descend\.fit"):
        Regressor(loss=lambda p, t: (p - t).abs().mean()).fit(X, y)
    with pytest.raises(
        ValueError, match=r"y must be counts or rates >= 0 for loss='poisson'; got 1 negative"
    ):
        Regressor(loss="poisson").fit(X, np.where(np.arange(60) == 3, -1.0, y))
    y2 = np.column_stack([y, np.zeros(60)])
    with pytest.raises(ValueError, match=r"positive mean in every output .*means \[.*, 0\.0\]"):
        Regressor(loss="poisson").fit(X, y2)


def test_a_warm_start_refuses_a_new_loss():
    X, y = _counts(80)
    reg = Regressor(max_epochs=2, warm_start=True, random_state=0).fit(X, y)
    reg.set_params(loss="mse")  # the same loss by another name: continues
    reg.fit(X, y)
    reg.set_params(loss="poisson")
    with pytest.raises(ValueError, match="loss='mse' then, 'poisson' now"):
        reg.fit(X, y)


def test_regressor_loss_in_a_grid_search():
    X, y = _counts(200)
    search = GridSearchCV(
        Regressor(max_epochs=5, random_state=0),
        {"loss": ["squared_error", "poisson"]},
        cv=2,
        scoring="neg_mean_poisson_deviance",
    ).fit(X, y)
    assert search.best_params_["loss"] in ("squared_error", "poisson")
    assert clone(search.best_estimator_).get_params()["loss"] == search.best_params_["loss"]


def test_n_outputs_and_t_as_mlpclassifier_names_them(iris):
    X, y = iris
    clf = Classifier(max_epochs=3, random_state=0).fit(X, y)
    assert clf.n_outputs_ == 3 == clf.coefs_[-1].shape[1]
    assert clf.t_ == 3 * 150  # every row, every epoch (no split by default)
    binary = Classifier(max_epochs=2, random_state=0).fit(X, y == 0)
    assert binary.n_outputs_ == 2 == binary.coefs_[-1].shape[1]
    clf.partial_fit(X, y)
    assert clf.t_ == 4 * 150
    reg = Regressor(max_epochs=4, patience=None, random_state=0).fit(X, np.column_stack([y, y]))
    assert reg.n_outputs_ == 2 and reg.t_ == 4 * 135  # 10% held out for validation


def test_outputs_follow_float32_features_as_scikit_learns_mlp(iris):
    # predict / predict_proba returned float64 for float32 features, where MLPClassifier and
    # MLPRegressor return float32; float64 features still give float64.
    X, y = iris
    X32 = X.astype(np.float32)
    clf = Classifier(max_epochs=3, random_state=0).fit(X32, y)
    reg = Regressor(max_epochs=3, random_state=0).fit(X32, X[:, 0] + X[:, 1])
    for data, dtype in ((X32, np.float32), (X, np.float64)):
        p = clf.predict_proba(data)
        assert p.dtype == dtype and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
        assert clf.predict_log_proba(data).dtype == dtype
        assert reg.predict(data).dtype == dtype
    np.testing.assert_allclose(clf.predict_proba(X32), clf.predict_proba(X), rtol=1e-5)
    assert np.array_equal(clf.predict(X32), clf.predict(X))


def test_log_proba_is_the_log_of_proba_for_float32_features():
    # predict_proba rounds to float32 for float32 features; predict_log_proba was the exact
    # log-softmax, so a probability rounded to 1.0 had a log-probability of -1e-8 instead of 0
    # (scikit-learn's check_classifiers_train asks for atol=1e-9 there).
    rng = np.random.default_rng(0)
    label = np.repeat([0, 1], 100)
    X = rng.normal(size=(200, 2)) + 6 * label[:, None]  # far apart: confident predictions
    X32 = X.astype(np.float32)
    for target in (label, np.c_[label, 1 - label]):
        clf = Classifier(random_state=0).fit(X32, target)
        proba, log_proba = clf.predict_proba(X32), clf.predict_log_proba(X32)
        assert log_proba.dtype == np.float32
        assert (proba == 1).any()
        np.testing.assert_allclose(log_proba, np.log(proba), rtol=1e-6, atol=1e-9)
    proba, log_proba = clf.predict_proba(X), clf.predict_log_proba(X)  # float64: exact
    np.testing.assert_allclose(log_proba, np.log(proba), rtol=1e-12, atol=1e-15)


def test_best_epoch_counts_across_warm_starts():
    # best_epoch_ counted from the latest warm fit (1 after a second fit of 8 epochs) while
    # validation_loss_curve_ and n_iter_ run across fits: it did not point at the best epoch.
    X, y = make_regression(n_samples=300, n_features=5, noise=5.0, random_state=0)
    reg = Regressor(max_epochs=6, lr=3e-3, warm_start=True, patience=None, random_state=0)
    reg.fit(X, y)
    assert reg.best_epoch_ == 6  # a constant small rate: still improving at the last epoch
    reg.fit(X, y)
    assert reg.n_iter_ == 12 and len(reg.validation_loss_curve_) == 12
    assert reg.best_epoch_ == 1 + int(np.argmin(reg.validation_loss_curve_))
    assert reg.best_epoch_ > 6
    assert reg.best_loss_ == pytest.approx(min(reg.validation_loss_curve_))


def test_the_declared_scikit_learn_requirement_has_what_the_estimators_import():
    # validate_data, _check_sample_weight(ensure_non_negative=) and __sklearn_tags__ arrived in
    # scikit-learn 1.6: a pin below it let `pip install descend` keep a scikit-learn 1.3-1.5 on
    # which `from descend.sklearn import Classifier` raised ImportError.
    import re
    from pathlib import Path

    from packaging.version import Version

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"scikit-learn>=([\d.]+)"', pyproject)  # tomllib is 3.11+
    assert Version(pin) >= Version("1.6")
