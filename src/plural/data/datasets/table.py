"""Datasets from a CSV or Parquet table, one sample per row."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plural.config import setting
from plural.data.datasets.arrays import from_arrays
from plural.data.datasets.common import DataError, DatasetUnavailable
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Settings of a CSV or Parquet table with one sample per row."""

    path: str = setting(help="path of the table: .csv, .parquet or .pq")
    label_column: str = setting(help="column of class labels (any values)")
    client_column: str | None = setting(None, help="column of client ids (natural split)")
    group_column: str | None = setting(None, help="column of ground-truth group ids")
    split_column: str | None = setting(
        None,
        help="column of per-sample split marks: train, val, test, server (or 0, 1, 2, 3); "
        "each client's samples are then used exactly as marked (null: split by fractions)",
    )
    feature_columns: tuple[str, ...] | None = setting(
        None, help="feature columns; null: every other column (all must then be numeric)"
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)

    def __post_init__(self) -> None:
        suffix = Path(self.path).suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise DataError(
                f"path: {self.path!r} must end in .csv, .parquet or .pq (got {suffix or 'none'})"
            )
        special = [
            c
            for c in (
                self.label_column,
                self.client_column,
                self.group_column,
                self.split_column,
            )
            if c
        ]
        if len(set(special)) != len(special):
            raise DataError(
                "label_column, client_column, group_column and split_column must differ"
            )
        if self.feature_columns is not None:
            if not self.feature_columns:
                raise DataError("feature_columns: give at least one column, or null for all")
            if len(set(self.feature_columns)) != len(self.feature_columns):
                raise DataError("feature_columns: a column is listed twice")
            clash = sorted(set(self.feature_columns) & set(special))
            if clash:
                raise DataError(
                    f"feature_columns: {', '.join(clash)} is a label/client/group column"
                )


def _read_table(path: Path) -> Any:
    """The table at ``path`` as a pandas DataFrame."""
    import pandas as pd

    if not path.is_file():
        raise DatasetUnavailable(
            f"table: file {path} not found; write one with DataFrame.to_csv / to_parquet"
        )
    try:
        if TABLE_SUFFIXES[path.suffix.lower()] == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as err:  # pandas and pyarrow raise many types for a damaged file
        raise DataError(
            f"table: cannot read {path} ({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _feature_names(frame: Any, config: TableConfig, special: Sequence[str]) -> list[str]:
    """The feature columns to use; ValueError naming non-numeric ones."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    names = None if config.feature_columns is None else list(config.feature_columns)
    if names is None:
        names = [str(c) for c in frame.columns if c not in special]
        if not names:
            raise DataError(f"table: {config.path} has no columns left for features")
    numeric = [c for c in names if is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])]
    other = [c for c in names if c not in numeric]
    if other:
        raise DataError(
            f"table: {config.path}: feature columns must be numeric; {', '.join(other)} are "
            "not. Drop or encode "
            "them, or list the features to use in feature_columns"
        )
    return names


@DATASETS.register("table", TableConfig, "one sample per row of a CSV or Parquet table")
def load_table(config: TableConfig, rng: np.random.Generator) -> ArrayDataset:
    """Features, labels and optional client / group ids from a CSV or Parquet table."""
    frame = _read_table(Path(config.path))
    if len(frame) == 0:
        raise DataError(f"table: {config.path}: the data has no samples (zero rows)")
    available = [str(c) for c in frame.columns]
    special = [
        c
        for c in (
            config.label_column,
            config.client_column,
            config.group_column,
            config.split_column,
        )
        if c
    ]
    unknown = [c for c in (*special, *(config.feature_columns or ())) if c not in available]
    if unknown:
        raise DataError(
            f"table: {config.path} has no column {', '.join(map(repr, unknown))}; "
            f"columns: {', '.join(available)}"
        )
    features = _feature_names(frame, config, special)
    with_na = [c for c in (*features, *special) if frame[c].isna().any()]
    if with_na:
        raise DataError(f"table: columns {', '.join(with_na)} have missing values")

    def column(name: str | None) -> np.ndarray | None:
        return None if name is None else frame[name].to_numpy()

    try:
        return from_arrays(
            frame[features].to_numpy(dtype=np.float32),
            column(config.label_column),
            client_ids=column(config.client_column),
            sample_groups=column(config.group_column),
            num_classes=config.num_classes,
            name="table",
            split=column(config.split_column),
        )
    except DataError as err:
        raise DataError(f"{config.path}: {err}") from err
