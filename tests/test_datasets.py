"""Built-in datasets: shapes, tasks, both forms agree, helpful errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from descend import datasets
from descend._errors import InputError

EXPECTED = {
    # name: (task, n_samples, n_features, n_classes)
    "breast_cancer": ("classification", 569, 30, 2),
    "diabetes": ("regression", 442, 10, None),
    "digits": ("classification", 1797, 64, 10),
    "iris": ("classification", 150, 4, 3),
    "linnerud": ("regression", 20, 3, None),
    "synthetic_classification": ("classification", 100_000, 20, 3),
    "synthetic_regression": ("regression", 100_000, 20, None),
    "wine": ("classification", 178, 13, 3),
}


def test_names_lists_every_dataset_sorted():
    assert datasets.names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_loads_with_expected_shape_and_task(name):
    task, n, d, k = EXPECTED[name]
    meta = datasets.info(name)
    assert (meta.name, meta.task, meta.n_samples, meta.n_features, meta.n_classes) == (
        name,
        task,
        n,
        d,
        k,
    )
    assert meta.description
    X, y = datasets.load(name)
    assert X.shape == (n, d) and X.dtype == np.float32
    assert np.isfinite(X).all()
    assert len(y) == n
    if task == "classification":
        assert y.dtype == np.int64 and y.ndim == 1
        assert sorted(np.unique(y).tolist()) == list(range(k))
        assert len(meta.class_names) == k
    else:
        assert y.dtype == np.float32
        assert y.shape == ((n,) if meta.n_targets == 1 else (n, meta.n_targets))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_frame_form_agrees_with_array_form(name):
    X, y = datasets.load(name)
    table = datasets.load(name, as_frame=True)
    assert isinstance(table, pa.Table)
    targets = datasets.target_columns(name)
    assert table.num_rows == len(X)
    assert table.column_names[-len(targets) :] == targets
    features = [c for c in table.column_names if c not in targets]
    assert len(features) == X.shape[1]
    X_frame = np.column_stack([table[c].to_numpy() for c in features]).astype(np.float32)
    np.testing.assert_array_equal(X_frame, X)
    y_frame = np.column_stack([table[c].to_numpy() for c in targets])
    np.testing.assert_allclose(y_frame.reshape(y.shape), y, rtol=1e-6)
    assert table.schema.metadata[b"descend.dataset"] == name.encode()


def test_target_column_is_a_string_except_for_multi_output():
    assert datasets.target_column("iris") == "target"
    assert datasets.target_column("linnerud") == ["Weight", "Waist", "Pulse"]


def test_names_are_forgiving_about_case_and_dashes():
    assert datasets.info("Breast-Cancer").name == "breast_cancer"


def test_synthetic_data_is_fixed_by_its_seed():
    X1, y1 = datasets.load("synthetic_regression")
    X2, y2 = datasets.load("synthetic_regression")
    X1[0, 0] = 1e9  # a caller's change must not reach the cache
    assert X2[0, 0] != 1e9
    np.testing.assert_array_equal(y1, y2)
    assert X2[0, 0] == datasets.load("synthetic_regression")[0][0, 0]


def test_unknown_name_lists_close_matches_first():
    with pytest.raises(
        InputError, match=r"got 'iriss' — did you mean 'iris'\? Built-in datasets: iris, "
    ):
        datasets.load("iriss")
    with pytest.raises(InputError, match=r"'cancer' — did you mean 'breast_cancer'"):
        datasets.info("cancer")
    with pytest.raises(InputError, match=r"Built-in datasets: .*wine"):
        datasets.target_column("nothing_like_it")
