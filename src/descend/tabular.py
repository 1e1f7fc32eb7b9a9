"""Data files (CSV, Parquet) to tensors, with a fitted, saved preprocessing spec.

The path of a data file through descend::

    read_table(path) ──► split_indices(...) ──► Preprocessor().fit(table, target, rows=train)
                                                      │  to_dict()/save(): JSON, never pickle
                                                      ▼
                                 transform(table, rows=...) ──► (X float32, y)

Choices, and why:

* **Reading** is pyarrow's (``pyarrow.csv`` with its type inference, ``pyarrow.parquet``); the
  format comes from the extension (``.csv``, ``.tsv``, ``.txt`` with a sniffed delimiter, each
  optionally compressed ``.gz``/``.bz2``/``.zst``/``.lz4``; ``.parquet``/``.pq``). A ``.csv``
  whose header has semicolons and no comma (a European spreadsheet's export) is read with
  ``;``, and with decimal commas when its numbers are written ``3,14``. Empty cells in text
  columns are read as missing.
* **Statistics come from the training rows only** (``fit(..., rows=train_idx)``) so validation
  and test scores are honest. Numeric columns are standardized (mean 0, std 1; a constant
  column keeps std 1). Missing numbers are filled with the training median and, for columns
  that had missing values in training, a ``<col>__missing`` 0/1 indicator column is added.
* **Text columns** are one-hot encoded with the categories seen in training, the
  ``max_categories`` most frequent kept (ties broken by value) and the rest pooled into
  ``<col>=__other__``. A category never seen in training maps to ``__other__`` when the column
  has that bucket (like scikit-learn's ``handle_unknown="infrequent_if_exist"``) and to all
  zeros otherwise — never a crash. Missing text gets its own ``<col>__missing`` column when
  training had missing text. A text column whose every value is distinct (more than
  ``max_categories`` of them) is an identifier and is dropped with a note; so is a column with
  no name (``""``, or ``Unnamed: 0`` as pandas re-reads one) of distinct whole numbers, the
  row index ``DataFrame.to_csv`` writes by default.
* **Numbers stored as text** (a text column whose values all parse as numbers) are read as
  numbers. If *most* but not all values parse (``"12"``, ``"13"``, ``"abc"``), that is junk in a
  numeric column: an :class:`~descend._errors.InputError` names the column, the rows and the
  values. Infinite numbers are refused the same way. NaN counts as missing.
* **Columns entirely missing** in training are dropped with a note; if nothing is left the fit
  is refused. Columns at ``transform`` time: missing fitted columns are an error naming them;
  extra columns are ignored and said so in :attr:`Preprocessor.transform_notes`.
* **Target**: missing target values are refused, naming the rows (drop them first with
  :func:`drop_missing_target` if that is what you want — silently losing rows is not a
  default). Classification encodes the sorted unique labels as ``0..k-1`` (:attr:`classes`);
  one class only is refused, and a label unseen in training at ``transform`` time is refused.
  Regression standardizes each target column (mean/std saved) and
  :meth:`Preprocessor.inverse_transform_target` brings predictions back to original units.
* **Row numbers in messages** are 0-based positions in the table given (the file's data rows,
  header not counted); for a table read from CSV the file's line numbers are added.

Example:
    >>> import pyarrow as pa
    >>> from descend.tabular import Preprocessor
    >>> table = pa.table({"size": [1.0, 2.0, None, 4.0], "color": ["r", "g", "r", "b"],
    ...                   "y": ["no", "yes", "yes", "no"]})
    >>> pre = Preprocessor().fit(table, "y")
    >>> X, y = pre.transform(table)
    >>> X.shape, y.tolist(), pre.classes
    ((4, 5), [0, 1, 1, 0], ['no', 'yes'])
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import csv
import difflib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from descend._errors import ConfigError, InputError, check_choice, describe, message

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Preprocessor",
    "check_target_present",
    "drop_missing_target",
    "infer_task",
    "read_table",
    "split_indices",
]

Task = Literal["classification", "regression"]

SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_SPEC_FORMAT = "descend.tabular.Preprocessor"
_SPEC_VERSION = 1
_OTHER = "__other__"
_MISSING = "__missing"
# A text column is "numeric with junk" when at least this share of its values parse as numbers.
_JUNK_THRESHOLD = 0.5
# Classification inference: integer-valued targets with at most this many distinct values...
_MAX_INFERRED_CLASSES = 20
# ...and at most this share of the rows (or 2 values, or label codes 0..k-1 / 1..k).
_MAX_CLASS_SHARE = 0.05
# The strings pyarrow's float cast accepts; anything else in a numeric-looking column is junk.
_NUMBER_RE = r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)$"


# ----------------------------------------------------------------------------- small helpers


def _quote_list(items: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    more = len(items) - limit
    return f"[{shown}{f', … {more} more' if more > 0 else ''}]"


def _close_matches(word: str, candidates: Sequence[str]) -> list[str]:
    """Close matches ignoring case first (``Y`` → ``y``), then difflib's similarity."""
    exact = [c for c in candidates if c.lower() == word.lower() and c != word]
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)
    return list(dict.fromkeys(exact + [by_lower[c] for c in close if by_lower[c] != word]))[:3]


def _missing_column_error(
    what: str, missing: Sequence[str], present: Sequence[str], rule: str | None = None
) -> InputError:
    hints = []
    for name in missing:
        close = _close_matches(name, present)
        if close:
            hints.append(f"for {name!r} did you mean {' or '.join(repr(c) for c in close)}?")
    fix = " ".join(hints) + " " if hints else ""
    fix += f"the table's columns are {_quote_list(list(present), 20)}"
    if rule is None:
        rule = (
            "must be a column of the table" if len(missing) == 1 else "must be columns of the table"
        )
    return InputError(message(what, rule, f"no column {_quote_list(list(missing))}", fix))


def _source(table: pa.Table) -> tuple[str | None, str | None]:
    meta = table.schema.metadata or {}
    src = meta.get(b"descend.source")
    fmt = meta.get(b"descend.format")
    return (src.decode() if src else None, fmt.decode() if fmt else None)


class _Rows:
    """Maps positions in the working table back to row numbers of the caller's table."""

    def __init__(self, table: pa.Table, ids: np.ndarray | None) -> None:
        self.ids = ids
        self.source, self.format = _source(table)
        self.dropped = _dropped_file_rows(table)

    def describe(self, positions: np.ndarray, limit: int = 5) -> str:
        rows = positions if self.ids is None else self.ids[positions]
        rows = [int(r) for r in rows[:limit]]
        more = len(positions) - len(rows)
        text = f"row{'s' if len(positions) > 1 else ''} {', '.join(map(str, rows))}"
        if more > 0:
            text += f" and {more} more"
        text += " (0-based data rows"
        # the file's own rows, where drop_missing_target removed some before this table
        file_rows = [int(r) for r in _file_rows(np.asarray(rows, np.int64), self.dropped)]
        s = "s" if len(rows) > 1 else ""
        if self.source and self.format in ("csv", "tsv", "txt"):
            text += f"; line{s} " + ", ".join(str(r + 2) for r in file_rows) + f" of {self.source}"
        elif self.source and len(self.dropped):
            text += f"; row{s} " + ", ".join(map(str, file_rows)) + f" of {self.source}"
        elif self.source:
            text += f" of {self.source}"
        return text + ")"


def _dropped_file_rows(table: pa.Table) -> np.ndarray:
    """The file's rows (sorted) that :func:`drop_missing_target` removed from ``table``."""
    raw = (table.schema.metadata or {}).get(b"descend.dropped_rows")
    return np.asarray(json.loads(raw) if raw else [], dtype=np.int64)


def _file_rows(positions: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Rows of the file for ``positions`` in a table that lacks the file's ``dropped`` rows."""
    # dropped[i] - i rows were kept before the i-th dropped one
    return positions + np.searchsorted(dropped - np.arange(len(dropped)), positions, "right")


def _as_table(data: Any, owner: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    if hasattr(data, "columns") and hasattr(data, "dtypes"):  # a pandas DataFrame
        return pa.Table.from_pandas(data, preserve_index=False)
    raise InputError(
        message(
            f"{owner}: table",
            "must be a pyarrow.Table (or a pandas DataFrame or a dict of columns)",
            describe(data),
            "read files with descend.tabular.read_table(path)",
        )
    )


def _check_unique_names(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise InputError(
            message(
                what,
                "must have unique column names",
                f"duplicate column name{'s' if len(dups) > 1 else ''} {_quote_list(dups)}",
                "rename the duplicates so each column has its own name",
            )
        )


_MISSING_TARGET_FIX = (
    "fill those values, or drop the rows on purpose with "
    "descend.tabular.drop_missing_target (or remove them from the file)"
)


def _present_target(
    data: pa.Table, name: str, where: _Rows, fix: str = _MISSING_TARGET_FIX
) -> pa.ChunkedArray:
    """The target column ``name`` of ``data`` (decoded, NaN as missing); an InputError naming
    how many values are missing and the first rows when any is."""
    col = _nan_to_null(_decode_dictionary(_chunked(data[name])))
    if col.null_count:
        bad = np.flatnonzero(np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False)))
        raise InputError(
            message(
                f"target {name!r}",
                "must have a value in every row",
                f"{len(bad)} missing at {where.describe(bad)}",
                fix,
            )
        )
    return col


def check_target_present(
    table: pa.Table, targets: Sequence[str], *, fix: str | None = None
) -> None:
    """Refuse a missing value in any of the ``targets`` columns of the whole ``table``, with
    the number missing and the first rows (file lines for a CSV) — before a split, so that
    the count is of the file, not of the training rows."""
    for name in targets:
        _present_target(table, name, _Rows(table, None), fix or _MISSING_TARGET_FIX)


def _chunked(column: Any) -> pa.ChunkedArray:
    if isinstance(column, pa.ChunkedArray):
        return column
    if isinstance(column, pa.Array):
        return pa.chunked_array([column])
    if hasattr(column, "detach"):  # a torch tensor
        column = column.detach().cpu().numpy()
    array = np.asarray(column) if not hasattr(column, "dtype") else column
    if getattr(array, "ndim", 1) != 1:
        raise InputError(
            message("column", "must be one-dimensional", describe(column), "pass one column")
        )
    return pa.chunked_array([pa.array(array, from_pandas=True)])


def _decode_dictionary(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _nan_to_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_floating(col.type) and col.null_count < len(col):
        return pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
    return col


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _parse_text_numbers(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Text → float64 (NaN for missing) and the positions of values that are not numbers."""
    text = pc.utf8_trim_whitespace(col)
    ok = pc.match_substring_regex(text, _NUMBER_RE, ignore_case=True)
    bad = pc.and_(pc.is_valid(text), pc.invert(ok))
    values = pc.cast(pc.if_else(ok, text, pa.scalar(None, text.type)), pa.float64())
    values_np = values.to_numpy() if len(values) else np.empty(0)
    bad_np = np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False), dtype=bool)
    return np.asarray(values_np, dtype=np.float64), np.flatnonzero(bad_np)


def _not_numbers(
    col: pa.ChunkedArray, bad: np.ndarray, where: _Rows, subject: str, rule: str, fix: str
) -> InputError:
    """The error for the text values at positions ``bad`` of ``col`` that are not numbers: the
    first few distinct ones and where they are."""
    examples = _quote_list(sorted(set(col.take(pa.array(bad[:20])).to_pylist())), 5)
    return InputError(message(subject, rule, f"{examples} at {where.describe(bad)}", fix))


def _time_seconds(col: pa.ChunkedArray) -> np.ndarray:
    t = col.type
    if pa.types.is_timestamp(t):
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        ints = col.cast(pa.timestamp(t.unit)).cast(pa.int64())
    elif pa.types.is_date32(t):
        scale, ints = 1.0 / 86400.0, col.cast(pa.int32()).cast(pa.int64())
    else:  # date64: milliseconds
        scale, ints = 1e3, col.cast(pa.int64())
    return pc.fill_null(ints.cast(pa.float64()), math.nan).to_numpy() / scale


_TIME_TYPES = (pa.timestamp("us"), pa.timestamp("us", tz="UTC"))  # naive, then with a zone


def _text_times(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text (``2024-01-31``, ``2024-01-31 12:00:00``, ``...T12:00:00+02:00``) →
    seconds since 1970 (NaN for missing) and the positions of values that are not times."""
    text = pc.utf8_trim_whitespace(col)
    for t in _TIME_TYPES:
        with contextlib.suppress(pa.ArrowInvalid):
            return _time_seconds(text.cast(t)), np.empty(0, np.int64)
    seconds: dict[str, float] = {}  # value by value: naive and zoned mixed, or some not times
    for v in pc.unique(text).drop_null().to_pylist():
        for t in _TIME_TYPES:
            with contextlib.suppress(pa.ArrowInvalid):
                seconds[v] = float(_time_seconds(pa.chunked_array([pa.array([v]).cast(t)]))[0])
                break
    values = np.array(
        [seconds.get(v, math.nan) if v is not None else math.nan for v in text.to_pylist()]
    )
    bad = np.flatnonzero(
        np.isnan(values) & np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), bool)
    )
    return values, bad


def _numeric_values(col: pa.ChunkedArray) -> np.ndarray:
    """Numbers, booleans, decimals → float64 with NaN for missing."""
    if _is_time(col.type):
        return _time_seconds(col)
    if len(col) == 0:
        return np.empty(0)
    # safe=False: integers beyond 2**53 (large ids, counts) round as NumPy's float64 does
    # instead of pyarrow refusing them ("Integer value ... not in range")
    floats = col.cast(pa.float64(), safe=False)
    return np.asarray(pc.fill_null(floats, math.nan).to_numpy(), np.float64)


def _to_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col.cast(pa.string())


def _class_key(value: Any) -> str:
    """Labels compare by this key, so 1, 1.0 and "1" are the same class across files."""
    if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        return str(int(value))
    return str(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    return str(value)


def _mean_std(values: np.ndarray) -> tuple[float, float, bool]:
    """``(mean, std, constant)`` of finite ``values``; ``std`` is 1 for a constant column.

    Constant is scikit-learn's test (``StandardScaler``): a spread within the rounding error
    of the mean, as ``np.std([0.1] * 3) == 1.4e-17`` is — dividing by it would blow a new
    value up to 1e16. Numbers so large that their squares overflow are scaled first, so the
    statistics stay finite (and JSON-writable).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std())
    scale = 1.0
    if not (math.isfinite(mean) and math.isfinite(std)):
        scale = float(np.abs(values).max())
        mean, std = float((values / scale).mean()), float((values / scale).std())
    n, eps = len(values), float(np.finfo(np.float64).eps)
    if std * math.sqrt(max(0.0, 1.0 - n * eps)) <= n * abs(mean) * eps:
        return mean * scale, 1.0, True
    return mean * scale, std * scale, False


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# ----------------------------------------------------------------------------- reading files


def _file_kind(path: Path) -> tuple[str | None, str]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES and len(suffixes) >= 2:
        ext = suffixes[-2]
        kind = SUPPORTED_EXTENSIONS.get(ext)
        if kind == "parquet":  # Parquet compresses inside the file; a .parquet.gz is unusual
            return None, ext + suffixes[-1]
        return kind, ext + suffixes[-1]
    ext = suffixes[-1] if suffixes else ""
    return SUPPORTED_EXTENSIONS.get(ext), ext


#: A field that is a number written with a decimal comma (``3,14``, ``-0,5``).
_DECIMAL_COMMA = re.compile(r"(?:^|;)\s*-?\d+,\d+\s*(?=;|$)", re.MULTILINE)
_DECIMAL_POINT = re.compile(r"(?:^|;)\s*-?\d+\.\d+\s*(?=;|$)", re.MULTILINE)


_NOT_UTF8_FIX = (
    "re-save it as UTF-8 (a spreadsheet's 'CSV UTF-8'; iconv -f latin1 -t utf-8 old.csv > "
    "new.csv); a compressed file needs its .gz/.bz2/.zst/.lz4 suffix, a Parquet file .parquet"
)


def _not_utf8(path: Path, got: str) -> InputError:
    return InputError(message(f"data file '{path}'", "must be UTF-8 text", got, _NOT_UTF8_FIX))


def _check_utf8(path: Path, raw: bytes) -> None:
    """Refuse a text file whose first bytes are not UTF-8 (Latin-1 or UTF-16 text, a
    compressed or Parquet file without its suffix): pyarrow cannot decode its column names
    (a traceback from inside pyarrow) or splits it into nonsense rows."""
    try:
        # incremental: a character cut in two by the sample's end is no error
        codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        kind = " (UTF-16 text)" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
        shown = raw[exc.start : exc.start + 4]
        raise _not_utf8(
            path, f"bytes that are not valid UTF-8{kind} on line {line} ({shown!r}...)"
        ) from None


def _sniff_dialect(path: Path, kind: str) -> tuple[str, str]:
    """``(delimiter, decimal point)`` of a delimited text file.

    A ``.csv`` is comma-separated unless its header has no comma and another delimiter (the
    semicolon files a European spreadsheet writes, whose numbers then usually carry a decimal
    comma: ``;`` files whose data has ``3,14``-shaped fields and no ``3.14``-shaped ones are read
    with ``,`` as the decimal point); a ``.tsv`` is tab-separated; other text is sniffed.
    """
    with pa.input_stream(str(path), compression="detect") as stream:
        raw = stream.read(64 * 1024)
    _check_utf8(path, raw)
    sample = raw.decode("utf-8", errors="replace")
    header, _, body = sample.lstrip("\ufeff").partition("\n")
    if kind == "tsv":
        delimiter = "\t"
    elif kind == "csv":
        delimiter = ","
        if "," not in header:
            delimiter = next((d for d in (";", "\t", "|") if d in header), ",")
    else:
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;| ").delimiter
        except csv.Error:
            delimiter = ","
    decimal = "."
    if delimiter == ";" and _DECIMAL_COMMA.search(body) and not _DECIMAL_POINT.search(body):
        decimal = ","
    return delimiter, decimal


def _read_csv(path: Path, kind: str) -> pa.Table:
    import pyarrow.csv as pcsv

    delimiter, decimal = _sniff_dialect(path, kind)
    convert = pcsv.ConvertOptions(strings_can_be_null=True, decimal_point=decimal)
    try:
        return pcsv.read_csv(
            str(path),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
    except (pa.ArrowInvalid, OSError) as exc:
        first_error = str(exc)
    if "Empty CSV file" in first_error:
        raise InputError(
            message(
                f"data file '{path}'",
                "must have a header row and at least one data row",
                "an empty file (no header)",
                "write the column names on the first line and one row per line after it",
            )
        )
    # Re-read single-threaded to learn the line numbers of the rows that do not fit.
    bad: list[tuple[int | None, int, int]] = []

    def collect(row: Any) -> str:
        bad.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    with contextlib.suppress(pa.ArrowInvalid, OSError):
        pcsv.read_csv(
            str(path),
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=collect),
            convert_options=convert,
        )
    if bad:
        lines = ", ".join(
            f"line {n} has {actual}" if n is not None else f"a row has {actual}"
            for n, _, actual in bad[:5]
        )
        more = f" and {len(bad) - 5} more bad lines" if len(bad) > 5 else ""
        raise InputError(
            message(
                f"data file '{path}'",
                f"must have the same number of fields on every line ({bad[0][1]}, like the "
                f"header, with delimiter {delimiter!r})",
                lines + more,
                "fix those lines (quote fields that contain the delimiter)",
            )
        )
    raise InputError(
        message(
            f"data file '{path}'",
            f"must be readable as {kind.upper()}",
            f"this error from the reader: {first_error}",
            "check the file is text in UTF-8 with one header line, or save it as Parquet",
        )
    )


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        # ParquetFile, not pq.read_table: the dataset reader fails on duplicate column names
        # with an obscure message, and we want to name them ourselves.
        table = pq.ParquetFile(str(path)).read()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            message(
                f"data file '{path}'",
                "must be a valid Parquet file",
                f"this error from the reader: {exc}",
                "check that the file is Parquet (not CSV renamed) and was fully written",
            )
        ) from None
    return _drop_pandas_index(table)


def dropped_index(table: pa.Table) -> list[str]:
    """The pandas index columns :func:`read_table` left out of a Parquet file's table."""
    raw = (table.schema.metadata or {}).get(b"descend.dropped_index")
    return list(json.loads(raw)) if raw else []


def _drop_pandas_index(table: pa.Table) -> pa.Table:
    """Leave out the pandas index that ``DataFrame.to_parquet`` stores as columns
    (``__index_level_0__`` after a filter or a sort, or the index's name), as
    ``pandas.read_parquet`` does: row labels, not a feature (a model trained on them would
    learn the row order, and a CSV of the same data has no such column). Their names go to the
    schema metadata (``descend.dropped_index``) for the caller to say so."""
    raw = (table.schema.metadata or {}).get(b"pandas")
    if not raw:
        return table
    try:
        index = json.loads(raw).get("index_columns", [])
    except (ValueError, AttributeError):
        return table
    names = [c for c in index if isinstance(c, str) and c in table.column_names]
    if not names or len(names) == table.num_columns:
        return table
    kept = table.drop_columns(names)
    meta = dict(table.schema.metadata or {})
    meta[b"descend.dropped_index"] = json.dumps(names).encode()
    return kept.replace_schema_metadata(meta)


def read_table(path: str | os.PathLike[str]) -> pa.Table:
    """Read a CSV or Parquet data file into a :class:`pyarrow.Table`.

    The format comes from the extension: ``.csv`` (comma), ``.tsv`` (tab), ``.txt`` (delimiter
    sniffed among ``, tab ; | space``), each optionally compressed (``.csv.gz`` …), and
    ``.parquet``/``.pq``. Column types are inferred by pyarrow; empty cells are missing values.
    The table's schema metadata records ``descend.source`` (the path) and ``descend.format`` so
    later error messages can point at the file's lines.

    Args:
        path: The data file.

    Returns:
        The table, with at least one row and unique column names.

    Raises:
        InputError: the file does not exist or is a directory; the extension is not supported
            (the message lists the supported ones); the file is empty, has a header but no rows,
            has lines with the wrong number of fields, is not valid Parquet or not UTF-8 text;
            or two columns share a name (the message names them).

    Example:
        >>> import pathlib, tempfile
        >>> from descend.tabular import read_table
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "data.csv"
        >>> _ = path.write_text("x,color,y\\n1.5,red,0\\n2.5,blue,1\\n")
        >>> read_table(path).column_names
        ['x', 'color', 'y']
    """
    p = Path(path)
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        siblings = [c.name for c in parent.iterdir()] if parent.is_dir() else []
        close = _close_matches(p.name, siblings)
        fix = f"did you mean {' or '.join(repr(str(parent / c)) for c in close)}?" if close else ""
        fix = fix or f"check the path (relative paths start from {os.getcwd()})"
        raise InputError(message(f"data file '{p}'", "must exist", "no such file", fix))
    if p.is_dir():
        raise InputError(
            message(f"data file '{p}'", "must be a file", "a directory", "pass one data file")
        )
    kind, ext = _file_kind(p)
    if kind is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise InputError(
            message(
                f"data file '{p}'",
                f"must be CSV or Parquet, chosen by its extension ({supported}; CSV may add "
                f"{', '.join(_COMPRESSION_SUFFIXES)})",
                f"extension {ext!r}" if ext else "no extension",
                "convert the data to CSV or Parquet, or rename the file if it already is one",
            )
        )
    if p.stat().st_size == 0:
        raise InputError(
            message(
                f"data file '{p}'",
                "must have a header row and at least one data row",
                "an empty file (0 bytes)",
                "check the file was written completely",
            )
        )
    table = _read_parquet(p) if kind == "parquet" else _read_csv(p, kind)
    if table.num_columns == 0:
        raise InputError(message(f"data file '{p}'", "must have at least one column", "none", None))
    try:
        names = table.column_names
    except UnicodeDecodeError:  # a header longer than the bytes _check_utf8 looked at
        raise _not_utf8(p, "column names that are not valid UTF-8") from None
    _check_unique_names(names, f"data file '{p}'")
    if table.num_rows == 0:
        raise InputError(
            message(
                f"data file '{p}'",
                "must have at least one data row",
                f"a header only (columns {_quote_list(names)}) and no rows",
                "add the data rows below the header",
            )
        )
    if kind != "parquet":
        for name, col in zip(names, table.columns):
            if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                raise InputError(
                    message(
                        f"column {name!r} of data file '{p}'",
                        "must be UTF-8 text",
                        "bytes that are not valid UTF-8",
                        "re-save the file with UTF-8 encoding",
                    )
                )
    meta = dict(table.schema.metadata or {})
    meta.update({b"descend.source": str(p).encode(), b"descend.format": kind.encode()})
    return table.replace_schema_metadata(meta)


# ----------------------------------------------------------------------------- task inference


def _check_numbers_written_as_text(col: pa.ChunkedArray, name: str, where: _Rows) -> None:
    """Refuse a text target that is numbers for a regression but for a few values ('?', '-',
    'missing'): as text labels it became a classifier with one class per number."""
    values, bad = _parse_text_numbers(col)
    valid = len(col) - col.null_count
    if len(bad) == 0 or valid - len(bad) < _JUNK_THRESHOLD * valid:
        return
    numbers = values[np.isfinite(values)]
    fractions = bool(np.any(numbers != np.floor(numbers)))
    if not fractions and len(np.unique(numbers)) <= _MAX_INFERRED_CLASSES:
        return  # a few whole-number codes among words ("1", "2", "unknown"): labels
    raise _not_numbers(
        col,
        bad,
        where,
        f"target {name!r}",
        "looks numeric (most values are numbers) so every value must be a number",
        "write a number in those rows or remove them ('?' or '-' is no number), or pass "
        "task='classification' to treat every value as a label",
    )


def _infer_task_with_reason(
    column: Any, name: str = "target", where: _Rows | None = None
) -> tuple[Task, str]:
    col = _nan_to_null(_decode_dictionary(_chunked(column)))
    t = col.type
    if _is_text(t):
        _check_numbers_written_as_text(col, name, where or _Rows(pa.table({}), None))
        return "classification", "text labels"
    if pa.types.is_boolean(t):
        return "classification", "true/false labels"
    valid = len(col) - col.null_count
    if valid == 0:
        raise InputError(
            message(
                f"target {name!r}",
                "must have at least one value",
                "only missing values",
                "check the target column name and the file",
            )
        )
    if not _is_number(t):
        return "classification", f"values of type {t}"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        f = col.cast(pa.float64())
        finite = pc.is_finite(f)
        if not pc.all(finite).as_py() or not pc.all(pc.equal(pc.floor(f), f)).as_py():
            return "regression", "numbers with fractions"
    n_distinct = pc.count_distinct(col).as_py()
    kind = "whole numbers"
    if n_distinct > _MAX_INFERRED_CLASSES:
        return "regression", f"{kind} with {n_distinct} distinct values (> {_MAX_INFERRED_CLASSES})"
    if n_distinct <= 2:
        return (
            "classification",
            f"{kind} with {n_distinct} distinct value{'' if n_distinct == 1 else 's'}",
        )
    if n_distinct <= _MAX_CLASS_SHARE * valid:
        return "classification", f"{kind} with {n_distinct} distinct values in {valid} rows"
    values = sorted(float(v) for v in pc.unique(col).drop_null().to_pylist())
    codes = values[0] in (0.0, 1.0) and values == [values[0] + i for i in range(len(values))]
    if codes and valid >= 2 * n_distinct:
        return "classification", f"label codes {int(values[0])}..{int(values[-1])}"
    return "regression", (
        f"{kind} with {n_distinct} distinct values in {valid} rows (more than "
        f"{_MAX_CLASS_SHARE:.0%} of the rows)"
    )


def infer_task(column: Any) -> Task:
    """Guess whether a target column calls for classification or regression.

    The rule, in order:

    1. text, boolean or categorical (dictionary) values → ``"classification"``;
    2. numbers with a fractional part (or infinities) → ``"regression"``;
    3. whole numbers (integer type, or floats that are all whole) with more than 20 distinct
       values → ``"regression"``;
    4. whole numbers with at most 2 distinct values, or at most 5% as many distinct values as
       rows, or exactly the label codes ``0..k-1``/``1..k`` with at least 2 rows per code on
       average → ``"classification"``;
    5. anything else → ``"regression"``.

    Missing values (and NaN) are ignored. Pass ``task=`` to :class:`Preprocessor` to override.

    Args:
        column: A pyarrow Array/ChunkedArray, NumPy array, list or pandas Series.

    Returns:
        ``"classification"`` or ``"regression"``.

    Raises:
        InputError: the column has no non-missing value; or it is text whose values are mostly
            numbers (with fractions, or more than 20 distinct) but for a few that are not
            (``"?"``, ``"-"``): a numeric target with junk, not labels.

    Example:
        >>> from descend.tabular import infer_task
        >>> infer_task(["cat", "dog", "cat"]), infer_task([0.5, 1.25, 3.0])
        ('classification', 'regression')
    """
    return _infer_task_with_reason(column)[0]


# ----------------------------------------------------------------------------- splitting


def _split_counts(n: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    def count(fraction: float) -> int:
        if fraction <= 0:
            return 0
        return max(1, math.floor(n * fraction + 0.5))

    return count(validation_fraction), count(test_fraction)


def _encode_labels(labels: Any, n: int) -> np.ndarray:
    if isinstance(labels, (pa.Array, pa.ChunkedArray)):
        values = labels.to_pylist()
    else:
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        arr = np.asarray(labels)
        if arr.ndim != 1:
            raise InputError(
                message(
                    "split_indices: stratify_labels",
                    "must be one label per row (1-D)",
                    describe(arr),
                    "pass the class label column",
                )
            )
        if arr.dtype.kind in "biu" and len(arr) == n:
            # numbered by first appearance, as other labels are: the same classes give the
            # same split whether they come as NumPy integers, floats, text or a pyarrow column
            uniq, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
            rank = np.empty(len(uniq), dtype=np.int64)
            rank[np.argsort(first)] = np.arange(len(uniq))
            return rank[inverse.reshape(-1)]
        values = arr.tolist()
    if len(values) != n:
        raise InputError(
            message(
                "split_indices: stratify_labels",
                f"must have one label per row ({n})",
                f"{len(values)} labels",
                "pass the target column of the same table",
            )
        )
    mapping: dict[str, int] = {}
    return np.fromiter(
        (mapping.setdefault(_class_key(v), len(mapping)) for v in values),
        dtype=np.int64,
        count=n,
    )


def split_indices(
    n: int,
    validation_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
    stratify_labels: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``range(n)`` into train, validation and test row indices.

    Sizes: each requested split gets ``round(n * fraction)`` rows but at least one; training
    gets the rest and must keep at least one. With ``stratify_labels`` each class is spread
    over the splits in proportion to its size, and every class puts its first row (in seeded
    random order) into training first, so small classes are never missing from training while
    training has room for one row per class. The result depends only on the arguments.

    Args:
        n: Number of rows.
        validation_fraction: Share of rows for validation, in ``[0, 1)``.
        test_fraction: Share of rows for the test set, in ``[0, 1)``; with
            ``validation_fraction`` below 1 in total.
        seed: Seed of the random permutation.
        stratify_labels: Optional class label per row (any hashable values; pyarrow, NumPy,
            list or tensor) to stratify on. Pass ``None`` for regression.

    Returns:
        ``(train_idx, val_idx, test_idx)``: sorted ``int64`` arrays that partition ``range(n)``
        (empty where the fraction is 0).

    Raises:
        ConfigError: a fraction is outside ``[0, 1)`` or they add up to 1 or more.
        InputError: too few rows to give every requested split a row and keep one for
            training; labels of the wrong length.

    Example:
        >>> from descend.tabular import split_indices
        >>> train, val, test = split_indices(10, 0.2, 0.1, seed=0)
        >>> len(train), len(val), len(test)
        (7, 2, 1)
    """
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (0.0 <= value < 1.0):
            raise ConfigError(
                message(
                    f"split_indices: {name}",
                    "must be a number in [0, 1)",
                    describe(value),
                    f"pass e.g. {name}=0.2",
                )
            )
    if validation_fraction + test_fraction >= 1.0:
        raise ConfigError(
            message(
                "split_indices: validation_fraction + test_fraction",
                "must be below 1 so rows remain for training",
                f"{validation_fraction} + {test_fraction}",
                "lower one of them, e.g. validation_fraction=0.2, test_fraction=0.1",
            )
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(
            message("split_indices: n", "must be a number of rows >= 1", describe(n), None)
        )
    n = int(n)
    n_val, n_test = _split_counts(n, validation_fraction, test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        need = n + 1
        while True:
            v, t = _split_counts(need, validation_fraction, test_fraction)
            if need - v - t >= 1:
                break
            need += 1
        raise InputError(
            message(
                "data",
                f"must have at least {need} rows to split into training, validation "
                f"(fraction {validation_fraction}) and test (fraction {test_fraction}) with at "
                f"least one row each",
                f"{n} row{'s' if n != 1 else ''}",
                "add rows, or set validation_fraction/test_fraction to 0",
            )
        )
    rng = np.random.default_rng(seed)
    if stratify_labels is None:
        order = rng.permutation(n)
    else:
        codes = _encode_labels(stratify_labels, n)
        keys = np.empty(n, dtype=np.float64)
        for c in np.unique(codes):
            members = np.flatnonzero(codes == c)
            members = members[rng.permutation(len(members))]
            offset = rng.random()
            # Evenly spaced keys in [0, 1) interleave the classes proportionally when sorted.
            keys[members] = (np.arange(len(members)) + offset) / len(members)
            keys[members[0]] = -1.0  # one row of every class goes to training first
        order = np.argsort(keys, kind="stable")
    train = np.sort(order[:n_train])
    val = np.sort(order[n_train : n_train + n_val])
    test = np.sort(order[n_train + n_val :])
    return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)


def drop_missing_target(
    table: pa.Table, target: str | Sequence[str]
) -> tuple[pa.Table, np.ndarray]:
    """Remove the rows whose target is missing (null or NaN), for when that is intended.

    :meth:`Preprocessor.fit` refuses missing targets rather than silently losing rows; call
    this first to drop them on purpose.

    Args:
        table: The data.
        target: The target column name(s).

    Returns:
        ``(kept_table, dropped_rows)`` with the 0-based positions of the dropped rows.

    Example:
        >>> import pyarrow as pa
        >>> from descend.tabular import drop_missing_target
        >>> kept, dropped = drop_missing_target(pa.table({"x": [1, 2], "y": [0.5, None]}), "y")
        >>> kept.num_rows, dropped.tolist()
        (1, [1])
    """
    table = _as_table(table, "drop_missing_target")
    targets = [target] if isinstance(target, str) else list(target)
    missing = [t for t in targets if t not in table.column_names]
    if missing:
        raise _missing_column_error("target", missing, table.column_names)
    bad = np.zeros(table.num_rows, dtype=bool)
    for t in targets:
        col = _nan_to_null(_decode_dictionary(table[t]))
        bad |= np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
    kept, dropped = table.filter(pa.array(~bad)), np.flatnonzero(bad)
    if len(dropped) and _source(table)[0]:
        # so that messages about the kept table still name the file's own lines
        before = _dropped_file_rows(table)
        rows = np.union1d(before, _file_rows(dropped, before))
        meta = dict(table.schema.metadata or {})
        meta[b"descend.dropped_rows"] = json.dumps(rows.tolist()).encode()
        kept = kept.replace_schema_metadata(meta)
    return kept, dropped


# ----------------------------------------------------------------------------- preprocessing


_UNNAMED = re.compile(r"Unnamed: \d+")


def _looks_like_saved_index(name: str, values: np.ndarray) -> bool:
    """A column with no name (``""``, or ``Unnamed: 0`` as pandas re-reads one) of distinct
    whole numbers: the index ``DataFrame.to_csv`` writes by default, not a feature."""
    if name.strip() and not _UNNAMED.fullmatch(name.strip()):
        return False
    if len(values) < 2 or not np.isfinite(values).all() or not (values == np.round(values)).all():
        return False
    return len(np.unique(values)) == len(values)


class Preprocessor:
    """Turns a table into a float32 feature matrix and encoded targets, fitted on training rows.

    See the module docstring for every rule. After :meth:`fit`, the fitted state is:
    :attr:`task`, :attr:`target`, :attr:`classes` (classification), :attr:`target_mean` /
    :attr:`target_std` (regression), :attr:`feature_names` (the output columns, e.g. ``"age"``,
    ``"age__missing"``, ``"color=red"``), :attr:`notes` (sentences describing what was done),
    :attr:`dropped` (``{column: reason}``). :meth:`to_dict`/:meth:`save` write all of it as
    JSON; :meth:`from_dict`/:meth:`load` restore a preprocessor that transforms identically.

    Args:
        task: ``"classification"``, ``"regression"`` or ``None`` to infer it from the target
            with :func:`infer_task`. A list of target columns means multi-output regression.
        max_categories: Most one-hot columns per text column (the most frequent categories);
            the rest share one ``<col>=__other__`` column. At least 1.
        categorical: Columns to one-hot encode even though they hold numbers (e.g. codes).
        ignore: Columns that are not features (identifiers, leaks); they are never read.

    Example:
        >>> import pyarrow as pa
        >>> from descend.tabular import Preprocessor
        >>> table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [10.0, 20.0, 30.0, 40.0]})
        >>> pre = Preprocessor().fit(table, "y", rows=[0, 1, 2])
        >>> X, y = pre.transform(table, rows=[3])
        >>> round(float(pre.inverse_transform_target(y)[0]), 3)
        40.0
    """

    def __init__(
        self,
        task: Task | None = None,
        *,
        max_categories: int = 50,
        categorical: Sequence[str] = (),
        ignore: Sequence[str] = (),
    ) -> None:
        if task is not None:
            check_choice("task", task, ("classification", "regression"), owner="Preprocessor")
        if (
            isinstance(max_categories, bool)
            or not isinstance(max_categories, int)
            or max_categories < 1
        ):
            raise ConfigError(
                message(
                    "Preprocessor: max_categories",
                    "must be an integer >= 1",
                    describe(max_categories),
                    "pass e.g. max_categories=50",
                )
            )
        for name, value in (("categorical", categorical), ("ignore", ignore)):
            if isinstance(value, str):
                raise ConfigError(
                    message(
                        f"Preprocessor: {name}",
                        "must be a list of column names",
                        repr(value),
                        f"pass {name}=[{value!r}]",
                    )
                )
        self.task_option: Task | None = task
        self.max_categories = max_categories
        self.categorical = [str(c) for c in categorical]
        self.ignore = [str(c) for c in ignore]
        self._reset()

    def _reset(self) -> None:
        self.task: Task | None = None
        self.targets: list[str] = []
        self.classes: list[Any] | None = None
        self.target_mean: list[float] | None = None
        self.target_std: list[float] | None = None
        self.columns: list[dict[str, Any]] = []
        self.dropped: dict[str, str] = {}
        self.feature_names: list[str] = []
        self.notes: list[str] = []
        self.transform_notes: list[str] = []
        self.n_train_rows = 0

    # -- fitted properties ------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict`) has run."""
        return self.task is not None

    @property
    def target(self) -> str | list[str] | None:
        """The target column (a list for multi-output regression), ``None`` before fitting."""
        if not self.targets:
            return None
        return self.targets[0] if len(self.targets) == 1 else list(self.targets)

    @property
    def n_features(self) -> int:
        """Number of columns of ``X`` (the model's input width)."""
        return len(self.feature_names)

    @property
    def n_outputs(self) -> int:
        """The model's output width: number of classes, or number of target columns."""
        if self.task == "classification":
            return len(self.classes or [])
        return len(self.targets)

    @property
    def input_columns(self) -> list[str]:
        """The table columns :meth:`transform` needs (targets excluded)."""
        return [c["name"] for c in self.columns]

    def __repr__(self) -> str:
        if not self.is_fitted:
            return "Preprocessor(unfitted)"
        return (
            f"Preprocessor(task={self.task!r}, target={self.target!r}, "
            f"{len(self.columns)} columns -> {self.n_features} features)"
        )

    # -- fit --------------------------------------------------------------------------------

    @staticmethod
    def _select_rows(table: pa.Table, rows: Any, owner: str) -> tuple[pa.Table, np.ndarray | None]:
        if rows is None:
            return table, None
        if hasattr(rows, "detach"):
            rows = rows.detach().cpu().numpy()
        idx = np.asarray(rows)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise InputError(
                message(
                    f"{owner}: rows",
                    "must be a 1-D array of integer row indices",
                    describe(idx),
                    "pass e.g. the train_idx from split_indices",
                )
            )
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= table.num_rows):
            raise InputError(
                message(
                    f"{owner}: rows",
                    f"must be indices in [0, {table.num_rows})",
                    f"values from {idx.min()} to {idx.max()}",
                    "pass indices of this table",
                )
            )
        return table.take(pa.array(idx)), idx

    def fit(self, table: Any, target: str | Sequence[str], *, rows: Any = None) -> Preprocessor:
        """Learn the preprocessing from the training rows.

        Args:
            table: A :class:`pyarrow.Table` (or pandas DataFrame, or dict of columns).
            target: The target column, or a list of columns for multi-output regression.
            rows: Optional indices of the training rows within ``table``; statistics come from
                these rows only, and error messages give row numbers of ``table``.

        Returns:
            ``self``, fitted.

        Raises:
            InputError: the target is not a column (close matches listed); it has missing
                values or a single class; a column mixes numbers with text; a column holds
                infinities or an unsupported type; no feature column is left; a column named in
                ``categorical``/``ignore`` does not exist; a column has the name of a feature
                made from another (``a__missing`` beside an ``a`` with missing values).
            ConfigError: classification asked for several target columns.

        Example:
            >>> import pyarrow as pa
            >>> from descend.tabular import Preprocessor
            >>> pre = Preprocessor().fit(pa.table({"x": [1, 2, 3], "y": ["a", "b", "a"]}), "y")
            >>> pre.task, pre.classes
            ('classification', ['a', 'b'])
        """
        self._reset()
        full = _as_table(table, "Preprocessor.fit")
        _check_unique_names(full.column_names, "Preprocessor.fit: table")
        targets = [target] if isinstance(target, str) else [str(t) for t in target]
        if not targets:
            raise ConfigError(
                message("Preprocessor.fit: target", "must name a column", "an empty list", None)
            )
        missing = [t for t in targets if t not in full.column_names]
        if missing:
            raise _missing_column_error("target column", missing, full.column_names)
        for option in ("categorical", "ignore"):
            unknown = [c for c in getattr(self, option) if c not in full.column_names]
            if unknown:
                raise _missing_column_error(f"Preprocessor {option}", unknown, full.column_names)
        data, ids = self._select_rows(full, rows, "Preprocessor.fit")
        if data.num_rows == 0:
            raise InputError(
                message(
                    "Preprocessor.fit",
                    "needs at least one training row",
                    "0 rows",
                    "check the rows passed (the training split is empty)",
                )
            )
        where = _Rows(full, ids)
        self.n_train_rows = data.num_rows
        try:
            self._fit_target(data, targets, where)
            self._fit_features(data, targets, where)
        except Exception:
            self._reset()
            raise
        return self

    def _target_column(self, data: pa.Table, name: str, where: _Rows) -> pa.ChunkedArray:
        return _present_target(data, name, where)

    def _fit_target(self, data: pa.Table, targets: list[str], where: _Rows) -> None:
        cols = [self._target_column(data, t, where) for t in targets]
        if self.task_option is not None:
            task, reason = self.task_option, "set by task="
        elif len(targets) > 1:
            task, reason = "regression", "several target columns"
        else:
            task, reason = _infer_task_with_reason(cols[0], targets[0], where)
        if task == "classification" and len(targets) > 1:
            raise ConfigError(
                message(
                    "Preprocessor: target",
                    "must be one column for classification",
                    _quote_list(targets),
                    "pass one target column, or task='regression' for multi-output regression",
                )
            )
        self.targets = targets
        override = "task='regression'" if task == "classification" else "task='classification'"
        if task == "classification":
            col = cols[0]
            uniques = [v for v in pc.unique(col).to_pylist() if v is not None]
            classes = sorted(uniques)
            if len(classes) < 2:
                raise InputError(
                    message(
                        f"target {targets[0]!r}",
                        "must have at least 2 classes to learn a classifier",
                        f"one class, {classes[0]!r}, in all {data.num_rows} training rows",
                        "check the target column (or that the training rows are not all one "
                        "class); for a numeric target use task='regression'",
                    )
                )
            self.classes = [_jsonable(c) for c in classes]
            shown = _quote_list(self.classes, 10)
            self.notes.append(
                f"Target {targets[0]!r}: classification ({reason}) with {len(classes)} classes "
                f"{shown}, encoded 0..{len(classes) - 1} in sorted order"
                + ("" if self.task_option else f"; pass {override} to override")
                + "."
            )
        else:
            means, stds = [], []
            for name, col in zip(targets, cols):
                values = self._numbers_for_target(col, name, where)
                mean, std, constant = _mean_std(values)
                if constant:
                    self.notes.append(f"Target {name!r} is constant in the training rows.")
                means.append(mean)
                stds.append(std)
            self.target_mean, self.target_std = means, stds
            detail = ", ".join(
                f"{n!r} mean {_fmt(m)}, std {_fmt(s)}" for n, m, s in zip(targets, means, stds)
            )
            self.notes.append(
                f"Target: regression ({reason}); standardized ({detail}) — predictions and "
                "metrics are reported in original units"
                + ("" if self.task_option or len(targets) > 1 else f"; pass {override} to override")
                + "."
            )
        self.task = task

    def _numbers_for_target(self, col: pa.ChunkedArray, name: str, where: _Rows) -> np.ndarray:
        if _is_text(col.type):
            values, bad = _parse_text_numbers(col)
            if len(bad):
                raise _not_numbers(
                    col,
                    bad,
                    where,
                    f"regression target {name!r}",
                    "must hold numbers",
                    "fix those values, or use task='classification' for labels",
                )
        elif _is_number(col.type) or pa.types.is_boolean(col.type) or _is_time(col.type):
            values = _numeric_values(col)
        else:
            raise InputError(
                message(
                    f"regression target {name!r}",
                    "must hold numbers",
                    f"values of type {col.type}",
                    "convert the column to numbers, or use task='classification'",
                )
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise InputError(
                message(
                    f"regression target {name!r}",
                    "must be finite",
                    f"infinite values at {where.describe(bad)}",
                    "fix or remove those rows",
                )
            )
        return values

    def _fit_features(self, data: pa.Table, targets: list[str], where: _Rows) -> None:
        skip = set(targets) | set(self.ignore)
        numeric_notes: list[str] = []
        constant: list[str] = []
        text_numbers: list[str] = []
        for name in data.column_names:
            if name in skip:
                continue
            col = _nan_to_null(_decode_dictionary(data[name]))
            t = col.type
            if pa.types.is_null(t) or col.null_count == len(col):
                self.dropped[name] = "every value is missing in the training rows"
                continue
            if name in self.categorical or (
                _is_text(t) and not self._text_is_numeric(col, name, where)
            ):
                spec = self._fit_categorical(name, _to_text(col))
                if spec is not None:
                    self.columns.append(spec)
                continue
            if _is_text(t):
                values, _ = _parse_text_numbers(col)
                source = "text"
                text_numbers.append(name)
            elif _is_number(t) or pa.types.is_boolean(t):
                values, source = _numeric_values(col), "number"
                if _looks_like_saved_index(name, values):
                    self.dropped[name] = (
                        "a column without a name holding distinct whole numbers is the row "
                        "index pandas' DataFrame.to_csv writes, not a feature (save with "
                        "index=False, or give the column a name in the header to keep it)"
                    )
                    continue
            elif _is_time(t):
                values, source = _numeric_values(col), "time"
                numeric_notes.append(
                    f"Converted {name!r} ({t}) to seconds since 1970-01-01 before standardizing."
                )
            else:
                raise InputError(
                    message(
                        f"column {name!r}",
                        "must hold numbers, text, true/false or dates to be used as a feature",
                        f"values of type {t}",
                        f"convert it, or leave it out with ignore=[{name!r}]",
                    )
                )
            self._check_finite(values, name, where)
            self.columns.append(self._fit_numeric(name, values, source, constant))
        if not self.columns:
            reasons = "; ".join(f"{k!r}: {v}" for k, v in self.dropped.items())
            raise InputError(
                message(
                    "table",
                    "must have at least one usable feature column besides the target",
                    f"none left ({reasons})" if reasons else "no other column",
                    "add feature columns, or check which column is the target",
                )
            )
        numeric = [c["name"] for c in self.columns if c["kind"] == "numeric"]
        if numeric:
            self.notes.append(
                f"Standardized {len(numeric)} numeric column{'s' if len(numeric) > 1 else ''} "
                f"to mean 0, std 1 with the statistics of the {self.n_train_rows} training rows."
            )
        if text_numbers:
            self.notes.append(
                f"Read {_quote_list(text_numbers)} as numbers (stored as text, every value parses)."
            )
        if constant:
            self.notes.append(
                f"{len(constant)} column{'s are' if len(constant) > 1 else ' is'} constant in the "
                f"training rows and carr{'y' if len(constant) > 1 else 'ies'} no information: "
                f"{_quote_list(constant)}."
            )
        self.notes.extend(numeric_notes)
        for spec in self.columns:
            self.notes.extend(spec.pop("_notes", []))
        for name, reason in self.dropped.items():
            self.notes.append(f"Dropped column {name!r}: {reason}.")
        if self.ignore:
            self.notes.append(f"Ignored columns {_quote_list(self.ignore)} as asked.")
        self.feature_names = self._output_names()
        clashes = sorted({f for f in self.feature_names if self.feature_names.count(f) > 1})
        if clashes:
            raise InputError(
                message(
                    "feature names",
                    "must be unique (a column's own name, and the '<col>__missing' and "
                    "'<col>=<category>' columns made from others)",
                    f"{_quote_list(clashes)} twice",
                    "rename the table column of that name, or leave it out with ignore=[...]",
                )
            )

    def _text_is_numeric(self, col: pa.ChunkedArray, name: str, where: _Rows) -> bool:
        _, bad = _parse_text_numbers(col)
        valid = len(col) - col.null_count
        if len(bad) == 0:
            return True
        if valid - len(bad) >= _JUNK_THRESHOLD * valid:
            raise _not_numbers(
                col,
                bad,
                where,
                f"column {name!r}",
                "looks numeric (most values are numbers) so every value must be a number",
                "correct those values or leave the cells empty (missing numbers are filled "
                f"with the median), or pass categorical=[{name!r}] to treat it as text",
            )
        return False

    @staticmethod
    def _check_finite(values: np.ndarray, name: str, where: _Rows) -> None:
        bad = np.flatnonzero(np.isinf(values))
        if len(bad):
            raise InputError(
                message(
                    f"column {name!r}",
                    "must hold finite numbers",
                    f"infinite values at {where.describe(bad)}",
                    "fix those values or leave the cells empty to have them filled",
                )
            )

    def _fit_numeric(
        self, name: str, values: np.ndarray, source: str, constant: list[str]
    ) -> dict[str, Any]:
        missing = np.isnan(values)
        observed = values[~missing]
        mean, std, is_constant = _mean_std(observed)
        if is_constant:
            constant.append(name)
        with np.errstate(over="ignore"):
            median = float(np.median(observed))
        if not math.isfinite(median):  # the two middle values of huge numbers overflow
            median = float(np.median(observed / 2)) * 2
        n_missing = int(missing.sum())
        spec: dict[str, Any] = {
            "name": name,
            "kind": "numeric",
            "source": source,
            "mean": mean,
            "std": std,
            "median": median,
            "missing_indicator": n_missing > 0,
        }
        if n_missing:
            spec["_notes"] = [
                f"Filled {n_missing} missing value{'s' if n_missing > 1 else ''} in {name!r} with "
                f"the training median {_fmt(median)} and added the indicator column "
                f"'{name}{_MISSING}'."
            ]
        return spec

    def _fit_categorical(self, name: str, col: pa.ChunkedArray) -> dict[str, Any] | None:
        counts = pc.value_counts(col)
        values = counts.field("values").to_pylist()
        freqs = counts.field("counts").to_pylist()
        pairs = [(v, c) for v, c in zip(values, freqs) if v is not None]
        n_valid = len(col) - col.null_count
        looks_like_id = len(pairs) == n_valid and n_valid > self.max_categories
        if looks_like_id and name not in self.categorical:
            self.dropped[name] = (
                f"every one of its {n_valid} text values is distinct, so it looks like an "
                f"identifier (pass categorical=[{name!r}] to keep it)"
            )
            return None
        pairs.sort(key=lambda vc: (-vc[1], vc[0]))
        kept = sorted(v for v, _ in pairs[: self.max_categories])  # most frequent, shown sorted
        other = len(pairs) > self.max_categories
        n_missing = col.null_count
        notes = []
        if other:
            notes.append(
                f"One-hot encoded {name!r}: kept the {len(kept)} most frequent of {len(pairs)} "
                f"categories; the rest (and categories first seen later) go to "
                f"'{name}={_OTHER}'."
            )
        else:
            notes.append(
                f"One-hot encoded {name!r} ({len(kept)} categor{'ies' if len(kept) > 1 else 'y'}"
                "; a category not seen in training becomes all zeros)."
            )
        if n_missing:
            notes.append(
                f"{n_missing} missing value{'s' if n_missing > 1 else ''} in {name!r} get their "
                f"own indicator column '{name}{_MISSING}'."
            )
        return {
            "name": name,
            "kind": "categorical",
            "categories": kept,
            "other": other,
            "missing_indicator": n_missing > 0,
            "_notes": notes,
        }

    def _output_names(self) -> list[str]:
        out: list[str] = []
        for spec in self.columns:
            name = spec["name"]
            if spec["kind"] == "numeric":
                out.append(name)
            else:
                out.extend(f"{name}={c}" for c in spec["categories"])
                if spec["other"]:
                    out.append(f"{name}={_OTHER}")
            if spec["missing_indicator"]:
                out.append(f"{name}{_MISSING}")
        return out

    # -- transform --------------------------------------------------------------------------

    def _require_fitted(self, owner: str) -> None:
        if not self.is_fitted:
            raise ConfigError(
                message(
                    f"Preprocessor.{owner}",
                    "needs a fitted preprocessor",
                    "an unfitted one",
                    "call fit(table, target) first, or Preprocessor.load(path)",
                )
            )

    def transform(self, table: Any, *, rows: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the fitted preprocessing.

        Args:
            table: A table with (at least) the fitted input columns; extra columns are ignored
                (listed in :attr:`transform_notes`). The target column(s) may be absent.
            rows: Optional indices of the rows of ``table`` to transform.

        Returns:
            ``(X, y)``: ``X`` ``float32`` of shape ``(n, n_features)``; ``y`` ``int64`` class
            indices (classification), ``float32`` standardized values (regression; 2-D for
            several targets), or ``None`` when the target column is absent.

        Raises:
            InputError: fitted columns are missing (named); a numeric column holds text or
                infinities; the target has missing values or classes unseen in training.
            ConfigError: the preprocessor is not fitted.

        Example:
            >>> import pyarrow as pa
            >>> from descend.tabular import Preprocessor
            >>> pre = Preprocessor().fit(pa.table({"c": ["a", "b"], "y": [0, 1]}), "y")
            >>> pre.transform(pa.table({"c": ["b", "zzz"]}))[0].tolist()
            [[0.0, 1.0], [0.0, 0.0]]
        """
        self._require_fitted("transform")
        full = _as_table(table, "Preprocessor.transform")
        names = full.column_names  # built anew by each access: once, not once per column
        _check_unique_names(names, "Preprocessor.transform: table")
        present = set(names)
        missing = [c for c in self.input_columns if c not in present]
        if missing:
            raise _missing_column_error(
                "the feature columns the preprocessor was fitted on",
                missing,
                names,
                rule="must all be in the table",
            )
        data, ids = self._select_rows(full, rows, "Preprocessor.transform")
        where = _Rows(full, ids)
        notes: list[str] = []
        known = set(self.input_columns) | set(self.targets) | set(self.dropped) | set(self.ignore)
        extra = [c for c in data.column_names if c not in known]
        if extra:
            notes.append(f"Ignored columns not seen in training: {_quote_list(extra)}.")
        n = data.num_rows
        X = np.zeros((n, self.n_features), dtype=np.float32)
        j = 0
        for spec in self.columns:
            col = _nan_to_null(_decode_dictionary(data[spec["name"]]))
            if spec["kind"] == "numeric":
                j = self._transform_numeric(spec, col, X, j, where, notes)
            else:
                j = self._transform_categorical(spec, col, X, j, notes)
        self.transform_notes = notes
        return X, self._transform_target(data, where)

    def _transform_numeric(
        self,
        spec: dict[str, Any],
        col: pa.ChunkedArray,
        X: np.ndarray,
        j: int,
        where: _Rows,
        notes: list[str],
    ) -> int:
        name = spec["name"]
        t = col.type
        if _is_text(t) and spec["source"] == "time":
            values, bad = _text_times(col)
            if len(bad):
                raise _not_numbers(
                    col,
                    bad,
                    where,
                    f"column {name!r}",
                    "held dates/times in training so every value must be one (ISO 8601, "
                    "e.g. 2024-01-31 or 2024-01-31 12:00:00)",
                    "correct those values or leave the cells empty (missing times are "
                    "filled with the training median)",
                )
        elif _is_text(t):
            values, bad = _parse_text_numbers(col)
            if len(bad):
                raise _not_numbers(
                    col,
                    bad,
                    where,
                    f"column {name!r}",
                    "was numeric in training so every value must be a number",
                    "correct those values or leave the cells empty (missing numbers are "
                    "filled with the training median)",
                )
        elif _is_number(t) or pa.types.is_boolean(t) or _is_time(t) or pa.types.is_null(t):
            values = np.full(len(col), np.nan) if pa.types.is_null(t) else _numeric_values(col)
        else:
            raise InputError(
                message(
                    f"column {name!r}",
                    "was numeric in training so it must hold numbers",
                    f"values of type {t}",
                    "pass a table with the same column types as the training data",
                )
            )
        self._check_finite(values, name, where)
        missing = np.isnan(values)
        if missing.any():
            values = np.where(missing, spec["median"], values)
            if not spec["missing_indicator"]:
                notes.append(
                    f"Filled {int(missing.sum())} missing value(s) in {name!r} with the training "
                    "median (training had none, so there is no indicator column)."
                )
        X[:, j] = (values - spec["mean"]) / spec["std"]
        j += 1
        if spec["missing_indicator"]:
            X[:, j] = missing
            j += 1
        return j

    def _transform_categorical(
        self, spec: dict[str, Any], col: pa.ChunkedArray, X: np.ndarray, j: int, notes: list[str]
    ) -> int:
        name = spec["name"]
        k = len(spec["categories"])
        text = _to_text(col) if not pa.types.is_null(col.type) else col.cast(pa.string())
        index = pc.index_in(text, value_set=pa.array(spec["categories"], pa.string()))
        idx = np.asarray(pc.fill_null(index, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        valid = np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), dtype=bool)
        hit = idx >= 0
        X[np.flatnonzero(hit), j + idx[hit]] = 1.0
        unseen = valid & ~hit
        width = k
        if spec["other"]:
            X[unseen, j + k] = 1.0
            width += 1
        if spec["missing_indicator"]:
            X[~valid, j + width] = 1.0
            width += 1
        if unseen.any():
            values = sorted(set(text.filter(pa.array(unseen)).to_pylist()))
            where_to = f"'{name}={_OTHER}'" if spec["other"] else "all zeros"
            notes.append(
                f"{int(unseen.sum())} value(s) of {name!r} were not seen in training "
                f"{_quote_list(values, 5)}; encoded as {where_to}."
            )
        if not spec["missing_indicator"] and not valid.all():
            notes.append(
                f"{int((~valid).sum())} missing value(s) of {name!r} encoded as all zeros "
                "(training had none, so there is no indicator column)."
            )
        return j + width

    def _transform_target(self, data: pa.Table, where: _Rows) -> np.ndarray | None:
        present = [t for t in self.targets if t in data.column_names]
        if not present:
            return None
        if len(present) < len(self.targets):
            absent = [t for t in self.targets if t not in present]
            raise _missing_column_error("target column", absent, data.column_names)
        cols = [self._target_column(data, t, where) for t in self.targets]
        if self.task == "classification":
            lookup = {_class_key(c): i for i, c in enumerate(self.classes or [])}
            labels = cols[0].to_pylist()
            codes = np.fromiter(
                (lookup.get(_class_key(v), -1) for v in labels), np.int64, len(labels)
            )
            bad = np.flatnonzero(codes < 0)
            if len(bad):
                unseen = sorted({_class_key(labels[i]) for i in bad[:100]})
                raise InputError(
                    message(
                        f"target {self.targets[0]!r}",
                        f"must hold the classes seen in training {_quote_list(self.classes or [], 10)}",
                        f"new class{'es' if len(unseen) > 1 else ''} {_quote_list(unseen, 5)} at "
                        f"{where.describe(bad)}",
                        "train on data that contains every class (stratify the split), or "
                        "remove those rows",
                    )
                )
            return codes
        out = np.empty((data.num_rows, len(self.targets)), dtype=np.float32)
        for k, (name, col) in enumerate(zip(self.targets, cols)):
            values = self._numbers_for_target(col, name, where)
            out[:, k] = (values - self.target_mean[k]) / self.target_std[k]  # type: ignore[index]
        return out[:, 0] if len(self.targets) == 1 else out

    def inverse_transform_target(self, y: Any) -> np.ndarray:
        """Bring model outputs back to the target's original form.

        Regression: un-standardize (``y * std + mean``) to original units; ``y`` of shape
        ``(n,)`` or ``(n, n_targets)``. Classification: class indices ``(n,)`` — or scores of
        shape ``(n, n_classes)``, whose argmax is taken — become the original labels.

        Args:
            y: NumPy array, list or tensor.

        Returns:
            A NumPy array (``float64`` for regression; the labels' dtype for classification).

        Example:
            >>> import pyarrow as pa
            >>> from descend.tabular import Preprocessor
            >>> pre = Preprocessor().fit(pa.table({"x": [0, 1, 2], "y": [1.0, 2.0, 3.0]}), "y")
            >>> pre.inverse_transform_target([0.0]).round(6).tolist()
            [2.0]
        """
        self._require_fitted("inverse_transform_target")
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        arr = np.asarray(y)
        if self.task == "classification":
            if arr.ndim == 2:
                arr = arr.argmax(axis=1)
            classes = np.asarray(self.classes)
            if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
                raise InputError(
                    message(
                        "inverse_transform_target: class indices",
                        f"must be in [0, {len(classes)})",
                        f"values from {arr.min()} to {arr.max()}",
                        None,
                    )
                )
            return classes[arr.astype(np.int64)]
        mean = np.asarray(self.target_mean, dtype=np.float64)
        std = np.asarray(self.target_std, dtype=np.float64)
        arr = arr.astype(np.float64)
        if len(self.targets) == 1:
            return arr * std[0] + mean[0]
        return arr * std + mean

    # -- serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted spec as plain JSON-compatible data (no pickle anywhere).

        Example:
            >>> import json, pyarrow as pa
            >>> from descend.tabular import Preprocessor
            >>> pre = Preprocessor().fit(pa.table({"x": [1.0, 2.0], "y": [0, 1]}), "y")
            >>> Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))).classes
            [0, 1]
        """
        self._require_fitted("to_dict")
        return {
            "format": _SPEC_FORMAT,
            "version": _SPEC_VERSION,
            "task": self.task,
            "targets": list(self.targets),
            "classes": None if self.classes is None else list(self.classes),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "columns": copy.deepcopy(self.columns),  # the caller may edit it: no shared lists
            "dropped": dict(self.dropped),
            "feature_names": list(self.feature_names),
            "notes": list(self.notes),
            "n_train_rows": self.n_train_rows,
            "options": {
                "task": self.task_option,
                "max_categories": self.max_categories,
                "categorical": list(self.categorical),
                "ignore": list(self.ignore),
            },
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict` output.

        Raises:
            InputError: ``spec`` is not a descend preprocessing spec of a known version, or
                misses fields.
        """
        if not isinstance(spec, dict) or spec.get("format") != _SPEC_FORMAT:
            raise InputError(
                message(
                    "preprocessing spec",
                    f"must be a dict with format {_SPEC_FORMAT!r}",
                    describe(spec)
                    if not isinstance(spec, dict)
                    else f"format {spec.get('format')!r}",
                    "pass the output of Preprocessor.to_dict() or a file from Preprocessor.save()",
                )
            )
        if spec.get("version") != _SPEC_VERSION:
            raise InputError(
                message(
                    "preprocessing spec",
                    f"must have version {_SPEC_VERSION}",
                    f"version {spec.get('version')!r}",
                    "refit the preprocessor with this version of descend",
                )
            )
        try:
            options = spec["options"]
            pre = cls(
                options["task"],
                max_categories=options["max_categories"],
                categorical=options["categorical"],
                ignore=options["ignore"],
            )
            pre.task = spec["task"]
            pre.targets = list(spec["targets"])
            pre.classes = spec["classes"]
            pre.target_mean = spec["target_mean"]
            pre.target_std = spec["target_std"]
            pre.columns = [dict(c) for c in copy.deepcopy(spec["columns"])]
            pre.dropped = dict(spec["dropped"])
            pre.notes = list(spec["notes"])
            pre.n_train_rows = int(spec["n_train_rows"])
            pre.feature_names = pre._output_names()
        except (KeyError, TypeError) as exc:
            raise InputError(
                message(
                    "preprocessing spec",
                    "must have every field written by Preprocessor.to_dict()",
                    f"a problem with {exc}",
                    "refit and save the preprocessor again",
                )
            ) from None
        if pre.feature_names != spec.get("feature_names", pre.feature_names):
            raise InputError(
                message(
                    "preprocessing spec",
                    "must be consistent (its columns must give its feature_names)",
                    "a mismatch",
                    "the file was edited or damaged; refit the preprocessor",
                )
            )
        return pre

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted spec as JSON, atomically (a crash never leaves half a file).

        Example:
            >>> import pathlib, tempfile, pyarrow as pa
            >>> from descend.tabular import Preprocessor
            >>> pre = Preprocessor().fit(pa.table({"x": [1.0, 2.0], "y": [0, 1]}), "y")
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "prep.json"
            >>> pre.save(path); Preprocessor.load(path).feature_names
            ['x']
        """
        target = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocessor:
        """Read a spec written by :meth:`save`.

        Raises:
            InputError: the file is missing, not JSON, or not a preprocessing spec.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(
                message(
                    f"preprocessing spec '{p}'",
                    "must exist",
                    "no such file",
                    "pass the JSON file written by Preprocessor.save() (next to the model)",
                )
            ) from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                message(f"preprocessing spec '{p}'", "must be valid JSON", str(exc), None)
            ) from None
        return cls.from_dict(spec)
