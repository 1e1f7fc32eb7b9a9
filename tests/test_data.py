"""Tests of descend.data: inputs -> device-resident batches, splits, labels, resume, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

import descend
from descend import data as D
from descend._errors import ConfigError, InputError

CPU = torch.device("cpu")


def prep(data, **kw):
    kw.setdefault("device", CPU)
    kw.setdefault("validation", None)
    return D.prepare(data, **kw)


def rows_of(xb: torch.Tensor) -> list[int]:
    """Row ids, for X whose first column is the row number."""
    return xb[:, 0].long().tolist()


def numbered(n: int, f: int = 3) -> torch.Tensor:
    X = torch.randn(n, f, generator=torch.Generator().manual_seed(1))
    X[:, 0] = torch.arange(n, dtype=X.dtype)
    return X


# ----------------------------------------------------------------------------------------------
# Every accepted input type gives the same tensors
# ----------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
XN = RNG.normal(size=(30, 4))
YN = RNG.integers(0, 3, size=30)


class ItemDataset(Dataset):
    def __len__(self):
        return len(XN)

    def __getitem__(self, i):
        return XN[i], int(YN[i])


class TensorItemDataset(Dataset):
    def __len__(self):
        return len(XN)

    def __getitem__(self, i):
        return torch.as_tensor(XN[i]), torch.as_tensor(YN[i])


FRAME = pd.DataFrame(XN, columns=list("abcd"))
INPUTS = {
    "numpy": (XN, YN),
    "tensor": (torch.as_tensor(XN), torch.as_tensor(YN)),
    "float32 tensor": (torch.as_tensor(XN, dtype=torch.float32), torch.as_tensor(YN)),
    "list": (XN.tolist(), YN.tolist()),
    "list of tensors": ([torch.as_tensor(r) for r in XN], YN),
    "pandas": (FRAME, pd.Series(YN)),
    "pandas nullable int y": (FRAME, pd.Series(YN, dtype="Int64")),
    "pandas 1-col frame y": (FRAME, pd.DataFrame({"y": YN})),
    "pyarrow": (pa.table({c: XN[:, i] for i, c in enumerate("abcd")}), pa.array(YN)),
    "pyarrow chunked y": (pa.Table.from_pandas(FRAME), pa.chunked_array([YN[:10], YN[10:]])),
    "TensorDataset": TensorDataset(torch.as_tensor(XN), torch.as_tensor(YN)),
    "Subset(TensorDataset)": Subset(
        TensorDataset(torch.as_tensor(np.vstack([XN, XN])), torch.as_tensor(np.r_[YN, YN])),
        list(range(30)),
    ),
    "map-style Dataset": ItemDataset(),
    "map-style Dataset of tensors": TensorItemDataset(),
    "float labels": (XN, YN.astype(np.float64)),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_every_input_type_gives_the_same_tensors(name):
    b = prep(INPUTS[name], shuffle=False)
    assert b.train.resident
    assert b.train.X.dtype == torch.float32 and b.train.y.dtype == torch.int64
    torch.testing.assert_close(b.train.X, torch.as_tensor(XN, dtype=torch.float32))
    assert torch.equal(b.train.y, torch.as_tensor(YN))
    assert (b.n_train, b.n_val, b.n_features, b.classes, b.n_classes) == (30, 0, 4, None, 3)
    assert b.val is None


def test_x_alone_is_unsupervised_and_float32_tensor_is_not_copied():
    X = torch.randn(20, 3)
    b = prep(X, batch_size=None)
    assert b.train.y is None
    assert b.train.X.data_ptr() == X.data_ptr()  # as_tensor: no copy of data already in place
    ((xb, yb),) = list(b.train.batches(0))
    assert xb is b.train.X and yb is None


def test_integer_features_keep_their_dtype_but_tabular_ints_become_float():
    ids = np.arange(12).reshape(6, 2)
    assert prep(ids).train.X.dtype == torch.int64  # e.g. token ids for an embedding
    assert prep(pd.DataFrame(ids)).train.X.dtype == torch.float32
    assert prep(np.array([[True], [False]])).train.X.dtype == torch.float32
    # 16-bit pixels are small integers like uint8 ones: kept as uint16 no layer took them
    pixels = np.array([[0, 65535], [1, 2]], dtype=np.uint16)
    X16 = prep(pixels).train.X
    assert X16.dtype == torch.float32 and X16.tolist() == [[0.0, 65535.0], [1.0, 2.0]]
    streamed = D.prepare(DataLoader(TensorDataset(torch.as_tensor(pixels))), validation=None)
    assert next(iter(streamed.train.batches(0)))[0].dtype == torch.float32


def test_frames_with_a_repeated_column_name_are_read_by_position():
    # (pandas.concat makes them): frame["a"] is then a DataFrame and .dtype raised AttributeError
    frame = pd.DataFrame(XN[:, :2], columns=["a", "a"])
    b = prep((frame, frame), target_kind="float", shuffle=False)
    expected = torch.as_tensor(XN[:, :2], dtype=torch.float32)
    torch.testing.assert_close(b.train.X, expected)
    torch.testing.assert_close(b.train.y, expected)
    frame.insert(2, "a", ["red"] * 30, allow_duplicates=True)
    with pytest.raises(InputError, match=r"1 non-numeric column\(s\) 'a' of dtype"):
        prep((frame, YN))


def test_numbers_in_object_containers_are_numbers_and_their_gaps_are_missing_values():
    # An object DataFrame column of numbers was told to be one-hot encoded (an object array
    # of them was accepted); None / pandas.NA among numbers were "text to encode" for X, "numbers
    # written as text" for float targets; complex objects raised a raw TypeError; int labels
    # in an object array became float classes.
    col = pd.Series([1.0, 2, np.int64(3), 4.5] * 5, dtype=object)
    b = prep((pd.DataFrame({"a": col, "b": np.arange(20.0)}), YN[:20]), shuffle=False)
    assert b.train.X[:4, 0].tolist() == [1.0, 2.0, 3.0, 4.5]
    gaps = [
        pd.DataFrame({"a": pd.Series([1.0, 2.0, None, 4.0], dtype=object)}),
        pd.DataFrame({"a": pd.Series([1.0, 2.0, pd.NA, 4.0], dtype=object)}),
        np.array([[1.0], [2.0], [None], [4.0]], dtype=object),
    ]
    for X in gaps:
        with pytest.raises(InputError, match=r"X must contain only finite numbers; got 1 "
                           r"non-finite values \(1 NaN, 0 inf\), the first at row 2, column 0 "
                           r"— drop or impute"):  # fmt: skip
            prep((X, YN[:4]))
    y = np.array([1.5, None, 2.0, 3.0], dtype=object)
    with pytest.raises(InputError, match=r"y must contain only finite numbers.*drop the rows"):
        prep((XN[:4], y), target_kind="float")
    X = np.array([[1 + 2j, 3], [4, 5]], dtype=object)
    assert prep((X, YN[:2])).train.X.dtype == torch.complex128
    b = prep((XN[:4], np.array([3, 5, 3, 5], dtype=object)))
    assert b.classes.tolist() == [3, 5] and b.classes.dtype.kind == "i"


def test_dtype_argument_and_float64_features():
    b = prep((XN, YN), dtype=torch.float64)
    assert b.train.X.dtype == torch.float64
    torch.testing.assert_close(b.train.X, torch.as_tensor(XN))


# ----------------------------------------------------------------------------------------------
# Batches: partition, seeded order, resume
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size,drop_last", [(7, False), (7, True), (10, False), (1, False)])
def test_batches_partition_the_training_set(batch_size, drop_last):
    n = 50
    b = prep((numbered(n), torch.arange(n) % 2), batch_size=batch_size, drop_last=drop_last)
    src = b.train
    batches = list(src.batches(3))
    assert len(batches) == src.num_batches
    seen = [r for xb, _ in batches for r in rows_of(xb)]
    for xb, yb in batches:  # targets travel with their rows
        assert yb.tolist() == [r % 2 for r in rows_of(xb)]
    if drop_last:
        assert src.num_batches == n // batch_size
        assert all(len(xb) == batch_size for xb, _ in batches)
        assert len(set(seen)) == len(seen) == n // batch_size * batch_size
    else:
        assert sorted(seen) == list(range(n))  # every index exactly once
        assert len(batches[-1][0]) == n - (src.num_batches - 1) * batch_size


def test_order_is_a_pure_function_of_seed_and_epoch():
    X = numbered(100)

    def order(seed, epoch, disturb=False):
        src = prep(X, batch_size=16, seed=seed).train
        if disturb:  # other code drawing random numbers must not change the batch order
            torch.manual_seed(1234)
            torch.rand(17)
            np.random.rand(5)
        return [r for xb, _ in src.batches(epoch) for r in rows_of(xb)]

    first = order(0, 0)
    assert first == order(0, 0, disturb=True)
    assert first != order(0, 1)
    assert first != order(1, 0)
    assert first != list(range(100))
    assert order(0, 1) == order(0, 1)
    assert torch.equal(D.epoch_permutation(100, 0, 0), torch.tensor(first))


@pytest.mark.parametrize("start", [0, 1, 4, 6, 7, 50])
def test_resume_from_start_yields_the_tail_of_the_epoch(start):
    src = prep((numbered(40), torch.arange(40)), batch_size=6).train
    full = list(src.batches(5))
    tail = list(src.batches(5, start=start))
    assert len(tail) == max(0, len(full) - start)
    for (xa, ya), (xb, yb) in zip(full[start:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_shuffle_false_yields_views_in_order():
    X = numbered(10)
    src = prep(X, batch_size=4, shuffle=False).train
    batches = list(src.batches(0))
    assert [rows_of(xb) for xb, _ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[1][0].data_ptr() == src.X[4:].data_ptr()  # a slice, not a gather


def test_full_batch_yields_the_tensors_themselves():
    b = prep((numbered(25), torch.arange(25) % 3), batch_size=None)
    assert b.train.num_batches == 1
    ((xb, yb),) = list(b.train.batches(7))
    assert xb is b.train.X and yb is b.train.y
    assert list(b.train.batches(7, start=1)) == []


def test_bad_positions_and_settings_are_config_errors():
    src = prep(numbered(10), batch_size=3).train
    with pytest.raises(ConfigError, match="start must be an integer >= 0"):
        src.batches(0, start=-1)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        prep(numbered(10), batch_size=0)
    with pytest.raises(ConfigError, match="drop_last=True must not exceed"):
        prep(numbered(10), batch_size=11, drop_last=True)
    with pytest.raises(ConfigError, match="target_kind must be one of"):
        prep(numbered(10), target_kind="indices")
    with pytest.raises(ConfigError, match="dtype must be a floating torch dtype"):
        prep(numbered(10), dtype=torch.int64)
    # the public ResidentSource too: 0 raised ZeroDivisionError, -3 gave epochs of no batch
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="ResidentSource: batch_size must be a positive"):
            D.ResidentSource(numbered(5), None, batch_size=bad)


# ----------------------------------------------------------------------------------------------
# Validation split
# ----------------------------------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions_and_is_deterministic():
    y = np.repeat([0, 1, 2, 3], [100, 50, 28, 2])  # imbalanced, one class with just 2
    X = numbered(len(y))
    b = D.prepare((X, y), validation=0.2, device=CPU, seed=3)
    tr, va = rows_of(b.train.X), rows_of(b.val.X)
    assert sorted(tr + va) == list(range(len(y)))  # disjoint and complete
    assert b.n_val == round(0.2 * len(y)) and b.n_train + b.n_val == len(y)
    counts_val = np.bincount(b.val.y.numpy(), minlength=4)
    assert counts_val.tolist() == [20, 10, 5, 1]  # proportions kept; tiny class on both sides
    assert np.bincount(b.train.y.numpy()).tolist() == [80, 40, 23, 1]
    assert b.val.y.tolist() == y[va].tolist()  # labels stay with their rows
    again = D.prepare((X, y), validation=0.2, device=CPU, seed=3)
    assert rows_of(again.val.X) == va
    other = D.prepare((X, y), validation=0.2, device=CPU, seed=4)
    assert rows_of(other.val.X) != va
    assert not b.val.y.is_floating_point() and b.val.num_batches == -(-b.n_val // 32)


def test_unstratified_split_for_regression_targets():
    X, y = numbered(50), np.linspace(0, 1, 50)
    b = D.prepare((X, y), validation=0.3, target_kind="float", device=CPU, seed=0)
    assert (b.n_train, b.n_val) == (35, 15)
    assert b.val.y.dtype == torch.float32 and b.val.y.ndim == 1
    va = rows_of(b.val.X)
    torch.testing.assert_close(b.val.y, torch.as_tensor(y[va], dtype=torch.float32))
    assert va != list(range(35, 50))  # random, not a tail


def test_explicit_validation_used_as_given_and_zero_means_none():
    Xv, yv = XN[:5] + 1, np.array(["b", "a", "b", "c", "a"])
    y = np.array(["a", "b"] * 15)  # "c" only in validation: one shared code book
    b = prep((XN, y), validation=(Xv, yv), shuffle=False)
    assert b.classes.tolist() == ["a", "b", "c"]
    assert b.val.y.tolist() == [1, 0, 1, 2, 0]
    torch.testing.assert_close(b.val.X, torch.as_tensor(Xv, dtype=torch.float32))
    assert D.prepare((XN, YN), validation=0, device=CPU).val is None
    assert D.prepare((XN, YN), validation=None, device=CPU).val is None


def test_validation_features_must_be_the_training_kind_of_numbers():
    # integer ids stay integers for an embedding layer, but validation ids given as floats (or
    # as a DataFrame, whose columns become floats) reached it as floats: a torch error at the
    # first evaluation, after an epoch of training
    ids, y = np.arange(20).reshape(10, 2) % 7, np.arange(10) % 2
    for ids_v in (ids[:4].astype(np.float64), pd.DataFrame(ids[:4]), ids[:4].astype(np.uint8)):
        with pytest.raises(InputError, match=r"validation X must hold integer values like the "
                           r"training X \(torch\.int64, whose values stay integers for embedding "
                           r"layers\); got values of dtype .*, which become floats — convert it "
                           r"like the training data, e.g\. numpy\.asarray\(X_val, "
                           r"dtype='int64'\)"):  # fmt: skip
            prep((ids, y), validation=(ids_v, y[:4]))
        b = prep((ids, y), validation=(np.asarray(ids_v, dtype="int64"), y[:4]))  # the fix
        assert b.val.X.dtype == torch.int64
    with pytest.raises(InputError, match=r"validation X\[0\] must hold float values"):
        prep(((XN, ids[:1].repeat(30, 0)), YN), validation=((XN[:4].astype(int), ids[:4]), YN[:4]))
    assert prep((ids, y), validation=(ids[:4].astype(np.int32), y[:4])).n_val == 4


def test_validation_tables_must_have_the_training_columns_in_order():
    # Tables become arrays by position: the same columns in another order would score the
    # model on swapped features without any shape complaint.
    swapped, y5 = FRAME[["b", "a", "c", "d"]].iloc[:5], YN[:5]
    with pytest.raises(InputError, match=r"validation X must have the training table's columns.*"
                       r"column 0 is 'b', not 'a'.*X_val\[X\.columns\]"):  # fmt: skip
        prep((FRAME, YN), validation=(swapped, y5))
    table = pa.Table.from_pandas(FRAME)
    other = table.select(list("abc")).append_column("e", pa.array(np.zeros(30)))
    with pytest.raises(InputError, match=r"missing 'd', extra 'e'"):
        prep((table, YN), validation=(other, YN))
    with pytest.raises(InputError, match=r"validation X\['p'\] must have the training table's"):
        prep(({"p": FRAME, "q": FRAME}, YN), validation=({"q": FRAME, "p": swapped}, y5))
    # the same names with one repeated: StopIteration looking for the first differing column
    with pytest.raises(InputError, match=r"got 5 columns \('a', 'b', 'c', 'd', 'd'\)"):
        prep((FRAME, YN), validation=(FRAME.iloc[:5, [0, 1, 2, 3, 3]], y5))
    # the fix the message gives works; a frame with no shared names is matched by position
    b = prep((FRAME, YN), validation=(swapped[FRAME.columns], y5))
    torch.testing.assert_close(b.val.X, torch.as_tensor(XN[:5], dtype=torch.float32))
    b = prep((FRAME, YN), validation=(pd.DataFrame(XN[:5]), y5))
    torch.testing.assert_close(b.val.X, torch.as_tensor(XN[:5], dtype=torch.float32))


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


def test_validation_labels_of_another_type_than_the_training_ones_are_refused():
    # numpy joined them as text: training labels 1.0, 2.0 next to validation '1', '2' made the
    # 4 classes '1', '1.0', '2', '2.0' (the validation rows matching no training class), and
    # training 8, 9, 10 next to validation '10', '9', '8' got text classes sorted '10' < '8' < '9'
    # (scikit-learn refuses such a mix too)
    cases = [
        (np.array(list("1212")), np.array([1, 2]), r"\(text\); got numbers such as 1 .*dtype=str"),
        (np.array([1.0, 2.0, 1.0, 2.0]), np.array(["1", "2"]), r"\(numbers\); got text such as '1'"),
        (np.array([8, 9, 10, 8]), pd.Series(["10", "9"]), r"\(numbers\); got text such as "
         r"'10' — convert one to the other's type, e\.g\. validation y=numpy\.asarray\(y_val, "
         r"dtype=int\)"),
    ]  # fmt: skip
    for y, yv, pattern in cases:
        with pytest.raises(InputError, match=r"validation y must be labels of the same type as y "
                           + pattern):  # fmt: skip
            prep((XN[:4], y), validation=(XN[:2], yv))
        fixed = np.asarray(yv, dtype=y.dtype.type if y.dtype.kind in "if" else str)
        b = prep((XN[:4], y), validation=(XN[:2], fixed))
        assert b.classes.dtype.kind == y.dtype.kind and b.n_classes == len(set(y))


@pytest.mark.parametrize(
    "labels,classes",
    [
        (["cat", "dog", "cat", "emu"], ["cat", "dog", "emu"]),
        ([-1, 1, 1, -1], [-1, 1]),
        ([3, 5, 7, 5], [3, 5, 7]),
        ([True, False, True, True], [False, True]),
        ([3.0, 5.0, 3.0, 3.0], [3.0, 5.0]),
    ],
)
def test_labels_not_0_to_c_are_encoded_and_round_trip(labels, classes):
    X = numbered(4)
    b = prep((X, labels), shuffle=False)
    assert b.classes.tolist() == classes and b.n_classes == len(classes)
    assert b.train.y.dtype == torch.int64
    assert b.classes[b.train.y.numpy()].tolist() == list(labels)


def test_string_labels_round_trip_through_pandas_and_arrow():
    y = ["x", "y", "z", "x", "y", "z"]
    for ys in (pd.Series(y), pd.Series(y, dtype="category"), pa.array(y), np.array(y)):
        b = prep((numbered(6), ys), shuffle=False)
        assert b.classes[b.train.y.numpy()].tolist() == y


def test_categorical_numbers_keep_their_dtype():
    # integer labels as a pandas category came back as float classes (3.0, not 3)
    y = [3, 5, 7, 3, 5, 7]
    b = prep((numbered(6), pd.Series(y, dtype="category")), shuffle=False)
    assert b.classes.dtype.kind == "i" and b.classes[b.train.y.numpy()].tolist() == y
    b = prep((numbered(6), pd.Series([True, False] * 3, dtype="category")), target_kind="float")
    assert b.train.y.tolist() == [1.0, 0.0] * 3
    # the same category through pyarrow (how Parquet stores it): a dictionary array
    b = prep((numbered(6), pa.array(y).dictionary_encode()), shuffle=False)
    assert b.classes.dtype.kind == "i" and b.classes[b.train.y.numpy()].tolist() == y


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64, "UInt64"])
def test_wide_unsigned_labels_are_class_labels(dtype):
    # torch's unique/searchsorted/type promotion refuse uint16/32/64: a raw NotImplementedError
    # or "Promotion for uint16, uint32, uint64 types is not supported"
    y = pd.Series([3, 5] * 10, dtype=dtype) if dtype == "UInt64" else np.array([3, 5] * 10, dtype)
    b = prep((numbered(20), y), validation=(numbered(2), np.array([5, 3])), shuffle=False)
    assert b.classes.tolist() == [3, 5] and b.train.y.tolist() == [0, 1] * 10
    assert b.val.y.tolist() == [1, 0]


def test_index_column_vector_is_flattened_and_float_targets_stay_1d():
    assert prep((XN, YN[:, None])).train.y.shape == (30,)
    b = prep((XN, YN), target_kind="float")
    assert b.train.y.dtype == torch.float32 and b.train.y.shape == (30,) and b.classes is None
    b2 = prep((XN, YN[:, None].astype(np.float64)), target_kind="float")
    assert b2.train.y.shape == (30, 1)


def test_target_kind_any_keeps_dtype_but_narrows_float64():
    assert prep((XN, YN), target_kind="any").train.y.dtype == torch.int64
    assert prep((XN, XN[:, 0]), target_kind="any").train.y.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------


def test_dataloader_is_streamed_as_given_and_resumes_exactly_with_a_generator():
    ds = TensorDataset(numbered(30).double(), torch.arange(30, dtype=torch.int32))
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator())
    b = prep(loader, seed=5)
    src = b.train
    assert not src.resident and src.X is None and src.exact_resume
    assert (src.num_batches, b.n_train, b.n_features) == (4, 30, 3)
    epoch = list(src.batches(2))
    xb, yb = epoch[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64  # cast on arrival
    rows = [r for xb, _ in epoch for r in rows_of(xb)]
    assert sorted(rows) == list(range(30)) and rows != list(range(30))
    torch.rand(3)  # the global RNG does not matter: the loader's generator is re-seeded
    assert [r for xb, _ in src.batches(2) for r in rows_of(xb)] == rows
    assert [r for xb, _ in src.batches(3) for r in rows_of(xb)] != rows
    tail = list(src.batches(2, start=2))
    assert [rows_of(x) for x, _ in tail] == [rows_of(x) for x, _ in epoch[2:]]


def test_dataloader_without_generator_resumes_exactly_and_leaves_the_global_rng():
    """DataLoader(shuffle=True) with no generator draws its order from torch's global random
    state: seeded from (seed, epoch) in a fork for the epoch's start, so an epoch is the same
    whatever the global state (a resumed run's differs) and the user's stream is untouched."""
    loader = DataLoader(TensorDataset(numbered(30)), batch_size=8, shuffle=True)
    src = prep(loader, seed=5).train
    assert src.exact_resume
    torch.manual_seed(0)
    epoch = [rows_of(x) for x, _ in src.batches(2)]
    after = torch.rand(3)  # the global stream goes on as if the loader had not been read
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)
    rows = [r for b in epoch for r in b]
    assert sorted(rows) == list(range(30)) and rows != list(range(30))
    torch.manual_seed(99)  # another global state: the same epoch
    assert [rows_of(x) for x, _ in src.batches(2)] == epoch
    assert [rows_of(x) for x, _ in src.batches(2, start=2)] == epoch[2:]
    assert [rows_of(x) for x, _ in src.batches(3)] != epoch


def test_dataloader_explicit_val():
    loader = DataLoader(TensorDataset(numbered(10)), batch_size=4, shuffle=True)
    b = prep(loader, validation=DataLoader(TensorDataset(numbered(4)), batch_size=2))
    assert D.is_streamed(loader) and not D.is_streamed((XN, YN)) and D.DataBundle is D.Bundle
    assert [yb for _, yb in b.train.batches(0)] == [None, None, None]
    assert b.n_val == 4 and not b.val.resident and len(list(b.val.batches(0))) == 2


def test_validation_without_targets_next_to_a_stream_is_refused_before_training():
    # it reached the loss as y=None: AttributeError "'NoneType' object has no attribute 'dtype'"
    loader = DataLoader(TensorDataset(numbered(20), torch.arange(20) % 2), batch_size=4)
    with pytest.raises(InputError, match=r"validation must have targets.*got validation X "
                       r"without y — pass validation=\(X_val, y_val\)"):  # fmt: skip
        descend.fit(torch.nn.Linear(3, 2), loader, "cross_entropy", validation=numbered(4),
                    epochs=1, verbose=0)  # fmt: skip
    # a custom loss (target_kind "any") may compare with nothing
    b = prep(loader, validation=numbered(4), target_kind="any")
    assert b.val.y is None and b.n_val == 4


def test_iterable_dataset_is_streamed():
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(10):
                yield torch.tensor([float(i)]), torch.tensor(i % 2)

    b = prep(Stream(), batch_size=4)
    assert not b.train.resident and b.train.num_batches is None and b.n_train is None
    got = [(rows_of(xb), yb.tolist()) for xb, yb in b.train.batches(0)]
    assert got == [([0, 1, 2, 3], [0, 1, 0, 1]), ([4, 5, 6, 7], [0, 1, 0, 1]), ([8, 9], [0, 1])]


def test_bad_dataloader_batch_is_refused():
    loader = DataLoader(TensorDataset(numbered(4), numbered(4), numbered(4)), batch_size=2)
    with pytest.raises(InputError, match=r"must be a tensor x or a pair \(x, y\).*list of 3 items"):
        list(prep(loader).train.batches(0))


# ----------------------------------------------------------------------------------------------
# Bad inputs are refused before training, with the message shape what/rule/got/fix
# ----------------------------------------------------------------------------------------------

X_NAN = XN.copy()
X_NAN[4, 2] = np.nan
X_NAN[9, 1] = np.inf
Y_NAN = XN[:, 0].copy()
Y_NAN[7] = np.nan
FRACTION_FIX = r"pass e\.g\. validation=0\.2, or validation=None"

BAD_INPUTS = [
    (
        (XN, YN[:29]),
        {},
        r"X and y must have the same number of samples; got X with 30 rows and y with 29",
    ),
    (
        (X_NAN, YN),
        {},
        r"X must contain only finite numbers; got 2 non-finite values \(1 NaN, 1 inf\), the first at row 4, column 2 — drop or impute",
    ),
    (
        (XN, Y_NAN),
        {"target_kind": "float"},
        r"y must contain only finite numbers; got 1 non-finite values \(1 NaN, 0 inf\), the first at row 7"
        r" — drop the rows whose target is missing or infinite$",
    ),
    ((XN * 1e300, YN), {}, r"X must fit in torch\.float32.*rescale"),
    ((np.zeros((0, 3)), np.zeros(0)), {}, r"the training data must contain at least one sample"),
    (
        (XN[:3], YN[:3]),
        {"validation": 0.1, "stratify": False},
        r"validation=0\.1 must leave at least 1 sample on each side.*got 0 validation and 3 training.*larger fraction",
    ),
    (  # no fraction splits one sample: a larger one is no fix
        (XN[:1], YN[:1]),
        {"validation": 0.2},
        r"got 0 validation and 1 training samples out of 1 — pass explicit validation data, or "
        r"validation=None \(one sample cannot be split\)$",
    ),
    (
        (XN[:3], YN[:3]),
        {"validation": 0.9, "stratify": False},
        r"got 3 validation and 0 training samples.*smaller fraction.*validation=None",
    ),
    (
        (numbered(20), np.arange(20) % 10),
        {"validation": 0.2},
        r"validation=0\.2 must leave room for every class.*got 4 validation samples for 10 such classes.*validation >= 0\.5, explicit validation data \(X_val, y_val\), or validation=None",
    ),
    (
        (numbered(20), np.arange(20) % 5),
        {"validation": 0.9},
        r"at least one sample of every class in the training part.*got 2 training samples for 5 classes.*smaller fraction \(at most 0\.75\)",
    ),
    (
        (XN, YN),
        {"validation": 1.5},
        rf"validation must be a fraction in \(0, 1\), validation data, or None; got 1\.5 — {FRACTION_FIX}",
    ),
    ((XN, YN), {"validation": -0.2}, rf"got -0\.2 — {FRACTION_FIX}"),
    ((XN, YN), {"validation": 1}, rf"got 1 — {FRACTION_FIX}"),
    ((XN, YN), {"validation": True}, rf"got True — {FRACTION_FIX}"),
    (
        (XN, YN),
        {"validation": (XN[:5, :3], YN[:5])},
        r"validation X must have the same number of features as the training X \(4.*got 3 features",
    ),
    ((XN, YN), {"validation": XN[:5]}, r"validation must have targets like the training data"),
    (  # as many features, laid out otherwise: not "the same number of features" (1 and 1)
        (XN[:, 0], YN),
        {"validation": (XN[:5, :1], YN[:5])},
        r"validation X must have the training X's shape per sample \(\); got shape \(1,\) per "
        r"sample \(shape \(5, 1\)\) — lay the validation samples out like the training ones, "
        r"shape \(N\)",
    ),
    (
        (XN.reshape(30, 2, 2), YN),
        {"validation": (XN[:5].reshape(5, 4, 1), YN[:5])},
        r"per sample \(2, 2\); got shape \(4, 1\) per sample .* shape \(N, 2, 2\)",
    ),
    (
        ({1, 2, 3}, None),
        {},
        r"X must be a numpy array, torch Tensor, list, pandas DataFrame/Series, pyarrow Table/Array.*; got a set — convert",
    ),
    ("not data", {}, r"X must be .*; got a str"),
    (
        (np.array([[1.0, "red"], [2.0, "blue"]], dtype=object), [0, 1]),
        {},
        r"X must contain only numbers; got an object array with 'red' at row 0, column 1 — encode them",
    ),
    (
        (np.array([["a", "b"], ["c", "d"]]), [0, 1]),
        {},
        r"X must contain only numbers; got an array of dtype <U1.*descend CLI / descend\.tabular",
    ),
    (
        (pd.DataFrame({"size": [1.0, 2.0], "color": ["red", "blue"]}), [0, 1]),
        {},
        r"X must contain only numeric columns; got 1 non-numeric column\(s\) 'color' of dtype (object|str).*get_dummies",
    ),
    (
        (pa.table({"a": [1.0, 2.0], "city": ["x", "y"]}), [0, 1]),
        {},
        r"X must contain only numeric columns; got 1 non-numeric column\(s\) 'city' of type string",
    ),
    (([[1.0, 2.0], [3.0]], [0, 1]), {}, r"X must be rectangular"),
    (  # a list of samples (as a map-style dataset holds them) is no ragged rows to pad
        [(XN[i], int(YN[i])) for i in range(5)],
        {},
        r"X as a list must hold one row of numbers per sample; got a list of 5 \(x, y\) pairs — "
        r"pass the pairs as \(X, y\), e\.g\. \(numpy\.stack",
    ),
    (
        (XN[:4], [0.0, 0.5, 1.0, 1.0]),
        {},
        r"y must be class labels for a classification loss.*0\.5 at row 1 — these look like regression targets; use a regression loss such as 'mse'",
    ),
    (
        (XN[:4], [0.0, np.nan, 1.0, 1.0]),
        {},
        r"y must contain only finite numbers.*row 1 — drop the rows with missing labels",
    ),
    (
        (XN[:3], pd.Series([1, None, 0], dtype="Int64")),
        {},
        r"y must contain only finite numbers; got 1 non-finite",
    ),
    (
        (XN[:3], np.array(["a", None, "b"], dtype=object)),
        {},
        r"y must not contain missing labels; got 1 missing \(None/NaN\) labels, the first at row 1",
    ),
    (  # pandas "string" labels hold pandas.NA, which raised "boolean value of NA is ambiguous"
        (XN[:3], pd.Series(["a", None, "b"], dtype="string")),
        {},
        r"y must not contain missing labels; got 1 missing \(None/NaN\) labels, the first at row 1",
    ),
    (
        (XN[:3], np.array(["a", "b", np.float32("nan")], dtype=object)),
        {},
        r"y must not contain missing labels; got 1 missing .*, the first at row 2",
    ),
    (
        (XN[:3], ["a", "b", "c"]),
        {"target_kind": "float"},
        r"y must be numeric for target_kind='float'; got values of dtype <U1 such as 'a' — these "
        r"look like class labels; use a classification loss",
    ),
    (
        (XN[:3], ["1.5", "2", "3e2"]),
        {"target_kind": "float"},
        r"y must be numeric for target_kind='float'; got values of dtype <U3 such as '1.5' — these "
        r"are numbers written as text: convert them, e.g. numpy.asarray\(y, dtype=float\)",
    ),
    (
        DataLoader(TensorDataset(numbered(10))),
        {"validation": 0.2},
        r"validation=0\.2 \(a fraction\) needs in-memory data to split.*validation=None",
    ),
    (
        TensorDataset(numbered(3), numbered(3), numbered(3)),
        {},
        r"must hold \(X,\) or \(X, y\); got 3 tensors",
    ),
]


def test_a_tuple_of_three_is_told_where_weights_and_extra_inputs_go():
    x1, x2, w = numbered(6), torch.arange(6), torch.ones(6)
    for data in ((x1, YN[:6], w), (x1, x2, YN[:6])):
        with pytest.raises(InputError, match=r"a tuple of 3 items — pass \(X, y\): several model "
                           r"inputs go in one tuple X, \(\(x1, x2\), y\), and per-sample "
                           r"weights as sample_weight=w"):  # fmt: skip
            prep(data)
    # both fixes work
    assert prep((x1, YN[:6]), sample_weight=w).train.w.tolist() == [1.0] * 6
    assert D.is_multi(prep(((x1, x2), YN[:6])).train.X)


def test_a_split_that_cannot_be_stratified_offers_fixes_that_fit_takes():
    # fit always stratifies and has no stratify argument: the message must not offer one
    X, y = numbered(20), np.arange(20) % 10
    fit_kw = {"epochs": 1, "verbose": 0, "optimizer": "sgd", "lr": 0.1}
    for validation in (0.2, 0.9):
        with pytest.raises(InputError, match=r"explicit validation data") as info:
            descend.fit(torch.nn.Linear(3, 10), (X, y), "cross_entropy", validation=validation,
                        **fit_kw)  # fmt: skip
        assert "stratify" not in str(info.value).split(" — ", 1)[1]
    r = descend.fit(torch.nn.Linear(3, 10), (X, y), "cross_entropy", validation=(X, y), **fit_kw)
    assert np.isfinite(r.best_loss)


@pytest.mark.parametrize(
    "data,kw,pattern", BAD_INPUTS, ids=[f"bad{i}" for i in range(len(BAD_INPUTS))]
)
def test_bad_input_is_refused_with_a_message(data, kw, pattern):
    kw = {"validation": None, **kw}
    with pytest.raises(InputError, match=pattern):
        D.prepare(data, device=CPU, **kw)


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------


def test_resolve_device():
    cpu_model = torch.nn.Linear(2, 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert D.resolve_device(None, cpu_model).type == expected
    assert D.resolve_device("auto", None).type == expected
    assert D.resolve_device("cpu") == CPU
    assert D.resolve_device(CPU, cpu_model) == CPU
    with pytest.raises(ConfigError, match=r"device must be a torch device string .*got 'gpu0'"):
        D.resolve_device("gpu0")
    with pytest.raises(ConfigError, match=r"device must be a string, a torch.device or None"):
        D.resolve_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"'cuda:1', but CUDA is not available — pass"):
            D.resolve_device("cuda:1")


def test_check_devices_refuses_a_different_accelerator(monkeypatch):
    model = torch.nn.Linear(3, 1)
    D.check_devices(model, torch.zeros(2, 3))  # CPU data: simply moved later
    # No second accelerator here: pretend the model is on cuda:0 and "meta" is another one.
    monkeypatch.setattr(D, "_model_devices", lambda m: [torch.device("cuda", 0)])
    monkeypatch.setattr(D, "_is_accelerator", lambda d: d.type != "cpu")
    D.check_devices(model, torch.zeros(2, 3))
    with pytest.raises(
        InputError,
        match=r"got X on meta and the model's parameters on cuda:0 — pass device='cuda:0'.*or move one of them",
    ):
        D.check_devices(model, (torch.empty(2, 3, device="meta"), None))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident_batches():
    dev = torch.device("cuda", torch.cuda.current_device())
    b = D.prepare((XN, YN), validation=0.2, device=dev, batch_size=8)
    assert b.train.X.device == dev and b.val.y.device == dev
    xb, yb = next(iter(b.train.batches(0)))
    assert xb.device == dev and yb.device == dev
    cpu_rows = D.prepare((XN, YN), validation=0.2, device=CPU, batch_size=8)
    for (xa, _), (xc, _) in zip(b.train.batches(1), cpu_rows.train.batches(1)):
        torch.testing.assert_close(xa.cpu(), xc)  # same order on every device
    X = torch.randn(10, 3, device=dev)
    assert D.prepare(X, validation=None, device=dev).train.X.data_ptr() == X.data_ptr()


# ----------------------------------------------------------------------------------------------
# Sample weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size,shuffle", [(7, True), (7, False), (None, True)])
def test_sample_weights_travel_with_their_rows(batch_size, shuffle):
    n = 40
    w = np.arange(1, n + 1, dtype=np.float64)  # weight of row r is r + 1
    b = prep(
        (numbered(n), torch.arange(n) % 2), batch_size=batch_size, shuffle=shuffle, sample_weight=w
    )
    assert b.train.w.dtype == torch.float32 and b.train.w.shape == (n,)
    batches = list(b.train.batches(2))
    assert len(batches) == b.train.num_batches
    seen = []
    for xb, yb, wb in batches:  # triples, sliced by the same permutation
        rows = rows_of(xb)
        assert yb.tolist() == [r % 2 for r in rows]
        assert wb.tolist() == [r + 1.0 for r in rows]
        seen += rows
    assert sorted(seen) == list(range(n))
    # Resuming mid-epoch yields the same triples as the tail of the epoch.
    if batch_size is not None:
        tail = list(b.train.batches(2, start=2))
        for full, part in zip(batches[2:], tail):
            assert all(torch.equal(a, c) for a, c in zip(full, part))


def test_unweighted_sources_still_yield_pairs():
    b = prep((numbered(10), torch.arange(10) % 2), batch_size=4)
    assert b.train.w is None
    assert all(len(batch) == 2 for batch in b.train.batches(0))


def test_sample_weights_accept_lists_pandas_and_tensors():
    X, y = numbered(6), torch.arange(6) % 2
    ws = [
        [1, 2, 3, 4, 5, 6],
        pd.Series([1.0, 2, 3, 4, 5, 6]),
        torch.arange(1, 7),
        np.arange(1, 7).reshape(-1, 1),
        np.arange(1, 7).astype(object),
    ]
    for w in ws:
        got = prep((X, y), sample_weight=w, batch_size=None).train.w
        assert got.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_sample_weights_split_with_the_rows_and_validation_yields_triples():
    y = np.repeat([0, 1], [30, 20])
    X = numbered(len(y))
    w = np.arange(len(y), dtype=np.float64) + 0.5
    b = D.prepare((X, y), validation=0.2, device=CPU, seed=3, sample_weight=w, batch_size=8)
    unweighted = D.prepare((X, y), validation=0.2, device=CPU, seed=3, batch_size=8)
    # The same split as without weights (weights do not move the stratified split).
    assert rows_of(b.val.X) == rows_of(unweighted.val.X)
    assert b.train.w.tolist() == [r + 0.5 for r in rows_of(b.train.X)]
    assert b.val.w.tolist() == [r + 0.5 for r in rows_of(b.val.X)]
    for xb, _yb, wb in b.val.batches(0):
        assert wb.tolist() == [r + 0.5 for r in rows_of(xb)]


def test_zero_weight_rows_are_dropped_before_the_split():
    y = np.array(["a", "b", "c"] * 10)
    X = numbered(30)
    w = np.ones(30)
    w[2::3] = 0  # every "c" row, and only those
    b = D.prepare((X, y), validation=0.25, device=CPU, seed=0, sample_weight=w)
    rows = rows_of(b.train.X) + rows_of(b.val.X)
    assert sorted(rows) == [r for r in range(30) if r % 3 != 2]
    assert b.n_train + b.n_val == 20
    assert b.classes.tolist() == ["a", "b", "c"]  # the code book still holds every label
    assert bool((b.train.w > 0).all()) and bool((b.val.w > 0).all())


def test_explicit_validation_is_not_weighted():
    b = prep((XN, YN), validation=(XN[:5], YN[:5]), sample_weight=np.ones(30))
    assert b.train.w is not None and b.val.w is None


BAD_WEIGHTS = [
    (
        np.ones(29),
        r"sample_weight must hold one weight per sample, shape \(30,\); got shape \(29,\)",
    ),
    (np.ones((30, 2)), r"sample_weight must hold one weight per sample.*got shape \(30, 2\)"),
    (2.0, r"sample_weight must hold one weight per sample.*got a scalar"),
    (
        np.where(np.arange(30) == 4, np.nan, 1.0),
        r"sample_weight must contain only finite numbers; got 1 non-finite values \(1 NaN, 0 inf\), the first at row 4 — pass one finite weight",
    ),
    (
        np.where(np.arange(30) == 7, -2.0, 1.0),
        r"sample_weight must be >= 0; got 1 negative weight\(s\), the first -2 at row 7 — use 0",
    ),
    (
        np.zeros(30),
        r"sample_weight must give at least one sample a weight > 0; got all 30 weights equal to 0",
    ),
    (np.array(["1"] * 30), r"sample_weight must be numbers; got values of dtype <U1"),
    (  # not "rescale them (e.g. sklearn.preprocessing.StandardScaler)": that makes some < 0
        np.full(30, 1e300),
        r"sample_weight must fit in torch\.float32 .*; got weights up to 1e\+300 — divide them "
        r"by their largest, e\.g\. w / w\.max\(\)",
    ),
    (  # not "all 30 weights equal to 0": they are positive, only too small for float32
        np.full(30, 1e-50),
        r"sample_weight must not all round to 0 in torch\.float32; got weights up to 1e-50, below "
        r"its smallest .* — divide them by their largest",
    ),
]


@pytest.mark.parametrize("w,pattern", BAD_WEIGHTS, ids=[f"w{i}" for i in range(len(BAD_WEIGHTS))])
def test_bad_sample_weights_are_refused(w, pattern):
    with pytest.raises(InputError, match=pattern):
        prep((XN, YN), sample_weight=w)


def test_the_fix_for_weights_out_of_float32_range_works():
    for w in (np.full(30, 1e300), np.r_[np.full(15, 1e-50), np.full(15, 3e-50)]):
        b = prep((XN, YN), sample_weight=w / w.max(), shuffle=False)
        torch.testing.assert_close(b.train.w, torch.as_tensor(w / w.max(), dtype=torch.float32))


def test_sample_weight_with_a_stream_is_refused():
    loader = DataLoader(TensorDataset(numbered(10), torch.arange(10) % 2), batch_size=4)
    with pytest.raises(InputError, match=r"sample_weight needs in-memory data"):
        prep(loader, sample_weight=np.ones(10))


@pytest.mark.parametrize("with_y, with_w", [(True, False), (True, True), (False, False)])
def test_small_sets_permuted_once_give_the_same_batches_as_gathering_each(
    monkeypatch, with_y, with_w
):
    # A small resident set is permuted whole once per epoch and sliced; a large one is
    # gathered batch by batch. Both must give the same batches, bit for bit (resume and the
    # determinism guarantees rest on the batch order being a function of (seed, epoch)).
    g = torch.Generator().manual_seed(0)
    X = torch.randn(103, 5, generator=g)
    y = torch.randint(0, 3, (103,), generator=g) if with_y else None
    w = torch.rand(103, generator=g) if with_w else None

    def batches(limit):
        monkeypatch.setattr(D, "GATHER_ONCE_BYTES", limit)
        src = D.ResidentSource(X, y, batch_size=16, seed=7, w=w)
        return [list(src.batches(e, start=s)) for e, s in ((0, 0), (1, 0), (3, 2))]

    once, each = batches(2**40), batches(0)
    for a, b in zip(once, each):
        assert len(a) == len(b) == (7 if a is once[0] or a is once[1] else 5)
        for ba, bb in zip(a, b):
            assert len(ba) == len(bb)
            for ta, tb in zip(ba, bb):
                assert (ta is None and tb is None) or torch.equal(ta, tb)


def test_a_single_last_sample_is_folded_into_the_batch_before_for_batch_norm():
    X = torch.arange(9.0).unsqueeze(1)
    src = D.ResidentSource(X, X[:, 0], batch_size=4, seed=3)
    assert src.num_batches == 3 and src.fold_single_last()
    sizes = [len(xb) for xb, _ in src.batches(epoch=1)]
    assert sizes == [4, 5] and src.num_batches == 2
    seen = torch.cat([xb for xb, _ in src.batches(epoch=1)])
    assert sorted(seen[:, 0].tolist()) == list(range(9))  # every sample, once
    assert [len(xb) for xb, _ in src.batches(epoch=1, start=1)] == [5]  # resumed mid-epoch
    # nothing to fold: no remainder of one, a full batch, or a remainder of more
    assert not D.ResidentSource(X, None, batch_size=3).fold_single_last()
    assert not D.ResidentSource(X, None, batch_size=None).fold_single_last()
    assert not D.ResidentSource(X, None, batch_size=7).fold_single_last()


def test_fit_trains_batch_norm_when_a_batch_of_one_would_be_left():
    import descend

    torch.manual_seed(0)
    X = torch.randn(9, 4)
    y = X.sum(1, keepdim=True)
    bn = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    # torch alone: "Expected more than 1 value per channel when training" at the 3rd step
    r = descend.fit(bn, (X, y), "mse", lr=0.01, epochs=2, batch_size=4, validation=None, verbose=0)
    assert r.steps == 4 and r.epochs == 2  # two batches (4 and 5 samples) an epoch
    plain = torch.nn.Sequential(torch.nn.Linear(4, 1))
    r = descend.fit(
        plain, (X, y), "mse", lr=0.01, epochs=2, batch_size=4, validation=None, verbose=0
    )
    assert r.steps == 6  # without batch norm the batches are as asked


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_a_list_of_x_and_y_is_told_to_be_a_tuple(kind):
    X = torch.randn(20, 3)
    y = X.sum(1)
    pair = [X, y] if kind == "torch" else [X.numpy(), y.numpy()]
    with pytest.raises(InputError, match=r"as a tuple \(X, y\), not a list \[X, y\]"):
        descend.fit(torch.nn.Linear(3, 1), pair, "mse", epochs=1, verbose=0)


def test_a_generator_of_batches_is_refused_with_a_fix_that_works():
    # It said "convert it with numpy.asarray(...) first", which makes a 0-d object array.
    X = torch.randn(60, 3)
    y = X.sum(1, keepdim=True)

    def gen():
        for i in range(0, 60, 20):
            yield X[i : i + 20], y[i : i + 20]

    with pytest.raises(InputError, match="IterableDataset") as err:
        descend.fit(torch.nn.Linear(3, 1), gen(), "mse", epochs=2, verbose=0)
    assert "numpy.asarray" not in str(err.value)

    class Batches(IterableDataset):  # the fix the message gives
        def __iter__(self):
            return gen()

    loader = DataLoader(Batches(), batch_size=None)
    r = descend.fit(torch.nn.Linear(3, 1), loader, "mse", epochs=2, verbose=0)
    assert r.epochs == 2 and len(r.history.step_loss) == 6
