"""Tests of descend.losses: values against torch / hand formulas, gradients, the messages of
every refused input, and the registry."""

from __future__ import annotations

import doctest
import math
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import descend
from descend import losses as L
from descend._errors import ConfigError, InputError

torch.manual_seed(0)


def esc(text: str) -> str:
    return re.escape(text)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def labels(n: int, c: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g)


def weights(n: int, seed: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=dtype) * 2 + 0.1


# ------------------------------------------------------------------------------------------
# Values: regression losses
# ------------------------------------------------------------------------------------------

REGRESSION = [
    (L.mse, lambda p, t, r: F.mse_loss(p, t, reduction=r), {}),
    (L.mae, lambda p, t, r: F.l1_loss(p, t, reduction=r), {}),
    (L.huber, lambda p, t, r: F.huber_loss(p, t, reduction=r, delta=0.7), {"delta": 0.7}),
]


@pytest.mark.parametrize(("fn", "ref", "kw"), REGRESSION, ids=["mse", "mae", "huber"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(16,), (16, 3)])
def test_regression_matches_torch(fn, ref, kw, reduction, shape):
    p, t = randn(*shape, seed=0), randn(*shape, seed=1)
    torch.testing.assert_close(fn(p, t, reduction=reduction, **kw), ref(p, t, reduction))


def test_regression_hand_formulas():
    p = torch.tensor([0.5, 3.0, -2.0])
    t = torch.tensor([0.0, 0.0, 0.0])
    assert L.mse(p, t).item() == pytest.approx((0.25 + 9 + 4) / 3)
    assert L.mae(p, t).item() == pytest.approx((0.5 + 3 + 2) / 3)
    # delta = 1: 0.5 * 0.25 (quadratic), 1 * (3 - 0.5), 1 * (2 - 0.5) (linear)
    assert L.huber(p, t).item() == pytest.approx((0.125 + 2.5 + 1.5) / 3)
    # delta = 2.5: 3 is linear (2.5 * (3 - 1.25)), 2 is quadratic (0.5 * 4)
    assert L.huber(p, t, delta=2.5).item() == pytest.approx((0.125 + 2.5 * 1.75 + 2.0) / 3)


@pytest.mark.parametrize(("fn", "ref", "kw"), REGRESSION, ids=["mse", "mae", "huber"])
def test_regression_weighted_reductions(fn, ref, kw):
    p, t, w = randn(10, 3, seed=0), randn(10, 3, seed=1), weights(10)
    elem = ref(p, t, "none")
    per_sample = elem.mean(1)
    torch.testing.assert_close(
        fn(p, t, weight=w, **kw), (w * per_sample).sum() / w.sum()
    )  # sum(w * l) / sum(w)
    torch.testing.assert_close(fn(p, t, weight=w, reduction="sum", **kw), (elem * w[:, None]).sum())
    torch.testing.assert_close(fn(p, t, weight=w, reduction="none", **kw), elem * w[:, None])
    # unit weights are exactly the unweighted mean; integer weights are accepted
    torch.testing.assert_close(fn(p, t, weight=torch.ones(10), **kw), ref(p, t, "mean"))
    w_int = torch.tensor([1, 2, 0, 3, 1, 1, 1, 1, 1, 1])
    torch.testing.assert_close(
        fn(p, t, weight=w_int, **kw), (w_int * per_sample).sum() / w_int.sum()
    )


def test_float64_targets_with_float32_pred():
    p = randn(8, 1)
    t = randn(8, 1, dtype=torch.float64, seed=3)
    out = L.mse(p, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.mse_loss(p, t.float()))


@pytest.mark.parametrize("fn", [L.mse, L.mae, L.huber, L.poisson])
def test_targets_beyond_the_range_of_a_float16_pred(fn):
    # targets are cast to pred's dtype: 1e5 became inf in float16 and the loss read inf
    p = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(
        InputError,
        match=esc(
            f"{fn.__name__} targets must fit pred's dtype torch.float16 (|value| <= 6.55e+04)"
        )
        + ".*"
        + esc("got 1 value beyond it, e.g. 1e+05 at index 1"),
    ):
        fn(p, torch.tensor([1.0, 1e5, 2.0]))
    assert fn(p.bfloat16(), torch.tensor([1.0, 1e5, 2.0])).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------
# Values: classification losses
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("use_cw", [False, True])
def test_cross_entropy_matches_torch(reduction, smoothing, use_cw):
    x, y = randn(12, 5), labels(12, 5)
    cw = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) if use_cw else None
    ours = L.cross_entropy(x, y, label_smoothing=smoothing, class_weight=cw, reduction=reduction)
    ref = F.cross_entropy(x, y, weight=cw, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_cross_entropy_hand_formula_smoothing_and_class_weight():
    x, y = randn(9, 4, dtype=torch.float64), labels(9, 4)
    c = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    eps, k = 0.1, 4
    nlp = -x.log_softmax(1)
    per = (1 - eps) * c[y] * nlp[torch.arange(9), y] + eps / k * (c * nlp).sum(1)
    out = L.cross_entropy(x, y, label_smoothing=eps, class_weight=c)
    torch.testing.assert_close(out, per.sum() / c[y].sum())
    w = weights(9, dtype=torch.float64)
    out_w = L.cross_entropy(x, y, label_smoothing=eps, class_weight=c, weight=w)
    torch.testing.assert_close(out_w, (w * per).sum() / (w * c[y]).sum())
    torch.testing.assert_close(
        L.cross_entropy(x, y, label_smoothing=eps, class_weight=c, weight=w, reduction="none"),
        w * per,
    )


def test_cross_entropy_soft_targets():
    x = randn(7, 3, dtype=torch.float64)
    t = randn(7, 3, dtype=torch.float64, seed=5).softmax(1)
    hand = -(t * x.log_softmax(1)).sum(1)
    torch.testing.assert_close(L.cross_entropy(x, t, probabilities=True), hand.mean())
    # one-hot probabilities give the same loss as the indices
    y = labels(7, 3)
    torch.testing.assert_close(
        L.cross_entropy(x, F.one_hot(y, 3).double(), probabilities=True), L.cross_entropy(x, y)
    )
    # with smoothing, class weights and sample weights
    c = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    w = weights(7, dtype=torch.float64)
    ts = 0.8 * t + 0.2 / 3
    per = -(c * ts * x.log_softmax(1)).sum(1)
    out = L.cross_entropy(x, t, probabilities=True, label_smoothing=0.2, class_weight=c, weight=w)
    torch.testing.assert_close(out, (w * per).sum() / w.sum())
    torch.testing.assert_close(
        L.cross_entropy(x, t, probabilities=True, label_smoothing=0.2, class_weight=c),
        F.cross_entropy(x, t, weight=c, label_smoothing=0.2),
    )


def test_cross_entropy_spatial_and_integral_float_targets():
    x = randn(4, 3, 6)
    y = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(L.cross_entropy(x, y), F.cross_entropy(x, y))
    w = weights(4)
    per = F.cross_entropy(x, y, reduction="none")  # (4, 6)
    torch.testing.assert_close(
        L.cross_entropy(x, y, weight=w), (per * w[:, None]).sum() / (6 * w.sum())
    )
    # floats that are whole numbers are cast to class indices (documented choice)
    x2, y2 = randn(10, 4), labels(10, 4)
    torch.testing.assert_close(L.cross_entropy(x2, y2.double()), L.cross_entropy(x2, y2))


def test_ignore_index_with_weights():
    x, y = randn(8, 3), labels(8, 3)
    y[[1, 4]] = -100
    c = torch.tensor([1.0, 2.0, 4.0])
    ref = F.cross_entropy(x, y, weight=c, ignore_index=-100)
    torch.testing.assert_close(L.cross_entropy(x, y, ignore_index=-100, class_weight=c), ref)
    w = weights(8)
    keep = y != -100
    per = F.cross_entropy(x, y, weight=c, ignore_index=-100, reduction="none")
    expect = (w * per)[keep].sum() / (w * c[y.clamp(min=0)])[keep].sum()
    torch.testing.assert_close(
        L.cross_entropy(x, y, ignore_index=-100, class_weight=c, weight=w), expect
    )
    torch.testing.assert_close(
        L.nll(x.log_softmax(1), y, ignore_index=-100, class_weight=c, weight=w), expect
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_matches_torch_and_cross_entropy(reduction):
    x, y = randn(10, 4), labels(10, 4)
    lp = x.log_softmax(1)
    c = torch.tensor([0.5, 1.0, 2.0, 1.5])
    torch.testing.assert_close(
        L.nll(lp, y, class_weight=c, reduction=reduction),
        F.nll_loss(lp, y, weight=c, reduction=reduction),
    )
    torch.testing.assert_close(
        L.nll(lp, y, reduction=reduction), L.cross_entropy(x, y, reduction=reduction)
    )
    w = weights(10)
    per = -lp[torch.arange(10), y] * c[y]
    if reduction == "mean":
        expect = (w * per).sum() / (w * c[y]).sum()
    elif reduction == "sum":
        expect = (w * per).sum()
    else:
        expect = w * per
    torch.testing.assert_close(L.nll(lp, y, class_weight=c, weight=w, reduction=reduction), expect)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_matches_torch_and_hand(reduction):
    x = randn(10, 2, dtype=torch.float64)
    t = (randn(10, 2, dtype=torch.float64, seed=4) > 0).double()
    pw = torch.tensor([2.0, 0.5], dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction)
    torch.testing.assert_close(
        L.binary_cross_entropy(x, t, pos_weight=pw, reduction=reduction), ref
    )
    s = x.sigmoid()
    hand = -(pw * t * s.log() + (1 - t) * (1 - s).log())
    w = weights(10, dtype=torch.float64)
    out = L.binary_cross_entropy(x, t, pos_weight=pw, weight=w, reduction=reduction)
    if reduction == "mean":
        expect = (hand * w[:, None]).sum() / (2 * w.sum())
    elif reduction == "sum":
        expect = (hand * w[:, None]).sum()
    else:
        expect = hand * w[:, None]
    torch.testing.assert_close(out, expect)


def test_binary_cross_entropy_accepts_integer_bool_and_soft_targets():
    x = randn(6)
    t = torch.tensor([0, 1, 1, 0, 1, 0])
    ref = F.binary_cross_entropy_with_logits(x, t.float())
    torch.testing.assert_close(L.binary_cross_entropy(x, t), ref)
    torch.testing.assert_close(L.binary_cross_entropy(x, t.bool()), ref)
    soft = torch.tensor([0.1, 0.9, 0.5, 0.0, 1.0, 0.3])
    torch.testing.assert_close(
        L.binary_cross_entropy(x, soft, pos_weight=3.0),
        F.binary_cross_entropy_with_logits(x, soft, pos_weight=torch.tensor(3.0)),
    )


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------


def _gradcheck_cases():
    d = torch.float64
    y = labels(6, 4)
    soft = randn(6, 4, dtype=d, seed=7).softmax(1)
    w = weights(6, dtype=d)
    reg_t = randn(6, 2, dtype=d, seed=3)
    bin_t = (randn(6, 2, dtype=d, seed=8) > 0).double()
    return [
        ("mse", lambda p: L.mse(p, reg_t, weight=w), (6, 2)),
        ("mae", lambda p: L.mae(p, reg_t, weight=w), (6, 2)),
        ("huber", lambda p: L.huber(p, reg_t, delta=0.5, weight=w), (6, 2)),
        ("poisson", lambda p: L.poisson(p, reg_t.abs().round(), weight=w), (6, 2)),
        (
            "cross_entropy",
            lambda p: L.cross_entropy(
                p,
                y,
                label_smoothing=0.1,
                class_weight=torch.tensor([1.0, 2.0, 0.5, 1.0]),
                weight=w,
            ),
            (6, 4),
        ),
        (
            "cross_entropy_soft",
            lambda p: L.cross_entropy(p, soft, probabilities=True, weight=w),
            (6, 4),
        ),
        (
            "binary_cross_entropy",
            lambda p: L.binary_cross_entropy(p, bin_t, pos_weight=2.0, weight=w),
            (6, 2),
        ),
        ("nll", lambda p: L.nll(p.log_softmax(1), y, weight=w), (6, 4)),
    ]


@pytest.mark.parametrize(
    ("name", "fn", "shape"), _gradcheck_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_gradcheck(name, fn, shape):
    p = randn(*shape, dtype=torch.float64, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(fn, (p,), eps=1e-6, atol=1e-5)


def test_every_registered_loss_is_gradchecked():
    checked = {name for name, _, _ in _gradcheck_cases()}
    assert set(L.REGISTRY) <= checked


# ------------------------------------------------------------------------------------------
# Refused inputs: each raises InputError with a message that names the fix
# ------------------------------------------------------------------------------------------


def test_one_hot_targets_for_class_indices():
    y = labels(32, 10)
    onehot = F.one_hot(y, 10).float()
    expected = (
        "cross_entropy expects class indices of shape (N,) with values in [0, 10); got targets "
        "of shape (32, 10) with values in {0, 1} — these look one-hot; pass targets.argmax(1), "
        "or use soft targets with probabilities=True."
    )
    with pytest.raises(InputError, match=f"^{esc(expected)}$"):
        L.cross_entropy(randn(32, 10), onehot)
    with pytest.raises(InputError, match=esc("these look one-hot; pass targets.argmax(1)")):
        L.cross_entropy(randn(32, 10), F.one_hot(y, 10))  # integer one-hot
    with pytest.raises(InputError, match="look one-hot"):
        L.nll(randn(32, 10).log_softmax(1), onehot)


def test_probability_targets_without_the_flag():
    with pytest.raises(InputError, match="look like class probabilities; pass probabilities=True"):
        L.cross_entropy(randn(8, 3), randn(8, 3, seed=2).softmax(1))


def test_column_of_class_indices():
    with pytest.raises(
        InputError, match=esc("a column of class indices — pass targets.reshape(-1)")
    ):
        L.cross_entropy(randn(8, 3), labels(8, 3).reshape(-1, 1))


def test_one_output_for_ten_classes():
    y = torch.arange(10).repeat(3)
    with pytest.raises(
        InputError,
        match=esc("values up to 9") + ".*" + esc("the model's last layer must have 10 outputs"),
    ):
        L.cross_entropy(randn(30, 1), y)
    with pytest.raises(InputError, match="the model's last layer must have 10 outputs"):
        L.get("cross_entropy").validate(randn(30, 1), y)


def test_one_output_is_refused_even_when_every_label_fits_it():
    # softmax over one score is 1: the loss is 0 and its gradient 0, so nothing would train
    pred = randn(6, 1)
    assert F.cross_entropy(pred, torch.zeros(6, dtype=torch.long)).item() == 0.0  # torch: silent
    with pytest.raises(InputError, match=esc("at least 2 scores per sample") + ".*binary_cross"):
        L.cross_entropy(pred, torch.zeros(6, dtype=torch.long))
    with pytest.raises(InputError, match=esc("a softmax over 1 score is always 1")):
        L.cross_entropy(pred, torch.ones(6, 1), probabilities=True)
    assert L.cross_entropy(randn(6, 2), torch.zeros(6, dtype=torch.long)).item() > 0


def test_class_index_out_of_range_and_one_based_labels():
    with pytest.raises(InputError, match=esc("[0, 3); got targets with values up to 5")):
        L.cross_entropy(randn(6, 3), torch.tensor([0, 1, 2, 5, 1, 0]))
    with pytest.raises(InputError, match=esc("if the labels count from 1, pass targets - 1")):
        L.cross_entropy(randn(6, 3), torch.tensor([1, 2, 3, 1, 2, 3]))
    with pytest.raises(
        InputError, match=r"2 outputs .* or keep 1 output and use binary_cross_entropy"
    ):
        L.cross_entropy(randn(4, 1), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(InputError, match="must have 4 outputs"):
        L.nll(randn(4, 2).log_softmax(1), torch.tensor([0, 1, 3, 0]))


def test_negative_class_indices_and_ignore_index():
    y = torch.tensor([0, 2, -1, 1, -1])
    with pytest.raises(
        InputError,
        match=esc("2 negative class indices (the first at index 2: -1)") + ".*ignore_index",
    ):
        L.cross_entropy(randn(5, 3), y)
    # allowed once declared as ignored; other negatives still refused
    L.cross_entropy(randn(5, 3), y, ignore_index=-1)
    with pytest.raises(InputError, match="1 negative class index"):
        L.cross_entropy(randn(5, 3), torch.tensor([0, -100, -1, 1, 2]), ignore_index=-100)


def test_non_integral_float_targets_for_class_indices():
    with pytest.raises(
        InputError,
        match=esc("non-integer values such as 0.5 (the first at index 1)")
        + ".*"
        + esc("pass probabilities=True for soft targets of shape (N, C), or targets.long()"),
    ):
        L.cross_entropy(randn(3, 4), torch.tensor([1.0, 0.5, 2.0]))
    with pytest.raises(InputError, match=esc("pass targets.long() for class indices")):
        L.nll(randn(3, 4).log_softmax(1), torch.tensor([1.0, 0.5, 2.0]))
    # a label a float error away from a whole number was shown rounded: "such as 1"
    with pytest.raises(InputError, match=esc("non-integer values such as 1.00000012 (the first")):
        L.cross_entropy(randn(2, 4), torch.tensor([0.0, 1.0000001]))


def test_integer_targets_with_probabilities_flag():
    with pytest.raises(InputError, match="these look like class indices; drop probabilities=True"):
        L.cross_entropy(randn(4, 3), labels(4, 3), probabilities=True)
    with pytest.raises(InputError, match=esc("pass targets.float()")):
        L.cross_entropy(randn(4, 3), F.one_hot(labels(4, 3), 3), probabilities=True)
    # the same labels as floats (read from a CSV) were told to give "one probability per class"
    with pytest.raises(InputError, match="these look like class indices; drop probabilities=True"):
        L.cross_entropy(randn(4, 3), labels(4, 3).float(), probabilities=True)


def test_bad_probability_targets():
    with pytest.raises(InputError, match=esc("with values in [0, 1]; got values in [-0.5")):
        L.cross_entropy(randn(2, 2), torch.tensor([[1.5, -0.5], [0.5, 0.5]]), probabilities=True)
    with pytest.raises(InputError, match=esc("1 row that do not, e.g. a sum of 0.6 at index 1")):
        L.cross_entropy(randn(2, 2), torch.tensor([[0.5, 0.5], [0.3, 0.3]]), probabilities=True)
    with pytest.raises(InputError, match=esc("targets of shape (2, 3)")):
        L.cross_entropy(randn(2, 2), torch.full((2, 3), 1 / 3), probabilities=True)


def test_integer_targets_for_regression():
    with pytest.raises(
        InputError,
        match=esc(
            "mse targets must be floating-point values; got dtype torch.int64 — pass "
            "targets.float(); if these are class labels, use cross_entropy"
        ),
    ):
        L.mse(randn(4), torch.tensor([0, 1, 2, 1]))
    # integer counts are poisson's natural targets, not class labels: no cross_entropy advice
    with pytest.raises(InputError, match=r"got dtype torch.int64 — pass targets.float\(\)$"):
        L.poisson(randn(4), torch.tensor([0, 3, 2, 1]))


@pytest.mark.parametrize("fn", [L.mse, L.mae, L.huber, L.binary_cross_entropy])
def test_silent_broadcast_is_refused(fn):
    name = fn.__name__
    with pytest.raises(
        InputError,
        match=esc(
            f"{name} targets must have the same shape as pred; got pred of shape (8, 1) and "
            "targets of shape (8,), which would broadcast to (8, 8)"
        )
        + ".*"
        + esc("pass pred.squeeze(-1) or target.reshape(-1, 1)"),
    ):
        fn(randn(8, 1), torch.rand(8))
    with pytest.raises(InputError, match=esc("pass target.squeeze(-1) or pred.reshape(-1, 1)")):
        fn(randn(8), torch.rand(8, 1))


@pytest.mark.parametrize(
    ("fn", "pred", "target", "kw"),
    [
        (L.mse, randn(8, 1), torch.rand(6, 1), {}),
        (L.cross_entropy, randn(8, 3), labels(6, 3), {}),
        (L.binary_cross_entropy, randn(8), torch.rand(6), {}),
        (L.cross_entropy, randn(8, 3), torch.rand(6, 3).softmax(1), {"probabilities": True}),
    ],
)
def test_batch_size_mismatch(fn, pred, target, kw):
    with pytest.raises(
        InputError,
        match=esc("pred and targets must have the same batch size (first dimension)")
        + ".*"
        + esc("(8 samples)")
        + ".*"
        + esc("(6 samples)"),
    ):
        fn(pred, target, **kw)


def test_other_shape_mismatches():
    with pytest.raises(InputError, match="the model's last layer must have 3 outputs"):
        L.mse(randn(4, 2), torch.rand(4, 3))
    with pytest.raises(InputError, match=esc("pred.movedim(-1, 1)")):
        L.cross_entropy(randn(2, 5, 7), torch.randint(0, 7, (2, 5)))
    with pytest.raises(InputError, match="for a binary task with a single logit use binary_cross"):
        L.cross_entropy(randn(4), labels(4, 2))
    with pytest.raises(InputError, match="class-index targets goes with cross_entropy"):
        L.binary_cross_entropy(randn(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    ("fn", "pred", "kw"),
    [
        (L.mse, randn(10), {}),
        (L.mae, randn(10, 1), {}),
        (L.huber, randn(10), {}),
        (L.binary_cross_entropy, randn(10), {}),
        (L.cross_entropy, randn(10, 3), {"probabilities": True}),
        (L.cross_entropy, randn(10, 3), {}),
        (L.nll, randn(10, 3).log_softmax(1), {}),
    ],
)
def test_nan_and_inf_targets(fn, pred, kw):
    if kw.get("probabilities"):
        t = torch.full((10, 3), 1 / 3)
        t[4, 1] = float("nan")
        t[7, 0] = float("inf")
        first = "(4, 1)"
    elif fn in (L.cross_entropy, L.nll):
        t = torch.zeros(10)
        t[4] = float("nan")
        t[7] = float("inf")
        first = "4"
    else:
        t = torch.rand(*pred.shape)
        t[4] = float("nan")
        t[7] = float("-inf")
        first = "(4, 0)" if pred.ndim == 2 else "4"
    with pytest.raises(
        InputError,
        match=esc("targets must be finite (no NaN or inf); got 1 NaN and 1 inf values")
        + ".*"
        + esc(f"the first at index {first} — drop or impute"),
    ):
        fn(pred, t, **kw)


def test_nan_count():
    t = torch.rand(20)
    t[[3, 5, 11]] = float("nan")
    with pytest.raises(
        InputError, match=esc("got 3 NaN values in targets of shape (20,), the first at index 3")
    ):
        L.mse(randn(20), t)


@pytest.mark.parametrize("fn", list(L.REGISTRY.values()), ids=list(L.REGISTRY))
def test_empty_batch(fn):
    pred = torch.zeros(0, 3)
    target = torch.zeros(0, 3) if fn.target_kind == "float" else torch.zeros(0, dtype=torch.long)
    with pytest.raises(
        InputError,
        match=esc("pred must hold at least one sample; got an empty batch of shape (0, 3)"),
    ):
        fn(pred, target)


@pytest.mark.parametrize("fn", list(L.REGISTRY.values()), ids=list(L.REGISTRY))
def test_samples_without_values(fn):
    # (N, 0): mse read NaN (a mean over nothing) and binary_cross_entropy raised torch's
    # "min(): Expected reduction dim to be specified"
    pred = torch.zeros(4, 0)
    target = torch.zeros(4, 0) if fn.target_kind == "float" else torch.zeros(4, dtype=torch.long)
    with pytest.raises(
        InputError,
        match=esc("pred must hold at least one value per sample; got shape (4, 0)"),
    ):
        fn(pred, target)
    if fn.target_kind == "float":
        with pytest.raises(
            InputError,
            match=esc("targets must hold at least one value per sample; got shape (4, 0)"),
        ):
            fn.validate_targets(torch.zeros(4, 0))


@pytest.mark.parametrize("fn", list(L.REGISTRY.values()), ids=list(L.REGISTRY))
def test_pred_not_floating_point(fn):
    pred = torch.ones(4, 3, dtype=torch.long)
    target = torch.rand(4, 3) if fn.target_kind == "float" else labels(4, 3)
    with pytest.raises(
        InputError, match=r"pred must be a floating-point tensor .*got dtype torch.int64"
    ):
        fn(pred, target)


def test_binary_cross_entropy_targets_outside_unit_interval():
    with pytest.raises(
        InputError,
        match=esc(
            "binary_cross_entropy targets must be in [0, 1] (0/1 labels or probabilities); "
            "got values in [-1, 1] — for labels in {-1, 1} pass (targets + 1) / 2"
        ),
    ):
        L.binary_cross_entropy(randn(4), torch.tensor([-1.0, 1.0, 1.0, -1.0]))
    with pytest.raises(InputError, match="look like class indices up to 3: use cross_entropy"):
        L.binary_cross_entropy(randn(4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(InputError, match=esc("got values in [0, 1.5]")):
        L.binary_cross_entropy(randn(2), torch.tensor([0.0, 1.5]))


def test_nll_refuses_logits_and_probabilities():
    with pytest.raises(InputError, match=r"must be log-probabilities .*pass pred.log_softmax"):
        L.nll(randn(4, 3) + 3.0, labels(4, 3))
    with pytest.raises(InputError, match="must be log-probabilities"):
        L.nll(randn(4, 3).softmax(1), labels(4, 3))


def test_bad_weights():
    p, t = randn(4), torch.rand(4)
    with pytest.raises(
        InputError,
        match=esc("mse weight must be one weight per sample, shape (4,); got shape (3,)"),
    ):
        L.mse(p, t, weight=torch.ones(3))
    with pytest.raises(
        InputError, match=esc("must be >= 0; got 1 negative weight, the first at index 2")
    ):
        L.mse(p, t, weight=torch.tensor([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(InputError, match="weight must be finite"):
        L.mse(p, t, weight=torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(InputError, match="positive sum for reduction='mean'"):
        L.mse(p, t, weight=torch.zeros(4))
    L.mse(p, t, weight=torch.zeros(4), reduction="sum")  # fine: no division


def test_non_tensor_inputs_and_scalar_targets():
    with pytest.raises(
        InputError, match=esc("mse targets must be a torch.Tensor; got list [1.0, 2.0, 3.0]")
    ):
        L.mse(randn(3), [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match=r"torch.as_tensor"):
        L.cross_entropy([[1.0, 2.0]], torch.tensor([0]))
    with pytest.raises(InputError, match="targets must have a batch dimension"):
        L.mse(randn(1), torch.tensor(1.0))


def test_class_weight_problems():
    with pytest.raises(
        InputError,
        match=esc(
            "class_weight must have one weight per class of pred, shape (3,); got shape (2,)"
        ),
    ):
        L.cross_entropy(randn(4, 3), labels(4, 3), class_weight=torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match="must hold finite weights >= 0"):
        L.cross_entropy(randn(4, 3), labels(4, 3), class_weight=[1.0, -2.0, 1.0])
    with pytest.raises(
        InputError, match=esc("pos_weight must be a number or hold one weight per target column")
    ):
        L.binary_cross_entropy(randn(4, 2), torch.rand(4, 2), pos_weight=torch.ones(3))
    # targets (N,) are one column: N weights would weigh each sample's positive instead (and
    # fail on the next batch of another size), so only one weight is accepted
    with pytest.raises(
        InputError, match=esc("pos_weight of shape (4,) for targets of shape (4,) — pass 1 weights")
    ):
        L.binary_cross_entropy(randn(4), torch.rand(4), pos_weight=torch.ones(4))
    L.binary_cross_entropy(randn(4), torch.rand(4), pos_weight=torch.ones(1))


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="huber: delta must be a finite number > 0"):
        L.huber(randn(2), torch.rand(2), delta=0.0)
    with pytest.raises(
        ConfigError, match=esc("cross_entropy: label_smoothing must be in [0.0, 1.0]")
    ):
        L.cross_entropy(randn(2, 2), labels(2, 2), label_smoothing=1.5)
    with pytest.raises(ConfigError, match=r"mse: reduction must be one of .*did you mean 'mean'"):
        L.mse(randn(2), torch.rand(2), reduction="meen")
    # get() checks a built-in's options eagerly; this pair was refused only at the first call
    with pytest.raises(
        ConfigError,
        match=esc("cross_entropy: ignore_index applies to class-index targets only"),
    ):
        L.get("ce", probabilities=True, ignore_index=-100)
    with pytest.raises(ConfigError, match="ignore_index applies to class-index targets only"):
        L.cross_entropy(randn(2, 2), torch.rand(2, 2), probabilities=True, ignore_index=-1)


def test_validate_false_skips_the_checks():
    # nll of raw logits is refused when validated, computed as asked when not
    x, y = randn(4, 3) + 3.0, labels(4, 3)
    with pytest.raises(InputError):
        L.nll(x, y)
    torch.testing.assert_close(L.nll(x, y, validate=False), F.nll_loss(x, y))
    loss = L.get("nll")
    torch.testing.assert_close(loss(x, y, validate=False), F.nll_loss(x, y))


# ------------------------------------------------------------------------------------------
# Loss objects, registry, get, num_outputs_needed
# ------------------------------------------------------------------------------------------


EXPECTED_KINDS = {
    "mse": ("float", "regression"),
    "mae": ("float", "regression"),
    "huber": ("float", "regression"),
    "poisson": ("float", "regression"),
    "cross_entropy": ("index", "classification"),
    "binary_cross_entropy": ("float", "classification"),
    "nll": ("index", "classification"),
}


def test_registry_names_resolve():
    assert set(L.REGISTRY) == set(EXPECTED_KINDS)
    for name, (kind, task) in EXPECTED_KINDS.items():
        loss = L.get(name)
        assert isinstance(loss, L.Loss)
        assert (loss.name, loss.target_kind, loss.task) == (name, kind, task)
    for alias, canonical in L.ALIASES.items():
        assert L.get(alias).name == canonical
    assert L.get("l2").fn is L.mse
    assert L.get("l1").fn is L.mae
    assert L.get("CE").fn is L.cross_entropy
    assert L.get("bce").fn is L.binary_cross_entropy
    assert L.get("Binary-Cross-Entropy").name == "binary_cross_entropy"


def test_registry_losses_compute_and_validate():
    x, y = randn(5, 3), labels(5, 3)
    c = L.get("ce")
    torch.testing.assert_close(c(x, y), F.cross_entropy(x, y))
    w = weights(5)
    torch.testing.assert_close(c(x, y, weight=w), L.cross_entropy(x, y, weight=w))
    with pytest.raises(InputError, match="look one-hot"):
        c.validate(x, F.one_hot(y, 3))
    with pytest.raises(InputError, match="look one-hot"):
        c.validate_targets(F.one_hot(y, 3))
    with pytest.raises(InputError, match="must be finite"):
        L.get("mse").validate_targets(torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputError, match="negative class index"):
        c.validate_targets(torch.tensor([0, -3]))
    c.validate(x, y)
    c.validate_targets(y)


def test_validate_works_on_expanded_predictions():
    # the training loop checks every target against one real output row, expanded (no copy)
    out = randn(1, 4)
    y = torch.arange(10)
    with pytest.raises(InputError, match="must have 10 outputs"):
        L.get("cross_entropy").validate(out.expand(10, 4), y)
    L.get("cross_entropy").validate(out.expand(10, 4), y % 4)


def test_get_with_options():
    loss = L.get("huber", delta=2.0)
    assert loss.kwargs == {"delta": 2.0}
    p, t = randn(6), randn(6, seed=3) * 4
    torch.testing.assert_close(loss(p, t), F.huber_loss(p, t, delta=2.0))
    assert L.get("huber").kwargs == {}  # the registry entry is unchanged
    soft = L.get("cross_entropy", probabilities=True)
    assert soft.target_kind == "float"
    assert L.get(soft, probabilities=False).target_kind == "index"
    assert L.get(soft) is soft
    smoothed = L.get(L.get("ce"), label_smoothing=0.1, class_weight=[1.0, 2.0, 3.0])
    assert isinstance(smoothed.kwargs["class_weight"], torch.Tensor)
    x, y = randn(4, 3), labels(4, 3)
    torch.testing.assert_close(
        smoothed(x, y),
        F.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1),
    )


def test_get_refuses_unknown_names_and_options():
    with pytest.raises(ConfigError, match="did you mean 'cross_entropy'"):
        L.get("cross_entopy")
    with pytest.raises(ConfigError, match="did you mean 'huber'"):
        L.get("hubber")
    with pytest.raises(ConfigError, match=esc("loss must be one of ['mse'")):
        L.get("zzzzzz")
    with pytest.raises(
        ConfigError,
        match="accepts the options delta, reduction; got deltaa=2 — did you mean 'delta'",
    ):
        L.get("huber", deltaa=2)
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        L.get("ce", label_smoothing=-0.1)
    with pytest.raises(ConfigError, match="is given on each call"):
        L.get("mse", weight=torch.ones(3))
    with pytest.raises(ConfigError, match="must be a registry name, a Loss, or a callable"):
        L.get(42)  # type: ignore[arg-type]


def test_user_callable():
    def max_error(pred, target):
        return (pred - target).abs().max()

    loss = L.get(max_error)
    assert (loss.name, loss.target_kind, loss.task) == ("max_error", "any", "any")
    p, t = torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0])
    assert loss(p, t).item() == 3.0
    loss.validate(p, t)  # nothing to check for a custom loss
    with pytest.raises(ConfigError, match="does not take per-sample weights"):
        loss(p, t, weight=torch.ones(2))

    def per_sample(pred, target):
        return (pred - target) ** 2

    with pytest.raises(
        InputError, match=esc("must return a scalar tensor; got a tensor of shape (2,) — reduce it")
    ):
        L.get(per_sample)(p, t)
    assert L.get(per_sample)(p, t, validate=False).shape == (2,)

    def weighted(pred, target, weight=None, scale=1.0):
        w = torch.ones_like(pred) if weight is None else weight
        return scale * (w * (pred - target) ** 2).sum()

    assert L.get(weighted, scale=2.0)(p, t, weight=torch.tensor([1.0, 0.0])).item() == 2.0

    module_loss = L.get(torch.nn.MSELoss())
    assert module_loss.name == "MSELoss"
    assert module_loss(p, t).item() == pytest.approx(5.0)

    with pytest.raises(InputError, match=r"must return a scalar torch.Tensor"):
        L.get(lambda pred, target: 1.0)(p, t)


def test_the_librarys_own_functions_resolve_to_their_registry_entries():
    # get(losses.cross_entropy) wrapped it as a custom loss (target kind "any", no checks):
    # fit then left labels {1, 2} unencoded and torch raised "Target 2 is out of bounds"
    for name, entry in L.REGISTRY.items():
        assert L.get(entry.fn) is entry, name
    ce = L.get(L.cross_entropy, probabilities=True)
    assert (ce.name, ce.target_kind, ce.task) == ("cross_entropy", "float", "classification")
    assert L.get(L.huber, delta=2.0).kwargs == {"delta": 2.0}
    with pytest.raises(ConfigError, match="did you mean 'delta'"):
        L.get(L.huber, detla=1.0)

    class Unhashable:  # a user's callable object need not be hashable
        __hash__ = None

        def __call__(self, pred, target):
            return (pred - target).abs().sum()

    assert L.get(Unhashable()).name == "Unhashable"


def test_loss_pickles():
    loss = L.get("ce", label_smoothing=0.1)
    again = pickle.loads(pickle.dumps(loss))
    x, y = randn(3, 2), labels(3, 2)
    torch.testing.assert_close(again(x, y), loss(x, y))
    assert again.name == "cross_entropy"


def test_num_outputs_needed():
    assert L.num_outputs_needed("cross_entropy", torch.tensor([0, 3, 9])) == 10
    assert L.num_outputs_needed("nll", torch.tensor([1, 2])) == 3
    ignoring = L.get("ce", ignore_index=-100)
    assert L.num_outputs_needed(ignoring, torch.tensor([0, -100, 4])) == 5
    assert L.num_outputs_needed(L.get("ce", probabilities=True), torch.rand(4, 6)) == 6
    assert L.num_outputs_needed("bce", torch.rand(4)) == 1
    assert L.num_outputs_needed("bce", torch.rand(4, 3)) == 3
    assert L.num_outputs_needed("mse", torch.rand(4)) == 1
    assert L.num_outputs_needed("mse", torch.rand(4, 2)) == 2
    assert L.num_outputs_needed(lambda p, t: (p - t).sum(), torch.rand(4)) is None
    assert L.num_outputs_needed("ce", torch.zeros(0, dtype=torch.long)) is None


def test_weighted_and_ignoring_means_of_float16_do_not_overflow():
    # the sums of a weighted (or ignore_index) mean were float16: past 65504 they were inf, and
    # the loss inf/inf = NaN, for a batch whose mean loss is about 1
    n = 70_000
    x, y = randn(n, 3), labels(n, 3)
    y[0] = -100
    w = weights(n)
    half = x.half()
    for value, ref in (
        (L.cross_entropy(half, y, ignore_index=-100), F.cross_entropy(x, y)),
        (
            L.cross_entropy(half, y.clamp(min=0), weight=w),
            L.cross_entropy(x, y.clamp(min=0), weight=w),
        ),
        (L.mse(half[:, 0], half[:, 1], weight=w), L.mse(x[:, 0], x[:, 1], weight=w)),
    ):
        assert value.dtype == torch.float16
        torch.testing.assert_close(value.float(), ref, rtol=2e-3, atol=0)


def test_ignore_index_may_be_a_numpy_integer():
    # a label taken from an array (np.int64) was refused as "must be an int or None; got -1"
    x, y = randn(4, 3), torch.tensor([0, -1, 2, 1])
    ref = F.cross_entropy(x, y, ignore_index=-1)
    torch.testing.assert_close(L.cross_entropy(x, y, ignore_index=np.int64(-1)), ref)
    torch.testing.assert_close(L.get("ce", ignore_index=np.int64(-1))(x, y), ref)
    assert L.num_outputs_needed(L.get("nll", ignore_index=np.int32(-1)), y) == 3
    with pytest.raises(ConfigError, match="ignore_index must be an int or None"):
        L.get("ce", ignore_index=-1.0)


def test_num_outputs_needed_refuses_the_targets_the_loss_refuses():
    # NaN raised "cannot convert float NaN to integer", negative labels needed 0 (or fewer)
    # outputs, and one-hot targets of 10 classes needed 2 outputs
    with pytest.raises(InputError, match="cross_entropy targets must be finite"):
        L.num_outputs_needed("ce", torch.tensor([0.0, float("nan")]))
    with pytest.raises(InputError, match="2 negative class indices"):
        L.num_outputs_needed("ce", torch.tensor([-3, -1]))
    with pytest.raises(InputError, match=esc("these look one-hot; pass targets.argmax(1)")):
        L.num_outputs_needed("ce", F.one_hot(torch.tensor([0, 9, 3]), 10))


def test_docstring_examples_run():
    result = doctest.testmod(L, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10
    assert result.failed == 0


def test_math_sanity_uniform_logits():
    # a model that knows nothing pays log(C) per sample
    assert L.cross_entropy(torch.zeros(5, 7), labels(5, 7)).item() == pytest.approx(math.log(7))


# ------------------------------------------------------------------------------------------
# Poisson
# ------------------------------------------------------------------------------------------


def test_poisson_is_torchs_poisson_nll_plus_the_targets_constant():
    p = randn(8, 3, dtype=torch.float64, seed=4)
    y = torch.poisson(
        torch.rand(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 4
    )
    y[0, 0] = 0.0  # y log y is 0 at y = 0
    const = torch.special.xlogy(y, y) - y
    ref = F.poisson_nll_loss(p, y, log_input=True, full=False, reduction="none") + const
    torch.testing.assert_close(L.poisson(p, y, reduction="none"), ref)
    torch.testing.assert_close(L.poisson(p, y), ref.mean())
    torch.testing.assert_close(L.poisson(p, y, reduction="sum"), ref.sum())
    w = weights(8, dtype=torch.float64)
    torch.testing.assert_close(L.poisson(p, y, weight=w), (ref * w[:, None]).sum() / (w.sum() * 3))
    # 0 at a perfect fit, > 0 elsewhere; the gradient is exp(pred) - y (over the elements)
    assert L.poisson(torch.log(y + 1), y + 1).item() == pytest.approx(0.0, abs=1e-12)
    q = p.clone().requires_grad_()
    (g,) = torch.autograd.grad(L.poisson(q, y), q)
    torch.testing.assert_close(g, (p.exp() - y) / y.numel())


def test_poisson_refuses_negative_targets_naming_the_alternatives():
    with pytest.raises(
        InputError,
        match=esc(
            "poisson targets must be counts or rates >= 0; got 1 negative value(s), the first "
            "-2 at 2 — use mse, mae or huber for targets that can be negative"
        ),
    ):
        L.poisson(randn(4), torch.tensor([1.0, 0.0, -2.0, 3.0]))


def test_fit_with_poisson_recovers_a_poisson_glm():
    """A Linear model trained on the Poisson loss is a Poisson GLM with a log link: the same
    coefficients as scikit-learn's PoissonRegressor (no penalty), the oracle."""
    from sklearn.linear_model import PoissonRegressor

    import descend

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = rng.poisson(np.exp(X @ np.array([0.5, -0.3, 0.2]) + 0.7)).astype(np.float64)
    ref = PoissonRegressor(alpha=0.0, tol=1e-10, max_iter=1000).fit(X, y)
    torch.manual_seed(0)  # the starting weights may not depend on which tests ran before
    model = torch.nn.Linear(3, 1).double()
    descend.fit(
        model,
        (torch.from_numpy(X), torch.from_numpy(y)),
        loss="poisson",
        optimizer=descend.optim.adamw(
            lr=0.05, weight_decay=0.0, schedule=descend.schedules.cosine(500)
        ),
        epochs=500,
        tol=0.0,
        batch_size=400,
        validation=None,
        patience=None,
        verbose=0,
        seed=0,
    )
    np.testing.assert_allclose(model.weight.detach().numpy()[0], ref.coef_, atol=1e-4)
    assert model.bias.item() == pytest.approx(ref.intercept_, abs=1e-4)


def test_a_loss_class_is_told_to_be_an_instance():
    """torch.nn.MSELoss (the class) was taken as a loss function: each call built a module
    with size_average=pred, reduce=target, and fit stopped with torch's "Boolean value of
    Tensor with more than one value is ambiguous"."""
    with pytest.raises(ConfigError, match=esc("pass an instance: loss=torch.nn.MSELoss()")):
        L.get(torch.nn.MSELoss)
    X = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=esc("pass an instance: loss=torch.nn.HuberLoss()")):
        descend.fit(torch.nn.Linear(3, 1), (X, X.sum(1)), torch.nn.HuberLoss, epochs=1, verbose=0)
    assert L.get(torch.nn.MSELoss()).name == "MSELoss"  # an instance is a loss


@pytest.mark.parametrize("weighted", [False, True])
def test_a_batch_whose_labels_are_all_ignored_has_mean_zero_not_nan(weighted):
    # torch's mean over no counted label is 0/0 = NaN: a training batch of padding only (fit
    # keeps ignored rows) read as divergence and rolled the run back until it stopped
    x = randn(3, 4, 5, dtype=torch.float64).requires_grad_()
    y = torch.full((3, 5), -100)
    w = weights(3, dtype=torch.float64) if weighted else None
    for fn, pred in ((L.cross_entropy, x), (L.nll, x.log_softmax(1))):
        value = fn(pred, y, ignore_index=-100, weight=w)
        assert value.item() == 0.0
        (g,) = torch.autograd.grad(value, x)
        assert bool((g == 0).all())
    value = L.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.2, weight=w)
    assert value.item() == 0.0
    # a batch with a counted label still gets torch's mean, to rounding
    y[1, 2] = 3
    torch.testing.assert_close(
        L.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.2),
        F.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.2),
    )
