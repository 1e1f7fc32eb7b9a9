"""Built-in datasets that need no download.

Every dataset here ships inside an installed package (scikit-learn's bundled files) or is
generated from a fixed seed, so examples, tests and benchmarks run offline and give the same
numbers everywhere. Two forms of each dataset are offered:

* ``load(name)`` → ``(X, y)``: ``X`` a ``float32`` array of shape ``(n_samples, n_features)``,
  ``y`` ``int64`` class indices for classification, ``float32`` values for regression (shape
  ``(n_samples,)``, or ``(n_samples, n_targets)`` for multi-output regression).
* ``load(name, as_frame=True)`` → a :class:`pyarrow.Table` with one column per feature and the
  target in :func:`target_column`, so the CLI treats a built-in dataset exactly like a data file
  (``descend fit iris`` and ``descend fit iris.csv --target target`` take the same path).

Choices:

* Features are in their **original units** (e.g. ``diabetes`` is loaded with ``scaled=False``,
  unlike scikit-learn's default): standardizing is the preprocessing step's job
  (:class:`descend.tabular.Preprocessor`), fitted on the training rows only.
* Classification targets are integer codes ``0..n_classes-1`` in both forms (the class names
  are in :attr:`DatasetInfo.class_names`), so sorting the labels — what the preprocessor does —
  keeps scikit-learn's order and both forms encode the classes identically.
* The synthetic sets have 100,000 rows for benchmarks; they are generated with seed 0 by
  scikit-learn's ``make_regression``/``make_classification``, and cached per process.

Example:
    >>> from descend import datasets
    >>> X, y = datasets.load("iris")
    >>> X.shape, X.dtype.name, datasets.info("iris").n_classes
    ((150, 4), 'float32', 3)
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa

from descend._errors import InputError, message

__all__ = ["DatasetInfo", "info", "load", "names", "target_column", "target_columns"]

Task = Literal["classification", "regression"]

# Fixed generation settings of the synthetic sets; changing them changes benchmark numbers.
_SYNTHETIC_ROWS = 100_000
_SYNTHETIC_FEATURES = 20
_SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset holds, known without loading it.

    Attributes:
        name: The name :func:`load` takes.
        task: ``"classification"`` or ``"regression"``.
        n_samples: Number of rows.
        n_features: Number of feature columns.
        n_classes: Number of classes (classification), ``None`` for regression.
        description: One sentence saying what the data is and where it comes from.
        n_targets: Number of target columns (more than 1 only for multi-output regression).
        target_columns: Names of the target column(s) in the ``as_frame=True`` form.
        class_names: Readable names of the classes ``0..n_classes-1``, ``None`` for regression.
    """

    name: str
    task: Task
    n_samples: int
    n_features: int
    n_classes: int | None
    description: str
    n_targets: int = 1
    target_columns: tuple[str, ...] = ("target",)
    class_names: tuple[str, ...] | None = None


_INFO: dict[str, DatasetInfo] = {
    info_.name: info_
    for info_ in (
        DatasetInfo(
            "breast_cancer",
            "classification",
            569,
            30,
            2,
            "Wisconsin diagnostic breast cancer: 30 measurements of cell nuclei from a breast "
            "mass image; malignant (0) or benign (1). Bundled with scikit-learn.",
            class_names=("malignant", "benign"),
        ),
        DatasetInfo(
            "diabetes",
            "regression",
            442,
            10,
            None,
            "Diabetes progression one year after baseline from age, sex, BMI, blood pressure "
            "and six blood serum measurements, in original units. Bundled with scikit-learn.",
        ),
        DatasetInfo(
            "digits",
            "classification",
            1797,
            64,
            10,
            "Handwritten digits 0-9 as 8x8 images of pixel intensities 0..16, flattened to 64 "
            "features. Bundled with scikit-learn.",
            class_names=tuple(str(i) for i in range(10)),
        ),
        DatasetInfo(
            "iris",
            "classification",
            150,
            4,
            3,
            "Fisher's iris flowers: sepal and petal length and width (cm) of three species. "
            "Bundled with scikit-learn.",
            class_names=("setosa", "versicolor", "virginica"),
        ),
        DatasetInfo(
            "linnerud",
            "regression",
            20,
            3,
            None,
            "Linnerud fitness data: three exercises (chins, situps, jumps) predicting three "
            "physiological measurements (weight, waist, pulse) — multi-output regression. "
            "Bundled with scikit-learn.",
            n_targets=3,
            target_columns=("Weight", "Waist", "Pulse"),
        ),
        DatasetInfo(
            "synthetic_classification",
            "classification",
            _SYNTHETIC_ROWS,
            _SYNTHETIC_FEATURES,
            3,
            "Synthetic 3-class problem for benchmarks: 20 features (10 informative, 5 "
            "redundant), scikit-learn make_classification with seed 0.",
            class_names=("0", "1", "2"),
        ),
        DatasetInfo(
            "synthetic_regression",
            "regression",
            _SYNTHETIC_ROWS,
            _SYNTHETIC_FEATURES,
            None,
            "Synthetic linear regression for benchmarks: 20 features (10 informative), "
            "Gaussian noise of std 10, scikit-learn make_regression with seed 0.",
        ),
        DatasetInfo(
            "wine",
            "classification",
            178,
            13,
            3,
            "Wine recognition: 13 chemical measurements of wines from three cultivars of the "
            "same Italian region. Bundled with scikit-learn.",
            class_names=("class_0", "class_1", "class_2"),
        ),
    )
}


def names() -> list[str]:
    """The names of every built-in dataset, sorted.

    Example:
        >>> from descend import datasets
        >>> "iris" in datasets.names()
        True
    """
    return sorted(_INFO)


def _resolve(name: str) -> str:
    """Map a user-typed name (``"Breast-Cancer"``) to a registry key or raise InputError."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in _INFO:
        return key
    all_names = names()
    close = difflib.get_close_matches(key, all_names, n=3, cutoff=0.6)
    ordered = close + [n for n in all_names if n not in close]
    fix = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    fix += f"Built-in datasets: {', '.join(ordered)}"
    raise InputError(
        message("dataset name", "must be one of the built-in datasets", repr(name), fix)
    )


def info(name: str) -> DatasetInfo:
    """Describe a built-in dataset without loading it.

    Args:
        name: A name from :func:`names` (case and ``-``/``_`` are forgiven).

    Returns:
        The dataset's :class:`DatasetInfo`.

    Raises:
        InputError: ``name`` is not a built-in dataset; the message lists close matches first.

    Example:
        >>> from descend import datasets
        >>> datasets.info("diabetes").task
        'regression'
    """
    return _INFO[_resolve(name)]


def target_columns(name: str) -> list[str]:
    """The target column name(s) of the ``as_frame=True`` form, always as a list.

    Example:
        >>> from descend import datasets
        >>> datasets.target_columns("linnerud")
        ['Weight', 'Waist', 'Pulse']
    """
    return list(info(name).target_columns)


def target_column(name: str) -> str | list[str]:
    """The target column of the ``as_frame=True`` form: what ``--target`` would be for a file.

    Returns a string for every single-target dataset (``"target"``), and the list of column
    names for a multi-output dataset (``linnerud``); both forms are accepted as ``target`` by
    :meth:`descend.tabular.Preprocessor.fit`.

    Example:
        >>> from descend import datasets
        >>> datasets.target_column("iris")
        'target'
    """
    columns = target_columns(name)
    return columns[0] if len(columns) == 1 else columns


def _sklearn_loader(fn_name: str, **kwargs: Any) -> Callable[[], tuple[Any, Any, list[str]]]:
    def load() -> tuple[Any, Any, list[str]]:
        from sklearn import datasets as sk  # lazy: scikit-learn is slow to import

        bunch = getattr(sk, fn_name)(**kwargs)
        return bunch.data, bunch.target, [str(f) for f in bunch.feature_names]

    return load


def _synthetic_regression() -> tuple[Any, Any, list[str]]:
    from sklearn.datasets import make_regression

    X, y = make_regression(
        n_samples=_SYNTHETIC_ROWS,
        n_features=_SYNTHETIC_FEATURES,
        n_informative=10,
        noise=10.0,
        random_state=_SYNTHETIC_SEED,
    )
    return X, y, [f"x{i}" for i in range(_SYNTHETIC_FEATURES)]


def _synthetic_classification() -> tuple[Any, Any, list[str]]:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=_SYNTHETIC_ROWS,
        n_features=_SYNTHETIC_FEATURES,
        n_informative=10,
        n_redundant=5,
        n_classes=3,
        random_state=_SYNTHETIC_SEED,
    )
    return X, y, [f"x{i}" for i in range(_SYNTHETIC_FEATURES)]


_LOADERS: dict[str, Callable[[], tuple[Any, Any, list[str]]]] = {
    "breast_cancer": _sklearn_loader("load_breast_cancer"),
    "diabetes": _sklearn_loader("load_diabetes", scaled=False),
    "digits": _sklearn_loader("load_digits"),
    "iris": _sklearn_loader("load_iris"),
    "linnerud": _sklearn_loader("load_linnerud"),
    "synthetic_classification": _synthetic_classification,
    "synthetic_regression": _synthetic_regression,
    "wine": _sklearn_loader("load_wine"),
}


@functools.cache
def _raw(key: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load once per process; callers get copies so the cache cannot be mutated."""
    X, y, feature_names = _LOADERS[key]()
    meta = _INFO[key]
    X = np.asarray(X, dtype=np.float64)
    if meta.task == "classification":
        y = np.asarray(y, dtype=np.int64)
    else:
        y = np.asarray(y, dtype=np.float64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y, tuple(feature_names)


@overload
def load(name: str, as_frame: Literal[False] = ...) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def load(name: str, as_frame: Literal[True]) -> pa.Table: ...
def load(name: str, as_frame: bool = False) -> tuple[np.ndarray, np.ndarray] | pa.Table:
    """Load a built-in dataset as arrays, or as a table like one read from a data file.

    Args:
        name: A name from :func:`names` (case and ``-``/``_`` are forgiven).
        as_frame: ``False`` → ``(X, y)`` arrays; ``True`` → a :class:`pyarrow.Table` with the
            feature columns (``float64``, original values) followed by the target column(s)
            named by :func:`target_column` (``int64`` class codes or ``float64`` values). The
            table's schema metadata records ``descend.dataset`` and ``descend.target``.

    Returns:
        ``(X, y)`` with ``X`` ``float32`` of shape ``(n_samples, n_features)`` and ``y`` ``int64``
        class indices (classification) or ``float32`` values (regression; 2-D for
        multi-output), or the table.

    Raises:
        InputError: ``name`` is not a built-in dataset.

    Example:
        >>> from descend import datasets
        >>> table = datasets.load("wine", as_frame=True)
        >>> table.num_rows, table.column_names[-1]
        (178, 'target')
    """
    key = _resolve(name)
    meta = _INFO[key]
    X, y, feature_names = _raw(key)
    if not as_frame:
        y_out = y.astype(np.int64) if meta.task == "classification" else y.astype(np.float32)
        return X.astype(np.float32), y_out
    columns: dict[str, pa.Array] = {f: pa.array(X[:, j]) for j, f in enumerate(feature_names)}
    y2 = y.reshape(len(y), -1)
    for j, column in enumerate(meta.target_columns):
        columns[column] = pa.array(y2[:, j])
    metadata = {"descend.dataset": key, "descend.target": ",".join(meta.target_columns)}
    return pa.table(columns).replace_schema_metadata(metadata)
