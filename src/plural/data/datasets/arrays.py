"""Datasets from user arrays (:func:`from_arrays`): checked features, labels as class ids,
client and group ids, channel-last images turned channels first."""

from __future__ import annotations

from typing import Any

import numpy as np

from plural.data.datasets.common import DataError
from plural.data.splits import parse_split_marks
from plural.data.types import ArrayDataset


def _sorted_unique(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Sorted unique values and the index of each entry in that list."""
    if values.dtype != object:
        uniq, codes = np.unique(values, return_inverse=True)
        return uniq.tolist(), codes.reshape(-1).astype(np.int64)
    items = values.tolist()
    distinct = set(items)
    try:
        ordered = sorted(distinct)
    except TypeError:  # mixed types: order by type name, then text
        ordered = sorted(distinct, key=lambda v: (type(v).__name__, repr(v)))
    index = {v: i for i, v in enumerate(ordered)}
    return ordered, np.fromiter((index[v] for v in items), dtype=np.int64, count=len(items))


MAX_CLASSES = 100_000
"""Most classes a dataset may have: the models' output layers are that wide."""


def _check_label_values(y: np.ndarray, what: str) -> None:
    """DataError for labels that are not classes: infinite, continuous or huge numbers."""
    if y.dtype.kind == "c":
        raise DataError(f"{what} holds complex numbers; labels must be classes")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            rows = np.flatnonzero(~np.isfinite(y))[:5]
            raise DataError(f"{what} has infinite values at rows {rows}; labels must be classes")
        if not np.all(y % 1 == 0):
            raise DataError(
                f"{what} holds continuous numbers (e.g. {y[y % 1 != 0][0]!r}); plural learns "
                "classes: give class labels (integers or names), or bin the values first"
            )
    if y.dtype.kind in "iuf" and len(y) and float(np.max(y)) >= MAX_CLASSES:
        raise DataError(
            f"{what} goes up to {np.max(y)!r}; class ids must be 0..C-1 with C <= "
            f"{MAX_CLASSES} (the model has one output per class): number the classes 0, 1, ..."
        )


def _as_nonnegative_ints(values: np.ndarray) -> np.ndarray | None:
    """``values`` as int64 if they are all non-negative integers (or integral floats)."""
    integral_floats = (
        values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0)
    )
    if values.dtype.kind not in "iu" and not integral_floats:
        return None
    ints = values.astype(np.int64)
    return ints if len(ints) == 0 or ints.min() >= 0 else None


def _column(values: Any, what: str, n: int) -> np.ndarray:
    """A 1-D array of ``n`` per-sample values; ValueError otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{what} must be 1-D (one value per sample), got shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"{what} has {len(arr)} entries but x has {n} samples")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        rows = np.flatnonzero(np.isnan(arr))[:5]
        raise DataError(f"{what} has missing (NaN) values at rows {rows}")
    if arr.dtype == object and any(v is None for v in arr.tolist()):
        raise DataError(f"{what} has missing (None) values")
    return arr


def _labels(
    y: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, int, tuple[str, ...] | None]:
    """Class ids, the class count and class names (None if the labels were already ids)."""
    ints = _as_nonnegative_ints(y)
    if ints is not None:
        needed = int(ints.max()) + 1 if len(ints) else 0
        count = needed if num_classes is None else num_classes
        if count < needed:
            raise DataError(f"num_classes={num_classes} but the labels go up to {needed - 1}")
        return ints, max(count, 1), None
    ordered, codes = _sorted_unique(y)
    names = [str(v) for v in ordered]
    count = len(names) if num_classes is None else num_classes
    if count < len(names):
        raise DataError(f"num_classes={num_classes} but the labels have {len(names)} values")
    names += [f"unused_{i}" for i in range(len(names), count)]
    return codes, count, tuple(names)


def _ids(values: np.ndarray) -> np.ndarray:
    """Any per-sample ids mapped to 0..K-1 in sorted order of the distinct values."""
    return _sorted_unique(values)[1]


IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts of images: grey, RGB, RGBA."""


def channels_first(x: np.ndarray, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Images stored channel-last ``(N, H, W, C)`` (as PIL, TensorFlow and Hugging Face store
    them) transposed to the ``(N, C, H, W)`` that torch's convolutions take, with a note
    saying so; other arrays unchanged. Only unambiguous layouts are transposed: the last axis
    is 1, 3 or 4 and the second is not."""
    if x.ndim != 4 or x.shape[3] not in IMAGE_CHANNELS or x.shape[1] in IMAGE_CHANNELS:
        return x, ()
    note = (
        f"{name}: x of shape {x.shape} looks like channel-last images (N, H, W, C); "
        f"transposed to channels first {(x.shape[0], x.shape[3], *x.shape[1:3])}"
    )
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))), (note,)


def from_arrays(
    x: Any,
    y: Any,
    *,
    client_ids: Any = None,
    sample_groups: Any = None,
    num_classes: int | None = None,
    name: str = "arrays",
    split: Any = None,
) -> ArrayDataset:
    """An :class:`ArrayDataset` from user arrays.

    ``x`` is any numeric array (cast to float32; 1-D becomes ``(n, 1)``; channel-last images
    ``(n, H, W, C)`` become ``(n, C, H, W)``, see :func:`channels_first`); NaN or infinite
    values are an error. Labels that are non-negative integers are kept as class ids;
    any other labels (strings, negative ints, ...) are mapped to 0..C-1 in sorted order
    with ``class_names`` their text. ``client_ids`` of any type are mapped to 0..K-1 in
    sorted order of their distinct values. ``sample_groups`` are kept if non-negative
    integers, else mapped like client ids. ``split`` marks each sample ``train``, ``val``,
    ``test`` or ``server`` (or 0, 1, 2, 3): each client's samples are then used exactly as
    marked, and those marked ``server`` form the server's test set.
    """
    if np.iscomplexobj(x):
        raise DataError(
            f"{name}: x holds complex numbers; give real features (e.g. split the "
            "real and imaginary parts into two features)"
        )
    try:
        xa = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{name}: x must be numeric ({err})") from err
    if xa.ndim == 0:
        raise DataError(f"{name}: x must have one row per sample, got a scalar")
    if xa.ndim == 1:
        xa = xa[:, None]
    xa, notes = channels_first(xa, name)
    n = xa.shape[0]
    if n == 0:
        raise DataError(f"{name}: the data has no samples (zero rows)")
    if xa[0].size == 0:
        raise DataError(f"{name}: x has no features (shape {xa.shape})")
    bad = ~np.isfinite(xa.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{name}: x has NaN or infinite values in rows {np.flatnonzero(bad)[:5]}")
    y_column = _column(y, f"{name}: y", n)
    _check_label_values(y_column, f"{name}: y")
    ya, count, class_names = _labels(y_column, num_classes)
    clients, client_names = None, None
    if client_ids is not None:
        ordered, clients = _sorted_unique(_column(client_ids, f"{name}: client_ids", n))
        client_names = tuple(str(v) for v in ordered)
    groups = None
    if sample_groups is not None:
        raw = _column(sample_groups, f"{name}: sample_groups", n)
        groups = _as_nonnegative_ints(raw)
        groups = _ids(raw) if groups is None else groups
    marks = None
    if split is not None:
        owners = None if clients is None or client_names is None else client_names
        per_sample = None if owners is None else [owners[c] for c in clients]
        column = _column(split, f"{name}: split", n)
        marks = parse_split_marks(column, f"{name}: split", n, per_sample)
    return ArrayDataset(
        name=name,
        x=np.ascontiguousarray(xa),
        y=ya,
        num_classes=count,
        input_shape=tuple(xa.shape[1:]),
        client_ids=clients,
        sample_groups=groups,
        class_names=class_names,
        sample_splits=marks,
        client_names=client_names,
        notes=notes,
    )
