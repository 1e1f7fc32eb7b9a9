"""Data files to tensors: reading, task inference, the fitted preprocessing spec, splits."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from descend import datasets
from descend._errors import ConfigError, InputError
from descend.tabular import (
    Preprocessor,
    drop_missing_target,
    dropped_index,
    infer_task,
    read_table,
    split_indices,
)


@pytest.fixture
def mixed() -> pa.Table:
    return pa.table(
        {
            "age": [20.0, 30.0, None, 40.0, 50.0, 60.0],
            "color": ["red", "blue", "red", "green", None, "blue"],
            "flag": [True, False, True, True, False, False],
            "y": ["no", "yes", "no", "yes", "yes", "no"],
        }
    )


# ----------------------------------------------------------------------------- read_table


def test_csv_and_parquet_read_back_equal(tmp_path, mixed):
    pcsv.write_csv(mixed, tmp_path / "data.csv")
    pq.write_table(mixed, tmp_path / "data.parquet")
    from_csv = read_table(tmp_path / "data.csv")
    from_parquet = read_table(tmp_path / "data.parquet")
    assert from_csv.column_names == mixed.column_names
    for name in mixed.column_names:
        assert from_csv[name].to_pylist() == mixed[name].to_pylist(), name
        assert from_parquet[name].to_pylist() == mixed[name].to_pylist(), name
    assert from_csv.schema.metadata[b"descend.format"] == b"csv"


def test_tsv_gzip_and_sniffed_txt(tmp_path):
    import gzip

    (tmp_path / "a.tsv").write_text("x\ty\n1\t2\n3\t4\n")
    (tmp_path / "b.txt").write_text("x;y\n1;2\n3;4\n")
    with gzip.open(tmp_path / "c.csv.gz", "wt") as f:
        f.write("x,y\n1,2\n3,4\n")
    for name in ("a.tsv", "b.txt", "c.csv.gz"):
        table = read_table(tmp_path / name)
        assert table.column_names == ["x", "y"], name
        assert table["y"].to_pylist() == [2, 4], name


def test_semicolon_csv_from_a_spreadsheet_with_decimal_commas(tmp_path):
    # A European spreadsheet's "CSV": semicolons between fields, commas in the numbers. Read
    # as commas it was one column named 'x;y'.
    (tmp_path / "eu.csv").write_text("x;y;name\n0,5;-1,25;a\n2;3,75;b\n")
    table = read_table(tmp_path / "eu.csv")
    assert table.column_names == ["x", "y", "name"]
    assert table["x"].to_pylist() == [0.5, 2.0] and table["y"].to_pylist() == [-1.25, 3.75]
    # semicolons with decimal points keep the point; a comma header stays comma-separated
    (tmp_path / "p.csv").write_text("x;y\n0.5;1,5\n")  # a point anywhere: no decimal comma
    assert read_table(tmp_path / "p.csv")["x"].to_pylist() == [0.5]
    (tmp_path / "c.csv").write_text("x,y\n1,2\n")
    assert read_table(tmp_path / "c.csv").column_names == ["x", "y"]
    with (tmp_path / "bom.csv").open("w", encoding="utf-8-sig") as f:
        f.write("x;y\n1,5;2\n")
    assert read_table(tmp_path / "bom.csv")["x"].to_pylist() == [1.5]


def test_missing_file_suggests_a_close_name(tmp_path):
    (tmp_path / "train.csv").write_text("x,y\n1,2\n")
    with pytest.raises(
        InputError, match=r"traim\.csv' must exist; got no such file — did you mean .*train\.csv"
    ):
        read_table(tmp_path / "traim.csv")


def test_unsupported_extension_names_it_and_lists_supported(tmp_path):
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(
        InputError,
        match=r"must be CSV or Parquet.*\.csv, \.tsv, \.txt, \.parquet, \.pq.*got extension '\.xlsx'",
    ):
        read_table(tmp_path / "data.xlsx")


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty\.csv' must have a header row .*got an empty file"):
        read_table(tmp_path / "empty.csv")


def test_header_only(tmp_path):
    (tmp_path / "header.csv").write_text("x,y\n")
    with pytest.raises(
        InputError,
        match=r"must have at least one data row; got a header only \(columns \['x', 'y'\]\)",
    ):
        read_table(tmp_path / "header.csv")


def test_duplicate_column_names_are_named(tmp_path):
    (tmp_path / "dup.csv").write_text("x,y,x\n1,2,3\n")
    with pytest.raises(
        InputError, match=r"must have unique column names; got duplicate column name \['x'\]"
    ):
        read_table(tmp_path / "dup.csv")
    pq.write_table(pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]), tmp_path / "d.pq")
    with pytest.raises(InputError, match=r"duplicate column name \['a'\]"):
        read_table(tmp_path / "d.pq")


def test_ragged_csv_names_the_lines(tmp_path):
    (tmp_path / "rag.csv").write_text("x,y\n1,2\n3\n4,5\n")
    with pytest.raises(
        InputError, match=r"same number of fields on every line \(2.*got line 3 has 1"
    ):
        read_table(tmp_path / "rag.csv")


def _latin1_header(n_columns: int = 2) -> bytes:
    names = [f"col{i:05d}" for i in range(n_columns - 2)] + ["Größe", "y"]
    return (",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n").encode("latin-1")


NOT_UTF8 = {
    # a column name in Latin-1 (a European spreadsheet's export): a UnicodeDecodeError
    # traceback from pyarrow's column_names
    "latin1_header": (_latin1_header(), r"on line 1 \(b'\\xf6\\xdfe,'"),
    # ... also when the header is longer than the first bytes read to sniff the delimiter
    "latin1_wide_header": (_latin1_header(9000), "got column names that are not valid UTF-8"),
    # Excel's "Unicode text": every line was "a row with 1 field", fix "quote fields"
    "utf16": ("x,y\n1,2\n3,4\n".encode("utf-16"), r"\(UTF-16 text\) on line 1"),
    # a gzip-compressed CSV without its .gz suffix: "CSV parse error: Expected 2 columns..."
    "gzip": (__import__("gzip").compress(b"x,y\n1,2\n3,4\n"), "not valid UTF-8 on line 1"),
}


@pytest.mark.parametrize("case", list(NOT_UTF8))
def test_text_that_is_not_utf8_is_named_with_the_fix(case, tmp_path):
    data, got = NOT_UTF8[case]
    (tmp_path / "data.csv").write_bytes(data)
    with pytest.raises(InputError, match=r"data\.csv' must be UTF-8 text; got .*") as info:
        read_table(tmp_path / "data.csv")
    assert re.search(got, str(info.value)), str(info.value)
    assert "re-save it as UTF-8" in str(info.value)
    assert ".gz/.bz2/.zst/.lz4 suffix, a Parquet file .parquet" in str(info.value)


def test_not_parquet(tmp_path):
    (tmp_path / "fake.parquet").write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match=r"fake\.parquet' must be a valid Parquet file"):
        read_table(tmp_path / "fake.parquet")


def test_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"must be a file; got a directory"):
        read_table(tmp_path)


# ----------------------------------------------------------------------------- infer_task


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([True, False, True], "classification"),
        (pa.array(["x", "y", "x"]).dictionary_encode(), "classification"),
        ([0, 1, 1, 0, 1], "classification"),  # binary
        ([1.0, 0.0, 1.0, None], "classification"),  # whole floats, missing ignored
        (list(range(3)) * 50, "classification"),  # 3 distinct in 150 rows
        ([1, 2, 3, 4, 5] * 3, "classification"),  # label codes 1..5
        ([0.5, 1.5, 2.25], "regression"),  # fractions
        (list(range(100)), "regression"),  # > 20 distinct
        ([3, 10, 17, 25, 40, 3, 10, 17], "regression"),  # few rows per value, not codes
    ],
)
def test_infer_task(values, task):
    assert infer_task(values) == task


def test_infer_task_refuses_an_all_missing_column():
    with pytest.raises(InputError, match="must have at least one value; got only missing values"):
        infer_task([None, None])


def test_a_numeric_target_with_a_few_non_numbers_is_refused_not_classified(tmp_path):
    # Prices with '?' for unknown (the UCI convention) were "text labels": a classifier with
    # one class per price, refused later for "too few rows per class" (add rows!) or, with
    # few distinct prices, trained as one.
    values = [f"{i * 0.5:.1f}" if i % 10 != 3 else "?" for i in range(60)]
    pcsv.write_csv(pa.table({"x": list(range(60)), "price": values}), tmp_path / "p.csv")
    table = read_table(tmp_path / "p.csv")
    with pytest.raises(
        InputError,
        match=r"target 'price' looks numeric \(most values are numbers\) so every value must be "
        r"a number; got \['\?'\] at rows 3, 13, 23, 33, 43 and 1 more \(0-based data rows; lines "
        r"5, 15, 25, 35, 45 of .*p\.csv\) — write a number in those rows or remove them",
    ):
        Preprocessor().fit(table, "price")
    assert Preprocessor(task="classification").fit(table, "price").classes[-1] == "?"
    # whole-number codes among words stay labels
    assert infer_task(["1", "2", "3", "unknown"] * 5) == "classification"


# ----------------------------------------------------------------------------- Preprocessor


def test_mixed_table_end_to_end(mixed):
    pre = Preprocessor().fit(mixed, "y")
    X, y = pre.transform(mixed)
    assert pre.task == "classification" and pre.classes == ["no", "yes"]
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 0, 1, 1, 0]
    assert X.dtype == np.float32
    assert pre.feature_names == [
        "age",
        "age__missing",
        "color=blue",
        "color=green",
        "color=red",
        "color__missing",
        "flag",
    ]
    assert X.shape == (6, pre.n_features) and pre.n_outputs == 2
    assert any("median 40" in note and "age__missing" in note for note in pre.notes)


def test_statistics_come_from_training_rows_only():
    table = pa.table({"x": [0.0, 2.0, 4.0, 1000.0], "y": [0.0, 1.0, 2.0, 3.0]})
    pre = Preprocessor(task="regression").fit(table, "y", rows=[0, 1, 2])
    X, y = pre.transform(table, rows=[3])
    # mean 2 and std sqrt(8/3) of the training x; the test row must not change them
    assert X[0, 0] == pytest.approx((1000.0 - 2.0) / np.sqrt(8 / 3), rel=1e-6)
    assert pre.target_mean == [pytest.approx(1.0)]
    assert y[0] == pytest.approx((3.0 - 1.0) / np.sqrt(2 / 3), rel=1e-6)
    # the same statistics when the caller slices the table instead of passing rows
    pre2 = Preprocessor(task="regression").fit(table.slice(0, 3), "y")
    np.testing.assert_array_equal(pre2.transform(table.slice(3))[0], X)


def test_one_hot_unseen_category_is_all_zeros_not_a_crash():
    train = pa.table({"c": ["a", "b", "a"], "y": [0, 1, 0]})
    pre = Preprocessor().fit(train, "y")
    X, y = pre.transform(pa.table({"c": ["b", "zebra", None]}))
    assert y is None
    np.testing.assert_array_equal(X, [[0, 1], [0, 0], [0, 0]])
    assert "'zebra'" in pre.transform_notes[0] and "all zeros" in pre.transform_notes[0]


def test_categories_are_capped_with_an_other_bucket():
    values = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d", "e"]
    table = pa.table({"c": values, "y": [0, 1] * 7})
    pre = Preprocessor(max_categories=2).fit(table, "y")
    assert pre.feature_names == ["c=a", "c=b", "c=__other__"]
    X, _ = pre.transform(pa.table({"c": ["a", "c", "new"]}))
    # rare training categories and unseen ones both go to the __other__ bucket
    np.testing.assert_array_equal(X, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])


def test_identifier_text_column_is_dropped_with_a_note():
    n = 60
    table = pa.table({"id": [f"u{i}" for i in range(n)], "x": list(range(n)), "y": [0, 1] * 30})
    pre = Preprocessor(max_categories=50).fit(table, "y")
    assert pre.input_columns == ["x"]
    assert any("Dropped column 'id'" in note and "identifier" in note for note in pre.notes)


def test_the_index_pandas_to_csv_writes_is_dropped_with_a_note(tmp_path):
    # df.to_csv(path) writes the index as a first column with an empty header: trained on, it
    # was a feature (the row order); pandas re-reads it as "Unnamed: 0".
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    for header in ("", "Unnamed: 0"):
        rows = "\n".join(f"{i},{v},{2 * v}" for i, v in zip(rng.permutation(40), x))
        (tmp_path / "d.csv").write_text(f"{header},x,y\n{rows}\n")
        table = read_table(tmp_path / "d.csv")
        pre = Preprocessor().fit(table, "y")
        assert pre.input_columns == ["x"]
        assert any(
            f"Dropped column {header!r}" in n and "the row index pandas' DataFrame.to_csv" in n
            for n in pre.notes
        )
        X, _ = pre.transform(table)  # the same file (with the column) transforms as ever
        assert X.shape == (40, 1)
    # a named column of distinct whole numbers is a feature like any other (a day counter),
    # and so is an unnamed one with repeats
    named = pa.table({"day": list(range(40)), "x": x, "y": 2 * x})
    assert Preprocessor().fit(named, "y").input_columns == ["day", "x"]
    repeats = pa.table({"": [i % 5 for i in range(40)], "x": x, "y": 2 * x})
    assert Preprocessor().fit(repeats, "y").input_columns == ["", "x"]


def test_missing_values_are_imputed_with_the_training_median_and_flagged():
    table = pa.table(
        {"x": [1.0, None, 3.0, 10.0, float("nan")], "z": [1, 2, 3, 4, 5], "y": [0, 1, 0, 1, 0]}
    )
    pre = Preprocessor().fit(table, "y")
    assert pre.feature_names == ["x", "x__missing", "z"]  # z had no missing: no indicator
    X, _ = pre.transform(table)
    spec = pre.columns[0]
    assert spec["median"] == 3.0
    imputed = (3.0 - spec["mean"]) / spec["std"]
    assert X[1, 0] == pytest.approx(imputed) and X[4, 0] == pytest.approx(imputed)
    np.testing.assert_array_equal(X[:, 1], [0, 1, 0, 0, 1])
    assert any("Filled 2 missing values in 'x' with the training median 3" in n for n in pre.notes)
    # a column that had no missing values in training is still imputed later, and said so
    X2, _ = pre.transform(pa.table({"x": [1.0], "z": pa.array([None], pa.int64())}))
    assert X2[0, 2] == pytest.approx((3.0 - pre.columns[1]["mean"]) / pre.columns[1]["std"])
    assert "no indicator" in pre.transform_notes[0]


def test_all_missing_column_is_dropped_and_constant_column_kept():
    table = pa.table(
        {
            "empty": pa.array([None] * 4, pa.float64()),
            "const": [5.0] * 4,
            "x": [1.0, 2.0, 3.0, 4.0],
            "y": [0, 1, 0, 1],
        }
    )
    pre = Preprocessor().fit(table, "y")
    assert pre.input_columns == ["const", "x"]
    assert pre.dropped == {"empty": "every value is missing in the training rows"}
    X, _ = pre.transform(table)
    np.testing.assert_array_equal(X[:, 0], 0.0)  # std 1, centered
    assert any("constant" in note and "'const'" in note for note in pre.notes)


def test_no_features_left_is_refused():
    table = pa.table({"empty": pa.array([None] * 3, pa.string()), "y": [0, 1, 0]})
    with pytest.raises(
        InputError, match=r"at least one usable feature column.*'empty': every value is missing"
    ):
        Preprocessor().fit(table, "y")


def test_junk_in_numeric_column_names_column_and_rows(tmp_path):
    (tmp_path / "junk.csv").write_text("x,y\n12,0\n13,1\nabc,0\n14,1\n?,0\n")
    table = read_table(tmp_path / "junk.csv")
    with pytest.raises(
        InputError,
        match=r"column 'x' looks numeric .*got \['\?', 'abc'\] at rows 2, 4 \(0-based data rows; lines 4, 6 of .*junk\.csv\) — correct those values .*categorical=\['x'\]",
    ):
        Preprocessor().fit(table, "y")
    # the suggested fix works
    assert Preprocessor(categorical=["x"]).fit(table, "y").n_features == 5


def test_numbers_stored_as_text_are_read_as_numbers():
    table = pa.table({"x": [" 1.5", "2", "-3e1"], "y": [0, 1, 0]})
    pre = Preprocessor().fit(table, "y")
    assert pre.columns[0]["kind"] == "numeric"
    assert pre.columns[0]["mean"] == pytest.approx((1.5 + 2 - 30) / 3)


def test_mostly_text_column_is_categorical():
    table = pa.table({"size": ["S", "M", "L", "XL", "1"], "y": [0, 1, 0, 1, 0]})
    assert Preprocessor().fit(table, "y").columns[0]["kind"] == "categorical"


def test_infinite_feature_names_rows():
    table = pa.table({"x": [1.0, float("inf"), 2.0], "y": [0, 1, 0]})
    with pytest.raises(
        InputError, match=r"column 'x' must hold finite numbers; got infinite values at row 1 "
    ):
        Preprocessor().fit(table, "y")


def test_regression_target_round_trip():
    _, y = datasets.load("diabetes")
    table = datasets.load("diabetes", as_frame=True)
    pre = Preprocessor().fit(table, "target")
    assert pre.task == "regression" and pre.n_outputs == 1
    _, y_std = pre.transform(table)
    assert y_std.dtype == np.float32
    assert abs(float(y_std.mean())) < 1e-5 and float(y_std.std()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(pre.inverse_transform_target(y_std), y, rtol=1e-5)
    import torch

    back = pre.inverse_transform_target(torch.from_numpy(y_std[:3]))
    np.testing.assert_allclose(back, y[:3], rtol=1e-5)


def test_classification_inverse_transform_gives_labels():
    table = pa.table({"x": [1, 2, 3, 4], "y": ["cat", "dog", "cat", "emu"]})
    pre = Preprocessor().fit(table, "y")
    assert pre.inverse_transform_target([2, 0]).tolist() == ["emu", "cat"]
    scores = np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 5.0]])
    assert pre.inverse_transform_target(scores).tolist() == ["dog", "emu"]


def test_to_dict_from_dict_round_trip_gives_identical_transform(tmp_path, mixed):
    pre = Preprocessor(max_categories=2).fit(mixed, "y", rows=[0, 1, 2, 3])
    spec = json.loads(json.dumps(pre.to_dict()))
    again = Preprocessor.from_dict(spec)
    X1, y1 = pre.transform(mixed)
    X2, y2 = again.transform(mixed)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert again.notes == pre.notes and again.feature_names == pre.feature_names
    pre.save(tmp_path / "prep.json")
    loaded = Preprocessor.load(tmp_path / "prep.json")
    np.testing.assert_array_equal(loaded.transform(mixed)[0], X1)
    assert loaded.to_dict() == pre.to_dict()


def test_regression_spec_round_trip(tmp_path):
    table = datasets.load("linnerud", as_frame=True)
    pre = Preprocessor().fit(table, datasets.target_column("linnerud"))
    pre.save(tmp_path / "p.json")
    loaded = Preprocessor.load(tmp_path / "p.json")
    np.testing.assert_array_equal(loaded.transform(table)[1], pre.transform(table)[1])
    assert loaded.transform(table)[1].shape == (20, 3)


def test_bad_spec_files(tmp_path):
    with pytest.raises(InputError, match=r"preprocessing spec .*must exist"):
        Preprocessor.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"must be valid JSON"):
        Preprocessor.load(tmp_path / "bad.json")
    with pytest.raises(
        InputError, match=r"must be a dict with format 'descend\.tabular\.Preprocessor'"
    ):
        Preprocessor.from_dict({"format": "other"})


def test_transform_names_missing_columns_and_ignores_extra(mixed):
    pre = Preprocessor().fit(mixed, "y")
    with pytest.raises(
        InputError,
        match=r"feature columns the preprocessor was fitted on must all be in the table; got no column \['age', 'flag'\] — for 'age' did you mean 'Age'\? the table's columns",
    ):
        pre.transform(pa.table({"Age": [1.0], "color": ["red"]}))
    X, y = pre.transform(pa.table({"age": [1.0], "color": ["red"], "flag": [True], "new": [1]}))
    assert y is None and X.shape == (1, pre.n_features)
    assert pre.transform_notes == ["Ignored columns not seen in training: ['new']."]


def test_transform_reads_the_tables_column_names_a_fixed_number_of_times(monkeypatch):
    # transform looked each fitted column up in `table.column_names`, a list pyarrow builds
    # anew on every access: width squared string copies (a 3,000-column file took 7 s to
    # transform after a 1 s fit; 20,000 columns, minutes). Counted, not timed: the table
    # transform sees counts its reads of column_names, which must not grow with the width.
    from descend import tabular as T

    class Counting:
        reads = 0

        def __init__(self, table):
            self._t = table

        @property
        def column_names(self):
            Counting.reads += 1
            return self._t.column_names

        def __getattr__(self, name):
            return getattr(self._t, name)

        def __getitem__(self, key):
            return self._t[key]

        def __len__(self):
            return len(self._t)

    real = T._as_table

    def counted(data, owner):
        table = real(data, owner)
        return Counting(table) if owner == "Preprocessor.transform" else table

    reads = {}
    for width in (20, 200):
        values = np.random.default_rng(0).normal(size=(4, width))
        table = pa.table({**{f"c{i}": values[:, i] for i in range(width)}, "y": values[:, 0]})
        pre = Preprocessor().fit(table, "y")
        monkeypatch.setattr(T, "_as_table", counted)
        Counting.reads = 0
        X, _ = pre.transform(table)
        monkeypatch.setattr(T, "_as_table", real)
        assert X.shape == (4, width)
        np.testing.assert_allclose(X, pre.transform(table)[0])  # the proxy changes nothing
        reads[width] = Counting.reads
    assert reads[200] == reads[20] <= 3, reads


def test_transform_refuses_text_in_a_numeric_column():
    pre = Preprocessor().fit(pa.table({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]}), "y")
    with pytest.raises(
        InputError, match=r"column 'x' was numeric in training .*got \['n/a!'\] at row 1 "
    ):
        pre.transform(pa.table({"x": ["4", "n/a!"]}))


def test_target_missing_lists_close_matches(mixed):
    with pytest.raises(
        InputError,
        match=r"target column must be a column of the table; got no column \['Y'\] — for 'Y' did you mean 'y'\?",
    ):
        Preprocessor().fit(mixed, "Y")


def test_target_with_missing_values_names_rows_and_can_be_dropped():
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.5, None, 1.5, float("nan")]})
    with pytest.raises(
        InputError,
        match=r"target 'y' must have a value in every row; got 2 missing at rows 1, 3 .*drop_missing_target",
    ):
        Preprocessor().fit(table, "y")
    kept, dropped = drop_missing_target(table, "y")
    assert dropped.tolist() == [1, 3] and kept["x"].to_pylist() == [1.0, 3.0]
    assert Preprocessor().fit(kept, "y").n_train_rows == 2


def test_check_target_present_counts_every_row_of_the_table():
    from descend.tabular import check_target_present

    y = [None if i % 3 == 0 else float(i) for i in range(20)]
    table = pa.table({"x": [float(i) for i in range(20)], "y": y})
    with pytest.raises(
        InputError, match=r"got 7 missing at rows 0, 3, 6, 9, 12 and 2 more .* — fill them"
    ):
        check_target_present(table, ["y"], fix="fill them")
    check_target_present(table, ["x"])  # nothing missing: no error


def test_missing_target_rows_are_rows_of_the_whole_table():
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, None, 1]})
    with pytest.raises(InputError, match=r"1 missing at row 2 "):
        Preprocessor().fit(table, "y", rows=[0, 2, 3])


def test_single_class_target_is_refused():
    with pytest.raises(
        InputError,
        match=r"must have at least 2 classes .*got one class, 'a', in all 3 training rows",
    ):
        Preprocessor().fit(pa.table({"x": [1, 2, 3], "y": ["a", "a", "a"]}), "y")


def test_unseen_class_at_transform_is_refused():
    pre = Preprocessor().fit(pa.table({"x": [1, 2, 3], "y": ["a", "b", "a"]}), "y")
    with pytest.raises(InputError, match=r"new class \['c'\] at row 1 "):
        pre.transform(pa.table({"x": [1, 2], "y": ["a", "c"]}))


def test_task_override_and_regression_target_with_text():
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    assert Preprocessor(task="regression").fit(table, "y").task == "regression"
    bad = pa.table({"x": [1.0, 2.0, 3.0], "y": ["1.5", "x", "2"]})
    with pytest.raises(
        InputError, match=r"regression target 'y' must hold numbers; got \['x'\] at row 1 "
    ):
        Preprocessor(task="regression").fit(bad, "y")


def test_bad_options_and_unfitted_use():
    with pytest.raises(ConfigError, match=r"task must be one of"):
        Preprocessor(task="clustering")
    with pytest.raises(ConfigError, match=r"max_categories must be an integer >= 1"):
        Preprocessor(max_categories=0)
    with pytest.raises(
        ConfigError,
        match=r"categorical must be a list of column names; got 'c' — pass categorical=\['c'\]",
    ):
        Preprocessor(categorical="c")
    with pytest.raises(ConfigError, match=r"needs a fitted preprocessor"):
        Preprocessor().transform(pa.table({"x": [1]}))
    with pytest.raises(
        InputError,
        match=r"Preprocessor ignore must be a column of the table; got no column \['idd'\] — for 'idd' did you mean 'id'",
    ):
        Preprocessor(ignore=["idd"]).fit(pa.table({"id": [1, 2], "x": [1, 2], "y": [0, 1]}), "y")


def test_dates_become_numbers():
    import datetime

    days = [datetime.date(2020, 1, d) for d in (1, 2, 3, 4)]
    pre = Preprocessor().fit(pa.table({"d": days, "y": [0, 1, 0, 1]}), "y")
    assert pre.columns[0]["std"] == pytest.approx(np.std([0, 1, 2, 3]) * 86400)


# ----------------------------------------------------------------------------- split_indices


def test_split_is_deterministic_and_a_partition():
    a = split_indices(100, 0.2, 0.1, seed=3)
    b = split_indices(100, 0.2, 0.1, seed=3)
    c = split_indices(100, 0.2, 0.1, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    assert [len(p) for p in a] == [70, 20, 10]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))


def test_split_is_stratified():
    labels = np.array([0] * 80 + [1] * 16 + [2] * 4)
    train, val, test = split_indices(100, 0.25, 0.25, seed=0, stratify_labels=labels)
    assert np.bincount(labels[val], minlength=3).tolist() == [20, 4, 1]
    assert np.bincount(labels[test], minlength=3).tolist() == [20, 4, 1]
    assert np.bincount(labels[train], minlength=3).tolist() == [40, 8, 2]
    # text labels from a table column work too, and give the same split as their codes
    text = pa.array(np.array(["a", "b", "c"])[labels])
    again = split_indices(100, 0.25, 0.25, seed=0, stratify_labels=text)
    np.testing.assert_array_equal(again[1], val)


def test_every_class_keeps_a_training_row():
    labels = ["rare"] + ["common"] * 9
    for seed in range(20):
        train, _, _ = split_indices(10, 0.3, 0.2, seed=seed, stratify_labels=labels)
        assert 0 in train


def test_too_few_rows_for_the_splits():
    with pytest.raises(
        InputError,
        match=r"data must have at least 3 rows to split into training, validation .* got 2 rows — add rows",
    ):
        split_indices(2, 0.2, 0.2, seed=0)
    train, val, test = split_indices(3, 0.2, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (1, 1, 1)


def test_bad_split_settings():
    with pytest.raises(ConfigError, match=r"validation_fraction must be a number in \[0, 1\)"):
        split_indices(10, 1.5)
    with pytest.raises(ConfigError, match=r"must be below 1 so rows remain for training"):
        split_indices(10, 0.6, 0.5)
    with pytest.raises(
        InputError, match=r"stratify_labels must have one label per row \(10\); got 3 labels"
    ):
        split_indices(10, 0.2, stratify_labels=["a", "b", "c"])


def test_pandas_categorical_and_parquet_dictionary_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {"c": pd.Categorical(["a", "b", "a", "c"]), "x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}
    )
    pre = Preprocessor().fit(df, "y")
    assert pre.feature_names == ["c=a", "c=b", "c=c", "x"]
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "d.parquet")
    table = read_table(tmp_path / "d.parquet")
    assert pa.types.is_dictionary(table["c"].type)
    np.testing.assert_array_equal(pre.transform(table)[0], pre.transform(df)[0])


def test_a_pandas_index_stored_in_parquet_is_not_a_column(tmp_path):
    # DataFrame.to_parquet stores a filtered or sorted frame's index as "__index_level_0__"
    # (a named index under its name); pandas.read_parquet makes it the index again. Read as a
    # column, it became a feature (the row order) and predictions on the CSV of the same data
    # failed for the missing column.
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    df.iloc[[3, 0, 2]].to_parquet(tmp_path / "filtered.parquet")  # index [3, 0, 2]
    df.set_index(pd.Index([7, 3, 9, 1], name="id")).to_parquet(tmp_path / "named.parquet")
    df.to_parquet(tmp_path / "range.parquet")  # a RangeIndex is metadata only
    filtered = read_table(tmp_path / "filtered.parquet")
    assert filtered.column_names == ["x", "y"] and filtered.num_rows == 3
    assert dropped_index(filtered) == ["__index_level_0__"]
    named = read_table(tmp_path / "named.parquet")
    assert named.column_names == ["x", "y"] and dropped_index(named) == ["id"]
    plain = read_table(tmp_path / "range.parquet")
    assert plain.column_names == ["x", "y"] and dropped_index(plain) == []
    # a Parquet file not written by pandas keeps every column
    pq.write_table(pa.table({"__index_level_0__": [1, 2], "x": [0.5, 1.5]}), tmp_path / "a.parquet")
    assert read_table(tmp_path / "a.parquet").column_names == ["__index_level_0__", "x"]


def test_a_constant_column_with_rounding_error_keeps_std_one():
    # np.std of [0.1, 0.1, 0.1] is 1.4e-17, not 0: the column is constant (as scikit-learn's
    # StandardScaler judges it), and a new value must not come out as 7e15.
    table = pa.table({"x": [0.1] * 3, "z": [1.0, 2.0, 3.0], "y": [0.5, 0.5 + 1e-16, 0.5]})
    pre = Preprocessor().fit(table, "y")
    assert pre.columns[0]["std"] == 1.0
    assert pre.target_std == [1.0]
    assert any("constant" in n and "'x'" in n for n in pre.notes)
    X, _ = pre.transform(pa.table({"x": [0.2], "z": [2.0]}))
    assert abs(float(X[0, 0])) < 1.0


def test_statistics_of_huge_numbers_stay_finite_and_save(tmp_path):
    # squares of 1e200 overflow: std was inf, the column all zeros and save() a ValueError
    big = [1e200, 3e200, 2e200, 1e200]
    table = pa.table({"x": big, "y": big})
    pre = Preprocessor("regression").fit(table, "y")
    assert np.isfinite(pre.columns[0]["std"]) and pre.columns[0]["std"] > 0
    assert np.isfinite(pre.target_std[0])
    X, y = pre.transform(table)
    assert X[:, 0].std() > 0.5 and np.isfinite(y).all()
    np.testing.assert_allclose(pre.inverse_transform_target(y), big, rtol=1e-6)
    pre.save(tmp_path / "p.json")
    np.testing.assert_array_equal(Preprocessor.load(tmp_path / "p.json").transform(table)[0], X)


def test_split_refuses_integer_labels_of_the_wrong_length():
    for labels in (np.array([0, 1, 0]), np.arange(8) % 2):
        with pytest.raises(InputError, match=r"one label per row \(4\).*got \d labels"):
            split_indices(4, 0.25, stratify_labels=labels)


def test_lines_named_after_drop_missing_target_are_the_file_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,\n2,1\ninf,0\n3,1\n4,0\n")
    kept, dropped = drop_missing_target(read_table(path), "y")
    assert dropped.tolist() == [0]
    with pytest.raises(InputError, match=r"row 1 \(0-based data rows; line 4 of "):
        Preprocessor().fit(kept, "y")
    # dropped in two calls (two targets): the lines still count from the file
    path.write_text("x,y,z\n1,,1\n2,1,\n5,,1\n9,1,\ninf,0,1\n3,1,1\n")
    once, _ = drop_missing_target(read_table(path), "y")
    twice, dropped = drop_missing_target(once, "z")
    assert dropped.tolist() == [0, 1]
    with pytest.raises(InputError, match=r"row 0 \(0-based data rows; line 6 of "):
        Preprocessor().fit(twice, "y")


def test_spec_dicts_do_not_share_lists_with_the_preprocessor(mixed):
    pre = Preprocessor().fit(mixed, "y")
    spec = pre.to_dict()
    categories = list(pre.columns[1]["categories"])
    restored = Preprocessor.from_dict(spec)
    spec["columns"][1]["categories"].append("zzz")
    assert pre.columns[1]["categories"] == categories
    assert restored.columns[1]["categories"] == categories


def test_a_date_column_given_as_text_at_transform_is_read_as_dates():
    # a date column scored from text (JSON, a pandas object column): it was refused as
    # "must be a number", naming the dates as the bad values
    import datetime

    days = [datetime.date(2020, 1, 1), datetime.date(2020, 6, 1), datetime.date(2021, 1, 1)]
    pre = Preprocessor().fit(pa.table({"d": days, "y": [0.0, 1.0, 2.0]}), "y")
    X, _ = pre.transform(pa.table({"d": days}))
    as_text = ["2020-01-01", " 2020-06-01 ", "2021-01-01T00:00:00Z"]
    np.testing.assert_array_equal(pre.transform(pa.table({"d": as_text}))[0], X)
    X2, _ = pre.transform(pa.table({"d": ["2020-01-01", None, "2021-01-01 00:00:00"]}))
    np.testing.assert_array_equal(X2[[0, 2]], X[[0, 2]])
    with pytest.raises(InputError, match=r"column 'd' held dates/times.*\['soon'\] at row 1"):
        pre.transform(pa.table({"d": ["2020-01-01", "soon"]}))


def test_integers_beyond_two_to_the_53_are_numbers_not_a_pyarrow_error():
    # pyarrow's safe cast refused them: a bare ArrowInvalid from inside fit
    big = pa.array([2**60 + 1, 2**60 + 3, 5, 7], pa.int64())
    pre = Preprocessor().fit(pa.table({"x": big, "y": big}), "y")
    assert pre.task == "regression"
    X, y = pre.transform(pa.table({"x": big, "y": big}))
    assert np.isfinite(X).all() and np.isfinite(y).all()
    huge = pa.array([2**64 - 1, 3, 4, 5], pa.uint64())
    assert Preprocessor().fit(pa.table({"x": huge, "y": [0, 1, 0, 1]}), "y").n_features == 1


def test_missing_text_at_transform_without_an_indicator_is_noted():
    # as a missing number is: it was encoded as all zeros without a word
    pre = Preprocessor().fit(pa.table({"c": ["a", "b", "a"], "y": [0, 1, 0]}), "y")
    X, _ = pre.transform(pa.table({"c": ["a", None]}))
    assert X.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert any("1 missing value(s) of 'c'" in n for n in pre.transform_notes)


def test_the_same_labels_give_the_same_split_whatever_their_type():
    # NumPy integers were numbered in sorted order, every other form by first appearance:
    # the seeded split of the same classes changed with the container
    y = np.array([2, 0, 1, 2, 0, 1, 1, 0, 2, 2, 1, 0, 1, 1, 0, 2, 0, 1, 2, 1])
    forms = [y, y.tolist(), pa.array(y), y.astype(float), y.astype(str)]
    splits = [split_indices(20, 0.3, seed=3, stratify_labels=f)[1].tolist() for f in forms]
    assert all(s == splits[0] for s in splits)


def test_a_column_named_like_a_made_feature_is_refused():
    # 'a' with missing values makes 'a__missing', as the table's own column is called: two
    # feature columns of one name, which names in outputs cannot tell apart
    table = pa.table({"a": [1.0, None, 3.0], "a__missing": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with pytest.raises(InputError, match=r"feature names must be unique.*\['a__missing'\]"):
        Preprocessor().fit(table, "y")
    table = pa.table({"c": ["x", "y", "x"], "c=x": [1.0, 2.0, 4.0], "y": [0, 1, 0]})
    with pytest.raises(InputError, match=r"\['c=x'\] twice.*ignore="):
        Preprocessor().fit(table, "y")
