"""End-to-end tests of descend.fit on real offline data and on generated data."""

from __future__ import annotations

import io
import math
import re
import types
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits

import descend
from descend import ConfigError, InputError, StopReason
from descend.train.callbacks import PlainProgress
from helpers.optim_common import tensors_in
from helpers.raw_targets import raw_targets_50


def mlp(i, h, o):
    return torch.nn.Sequential(torch.nn.Linear(i, h), torch.nn.ReLU(), torch.nn.Linear(h, o))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def test_digits_reaches_95_percent_validation_accuracy(digits):
    X, y = digits
    torch.manual_seed(0)
    model = mlp(64, 256, 10)
    perm = np.random.default_rng(0).permutation(len(X))
    X, y = X[perm], y[perm]
    Xt, yt, Xv, yv = X[:1400], y[:1400], X[1400:], y[1400:]
    r = descend.fit(
        model, (Xt, yt), loss="cross_entropy", validation=(Xv, yv), epochs=30, verbose=0, seed=0
    )
    assert r.history.metric_name == "accuracy"
    assert r.best_metric >= 0.95
    # The model holds the best epoch's weights: re-evaluating gives the recorded loss.
    assert r.best_loss == r.history.val_loss[r.best_epoch - 1]
    with torch.no_grad():
        out = model(torch.as_tensor(Xv))
    val = torch.nn.functional.cross_entropy(out, torch.as_tensor(yv)).item()
    assert val == pytest.approx(r.best_loss, rel=1e-5)
    assert (out.argmax(1).numpy() == yv).mean() == pytest.approx(r.best_metric)
    assert r.stop_reason in (StopReason.PATIENCE, StopReason.MAX_EPOCHS)
    assert isinstance(r.stop_message, str) and len(r.stop_message) > 20


def test_issue_example_numpy_in_torch_model_out(digits):
    X, y = digits
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    result = descend.fit(model, (X, y), loss="cross_entropy", epochs=3, verbose=0, seed=1)
    assert isinstance(result.model, torch.nn.Module) and result.model is model
    assert math.isfinite(result.history.val_loss[-1])
    assert len(result.history.val_loss) == result.epochs
    assert str(result.stop_reason) in {s.value for s in StopReason}


def test_diabetes_mse_beats_mean_by_wide_margin():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    torch.manual_seed(0)
    r = descend.fit(mlp(10, 64, 1), (X, y), loss="mse", epochs=60, verbose=0, seed=0)
    # Predicting the mean of standardized y gives MSE ~1 (R² 0); a real fit gets R² ~0.4-0.5.
    assert r.best_loss < 0.75
    assert r.history.metric_name == "r2" and r.best_metric > 0.3


def test_full_batch_gradient_descent_matches_hand_written_loop():
    torch.manual_seed(0)
    X = torch.randn(64, 3, dtype=torch.float32)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    m1 = torch.nn.Linear(3, 1)
    m2 = torch.nn.Linear(3, 1)
    m2.load_state_dict(m1.state_dict())
    descend.fit(
        m1,
        (X, y),
        "mse",
        optimizer=descend.optim.sgd(lr=0.1),
        batch_size=None,
        validation=None,
        epochs=20,
        patience=None,
        verbose=0,
        seed=0,
        restore_best=False,
    )
    opt = torch.optim.SGD(m2.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m2(X), y.unsqueeze(-1)).backward()
        opt.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_callable_loss_and_named_optimizer():
    torch.manual_seed(0)
    X = torch.randn(200, 2)
    y = (X[:, :1] * 3).clone()

    def my_loss(pred, target):
        return ((pred - target) ** 2).mean()

    r = descend.fit(
        torch.nn.Linear(2, 1),
        (X, y),
        my_loss,
        optimizer="adam",
        lr=0.05,
        epochs=40,
        verbose=0,
        seed=0,
    )
    assert r.best_loss < 1e-2


def test_adamw_optimizer_object_and_seed_reproducible(digits):
    X, y = digits
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = mlp(64, 32, 10)
        r = descend.fit(
            m,
            (X[:600], y[:600]),
            "cross_entropy",
            optimizer=descend.optim.adamw(lr=3e-4),
            epochs=3,
            verbose=0,
            seed=7,
        )
        runs.append((r.history.step_loss, [p.clone() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


def test_seed_is_drawn_and_recorded():
    X = torch.randn(50, 2)
    r = descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", epochs=1, verbose=0)
    assert isinstance(r.seed, int)


def test_function_model_curve_fit():
    torch.manual_seed(0)
    x = torch.linspace(0, 4, 200)
    y = 2.5 * torch.exp(-1.3 * x)
    r = descend.fit(
        lambda x, p: p["a"] * torch.exp(-p["b"] * x),
        (x, y),
        "mse",
        params={"a": 1.0, "b": 0.5},
        optimizer=descend.optim.adam(lr=0.05),
        epochs=200,
        batch_size=None,
        validation=None,
        verbose=0,
        seed=0,
    )
    assert r.params["params.a"].item() == pytest.approx(2.5, abs=0.02)
    assert r.params["params.b"].item() == pytest.approx(1.3, abs=0.02)


@pytest.mark.parametrize(
    "params, match",
    [
        ([torch.zeros(2)], "must be a dict {name: initial value}"),
        ({"layer.w": torch.zeros(2)}, "the name 'layer.w'"),
        ({1: torch.zeros(2)}, "the name 1"),
        ({"w": "zeros"}, "params={'w': ...}) must be a number, a tensor"),
    ],
)
def test_function_model_params_are_checked(params, match):
    x, y = torch.randn(32, 2), torch.randn(32)
    with pytest.raises(ConfigError, match=re.escape(match)):
        descend.fit(lambda x, p: x @ p["w"], (x, y), "mse", params=params, epochs=1, verbose=0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # torch, on the user's bug
def test_a_function_model_with_its_arguments_swapped_is_named():
    # fit calls fn(x, params): fn(params, x) indexed the batch with "w", and torch's own
    # "new(): invalid data type 'str'" said nothing of the cause
    x, y = torch.randn(32, 2), torch.randn(32)
    with pytest.raises(
        InputError,
        match=r"an error on a batch of shape \(8, 2\) \(torch.float32\): new\(\): invalid data "
        r"type 'str' — fit calls the function as fn\(x, params\): x a batch of rows, params a "
        r"dict of tensors \('w'\); check the order of its arguments",
    ):
        descend.fit(
            lambda p, x: x @ p["w"],
            (x, y),
            "mse",
            params={"w": torch.zeros(2)},
            epochs=1,
            verbose=0,
        )


def test_history_records_steps_and_epochs(digits):
    X, y = digits
    r = descend.fit(
        mlp(64, 16, 10),
        (X[:320], y[:320]),
        "cross_entropy",
        epochs=2,
        batch_size=64,
        validation=0.2,
        verbose=0,
        seed=0,
        patience=None,
    )
    h = r.history
    steps_per_epoch = math.ceil(256 / 64)
    assert len(h.step_loss) == len(h.step_lr) == len(h.step_grad_norm) == 2 * steps_per_epoch
    assert all(isinstance(v, float) for v in h.step_loss + h.step_grad_norm + h.step_lr)
    assert h.epoch == [1, 2] and len(h.train_loss) == 2 and len(h.time) == 2
    assert h.train_loss[0] == pytest.approx(np.mean(h.step_loss[:steps_per_epoch]))


def test_the_epoch_training_loss_weights_its_batches_by_rows():
    # 50 rows in batches of 32 and 18: the epoch's training loss is the mean over its samples
    # (as scikit-learn's loss_curve_), not the mean of the two batch means. Unweighted, the
    # 18-row batch counted as much as the 32-row one: a slowly falling loss read +-10% noise,
    # and a fit at lr=0.01 stopped "converged" after 12 of 100 epochs at R² 0.02.
    X, y, model = raw_targets_50()
    r = descend.fit(model, (X, y), "mse", lr=0.01, validation=None, verbose=0, seed=0)
    h = r.history
    for e in range(3):
        a, b = h.step_loss[2 * e : 2 * e + 2]
        assert h.train_loss[e] == pytest.approx((32 * a + 18 * b) / 50, rel=1e-12)
        assert h.train_loss[e] != pytest.approx((a + b) / 2, rel=1e-3)
    assert r.epochs == 100 and r.stop_reason is StopReason.MAX_EPOCHS
    # Batches of one size keep the plain mean, to the bit.
    r = descend.fit(mlp(5, 8, 1), (X[:48], y[:48]), "mse", lr=0.01, epochs=2, batch_size=16,
                    validation=None, verbose=0, seed=0)  # fmt: skip
    assert r.history.train_loss[0] == sum(r.history.step_loss[:3]) / 3


def test_features_in_the_thousands_are_named_with_the_fix():
    # No rate makes up for unscaled inputs (features ~1e4: test R² -0.30 to 0.17 where the
    # standardized ones reach 0.92-0.98): fit says so once, at the start, with the fix.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=g)
    y = X[:, :1].clone()
    with pytest.warns(RuntimeWarning, match=r"features reach .* StandardScaler"):
        descend.fit(torch.nn.Linear(3, 1), (X * 1e4, y), "mse", lr=0.01, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        descend.fit(torch.nn.Linear(3, 1), (X * 100, y), "mse", lr=0.01, epochs=1, verbose=0)


def test_target_columns_on_different_scales_are_named_with_the_fix():
    # mse on outputs of scales 1 and 1,000 fits the wide column and barely the narrow one
    # (its R² -306 to -4 in the default run, the loss itself near the best rate's): fit says
    # which columns, how much less the narrow one weighs, and the fix.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=g)
    Z = X / X.std(0)  # unit standard deviations, so the ratio is exactly 1,000
    y = torch.stack([Z[:, 0], 1000 * Z[:, 1]], 1)
    with pytest.warns(RuntimeWarning, match=r"column 0: standard deviation .* 1e\+06x less .* "
                      r"standardize each target column"):  # fmt: skip
        descend.fit(
            torch.nn.Linear(3, 2), (X, y), "mse", lr=0.01, epochs=1, verbose=0, validation=None
        )
    with pytest.warns(RuntimeWarning, match=r"the mae loss weighs column 0's errors about 1e\+03x"):
        descend.fit(
            torch.nn.Linear(3, 2), (X, y), "mae", lr=0.01, epochs=1, verbose=0, validation=None
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        # 50x apart, a constant column, one output, a loss not in the targets' units: no warning
        y2 = torch.stack([X[:, 0], 50 * X[:, 1], torch.ones(100)], 1)
        descend.fit(
            torch.nn.Linear(3, 3), (X, y2), "mse", lr=0.01, epochs=1, verbose=0, validation=None
        )
        descend.fit(torch.nn.Linear(3, 1), (X, 1000 * X[:, :1]), "mse", lr=0.01, epochs=1,
                    verbose=0, validation=None)  # fmt: skip
        descend.fit(torch.nn.Linear(3, 2), (X, (y > 0).float()), "binary_cross_entropy",
                    lr=0.01, epochs=1, verbose=0,
                    validation=None)  # fmt: skip


def test_early_stopping_restores_best_weights():
    torch.manual_seed(0)
    # Tiny noisy set + big model: validation loss rises after a while.
    X = torch.randn(60, 5)
    y = torch.randn(60)
    model = mlp(5, 256, 1)
    r = descend.fit(
        model,
        (X, y),
        "mse",
        optimizer=descend.optim.adam(lr=1e-2),
        epochs=200,
        patience=5,
        verbose=0,
        seed=0,
    )
    assert r.stop_reason is StopReason.PATIENCE
    assert "did not improve" in r.stop_message and f"epoch {r.best_epoch}" in r.stop_message
    assert r.epochs == r.best_epoch + 5
    # The returned model really holds the best epoch's weights.
    loop_val = min(r.history.val_loss)
    assert r.best_loss == pytest.approx(loop_val)


def test_plain_progress_has_no_control_characters(digits):
    X, y = digits
    buf = io.StringIO()
    descend.fit(
        mlp(64, 16, 10),
        (X[:300], y[:300]),
        "cross_entropy",
        epochs=3,
        verbose=0,
        seed=0,
        callbacks=[PlainProgress(buf)],
    )
    out = buf.getvalue()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out)
    lines = out.strip().splitlines()
    assert lines[0].startswith("descend:")
    assert sum(line.startswith("epoch") for line in lines) == 3


def test_callback_can_stop_and_sees_every_step(digits):
    X, y = digits

    class StopAfter(descend.Callback):
        def __init__(self):
            self.steps = 0
            self.ended = False

        def on_step_end(self, loop):
            self.steps += 1
            if loop.step == 7:
                loop.request_stop("seven steps are enough")

        def on_fit_end(self, loop):
            self.ended = True

    cb = StopAfter()
    r = descend.fit(
        mlp(64, 16, 10), (X, y), "cross_entropy", epochs=5, verbose=0, seed=0, callbacks=[cb]
    )
    assert cb.steps == 7 and cb.ended
    assert r.stop_reason is StopReason.CALLBACK and "seven steps" in r.stop_message

    # Asked before the first step (and with a reason of its own), the run takes none.
    class StopAtStart(descend.Callback):
        def on_fit_start(self, loop):
            loop.request_stop("nothing to do", StopReason.DECAYED)

    model = mlp(64, 16, 10)
    before = [p.detach().clone() for p in model.parameters()]
    r = descend.fit(
        model, (X, y), "cross_entropy", lr=1e-3, epochs=5, verbose=0, seed=0,
        callbacks=[StopAtStart()],
    )  # fmt: skip
    assert r.steps == 0 and r.stop_reason is StopReason.DECAYED
    assert "nothing to do" in r.stop_message
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_keyboard_interrupt_returns_result_with_best_weights(digits):
    X, y = digits

    class Interrupt(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 30:
                raise KeyboardInterrupt

    r = descend.fit(
        mlp(64, 16, 10),
        (X, y),
        "cross_entropy",
        epochs=5,
        verbose=0,
        seed=0,
        callbacks=[Interrupt()],
    )
    assert r.stop_reason is StopReason.INTERRUPTED
    assert "Interrupted" in r.stop_message


def test_model_output_does_not_fit_loss(digits):
    X, y = digits
    with pytest.raises(InputError, match="10"):
        descend.fit(mlp(64, 16, 1), (X, y), "cross_entropy", epochs=1, verbose=0)


def test_model_first_layer_does_not_fit_features(digits):
    X, y = digits
    with pytest.raises(InputError, match="64"):
        descend.fit(mlp(32, 16, 10), (X, y), "cross_entropy", epochs=1, verbose=0)


def test_a_float64_model_trains_on_float64_data():
    # The data takes the model's dtype: a double-precision model (a scientist's fit, a model
    # built under torch.set_default_dtype(torch.float64)) trains as it is, on the plain-MLP
    # path and on autograd's, and agrees with the same model in float32 to float32 rounding.
    X, y = load_diabetes(return_X_y=True)
    X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    models = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        models[dtype] = mlp(10, 32, 1).to(dtype)
        r = descend.fit(models[dtype], (X, y), "mse", lr=1e-2, epochs=3, verbose=0, seed=0)
        assert all(p.dtype == dtype for p in models[dtype].parameters())
        assert math.isfinite(r.best_loss)
    w32, w64 = models[torch.float32][0].weight, models[torch.float64][0].weight
    diff = (w32.double() - w64).abs().max().item()
    assert 0 < diff < 1e-4  # really computed in float64, on the same trajectory
    # lr_find sweeps a float64 model the same way.
    found = descend.lr_find(models[torch.float64], (X, y), "mse", steps=30, seed=0)
    assert math.isfinite(found.suggestion)
    # A plain function with float64 parameters.
    params = {"w": torch.zeros(10, dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    r = descend.fit(
        lambda x, p: x @ p["w"] + p["b"], (X, y), "mse", params=params, lr=0.1, epochs=5,
        verbose=0, seed=0,
    )  # fmt: skip
    assert r.best_loss < 0.6 and all(v.dtype == torch.float64 for v in r.params.values())


def test_a_model_of_mixed_dtypes_gets_a_dtype_hint():
    X = np.random.default_rng(0).normal(size=(40, 3))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    model[2].double()  # the first layer decides the data's dtype (float32); the last is float64
    with pytest.raises(InputError, match=r"one floating dtype.*model\.float\(\)"):
        descend.fit(model, (X, X[:, 0]), "mse", lr=1e-2, epochs=1, verbose=0)


def test_integer_features_for_a_linear_model_get_the_float_hint():
    # fit keeps integer features as they are (an embedding wants its indices); a model of
    # Linear layers then fails on them: the hint says to pass floats, not to change the model.
    X = np.random.default_rng(0).integers(0, 10, size=(40, 3))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(InputError, match=r"the data is torch\.int64: .*X\.astype\('float32'\)"):
        descend.fit(model, (X, X[:, 0] * 1.0), "mse", lr=1e-2, epochs=1, verbose=0)
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    r = descend.fit(emb, (X, X[:, 0] * 1.0), "mse", lr=1e-2, epochs=1, verbose=0)  # indices kept
    assert r.steps > 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.bool_])
def test_small_integer_and_boolean_features_train_as_floats(dtype):
    # Pixels (uint8), flags and counts take the model's float dtype like floats do: the same
    # run as the float32 copy of the same values, resident or streamed from a DataLoader.
    X = np.random.default_rng(0).integers(0, 2 if dtype is np.bool_ else 100, size=(48, 3))
    y = X[:, 0] * 0.1

    def run(data):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        return descend.fit(model, data, "mse", lr=1e-2, epochs=2, verbose=0, seed=0)

    ref = run((X.astype(np.float32), y))
    assert run((X.astype(dtype), y)).history.val_loss == ref.history.val_loss
    Xt = torch.from_numpy(X.astype(dtype))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(Xt, torch.from_numpy(y).float()), batch_size=16
    )
    assert run(loader).steps > 0  # streamed batches are converted too


def test_seed_takes_numpy_integers_and_refuses_the_rest():
    # seed=np.int64(3) (from numpy or a config) raised torch's bare "an integer is required";
    # seed="a" torch's RuntimeError. Now: the same run as seed=3, and a ConfigError.
    X = np.random.default_rng(0).normal(size=(40, 2))
    runs = []
    for s in (3, np.int64(3)):
        torch.manual_seed(0)  # the same initial weights
        model = torch.nn.Linear(2, 1)
        runs.append(descend.fit(model, (X, X[:, 0]), "mse", lr=1e-2, epochs=2, verbose=0, seed=s))
    assert runs[0].history.val_loss == runs[1].history.val_loss and runs[1].seed == 3
    for bad in ("a", 1.5, True):
        with pytest.raises(ConfigError, match=r"fit: seed must be an integer"):
            descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", epochs=1, verbose=0, seed=bad)
    # a numpy or 0-d torch number is shown by its value ("float64 of shape ()" said nothing)
    with pytest.raises(ConfigError, match=r"seed must be an integer.*got 1\.5 \(float64 of dtype"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", seed=np.float64(1.5))
    with pytest.raises(ConfigError, match=r"got 0\.0 \(Tensor of dtype torch\.float32\)"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", lr=torch.tensor(0.0))


def test_a_validation_label_unseen_in_training_is_named():
    # Labels are encoded over training and validation together, so a validation-only label
    # shows up as one class too many for the model: the error names that label.
    X = np.random.default_rng(0).normal(size=(60, 3))
    y = np.where(X[:, 0] > 0, "cat", "dog")
    with pytest.raises(
        InputError, match=r"validation y holds labels that the training y does not: \['cow'\]"
    ):
        descend.fit(
            mlp(3, 8, 2), (X, y), "cross_entropy", validation=(X[:6], np.array(["cow"] * 6)),
            epochs=1, verbose=0,
        )  # fmt: skip
    with pytest.raises(InputError, match=r"model's last layer must have 2 outputs") as info:
        descend.fit(mlp(3, 8, 1), (X, y), "cross_entropy", epochs=1, verbose=0)
    assert "validation y holds" not in str(info.value)  # no such note where it does not apply


def test_bad_settings_are_refused():
    X = torch.randn(20, 2)
    with pytest.raises(ConfigError, match=r"max_time must be a number of seconds > 0.*got -1"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", max_time=-1)
    with pytest.raises(ConfigError, match=r"tol must be a finite number >= 0; got -0.1"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", tol=-0.1)
    with pytest.raises(ConfigError, match="epochs"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", epochs=0)
    with pytest.raises(ConfigError, match="batch_size"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", batch_size=0)
    with pytest.raises(ConfigError, match="optimizer"):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", optimizer=torch.optim.SGD)
    # flags are flags: guard="off" is a true string and turned the guard on
    for flag, value in (("guard", "off"), ("shuffle", "yes"), ("restore_best", None)):
        with pytest.raises(
            ConfigError, match=rf"fit: {flag} must be True or False; got {re.escape(repr(value))}"
        ):
            descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", **{flag: value})
    # a checkpoint that is not a path failed in pathlib ("expected str, bytes or os.PathLike")
    with pytest.raises(
        ConfigError, match=r"fit: checkpoint must be a directory path \(str or pathlib.Path\)"
    ):
        descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", checkpoint=123)


def test_lr_alone_gives_exactly_that_rate():
    # Seeded data: drawn from the global RNG, it depended on which tests ran before it, and on
    # some draws (torch.manual_seed(236)) the two 32-row batches' losses differ 2.6x at step 2,
    # which the divergence guard takes for a spike and answers by scaling the rate.
    X = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    r = descend.fit(
        torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", lr=0.0123, epochs=2, verbose=0, seed=0
    )
    assert len(r.history.step_lr) == r.steps
    assert all(v == pytest.approx(0.0123) for v in r.history.step_lr)
    assert r.autopilot is None


def test_default_run_records_its_choice():
    X = torch.randn(64, 2)
    r = descend.fit(torch.nn.Linear(2, 1), (X, X[:, 0]), "mse", epochs=2, verbose=0, seed=0)
    assert r.autopilot is not None and "optimizer" in r.autopilot


def test_plot_writes_png(tmp_path, digits):
    X, y = digits
    r = descend.fit(
        mlp(64, 16, 10), (X[:200], y[:200]), "cross_entropy", epochs=2, verbose=0, seed=0
    )
    path = tmp_path / "curve.png"
    r.history.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_opt_state_continues_exactly_like_one_longer_run():
    torch.manual_seed(0)
    X = torch.randn(96, 3)
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    kw = dict(
        batch_size=None, validation=None, patience=None, verbose=0, seed=0, restore_best=False
    )
    m1 = torch.nn.Linear(3, 1)
    m2 = torch.nn.Linear(3, 1)
    m2.load_state_dict(m1.state_dict())
    descend.fit(m1, (X, y), "mse", optimizer=descend.optim.adam(lr=0.05), epochs=10, **kw)
    r = descend.fit(m2, (X, y), "mse", optimizer=descend.optim.adam(lr=0.05), epochs=5, **kw)
    descend.fit(
        m2,
        (X, y),
        "mse",
        optimizer=descend.optim.adam(lr=0.05),
        epochs=5,
        opt_state=r.opt_state,
        **kw,
    )
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="same optimizer"):
        descend.fit(
            m2,
            (X, y),
            "mse",
            optimizer=descend.optim.sgd(lr=0.05),
            epochs=1,
            opt_state=r.opt_state,
            **kw,
        )


def test_schedule_free_evaluates_and_deploys_the_averaged_point():
    torch.manual_seed(0)
    X = torch.randn(256, 4)
    y = X @ torch.tensor([1.0, -1.0, 2.0, 0.5]) + 0.3 * torch.randn(256)
    Xv, yv = X[200:], y[200:]
    model = mlp(4, 32, 1)
    r = descend.fit(
        model,
        (X[:200], y[:200]),
        "mse",
        validation=(Xv, yv),
        optimizer=descend.optim.schedulefree_adamw(lr=1e-2),
        epochs=5,
        restore_best=False,
        verbose=0,
        seed=0,
    )
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(Xv).squeeze(-1), yv).item()
    # The model ends at the averaged point, and that is the point every epoch was judged at.
    assert final == pytest.approx(r.history.val_loss[-1], rel=1e-5)
    # ... which is not the training point y: swapping back changes the weights.
    before = [p.detach().clone() for p in model.parameters()]
    assert descend.transforms.swap_to_train(r.opt_state, dict(model.named_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bf16_autocast_trains(digits):
    X, y = digits
    r = descend.fit(
        mlp(64, 64, 10),
        (X, y),
        "cross_entropy",
        precision="bf16",
        optimizer=descend.optim.adam(lr=3e-3),
        epochs=3,
        verbose=0,
        seed=0,
    )
    assert r.history.val_loss[-1] < 0.9 * r.history.val_loss[0]
    assert r.best_metric > 0.85
    with pytest.raises(ConfigError, match="precision"):
        descend.fit(mlp(64, 8, 10), (X, y), "cross_entropy", precision="fp8", verbose=0)


def test_fit_takes_the_fused_update_path_and_it_matches_the_reference(digits):
    # fit steps through transforms.update_and_apply: the Adam family's fused apply (one pass
    # over parameters and state) is what runs, and it lands where the readable path does.
    X, y = digits
    X, y = X[:256], y[:256]
    tx = descend.optim.adamw(lr=3e-3)
    calls = []
    fused_apply = tx.update.apply

    def counting(*a, **k):
        calls.append(1)
        return fused_apply(*a, **k)

    tx.update.apply = counting
    finals = []
    for opt in (tx, descend.optim.adamw(lr=3e-3, impl="reference")):
        torch.manual_seed(0)
        model = mlp(64, 32, 10)
        r = descend.fit(
            model,
            (X, y),
            "cross_entropy",
            optimizer=opt,
            epochs=3,
            patience=None,
            restore_best=False,
            verbose=0,
            seed=0,
        )
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert len(calls) == r.steps > 0
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["plain", "batchnorm", "frozen"])
def test_restored_weights_are_the_best_epochs_whole_state(kind):
    # A plain MLP's state is its trainable parameters (copied directly); with BatchNorm buffers
    # or a frozen parameter the loop copies the whole state_dict. Either way the model ends
    # holding exactly the best epoch's state, buffers included.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 5, generator=g)
    y = (X[:, 0] + 0.3 * torch.randn(120, generator=g) > 0).long()
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 16)]
    if kind == "batchnorm":
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.ReLU(), torch.nn.Linear(16, 2)]
    model = torch.nn.Sequential(*layers)
    if kind == "frozen":
        model[0].bias.requires_grad_(False)
    seen = {}

    class Record(descend.Callback):
        def on_epoch_end(self, loop):
            # Copied to the CPU, where fit hands the model back (it may train on a GPU).
            seen[loop.epoch] = {
                k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()
            }

    r = descend.fit(
        model,
        (X, y),
        "cross_entropy",
        optimizer=descend.optim.adam(lr=0.05),
        epochs=25,
        batch_size=30,
        validation=0.3,
        patience=None,
        verbose=0,
        seed=0,
        callbacks=[Record()],
    )
    assert r.best_epoch < 25  # the last epoch was not the best: a restore really happened
    final = model.state_dict()
    best = seen[r.best_epoch]
    assert final.keys() == best.keys()
    for k in best:
        assert torch.equal(final[k], best[k]), k


def _frozen():
    """An optimizer whose rate is 0 at every step: the model stays as it started."""
    return descend.optim.sgd(lr=0.1, schedule=lambda step: 0.0)


def test_training_metric_without_validation_is_the_epochs_running_metric():
    # No validation data: the epoch's metric comes from the training steps' own outputs (no
    # extra pass). With the weights frozen, every row is scored once per epoch by the same
    # model, so the running value must equal the metric of that model on the whole set — which
    # checks the sums across uneven batches (100 rows in 32s) and, for R², across columns.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    torch.manual_seed(0)
    clf = torch.nn.Linear(5, 2)
    r = descend.fit(
        clf, (X, y), "cross_entropy", optimizer=_frozen(), epochs=2, batch_size=32,
        validation=None, verbose=0,
    )  # fmt: skip
    with torch.no_grad():
        acc = (clf(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert r.history.metric_name == "accuracy"
    assert r.history.metric == pytest.approx([acc, acc], abs=1e-6)
    assert 0.2 < acc < 0.8  # a chance-level model: the comparison is not trivially 0 or 1

    Y = np.stack([X[:, 0] * 2.0, X[:, 1] - X[:, 2]], axis=1).astype(np.float32)
    torch.manual_seed(1)
    reg = torch.nn.Linear(5, 2)
    r = descend.fit(
        reg, (X, Y), "mse", optimizer=_frozen(), epochs=1, batch_size=32, validation=None,
        verbose=0,
    )  # fmt: skip
    with torch.no_grad():
        pred = reg(torch.as_tensor(X)).numpy()
    r2 = np.mean(1 - ((pred - Y) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0))
    assert r.history.metric_name == "r2"
    assert r.history.metric == pytest.approx([r2], rel=1e-5)


def test_running_training_metric_for_streams_and_callables():
    # A DataLoader (no resident copy to re-evaluate) now gets its training metric too, and a
    # callable metric is averaged over samples like the built-in ones.
    rng = np.random.default_rng(2)
    X = torch.as_tensor(rng.standard_normal((90, 4)), dtype=torch.float32)
    y = torch.as_tensor((rng.standard_normal(90) > 0).astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=25)
    r = descend.fit(
        model, loader, "cross_entropy", optimizer=_frozen(), epochs=1, validation=None, verbose=0
    )
    assert r.history.metric == pytest.approx([acc], abs=1e-6)

    def hit_rate(pred, target):
        return float((pred.argmax(1) == target).float().mean())

    r = descend.fit(
        model, (X, y), "cross_entropy", optimizer=_frozen(), epochs=1, batch_size=25,
        validation=None, verbose=0, metric=hit_rate,
    )  # fmt: skip
    assert r.history.metric_name == "hit_rate"
    assert r.history.metric == pytest.approx([acc], abs=1e-6)


def test_running_training_metric_survives_a_mid_epoch_resume(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    y = (X[:, :3] @ rng.standard_normal((3, 3))).argmax(1)

    class Interrupt(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 11:  # epoch 2 of 7 steps, mid-way
                raise KeyboardInterrupt

    def run(ckdir, **kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        return descend.fit(
            model, (X, y), "cross_entropy", optimizer=descend.optim.adamw(lr=3e-2), epochs=3,
            batch_size=32, validation=None, verbose=0, seed=0, checkpoint=ckdir,
            checkpoint_every=1, **kw,
        )  # fmt: skip

    whole = run(tmp_path / "a")
    cut = run(tmp_path / "b", callbacks=[Interrupt()])
    assert cut.stop_reason is StopReason.INTERRUPTED and cut.epochs == 1
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.epochs == 3
    assert resumed.history.step_loss == whole.history.step_loss
    assert resumed.history.metric == whole.history.metric
    assert len(set(whole.history.metric)) > 1  # the metric moved: the comparison can fail


def test_a_double_precision_training_metric_survives_a_mid_epoch_resume_exactly(tmp_path):
    # A float64 model's R² sums are float64: the checkpoint kept them as float32, and the
    # resumed epoch's R² differed from the uninterrupted run's in the 8th digit.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 10, generator=g, dtype=torch.float64)
    y = X[:, :3].sum(1) + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)

    class Interrupt(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 13:  # epoch 2 of 10 steps, mid-way
                raise KeyboardInterrupt

    def run(ckdir, **kw):
        torch.manual_seed(0)
        model = mlp(10, 32, 1).double()
        return descend.fit(
            model, (X, y), "mse", optimizer=descend.optim.adamw(lr=3e-3), epochs=3,
            validation=None, metric="r2", verbose=0, seed=0, checkpoint=ckdir,
            checkpoint_every=7, **kw,
        )  # fmt: skip

    whole = run(tmp_path / "a")
    cut = run(tmp_path / "b", callbacks=[Interrupt()])
    assert cut.stop_reason is StopReason.INTERRUPTED and cut.epochs == 1
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.history.step_loss == whole.history.step_loss
    assert resumed.history.metric == whole.history.metric


def test_evaluation_skips_the_mode_switch_only_for_mode_free_models():
    from descend.train.loop import _mode_free

    plain = mlp(4, 8, 2)
    assert _mode_free(plain)

    class MyLinear(torch.nn.Linear):  # a subclass may read self.training
        pass

    assert not _mode_free(torch.nn.Sequential(MyLinear(4, 2)))
    assert not _mode_free(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5)))
    hooked = mlp(4, 8, 2)
    hooked[0].register_forward_hook(lambda mod, inp, out: None)
    assert not _mode_free(hooked)

    # With dropout the validation loss is still measured in eval mode: it equals the loss of
    # the kept weights evaluated deterministically, and the model ends in training mode.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 2)
    )
    Xv, yv = X[:40], y[:40]
    r = descend.fit(
        model, (X[40:], y[40:]), "cross_entropy", validation=(Xv, yv), epochs=3, lr=1e-2,
        verbose=0, seed=0, restore_best=False,
    )  # fmt: skip
    assert model.training
    model.eval()
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(torch.as_tensor(Xv)), torch.as_tensor(yv))
    assert r.history.val_loss[-1] == pytest.approx(float(want), rel=1e-5)


# ----------------------------------------------------------------------------- device hand-back


def _line_data():
    torch.manual_seed(0)
    X = torch.randn(64, 3)
    return X, X @ torch.tensor([1.0, -2.0, 0.5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cpu_model_trained_on_the_gpu_is_handed_back_on_the_cpu():
    X, y = _line_data()
    model = torch.nn.Linear(3, 1)
    r = descend.fit(model, (X, y), "mse", device="cuda", epochs=3, verbose=0, seed=0)
    assert r.device.startswith("cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    for n, p in model.named_parameters():
        assert r.params[n].device.type == "cpu" and torch.equal(r.params[n], p)
    assert {t.device.type for t in tensors_in(r.opt_state)} == {"cpu"}
    assert model(X).shape == (64, 1)  # the caller's CPU tensors still work
    on_gpu = torch.nn.Linear(3, 1).cuda()  # already on the accelerator: stays there
    descend.fit(on_gpu, (X, y), "mse", epochs=2, verbose=0, seed=0)
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}


class _Moves(torch.nn.Linear):
    """A Linear that records every ``.to(...)`` it gets."""

    def __init__(self):
        super().__init__(3, 1)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0] if args else kwargs.get("device")))
        return super().to(*args, **kwargs)


class _Boom(descend.train.callbacks.Callback):
    def on_epoch_end(self, loop):
        raise RuntimeError("boom")


def test_fit_hands_the_model_back_to_its_device_at_the_end_and_on_error(monkeypatch):
    # No second device on a CPU machine: pretend the model came from "meta" (any device that
    # is not the training one) and watch fit move it there after training, error or not.
    from descend.train import loop as loop_mod

    monkeypatch.setattr(loop_mod, "_home_device", lambda module, dev: torch.device("meta"))
    X, y = _line_data()
    model = _Moves()
    r = descend.fit(model, (X, y), "mse", device="cpu", epochs=2, verbose=0, seed=0)
    assert model.moves == ["cpu", "meta"]
    # What the result hands back follows the model.
    assert all(p.device.type == "meta" for p in r.params.values())
    state = list(tensors_in(r.opt_state))
    assert state and all(t.device.type == "meta" for t in state)
    failing = _Moves()
    with pytest.raises(RuntimeError, match="boom"):
        descend.fit(failing, (X, y), "mse", device="cpu", epochs=2, verbose=0, callbacks=[_Boom()])
    assert failing.moves == ["cpu", "meta"]


def test_home_device_is_none_when_nothing_needs_moving():
    from descend.train.loop import _home_device

    cpu = torch.device("cpu")
    assert _home_device(torch.nn.Linear(2, 1), cpu) is None  # already there
    assert _home_device(torch.nn.ReLU(), cpu) is None  # no tensors
    assert _home_device(torch.nn.Linear(2, 1), torch.device("meta")) == cpu


def test_an_objective_of_the_output_alone_trains_on_data_without_targets():
    # fit(model, X, loss=lambda out: ...) — the docstring's "X alone for a loss that needs no
    # targets" — used to fail with a raw TypeError (the loop called loss(out, None)).
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        start = float((model(X) ** 2).mean())
    r = descend.fit(model, X, lambda out: (out**2).mean(), lr=3e-2, epochs=20, verbose=0, seed=0)
    assert r.best_loss < 0.05 * start
    # The two-argument form keeps working with X alone (it gets target=None) ...
    r2 = descend.fit(
        torch.nn.Linear(3, 3), X, lambda out, _: (out**2).mean(), lr=3e-2, epochs=2, verbose=0
    )
    assert math.isfinite(r2.best_loss)
    # ... and a one-argument loss with targets is refused before step 1, with the fix.
    with pytest.raises(InputError, match="pass X alone"):
        descend.fit(torch.nn.Linear(3, 3), (X, X), lambda out: out.mean(), epochs=1, verbose=0)


def test_a_torch_optimizer_passed_to_fit_gets_descends_counterpart_in_the_error():
    model = torch.nn.Linear(3, 2)
    X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    cases = [
        (torch.optim.SGD(model.parameters(), lr=0.1), "descend.optim.sgd(lr=0.1)"),
        (
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8, nesterov=True),
            "descend.optim.nesterov(lr=0.05, momentum=0.8)",
        ),
        (
            torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95)),
            "descend.optim.adamw(lr=0.0003, betas=(0.9, 0.95), weight_decay=0.01)",
        ),
        (torch.optim.LBFGS(model.parameters()), "LBFGS has no direct equivalent"),
    ]
    for opt, hint in cases:
        with pytest.raises(ConfigError) as err:
            descend.fit(model, (X, y), "cross_entropy", optimizer=opt, epochs=1, verbose=0)
        text = str(err.value)
        assert hint in text
        assert "\n" not in text  # the optimizer's multi-line repr is not pasted in
    # The hint is runnable: the suggested transform trains.
    r = descend.fit(
        model, (X, y), "cross_entropy", optimizer=descend.optim.nesterov(lr=0.05, momentum=0.8),
        epochs=2, verbose=0,
    )  # fmt: skip
    assert math.isfinite(r.best_loss)


def test_a_model_with_nothing_to_train_is_refused_before_step_1():
    X = torch.randn(20, 3)
    with pytest.raises(InputError, match=r"ReLU without parameters.*torch\.nn\.Linear"):
        descend.fit(torch.nn.ReLU(), (X, X), "mse", epochs=1, verbose=0)
    frozen = torch.nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(InputError, match=r"2 parameter tensors all have requires_grad=False"):
        descend.fit(frozen, (X, X), "mse", epochs=1, verbose=0)


def test_a_model_returning_a_tuple_is_named_plainly():
    lstm = torch.nn.LSTM(3, 2, batch_first=True)
    with pytest.raises(InputError, match="got a tuple of 2 items — return the prediction"):
        descend.fit(lstm, (torch.randn(20, 1, 3), torch.randn(20)), "mse", epochs=1, verbose=0)


def test_callbacks_are_checked_before_training_and_one_alone_is_accepted():
    X = torch.randn(40, 3)
    with pytest.raises(ConfigError, match=r"fit\(callbacks\) must be a list of Callback"):
        descend.fit(torch.nn.Linear(3, 1), (X, X[:, 0]), "mse", callbacks=print, verbose=0)

    class Half:  # duck-typed, but without on_step_end / on_fit_end: it would fail mid-run
        def on_fit_start(self, loop):
            pass

        def on_epoch_end(self, loop):
            pass

    with pytest.raises(ConfigError, match="without on_step_end, on_fit_end"):
        descend.fit(torch.nn.Linear(3, 1), (X, X[:, 0]), "mse", callbacks=[Half()], verbose=0)

    seen = []

    class Count(descend.train.Callback):
        wants_steps = False

        def on_epoch_end(self, loop):
            seen.append(loop.epoch)

    descend.fit(
        torch.nn.Linear(3, 1), (X, X[:, 0]), "mse", lr=1e-2, epochs=3, callbacks=Count(), verbose=0
    )
    assert seen == [1, 2, 3]


def test_a_divergence_on_unscaled_data_names_the_scale():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)) * 1e30
    y = (X[:, 0] > 0).astype(int)
    # Every step's gradient norm overflows. The CPU checks each step and gives up at step 7; a
    # GPU checks once per 16-step window (here once per 5-step epoch), one rollback a window,
    # so it needs 7 epochs to give up: the budget allows 10 (5 ran out on an H200, session 11).
    r = descend.fit(mlp(4, 16, 2), (X, y), "cross_entropy", lr=1e-2, epochs=10, verbose=0, seed=0)
    assert r.stop_reason is StopReason.DIVERGED
    assert re.search(r"the features reach [\d.]+e\+30 in absolute value", r.stop_message)
    assert "standardize them" in r.stop_message
    # a divergence on standardized data does not blame the scale
    bad = descend.fit(
        mlp(4, 16, 2), (X / 1e30, y), "cross_entropy", lr=1e6, epochs=5, verbose=0, seed=0
    )
    if bad.stop_reason is StopReason.DIVERGED:
        assert "standardize" not in bad.stop_message


def test_callbacks_may_be_any_iterable():
    X = torch.randn(30, 3)
    seen = []

    class Count(descend.train.Callback):
        wants_steps = False

        def on_epoch_end(self, loop):
            seen.append(loop.epoch)

    gen = (cb for cb in [Count()])
    descend.fit(
        torch.nn.Linear(3, 1), (X, X[:, 0]), "mse", lr=1e-2, epochs=2, callbacks=gen, verbose=0
    )
    assert seen == [1, 2]


def test_stop_sentence_counts_one_epoch_in_the_singular():
    x, y = torch.randn(64, 2), torch.randn(64)
    r = descend.fit(torch.nn.Linear(2, 1), (x, y), "mse", lr=0.01, epochs=1, verbose=0)
    assert r.stop_message.startswith("Used the whole budget of 1 epoch;"), r.stop_message
    r = descend.fit(torch.nn.Linear(2, 1), (x, y), "mse", lr=0.01, epochs=2, verbose=0)
    assert r.stop_message.startswith("Used the whole budget of 2 epochs;"), r.stop_message


def test_progress_lines_to_a_closed_pipe_stop_and_the_run_goes_on():
    from descend.train.callbacks import PlainProgress

    class GoneReader:  # a pipe whose reader went away
        writes = 0

        def write(self, text):
            GoneReader.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    x, y = torch.randn(64, 2), torch.randn(64)
    progress = PlainProgress(stream=GoneReader())
    r = descend.fit(
        torch.nn.Linear(2, 1), (x, y), "mse", lr=0.01, epochs=3, callbacks=[progress], verbose=0
    )
    assert r.epochs == 3 and GoneReader.writes == 1  # one failed write, then silence


class _ComputedIds(torch.nn.Module):
    """An embedding table of 10 rows looked up with ids the model computes from x."""

    def __init__(self, ids):
        super().__init__()
        torch.manual_seed(0)
        self.ids, self.table = ids, torch.nn.Embedding(10, 2)

    def forward(self, x):
        return self.table(self.ids(x)).sum((1, 2))[:, None]


def test_embedding_ids_out_of_range_are_named_wherever_they_show_up():
    # torch says only "index out of range in self"; fit names the ids and the tables, whether
    # the probe before step 1, a later training batch or the validation data meets them.
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1)
        )

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 10, (100, 3), generator=g)
    y = torch.randn(100, 1, generator=g)
    kw = {"epochs": 1, "verbose": 0, "optimizer": "adam", "validation": None}
    with pytest.raises(
        descend.InputError,
        match=r"the training data's integer features must index inside the model's embedding "
        r"tables; got model.0 = Embedding\(10, 4\) takes 0..9, and the ids it is given from X "
        r"hold 0..45 — give each table at least \(largest id \+ 1\) rows",
    ):
        descend.fit(model(), (X * 5, y), "mse", **kw)
    late = X.clone()
    late[77, 1] = 10  # batch 5 of 7 in order: after the probe's first rows
    with pytest.raises(descend.InputError, match=r"training data's .*model.0 .* from X hold 0..10"):
        descend.fit(model(), (late, y), "mse", shuffle=False, batch_size=16, **kw)
    with pytest.raises(descend.InputError, match=r"the validation data's .* from X hold 0..10"):
        descend.fit(model(), (X, y), "mse", **{**kw, "validation": (late[70:80], y[70:80])})

    # ids the model computes are not traced to the data: torch's error, named with the ranges
    with pytest.raises(
        descend.InputError,
        match=r"got X holds 0..9, and model.table = Embedding\(10, 2\) takes 0..9 \(torch: index "
        r"out of range in self\)",
    ):
        descend.fit(_ComputedIds(lambda x: x + 3), (X, y), "mse", **kw)

    # an IndexError of the user's own code is not rewritten
    class Picky(torch.nn.Module):
        def forward(self, x):
            raise IndexError("my own index error")

    with pytest.raises(IndexError, match="my own index error"):
        descend.fit(
            torch.nn.Sequential(Picky(), torch.nn.Linear(3, 1)), (X.float(), y), "mse", **kw
        )


class _KernelSees(torch.nn.Embedding):
    """An embedding table that records the largest id that reached its lookup."""

    def forward(self, ids):
        self.reached = max(getattr(self, "reached", -1), int(ids.max()))
        return super().forward(ids)


def test_ids_out_of_range_never_reach_a_table():
    # On a GPU an id out of range is a device-side assert, not an IndexError: the process's
    # CUDA context is lost (every later CUDA call fails). So fit checks the ids held in memory
    # before step 1: the probe's before its lookup, every row's through the table's view of
    # the input. Seen on an H200 (session 31): one such test left each later test of its
    # pytest worker failing in setup.
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 10, (100, 3), generator=g)
    y = torch.randn(100, 1, generator=g)
    kw = {"epochs": 1, "verbose": 0, "optimizer": "adam", "validation": None}

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(_KernelSees(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))

    late = X.clone()
    late[77, 1] = 10  # batch 5 of 7 in order
    for data, extra in [
        ((X * 5, y), {}),  # the probe's own rows
        ((late, y), {"shuffle": False, "batch_size": 16}),  # a later training batch
        ((X, y), {"validation": (late[70:80], y[70:80])}),  # the validation data
    ]:
        m = model()
        with pytest.raises(descend.InputError, match=r"must index inside the model's embedding"):
            descend.fit(m, data, "mse", **{**kw, **extra})
        assert getattr(m[0], "reached", -1) <= 9

    # Two tables fed by columns of one input, of different sizes: each column is checked
    # against its own table (item ids up to 29 are fine; a user id 5 in row 90 is not).
    class TwoTables(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.users, self.items = _KernelSees(5, 3), _KernelSees(30, 3)

        def forward(self, x):
            return (self.users(x[:, 0]) * self.items(x[:, 1])).sum(1, keepdim=True)

    pairs = torch.stack(
        [torch.randint(0, 5, (100,), generator=g), torch.randint(0, 30, (100,), generator=g)], 1
    )
    fine = descend.fit(TwoTables(), (pairs, y), "mse", **kw)
    assert fine.epochs == 1
    bad = pairs.clone()
    bad[90, 0] = 5
    m = TwoTables()
    with pytest.raises(
        descend.InputError,
        match=r"model.users = _KernelSees\(5, 3\) takes 0..4, and the ids it is given from X "
        r"hold 0..5",
    ):
        descend.fit(m, (bad, y), "mse", shuffle=False, batch_size=16, **kw)
    assert getattr(m.users, "reached", -1) <= 4

    # ids the model computes are its own business: clamped ones train
    clamps = _ComputedIds(lambda x: x.clamp(max=9))
    assert descend.fit(clamps, (X * 5, y), "mse", **kw).epochs == 1


def test_batch_norm_on_batches_of_one_sample_is_named():
    # torch: "Expected more than 1 value per channel when training"; raised from the range
    # test or the first step, it said nothing of batch_size
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )

    X = torch.randn(30, 4)
    y = X.sum(1)
    for kw in ({}, {"optimizer": "adam"}):  # the autopilot's range test, and a plain run
        with pytest.raises(
            InputError,
            match=r"a model with batch norm needs at least 2 samples in every training batch "
            r"\(it normalizes over the batch\); got a batch of 1 sample \(batch_size=1, 24 "
            r"training samples\) — pass batch_size >= 2",
        ):
            descend.fit(model(), (X, y), "mse", batch_size=1, epochs=1, verbose=0, **kw)
    r = descend.fit(model(), (X, y), "mse", batch_size=2, epochs=1, verbose=0)
    assert r.stop_reason is StopReason.MAX_EPOCHS


def test_numpy_numbers_are_numbers():
    """Settings read from arrays (np.arange, np.logspace) are taken as the numbers they hold —
    the same run as with Python numbers — and a seed beyond torch's 64 bits is refused with
    the rule, not an overflow from inside torch."""
    import numpy as np

    X = torch.randn(96, 3, generator=torch.Generator().manual_seed(0))
    y = X.sum(1)

    def run(**kw):
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 1)
        r = descend.fit(m, (X, y), "mse", verbose=0, **{"seed": 1, **kw})
        return r, m.weight.detach().clone()

    plain, w_plain = run(
        epochs=3, batch_size=16, patience=5, max_time=60.0,
        optimizer=descend.optim.adamw(lr=0.01, weight_decay=0.0, betas=(0.9, 0.99)),
    )  # fmt: skip
    numpy, w_numpy = run(
        epochs=np.int64(3), batch_size=np.int32(16), patience=np.int64(5),
        max_time=np.float32(60.0),
        optimizer=descend.optim.adamw(
            lr=np.float64(0.01), weight_decay=np.int64(0), betas=(0.9, np.float64(0.99))
        ),
    )  # fmt: skip
    assert numpy.epochs == plain.epochs == 3
    assert torch.equal(w_plain, w_numpy)
    r, _ = run(epochs=2, optimizer="sgd", lr=np.float32(0.05))
    assert r.epochs == 2
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        run(epochs=1, seed=2**70)


def test_a_custom_loss_gets_targets_in_the_shape_it_reads():
    """1-D float targets beside a (N, 1) output: torch.nn.MSELoss needs them as a column
    ((N, 1) against (N,) broadcasts to (N, N)), a loss that squeezes the prediction itself
    needs them as given. The probe's rows tell which; both losses train the same model."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.05 * torch.randn(300, generator=g)
    seen: dict[str, set] = {"squeeze": set(), "torch": set()}

    def squeezing(pred, target):
        if len(target) >= 32:  # a training batch, not the probe's rows
            seen["squeeze"].add(tuple(target.shape[1:]))
        return ((pred.squeeze(-1) - target) ** 2).mean()

    mse = torch.nn.MSELoss()

    def torch_mse(pred, target):
        if len(target) >= 32:
            seen["torch"].add(tuple(target.shape[1:]))
        return mse(pred, target)

    weights = []
    for loss in (squeezing, torch_mse):
        warnings.simplefilter("error")  # no broadcast warning from torch's loss, probe or not
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 1)
        opt = descend.optim.adam(lr=0.05)
        descend.fit(m, (X, y), loss, optimizer=opt, epochs=30, verbose=0, seed=0)
        weights.append(m.weight.detach().clone())
    # each trained on its data's rows (an (N, N) broadcast learns only the mean: ~0 weights)
    for w in weights:
        torch.testing.assert_close(w, torch.tensor([[1.0, -2.0, 0.5]]), atol=0.05, rtol=0)
    torch.testing.assert_close(weights[0], weights[1], atol=1e-4, rtol=1e-4)
    # in training (batches of 32 and more) each loss saw the shape it reads
    assert seen == {"squeeze": {()}, "torch": {(1,)}}


@pytest.mark.parametrize(
    ("labels", "width", "classes"),
    [
        ([0, 1, 3], 4, None),  # output indices already (class 2 absent here): kept
        ([3, 7], 8, None),
        ([0, 1, 3], 3, [0, 1, 3]),  # three outputs for three labels: encoded, as before
        ([-1, 1], 2, [-1, 1]),
    ],
)
def test_integer_labels_that_index_the_outputs_are_kept(labels, width, classes):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(240, 2, generator=g)
    cuts = torch.tensor([-0.5, 0.5] if len(labels) == 3 else [0.0])
    which = torch.bucketize(
        X[:, 0].contiguous(), cuts
    )  # intervals along one feature: linearly separable
    y = torch.tensor(labels)[which]
    torch.manual_seed(0)
    m = torch.nn.Linear(2, width)
    r = descend.fit(
        m, (X, y), "cross_entropy", optimizer=descend.optim.adam(lr=0.05), epochs=40,
        verbose=0, seed=0,
    )  # fmt: skip
    assert (None if r.classes is None else list(r.classes)) == classes
    pred = m(X).argmax(1)
    if classes is not None:
        pred = torch.tensor(classes)[pred]
    assert (pred == y).float().mean() > 0.9  # the model's argmax is the label (or its code)


class _HookCB(descend.Callback):
    def on_epoch_end(self, loop):
        pass


_Xe = torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
_ye = _Xe @ torch.tensor([1.0, -2.0, 0.5])
_yc = (_Xe[:, 0] > 0).long()


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda: descend.fit(torch.nn.Linear(3, 1), _Xe, "mse", epochs=2, verbose=0),
         InputError, "compares the predictions with targets"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), lambda p, t: (p - t) ** 2,
                             lr=1e-2, epochs=1, verbose=0),
         InputError, "must return one number for the batch"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye),
                             lambda p, t: ((p - t) ** 2).mean().detach(), lr=1e-2, epochs=1,
                             verbose=0),
         InputError, "without .detach(), .item() or numpy"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), lambda p, t: ((p - t) ** 2),
                             epochs=1, verbose=0),  # the default policy's range test too
         InputError, "must return one number for the batch"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), "mse", lr=1e-2, epochs=1,
                             verbose=0, callbacks=[_HookCB]),
         ConfigError, "pass an instance: callbacks=[_HookCB()]"),
        (lambda: descend.fit(torch.nn.Linear(3, 2), (_Xe, _yc), "cross_entropy", lr=1e-2,
                             epochs=1, verbose=0,
                             metric=lambda p, t: (p.argmax(1) == t).float()),
         InputError, "must return one number for the batch"),
        (lambda: descend.fit(torch.nn.Linear(3, 2), (_Xe, _yc), "cross_entropy", lr=1e-2,
                             epochs=1, verbose=0, metric="r2"),
         ConfigError, "'r2' does not apply to the loss cross_entropy"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), "mse", lr=1e-2, epochs=1,
                             verbose=0, metric="accuracy"),
         ConfigError, "'accuracy' does not apply to the loss mse"),
        (lambda: descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), "mse", lr=1e-2, epochs=1,
                             verbose="yes"),
         ConfigError, "verbose must be 0 (silent), 1"),
    ],
)  # fmt: skip
def test_common_mistakes_get_a_message_with_the_fix(call, error, says):
    """Each was a raw error from inside torch or descend (AttributeError, autograd's
    'grad can be implicitly created only for scalar outputs', a TypeError at the end of the
    run, a silent 0.0 accuracy for a regression)."""
    with pytest.raises(error) as caught:
        call()
    assert says in str(caught.value)


def test_a_warm_start_leaves_the_state_it_was_given_as_it_was():
    """fit(opt_state=r1.opt_state) trains on a copy: two continuations branched from r1 start
    from the same state (the first used to advance r1's moments and step count in place)."""
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    r1 = descend.fit(model, (X, y), "mse", optimizer=descend.optim.adam(lr=1e-2), epochs=2,
                     verbose=0, seed=0)  # fmt: skip
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ends = []
    for _ in range(2):
        model.load_state_dict(start)
        descend.fit(model, (X, y), "mse", optimizer=r1.tx, opt_state=r1.opt_state, epochs=2,
                    verbose=0, seed=0)  # fmt: skip
        ends.append(model.weight.detach().clone())
    assert torch.equal(ends[0], ends[1])


def test_a_warm_start_from_an_ended_schedule_says_it_cannot_train():
    """The default plan decays its rate to 0 at the end of its budget: continuing its state
    (optimizer=r.tx, opt_state=r.opt_state) runs every step at rate 0. The run says so — a
    warning and an event — instead of returning the weights unchanged in silence; a state
    whose schedule goes on (a constant rate) continues without a word."""
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    kw = dict(verbose=0, seed=0, patience=None, validation=None, batch_size=50)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    r1 = descend.fit(model, (X, y), "mse", epochs=4, **kw)
    assert r1.history.step_lr[-1] > 0  # the last step of the budget still moved
    assert not [e for e in r1.history.events if e["kind"] != "polish"]  # (L-BFGS finished it)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="learning rate of 0") as caught:
        r2 = descend.fit(model, (X, y), "mse", optimizer=r1.tx, opt_state=r1.opt_state,
                         epochs=2, **kw)  # fmt: skip
    assert sum("learning rate of 0" in str(w.message) for w in caught) == 1  # once a run
    assert "ended at its step 16" in str(caught[0].message)  # 4 epochs x 4 steps
    assert all(lr == 0.0 for lr in r2.history.step_lr)
    assert [e["kind"] for e in r2.history.events] == ["rate_zero"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # A schedule that has not ended: no warning, and the weights move.
    r3 = descend.fit(model, (X, y), "mse", optimizer=descend.optim.adam(lr=1e-2), epochs=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        descend.fit(model, (X, y), "mse", optimizer=r3.tx, opt_state=r3.opt_state, epochs=1,
                    **kw)  # fmt: skip
    assert not torch.equal(model.weight, before["weight"])


def test_a_schedule_that_ends_before_the_run_is_said_once_and_a_warmup_from_zero_is_not():
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    kw = dict(verbose=0, seed=0, patience=None, validation=None, batch_size=None)
    # full batch: one step an epoch; a cosine over 3 steps reaches 0 at its step 3
    opt = descend.optim.adam(lr=1e-2, schedule=descend.schedules.cosine(3))
    with pytest.warns(RuntimeWarning, match="epoch 4 ran at a learning rate of 0") as caught:
        r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", optimizer=opt, epochs=6, **kw)
    assert len([w for w in caught if "learning rate of 0" in str(w.message)]) == 1
    assert r.history.step_lr[3:] == [0.0, 0.0, 0.0]
    # a schedule whose first step is at rate 0 (a warmup from zero) has not ended
    ramp = descend.optim.adam(lr=1e-2, schedule=lambda step: step / 3 if step < 3 else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", optimizer=ramp, epochs=3, **kw)
    assert r.history.step_lr[0] == 0.0 and not r.history.events
    # nor one held at 0 from the run's first step (it never ran, so it did not end)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = descend.optim.sgd(lr=0.1, schedule=lambda step: 0.0)
        r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", optimizer=opt, epochs=3, **kw)
    assert not r.history.events


def test_resuming_a_default_plan_with_a_larger_budget_says_its_rate_stays_at_zero(tmp_path):
    """The default plan's schedule is shaped over the budget it was planned for; a resume with
    more epochs rebuilds that schedule, whose rate stays at 0 past it: the run says so."""
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    kw = dict(verbose=0, seed=0, patience=None, validation=None, batch_size=50,
              checkpoint=tmp_path, checkpoint_every="epoch")  # fmt: skip
    torch.manual_seed(0)
    descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=3, **kw)
    with pytest.warns(RuntimeWarning, match="epoch 4 ran at a learning rate of 0"):
        r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=5, resume=True, **kw)
    assert r.history.step_lr[-8:] == [0.0] * 8
    assert [e["kind"] for e in r.history.events if e["kind"] != "polish"] == ["rate_zero"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_model_comes_back_in_the_mode_it_came_in(mode):
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    getattr(m, mode)()
    descend.fit(m, (X, X.sum(1)), "mse", lr=1e-2, epochs=1, verbose=0)
    assert m.training == (mode == "train") and all(c.training == m.training for c in m)


def test_a_run_stopped_before_its_first_epoch_says_so():
    class Stop(descend.Callback):
        def on_fit_start(self, loop):
            loop.request_stop()

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=3, verbose=0,
                    callbacks=[Stop()])  # fmt: skip
    assert r.epochs == 0 and "no epoch had ended" in r.stop_message


def test_sparse_gradients_are_refused_by_name():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4, sparse=True), torch.nn.Flatten(), torch.nn.Linear(4, 1)
    )
    x, y = torch.randint(0, 10, (32, 1)), torch.randn(32, 1)
    with pytest.raises(
        ConfigError, match=r"fit: the gradient of '0\.weight' must be dense.*sparse=False"
    ):
        descend.fit(model, (x, y), "mse", optimizer="adamw", epochs=1, verbose=0, validation=None)


def test_a_fit_does_not_import_fsdp():
    """torch.distributed.fsdp pulls in ~600 modules (half a second on a process's first fit:
    the iris estimator went from 0.02 s to 0.6 s); only a model sharded with it needs it. (The
    final polish's L-BFGS does, through torch's compiler: the target is noisy, so it does not
    run here.)"""
    import subprocess
    import sys

    code = (
        "import sys, torch, descend\n"
        "X = torch.randn(40, 3)\n"
        "y = X.sum(1) + torch.randn(40)\n"
        "descend.fit(torch.nn.Linear(3, 1), (X, y), 'mse', epochs=12, verbose=0)\n"
        "print('torch.distributed.fsdp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_on_a_terminal_texts_are_printed_as_they_are_not_as_markup(capsys, monkeypatch):
    """rich read '[/tmp/run1]' in a stop request as a closing tag (MarkupError after training:
    the Result lost) and swallowed '[linear_warmup(5), cosine(50)]' in the start line."""
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    class Stop(descend.Callback):
        def on_epoch_end(self, loop):
            loop.request_stop("checkpoint written to [/tmp/run1]")

    sched = descend.schedules.join(
        [descend.schedules.linear_warmup(5), descend.schedules.cosine(50)], [5]
    )
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(
        torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", epochs=3, verbose=2, callbacks=[Stop()],
        optimizer=descend.optim.sgd(lr=0.01, schedule=sched),
    )  # fmt: skip
    out = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out).split())
    assert r.epochs == 1 and "[/tmp/run1]" in out
    assert "[linear_warmup(" in out


def test_the_plot_shows_a_one_epoch_run_and_a_minimize_history(tmp_path):
    """A one-point line draws nothing: one epoch's losses were only legend entries, and a
    minimize result (steps, no epochs) drew no line at all."""
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=1, verbose=0)
    fig = r.history.plot(tmp_path / "one.png")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert lines["train loss"].get_marker() == "o" and lines["validation loss"].get_marker() == "o"
    m = descend.minimize(lambda x: (x**2).sum(), torch.ones(2), method="adam", steps=20)
    fig = m.history.plot(tmp_path / "min.png")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "objective"]
    assert len(line.get_xdata()) == 20 and fig.axes[0].get_xlabel() == "step"
    assert (tmp_path / "min.png").stat().st_size > 0


@pytest.mark.parametrize("restore", [True, False])
def test_a_failing_callback_says_which_weights_are_kept(restore):
    said = []

    class Boom(descend.Callback):
        def on_epoch_end(self, loop):
            if loop.epoch == 2:
                raise RuntimeError("boom")

        def on_fit_end(self, loop):
            said.append(loop.stop_message)

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="boom"):
        descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=3, verbose=0,
                    restore_best=restore, callbacks=[Boom()])  # fmt: skip
    assert ("restored the best weights" in said[0]) == restore


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("train_col", "val_col"), [(False, True), (True, False)])
def test_validation_targets_as_a_column_are_read_like_the_training_targets(
    train_col, val_col, stream
):
    """Validation y of shape (N, 1) beside training y of shape (N,) (or the reverse) was
    compared with the model's (N, 1) output as (N, 1, 1): a broadcast to (N, N, 1), a wrong
    validation loss with only torch's warning (and early stopping on it); the reverse was
    refused naming a reshape of the loss's arguments."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    Xv, yv = X[:10] + 0.5, y[:10]
    train_y = y[:, None] if train_col else y
    val_y = yv[:, None] if val_col else yv
    val = (
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xv, val_y), batch_size=4)
        if stream
        else (Xv, val_y)
    )
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch's broadcast warning
        r = descend.fit(
            m, (X, train_y), "mse", optimizer="adam", lr=1e-2, epochs=2, validation=val,
            patience=None, restore_best=False, verbose=0, seed=0,
        )  # fmt: skip
    with torch.no_grad():
        oracle = float(((m(Xv)[:, 0] - yv) ** 2).mean())
    assert r.history.val_loss[-1] == pytest.approx(oracle, rel=1e-5)


@pytest.mark.parametrize("labels", [[1, 2], [-1, 1], ["a", "b"]])
def test_encoded_labels_with_a_streamed_validation_set_are_refused(labels):
    """Training labels that are not 0..C-1 are encoded (classes[i] -> i); a validation
    DataLoader cannot be encoded with them. Its raw labels reached the loss: torch's
    'IndexError: Target 2 is out of bounds' (or -1) after the first epoch, or, for labels the
    user had encoded otherwise, a silently wrong validation loss."""
    X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = np.array(labels * 20)
    val = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X[:8], torch.tensor([0, 1] * 4)), batch_size=4
    )
    with pytest.raises(InputError) as caught:
        descend.fit(torch.nn.Linear(3, 2), (X, y), "cross_entropy", validation=val,
                    optimizer="adam", lr=1e-2, epochs=1, verbose=0, seed=0)  # fmt: skip
    text = str(caught.value)
    assert "validation (a DataLoader)" in text and repr(labels[1]) in text
    assert "pass validation as arrays (X_val, y_val)" in text
    if labels == [1, 2]:
        # labels that index a wide enough model's outputs are kept as they are: no code book,
        # and the stream's labels are the same indices
        val12 = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X[:8], torch.tensor([1, 2] * 4)), batch_size=4
        )
        r = descend.fit(torch.nn.Linear(3, 3), (X, y), "cross_entropy", validation=val12,
                        optimizer="adam", lr=1e-2, epochs=1, verbose=0, seed=0)  # fmt: skip
        assert r.classes is None and math.isfinite(r.history.val_loss[-1])


class _OneShot(torch.utils.data.IterableDataset):
    """A dataset over one iterator: a second pass yields nothing."""

    def __init__(self, X, y):
        self.rows = iter(zip(X, y))

    def __iter__(self):
        return self.rows


class _Rows(torch.utils.data.IterableDataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        return iter(zip(self.X, self.y))


def test_streams_that_yield_no_batches_are_named():
    """An empty DataLoader (or one whose drop_last leaves no batch) stopped fit with a bare
    StopIteration from its first-batch probe; a one-shot iterable trained its first epoch
    and then 'trained' on nothing (train_loss nan, the budget 'used'); an empty validation
    DataLoader gave a validation loss of nan every epoch."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    DL, TD = torch.utils.data.DataLoader, torch.utils.data.TensorDataset
    kw = dict(optimizer="adam", lr=1e-2, verbose=0, seed=0)
    for data in (DL(TD(X[:0], y[:0]), batch_size=16), DL(TD(X, y), batch_size=100, drop_last=True)):
        with pytest.raises(InputError, match="the training data must yield at least one batch"):
            descend.fit(torch.nn.Linear(3, 1), data, "mse", epochs=2, **kw)
    with pytest.raises(InputError) as caught:
        descend.fit(torch.nn.Linear(3, 1), DL(_OneShot(X, y), batch_size=16), "mse", epochs=3,
                    **kw)  # fmt: skip
    assert "yielded no batch in epoch 2" in str(caught.value)
    assert "return a new iterator from __iter__" in str(caught.value)
    for val in (DL(TD(X[:0], y[:0]), batch_size=4), DL(_Rows(X[:0], y[:0]), batch_size=4)):
        with pytest.raises(InputError, match="the validation data must yield at least one batch"):
            descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=2, validation=val, **kw)
    # a stream that starts over every epoch trains every epoch
    r = descend.fit(torch.nn.Linear(3, 1), DL(_Rows(X, y), batch_size=16), "mse", epochs=3, **kw)
    assert r.steps == 12 and all(math.isfinite(v) for v in r.history.train_loss)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize(
    "loss",
    [
        lambda p, t: 3.0,
        lambda p, t: float(((p - t) ** 2).mean()),
        lambda p, t: np.float32(((p - t) ** 2).mean().item()),
        lambda p, t: None,
        lambda p, t: (((p - t) ** 2).mean(), 0),
    ],
    ids=["number", "float", "numpy", "None", "tuple"],
)
def test_a_custom_loss_that_returns_no_tensor_is_named(loss):
    """Was torch's "TypeError: 'float' object is not iterable" (or an AssertionError) from
    inside autograd at the first step."""
    with pytest.raises(InputError, match=r"must return a scalar torch\.Tensor .*return the tensor"):
        descend.fit(torch.nn.Linear(3, 1), (_Xe, _ye), loss, optimizer="adam", lr=1e-2,
                    epochs=1, verbose=0, seed=0)  # fmt: skip


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_a_custom_loss_of_one_element_trains_like_a_scalar_one(model):
    """A loss of shape (1,) (a sum over dim 0 of an (N, 1) column, a .reshape(1)) is one
    number: it stopped the run at the first epoch's end with "TypeError: float() argument
    must be ... not 'list'" from the loop's bookkeeping."""
    weights = []
    for reshape in (False, True):
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 1) if model == "linear" else mlp(3, 4, 1)

        def loss(p, t, reshape=reshape):
            v = ((p - t) ** 2).mean()
            return v.reshape(1) if reshape else v

        r = descend.fit(m, (_Xe, _ye), loss, optimizer="adam", lr=1e-2, epochs=2, verbose=0,
                        seed=0)  # fmt: skip
        weights.append([p.detach().clone() for p in m.parameters()])
        assert len(r.history.train_loss) == 2
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Reduced(torch.nn.Module):
    """Averages over the batch: one number for all samples."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x).mean()


class _Labels(torch.nn.Module):
    """Returns predicted labels (argmax), not scores."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x).argmax(1)


@pytest.mark.parametrize(
    ("model", "loss", "y", "says"),
    [
        (_Reduced, "mse", _ye, "a 0-dimensional tensor"),
        (_Labels, "mse", _ye, "dtype torch.int64"),
        (_Labels, "cross_entropy", _yc, "dtype torch.int64"),
        (_Labels, lambda p, t: ((p - t) ** 2).mean(), _ye, "dtype torch.int64"),
    ],
)  # fmt: skip
def test_a_model_output_that_cannot_train_is_named(model, loss, y, says):
    """A 0-d output was an IndexError from fit's own probe ('tuple index out of range');
    integer predictions passed the probe (its stand-in output was cast to float) and stopped
    the first step with torch's '"mse_cpu" not implemented for Long', or, for a custom loss,
    blamed the loss for having no gradient."""
    with pytest.raises(InputError) as caught:
        descend.fit(model(), (_Xe, y), loss, optimizer="adam", lr=1e-2, epochs=1, verbose=0)
    assert "the model's output" in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize("labels", [[0, 1], [3, 7]])
def test_labels_equal_to_ignore_index_stay_ignored(labels):
    """prepare encoded labels that are not 0..C-1 by their sorted values, the ignore_index
    value among them: {-100, 0, 1} became {0, 1, 2}, refused as 'values up to 2' for a model
    of 2 outputs, and labels that were all -100 became class 0, trained on silently."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(160, 3, generator=g)
    right = X[:, 0] > 0
    ignored = torch.arange(160) % 4 == 0
    # the ignored rows hold the wrong label: learning them would cost accuracy
    y = torch.where(right != ignored, labels[1], labels[0])
    y = torch.where(ignored, -100, y)
    loss = descend.losses.get("cross_entropy", ignore_index=-100)
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    r = descend.fit(m, (X[:120], y[:120]), loss, optimizer="adam", lr=0.05, epochs=30,
                    validation=(X[120:], y[120:]), patience=None, restore_best=False, verbose=0,
                    seed=0)  # fmt: skip
    assert (None if r.classes is None else list(r.classes)) == (
        None if labels == [0, 1] else labels
    )
    assert (m(X).argmax(1) == right.long())[~ignored].float().mean() > 0.95
    # the validation loss is torch's over the labelled rows (in class indices 0, 1)
    codes = torch.where(ignored, -100, right.long())[120:]
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(m(X[120:]), codes, ignore_index=-100)
    assert r.history.val_loss[-1] == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(InputError, match="every training label equals ignore_index=-100"):
        descend.fit(torch.nn.Linear(3, 2), (X, torch.full((160,), -100)), loss, epochs=1,
                    verbose=0)  # fmt: skip


def test_a_loss_without_reduction_is_refused_before_training():
    # A plain MLP's step raised torch's "grad can be implicitly created only for scalar
    # outputs"; other models got the loop's message only after their first forward pass.
    X = torch.randn(64, 3)
    y = X.sum(1, keepdim=True)
    per_sample = descend.losses.get("mse", reduction="none")
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    for call in (
        lambda: descend.fit(mlp, (X, y), per_sample, epochs=1, verbose=0),
        lambda: descend.lr_find(mlp, (X, y), per_sample),
    ):
        with pytest.raises(ConfigError, match="must reduce each batch to one number"):
            call()
    summed = descend.losses.get("mse", reduction="sum")
    r = descend.fit(mlp, (X, y), summed, epochs=1, lr=1e-3, verbose=0)
    assert r.epochs == 1 and math.isfinite(r.history.train_loss[0])


def test_on_fit_end_runs_when_an_error_follows_a_decided_stop():
    """A callback failing in the epoch where early stopping had fired skipped on_fit_end (the
    finally tested ``reason is None``): a progress bar was left running, the best weights
    were not put back."""
    said = []

    class Boom(descend.Callback):
        def on_epoch_end(self, loop):
            raise RuntimeError("boom")

        def on_fit_end(self, loop):
            said.append(loop.stop_message)

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)  # at the optimum of y = 0: it stops after epoch 1
    with pytest.raises(RuntimeError, match="boom"):
        descend.fit(model, (X, torch.zeros(64)), "mse", lr=1e-2, epochs=5, patience=1,
                    verbose=0, callbacks=[Boom()])  # fmt: skip
    assert len(said) == 1 and said[0].startswith("Training failed with an error")


def test_the_plot_of_a_run_stopped_before_its_first_epoch_ended_does_not_warn(tmp_path):
    """An empty history (a stop asked for in on_fit_start, Ctrl-C in epoch 1) drew no line,
    and legend() warned 'No artists with labels found' (an error under -W error)."""

    class Stop(descend.Callback):
        def on_fit_start(self, loop):
            loop.request_stop("not now")

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=2, verbose=0,
                    callbacks=[Stop()])  # fmt: skip
    assert r.steps == 0 and not r.history.step_loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.history.plot(tmp_path / "none.png")
    assert (tmp_path / "none.png").stat().st_size > 0


def test_a_subclass_overriding_on_step_end_of_a_progress_display_is_called():
    """PlainProgress says wants_steps = False (its on_step_end does nothing); a subclass that
    overrides on_step_end inherited it, and the loop never called the override."""
    seen = []

    class Lines(PlainProgress):
        def on_step_end(self, loop):
            seen.append(loop.step)

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=2, verbose=0,
                    callbacks=[Lines(stream=io.StringIO())])  # fmt: skip
    assert seen == list(range(1, r.steps + 1))


@pytest.mark.parametrize("stdout", ["none", "bare writer"])
def test_progress_without_a_terminal_stdout(monkeypatch, stdout):
    """sys.stdout None (pythonw, a service) or a writer without isatty (a logging shim): the
    default progress display failed with AttributeError before the first step."""
    import sys

    class Writer:
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)
            return len(text)

        def flush(self):
            pass

    out = None if stdout == "none" else Writer()
    monkeypatch.setattr(sys, "stdout", out)
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=2, verbose=1)
    assert r.epochs == 2
    if out is not None:
        text = "".join(out.parts)
        assert "epoch 2/2" in text and r.stop_message in text and "\x1b" not in text


def test_the_stop_sentence_without_validation_says_the_loss_did_not_improve():
    """Without validation data, patience counts epochs that did not improve on the best
    training loss; the sentence said the loss 'changed by less than tol', also of a loss that
    had risen several times over."""

    class Worse(descend.Callback):
        wants_steps = False

        def on_epoch_end(self, loop):
            if loop.epoch >= 2:
                with torch.no_grad():
                    loop.model.weight.add_(1.0)

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", lr=1e-2, epochs=20, patience=3,
                    verbose=0, validation=None, callbacks=[Worse()])  # fmt: skip
    assert r.stop_reason is StopReason.CONVERGED and r.epochs < 20
    assert max(r.history.train_loss[r.best_epoch :]) > 2 * r.best_loss
    assert "changed by less than" not in r.stop_message
    assert r.stop_message.startswith(
        f"Stopped after epoch {r.epochs}: the training loss did not improve by more than 0.0001 "
        "(relative) for 3 epochs; restored the best weights"
    )


def test_epoch_records_give_each_epoch_the_rate_of_its_last_step():
    """epoch_records() split the steps into equal epochs: after a stop cut the last epoch short
    (4 + 4 + 1 steps), epochs 1 and 2 got the rates of steps 3 and 6; with other counts, no
    epoch had a rate at all."""

    class Stop(descend.Callback):
        def on_step_end(self, loop):
            if loop.step == 9:
                loop.request_stop("enough")

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    r = descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), "mse", epochs=5, batch_size=16,
                    verbose=0, validation=None, callbacks=[Stop()],
                    optimizer=descend.optim.sgd(lr=0.1, schedule=descend.schedules.cosine(12)))  # fmt: skip
    h = r.history
    assert r.steps == 9 and h.epoch_steps == [4, 8, 9]
    assert [row["lr"] for row in h.epoch_records()] == [h.step_lr[3], h.step_lr[7], h.step_lr[8]]
    again = descend.History.from_dict(h.to_dict())
    assert again == h and again.epoch_records() == h.epoch_records()


def test_the_plot_puts_each_batch_loss_in_its_own_epoch():
    """The batch losses were spread as if every epoch had the same number of steps: after a
    stop cut the last epoch short (4 + 4 + 1 steps), epoch 1's last step was drawn at 1.33."""
    h = descend.History(step_loss=[float(i) for i in range(1, 10)], epoch=[1, 2, 3],
                        train_loss=[1.0, 2.0, 3.0], time=[1.0, 2.0, 3.0],
                        epoch_steps=[4, 8, 9])  # fmt: skip
    fig = h.plot()
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "batch loss"]
    assert list(line.get_xdata()) == pytest.approx([0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 3])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_progress_display_of_ones_own_replaces_the_default(capsys):
    # A PlainProgress passed with the default verbose=1 printed every epoch twice: the user's
    # (to its stream) and the default one (to stdout).
    X = torch.randn(40, 3)
    y = X.sum(1, keepdim=True)
    buf = io.StringIO()
    descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=2, lr=1e-2,
                callbacks=[PlainProgress(buf)])  # fmt: skip
    assert capsys.readouterr().out == ""
    assert len(re.findall(r"^epoch +1/2", buf.getvalue(), re.M)) == 1
    descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=2, lr=1e-2)  # the default: one
    assert len(re.findall(r"^epoch +1/2", capsys.readouterr().out, re.M)) == 1


def test_a_step_callback_reads_each_steps_loss_and_gradient_norm():
    # on_step_end had no public way to read the step's loss: history.step_loss is written at
    # the epoch's end.
    X = torch.randn(48, 3)
    y = X.sum(1, keepdim=True)

    class Reads(descend.Callback):
        def __init__(self):
            self.losses, self.norms = [], []

        def on_step_end(self, loop):
            self.losses.append(float(loop.last_loss))
            self.norms.append(float(loop.last_grad_norm))

    cb = Reads()
    r = descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", epochs=3, batch_size=16, lr=1e-2,
                    callbacks=[cb], verbose=0)  # fmt: skip
    assert cb.losses == r.history.step_loss and len(cb.losses) == 9
    assert cb.norms == r.history.step_grad_norm


def test_patience_running_out_at_the_last_epoch_is_no_early_stop():
    # "Stopped early after epoch 6" of 6 epochs: the patience ran out with the budget.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 3, generator=g)
    y = X.sum(1, keepdim=True)
    val = (torch.randn(40, 3, generator=g), torch.randn(40, 1, generator=g))  # unlearnable

    def run(epochs):
        return descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", validation=val, lr=1e-2,
                           epochs=epochs, patience=2, verbose=0, seed=0)  # fmt: skip

    r = run(20)
    assert r.stop_reason == StopReason.PATIENCE and r.epochs < 20
    assert r.stop_message.startswith(f"Stopped early after epoch {r.epochs}:")
    last = run(r.epochs)
    assert last.stop_reason == StopReason.PATIENCE and last.epochs == r.epochs
    assert last.stop_message.startswith(f"Stopped after epoch {r.epochs}, the budget's last:")


def test_a_validation_loader_without_targets_is_named_for_a_library_loss():
    # Resident training data next to a validation DataLoader that yields X alone: the loss got
    # y=None and raised a raw AttributeError after the first epoch. A loss of the prediction
    # alone (target_kind "any") still evaluates such a loader.
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X.sum(1, keepdim=True)
    val = DataLoader(TensorDataset(torch.randn(16, 3, generator=g)), batch_size=8)
    with pytest.raises(InputError, match=r"validation data .*must hold targets.*\(x, y\)"):
        descend.fit(torch.nn.Linear(3, 1), (X, y), "mse", validation=val, epochs=2, lr=1e-2)
    r = descend.fit(
        torch.nn.Linear(3, 1),
        (X, y),
        lambda pred, target=None: pred.square().mean(),
        validation=val,
        epochs=2,
        lr=1e-2,
    )
    assert len(r.history.val_loss) == 2 and all(math.isfinite(v) for v in r.history.val_loss)


@pytest.mark.parametrize("case", ["softmax", "function softmax", "sigmoid"])
def test_a_model_that_outputs_probabilities_into_a_logit_loss_is_warned(case):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 4, generator=g)
    torch.manual_seed(0)
    if case == "sigmoid":
        y = (X[:, 0] > 0).float()
        model, loss = (
            torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Sigmoid()),
            "binary_cross_entropy",
        )
        y = y[:, None]
    else:
        y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
        loss = "cross_entropy"
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    kw = dict(epochs=1, verbose=0, seed=0, lr=1e-2)
    with pytest.warns(RuntimeWarning, match="takes logits") as caught:
        if case == "function softmax":
            descend.fit(lambda x, p: torch.softmax(x @ p["W"], 1), (X, y), loss,
                        params={"W": torch.zeros(4, 3)}, **kw)  # fmt: skip
        else:
            descend.fit(model, (X, y), loss, **kw)
    text = str(next(w.message for w in caught if "takes logits" in str(w.message)))
    assert ("Sigmoid" in text) == (case == "sigmoid") and "remove the final" in text
    # the same models without the last layer: not a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        descend.fit(model[0] if case != "function softmax" else torch.nn.Linear(4, 3),
                    (X, y), loss, **kw)  # fmt: skip


def test_the_look_at_the_outputs_changes_no_batch_norm_statistics():
    from descend.train.loop import _warn_probability_outputs

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    bundle = types.SimpleNamespace(train=types.SimpleNamespace(resident=True, X=torch.randn(50, 4)))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (logits: no warning either)
        _warn_probability_outputs(m, bundle, descend.losses.get("cross_entropy"))
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_xor_trains_on_all_four_rows_under_the_default_split(loss):
    # validation="auto" held out 1 of XOR's 4 rows (the 3 left do not define XOR) or, for a
    # class-index loss, refused a stratified split of 4 rows: a newcomer's first demo failed.
    X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    torch.manual_seed(0)
    out = 2 if loss == "cross_entropy" else 1
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, out))
    target = y if loss == "cross_entropy" else y[:, None].float()
    with pytest.warns(UserWarning, match=r"4 samples are too few to hold out 20% for validation"):
        r = descend.fit(model, (X, target), loss, verbose=0, seed=0)
    assert r.history.val_loss == [] and len(r.history.train_loss) > 0
    with torch.no_grad():
        got = model(X).argmax(1) if out == 2 else (model(X)[:, 0] > 0).long()
    assert got.tolist() == y.tolist()
    # an explicit fraction is exactly that: refused where it cannot split
    with pytest.raises(descend.InputError, match=r"validation=0.2 must leave room for every"):
        descend.fit(model, (X, y), "cross_entropy", validation=0.2, verbose=0)


def test_the_default_split_holds_nothing_out_where_classes_cannot_sit_on_both_sides():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 4, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])  # 2 to hold out for 3 classes
    model = torch.nn.Linear(4, 3)
    with pytest.warns(UserWarning, match=r"a 20% split of 9 samples cannot keep every one of"):
        r = descend.fit(model, (X, y), "cross_entropy", epochs=3, verbose=0)
    assert r.history.val_loss == []
    # 10 rows of a regression: 2 held out, as always, and nothing said
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Xr, yr = torch.randn(10, 4, generator=g), torch.randn(10, 1, generator=g)
        r = descend.fit(torch.nn.Linear(4, 1), (Xr, yr), "mse", epochs=3, verbose=0)
    assert len(r.history.val_loss) == 3
    # validation=None says nothing either
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kw = {"epochs": 1, "verbose": 0, "validation": None}
        descend.fit(torch.nn.Linear(4, 3), (X, y), "cross_entropy", **kw)


def test_ids_out_of_range_in_a_dataloader_never_reach_a_table():
    # A stream cannot be checked before step 1: each batch is checked on the host before it
    # moves to the device (on a GPU the lookup's own check is a device-side assert).
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 10, (100, 3), generator=g)
    y = torch.randn(100, 1, generator=g)
    late = X.clone()
    late[77, 1] = 12  # batch 5 of 7 in order

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(_KernelSees(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))

    kw = {"epochs": 1, "verbose": 0, "optimizer": "adam", "validation": None}
    m = model()
    with pytest.raises(
        descend.InputError,
        match=r"training data's .*model.0 = _KernelSees\(10, 4\) takes 0..9, and the ids it is "
        r"given from X \(a batch of the DataLoader\) hold 0..12",
    ):
        descend.fit(m, DataLoader(TensorDataset(late, y), batch_size=16), "mse", **kw)
    assert m[0].reached <= 9
    m = model()
    val = DataLoader(TensorDataset(late[70:80], y[70:80]), batch_size=4)
    with pytest.raises(descend.InputError, match=r"the validation data's .* hold 0..12"):
        train = DataLoader(TensorDataset(X, y), batch_size=16)
        descend.fit(m, train, "mse", **{**kw, "validation": val})
    assert m[0].reached <= 9
    # in range: trains as before
    r = descend.fit(model(), DataLoader(TensorDataset(X, y), batch_size=16), "mse", **kw)
    assert r.epochs == 1
