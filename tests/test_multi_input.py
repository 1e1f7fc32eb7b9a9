"""Models with several inputs: ``fit(model, ((x_num, x_ids), y))`` calls ``model(x_num, x_ids)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import descend
from descend import data as D
from descend._errors import InputError


def _data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(n, 3, generator=g)
    ids = torch.randint(0, 10, (n,), generator=g)
    effect = torch.randn(10, generator=g)
    y = num.sum(1, keepdim=True) + effect[ids].unsqueeze(1)
    return num, ids, y


class WideAndDeep(torch.nn.Module):
    """Numeric features and a categorical id: an embedding joined to the numbers."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(10, 4)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(7, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def forward(self, x, ids):
        return self.mlp(torch.cat([x, self.emb(ids)], 1))


def test_batches_keep_every_input_on_the_same_rows():
    # row i of the second input is 10x row i of the first, whatever the split and the order
    a = torch.arange(100.0).unsqueeze(1)
    b = (torch.arange(100) * 10).unsqueeze(1)
    w = torch.ones(100)
    w[:7] = 0  # rows of weight 0 are dropped from every input
    bundle = D.prepare(
        ((a, b), a[:, 0]),
        validation=0.2,
        target_kind="float",
        batch_size=16,
        seed=3,
        sample_weight=w,
    )
    assert bundle.feature_shape is None and bundle.n_features is None
    assert bundle.n_train + bundle.n_val == 93
    seen = []
    for src in (bundle.train, bundle.val):
        for xb, yb, _ in src.batches(1):
            assert isinstance(xb, tuple) and len(xb) == 2
            assert xb[0].dtype == torch.float32 and xb[1].dtype == torch.int64  # ids stay ids
            assert torch.equal(xb[1], (xb[0] * 10).long())
            assert torch.equal(yb, xb[0][:, 0])
            seen += xb[0][:, 0].tolist()
    assert sorted(seen) == list(range(7, 100))
    resumed = [xb[0] for xb, _, _ in bundle.train.batches(1, start=2)]
    whole = [xb[0] for xb, _, _ in bundle.train.batches(1)]
    assert all(torch.equal(p, q) for p, q in zip(resumed, whole[2:]))


def test_fit_trains_a_model_with_two_inputs():
    num, ids, y = _data()
    model = WideAndDeep()
    r = descend.fit(model, ((num, ids), y), "mse", epochs=30, verbose=0, seed=0)
    # the id's effect (variance 1) is learned: far below what the numbers alone leave
    assert r.best_loss < 0.05 * float(y.var())
    with torch.no_grad():
        pred = model(num, ids)
    assert float(torch.nn.functional.mse_loss(pred, y)) < 0.05 * float(y.var())
    # numpy inputs and explicit validation in the same form give the same kind of run
    r2 = descend.fit(
        WideAndDeep(),
        ((num.numpy(), ids.numpy()), y.numpy()),
        "mse",
        epochs=5,
        verbose=0,
        seed=0,
        validation=((num[:50], ids[:50]), y[:50]),
    )
    assert r2.history.val_loss[-1] < r2.history.val_loss[0]


def test_stream_and_dataset_items_with_two_inputs():
    num, ids, y = _data(200)

    class Items(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return (num[i], ids[i]), y[i]

    kw = {"epochs": 3, "verbose": 0, "seed": 0, "optimizer": descend.optim.adam(lr=1e-2)}
    streamed = descend.fit(
        WideAndDeep(), DataLoader(Items(), batch_size=32), "mse", validation=None, **kw
    )
    loaded = descend.fit(
        WideAndDeep(), Items(), "mse", validation=None, shuffle=False, batch_size=32, **kw
    )
    arrays = descend.fit(
        WideAndDeep(), ((num, ids), y), "mse", validation=None, shuffle=False, batch_size=32, **kw
    )
    # the same batches in the same order: the same run, whichever way the data came
    assert streamed.history.step_loss == pytest.approx(arrays.history.step_loss, rel=1e-6)
    assert loaded.history.step_loss == arrays.history.step_loss


def test_resume_with_two_inputs_is_exact(tmp_path):
    num, ids, y = _data(300)
    kw = {"verbose": 0, "seed": 1, "optimizer": descend.optim.adamw(lr=1e-2), "patience": None}
    straight = descend.fit(WideAndDeep(), ((num, ids), y), "mse", epochs=5, **kw)
    descend.fit(WideAndDeep(), ((num, ids), y), "mse", epochs=3, checkpoint=tmp_path, **kw)
    model = WideAndDeep()
    resumed = descend.fit(
        model, ((num, ids), y), "mse", epochs=5, checkpoint=tmp_path, resume=True, **kw
    )
    assert resumed.history.step_loss == straight.history.step_loss
    # other data under the same checkpoint is noticed (the signature sums every input)
    with pytest.warns(RuntimeWarning, match="resumed on other training data"):
        descend.fit(
            WideAndDeep(),
            ((num, (ids + 1) % 10), y),
            "mse",
            epochs=6,
            checkpoint=tmp_path,
            resume=True,
            **kw,
        )


def test_multi_input_mistakes_are_named():
    num, ids, y = _data(100)
    with pytest.raises(
        InputError,
        match=r"X\[1\] must have one row per sample, as X\[0\] has "
        r"\(100 rows\); got 10 rows",
    ):
        descend.fit(WideAndDeep(), ((num, ids[:10]), y), "mse", epochs=1, verbose=0)

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(
        InputError,
        match=r"shape \(\(8, 3\), \(8,\)\) \(torch.float32, "
        r"torch.int64\).*X holds 2 inputs and fit calls model\(\*inputs\)",
    ):
        descend.fit(One(), ((num, ids), y), "mse", epochs=1, verbose=0)
    with pytest.raises(
        InputError,
        match=r"validation X must have the training X's form \(2 positional inputs\); "
        r"got one array, shape \(5, 3\)",
    ):
        descend.fit(
            WideAndDeep(), ((num, ids), y), "mse", epochs=1, verbose=0, validation=(num[:5], y[:5])
        )
    with pytest.raises(
        InputError,
        match=r"validation X\[0\] must have the same number of "
        r"features as the training X\[0\] \(3",
    ):
        descend.fit(
            WideAndDeep(),
            ((num, ids), y),
            "mse",
            epochs=1,
            verbose=0,
            validation=((num[:5, :2], ids[:5]), y[:5]),
        )
    bad = num.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(
        InputError,
        match=r"X\[0\] must contain only finite numbers; got 1 "
        r"non-finite values \(1 NaN, 0 inf\), the first at row 3, column 1",
    ):
        descend.fit(WideAndDeep(), ((bad, ids), y), "mse", epochs=1, verbose=0)


def test_ragged_dataset_items_are_refused_by_name():
    # Items whose x differ in shape used to crash inside numpy ("setting an array element
    # with a sequence") while the message was being written.
    class Ragged(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.zeros(i + 1), 0.0

    with pytest.raises(InputError, match=r"data item features must all have the same shape"):
        D.prepare(Ragged(), validation=None)


class KeywordModel(torch.nn.Module):
    """A model whose forward takes keyword inputs, as transformer-style models do."""

    def __init__(self, seed=0):
        super().__init__()
        self.inner = WideAndDeep(seed)

    def forward(self, features, ids):
        return self.inner(features, ids)


def test_a_dict_of_inputs_calls_the_model_with_keywords():
    # fit(model, ({"features": x, "ids": ids}, y)) calls model(features=..., ids=...): the
    # same run as the tuple form, batch for batch (keys in any order: they are names)
    num, ids, y = _data(300)
    kw = {"epochs": 3, "verbose": 0, "seed": 0, "optimizer": descend.optim.adam(lr=1e-2)}
    by_name = descend.fit(KeywordModel(), ({"ids": ids, "features": num}, y), "mse", **kw)
    by_place = descend.fit(WideAndDeep(), ((num, ids), y), "mse", **kw)
    assert by_name.history.step_loss == by_place.history.step_loss
    assert by_name.history.val_loss == by_place.history.val_loss

    class Items(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"features": num[i], "ids": ids[i]}, y[i]

    kw2 = {**kw, "validation": None, "shuffle": False, "batch_size": 32}
    arrays = descend.fit(KeywordModel(), ({"features": num, "ids": ids}, y), "mse", **kw2)
    items = descend.fit(KeywordModel(), Items(), "mse", **kw2)
    stream = descend.fit(KeywordModel(), DataLoader(Items(), batch_size=32), "mse", **kw2)
    assert items.history.step_loss == arrays.history.step_loss
    assert stream.history.step_loss == pytest.approx(arrays.history.step_loss, rel=1e-6)
    with pytest.raises(
        InputError,
        match=r"X\['ids'\] must have one row per sample, as "
        r"X\['features'\] has \(300 rows\); got 7 rows",
    ):
        descend.fit(KeywordModel(), ({"features": num, "ids": ids[:7]}, y), "mse", **kw)
    with pytest.raises(
        InputError,
        match=r"X holds the inputs \['x', 'ids'\] and fit calls "
        r"model\(\*\*inputs\)",
    ):
        descend.fit(KeywordModel(), ({"x": num, "ids": ids}, y), "mse", **kw)
    with pytest.raises(
        InputError,
        match=r"validation X must have the training X's form \(the "
        r"keyword inputs \['features', 'ids'\]\); got 2 positional inputs",
    ):
        descend.fit(
            KeywordModel(),
            ({"features": num, "ids": ids}, y),
            "mse",
            **{**kw, "validation": ((num[:5], ids[:5]), y[:5])},
        )
