"""A CSV file with a label column as a numeric table, with errors that name the cell at fault.

Production data arrives as CSV. Every error here names the column, the line and the value, so the
user can fix the file. This covers a missing label column, text in a column not declared
categorical, empty cells, and ragged rows. Categorical columns are coded as integers by sorted
category name, and the codes are returned, so a student can be applied to new rows later.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from modelpress.core.errors import DataError, DataNotFoundError

__all__ = ["CsvTable", "read_csv_table"]


@dataclass
class CsvTable:
    """A CSV file as arrays.

    Attributes:
        x: float64 ``(N, F)``; categorical columns hold integer codes.
        y: labels ``(N,)``: int64 when every label is an integer, else str.
        feature_names: the ``F`` column names, in file order (label column removed).
        categories: ``{feature index: category names}``; code ``k`` is ``categories[j][k]``.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    categories: dict[int, list[str]] = field(default_factory=dict)

    @property
    def categorical_features(self) -> list[int]:
        return sorted(self.categories)


def _parse_labels(values: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        return np.array(values, dtype=str)


def read_csv_table(path: str | os.PathLike[str], label: str, *, categorical: Sequence[str] = (),
                   drop: Sequence[str] = ()) -> CsvTable:
    """Read a CSV file (header row first) into features and labels.

    Args:
        path: the file; the first row names the columns.
        label: the label column's name.
        categorical: names of feature columns that hold categories (text or codes).
        drop: names of columns to ignore (identifiers, timestamps, ...).

    Returns:
        A :class:`CsvTable`.

    Raises:
        DataNotFoundError: no such file. DataError: no header, a missing column, a row of the wrong
        length, an empty cell, or a non-numeric value in a column not declared categorical.
    """
    source = Path(path)
    if not source.is_file():
        raise DataNotFoundError(f"no CSV file at {source}")
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as err:
        raise DataError(f"{source} is not a UTF-8 text CSV file (byte {err.start} cannot be decoded)") from None
    except csv.Error as err:
        raise DataError(f"{source} is not a readable CSV file: {err}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{source}: empty file or no header row")
    header = [name.strip() for name in rows[0]]
    for name in [label, *categorical, *drop]:
        if name not in header:
            raise DataError(f"{source}: no column {name!r}; columns are {', '.join(header)}")
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise DataError(f"{source}: no data rows after the header")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{source}, line {line}: {len(row)} fields, but the header has {len(header)}")
    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    features = [name for name in header if name != label and name not in drop]
    if not features:
        raise DataError(f"{source}: no feature columns left besides the label {label!r}")
    x = np.empty((len(body), len(features)))
    categories: dict[int, list[str]] = {}
    for j, name in enumerate(features):
        values = columns[name]
        for line, value in enumerate(values, start=2):
            if value == "":
                raise DataError(f"{source}, line {line}: empty cell in column {name!r}; impute or drop it first")
        if name in categorical:
            categories[j] = sorted(set(values))
            x[:, j] = np.searchsorted(np.array(categories[j]), np.array(values))
            continue
        x[:, j] = _parse_numeric(source, name, values)
    labels = columns[label]
    if any(value == "" for value in labels):
        raise DataError(f"{source}, line {labels.index('') + 2}: empty label in column {label!r}")
    return CsvTable(x=x, y=_parse_labels(labels), feature_names=features, categories=categories)


def _parse_numeric(source: Path, name: str, values: list[str]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        for line, value in enumerate(values, start=2):
            try:
                float(value)
            except ValueError:
                raise DataError(f"{source}, line {line}: column {name!r} holds {value!r}, which is not a number; "
                                f"declare it with --categorical {name} if it is a category") from None
        raise

