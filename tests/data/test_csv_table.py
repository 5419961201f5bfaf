"""CSV tables: numeric and categorical columns, and errors that name the column, line and value."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.core.errors import DataError, DataNotFoundError
from modelpress.data.csv_table import read_csv_table


def write(tmp_path, text: str):
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_numbers_categories_labels_and_dropped_columns(tmp_path):
    path = write(tmp_path, "id,height,colour,label\n1,1.5,red,yes\n2,2.5,blue,no\n\n3,-1e3,red,yes\n")
    table = read_csv_table(path, "label", categorical=["colour"], drop=["id"])
    assert table.feature_names == ["height", "colour"]
    np.testing.assert_array_equal(table.x, [[1.5, 1.0], [2.5, 0.0], [-1000.0, 1.0]])
    assert table.categories == {1: ["blue", "red"]} and table.categorical_features == [1]
    assert table.y.tolist() == ["yes", "no", "yes"]
    assert read_csv_table(write(tmp_path, "a,y\n1,0\n2,1\n"), "y").y.dtype == np.int64


@pytest.mark.parametrize("text, kwargs, message", [
    ("a,b\n1,2\n", {"label": "y"}, "no column 'y'; columns are a, b"),
    ("a,y\n1,0\nx,1\n", {"label": "y"}, "line 3: column 'a' holds 'x'.*--categorical a"),
    ("a,y\n1,0\n2\n", {"label": "y"}, "line 3: 1 fields"),
    ("a,y\n1,0\n,1\n", {"label": "y"}, "line 3: empty cell in column 'a'"),
    ("a,y\n1,0\n2,\n", {"label": "y"}, "line 3: empty label"),
    ("", {"label": "y"}, "empty file"),
    ("a,y\n", {"label": "y"}, "no data rows"),
    ("y\n1\n", {"label": "y"}, "no feature columns"),
    ("a,y\n1,0\n", {"label": "y", "categorical": ["b"]}, "no column 'b'"),
])
def test_bad_files_are_named(tmp_path, text, kwargs, message):
    with pytest.raises(DataError, match=message):
        read_csv_table(write(tmp_path, text), **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="no CSV file"):
        read_csv_table(tmp_path / "absent.csv", "y")


def test_a_binary_file_is_named_not_decoded(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(DataError, match="not a UTF-8 text CSV file"):
        read_csv_table(path, "y")
