"""Each client's samples split into train, validation and test: stratified by label
(:func:`train_val_test_split`) or in time order (:func:`sequential_split`)."""

from __future__ import annotations

import numpy as np

from plural.data.partitioners.common import _apportion


def _split_totals(n: int, val: float, test: float) -> tuple[int, int]:
    """round(n * val) and round(n * test) (halves up), reduced so that train keeps >= 1."""
    n_val, n_test = int(np.floor(n * val + 0.5)), int(np.floor(n * test + 0.5))
    while n > 0 and n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return max(n_val, 0), max(n_test, 0)


def train_val_test_split(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    val: float,
    test: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one client's ``indices`` into (train, val, test), stratified by label.

    ``labels`` is the full label array. Validation and test get round(n * val) and
    round(n * test) samples (fewer only where train would otherwise be empty: the larger of
    the two gives way first, validation on a tie), apportioned
    over the client's classes by largest remainder so each class is split in about the same
    proportions. Train is never empty for a non-empty client. Returns sorted int64 arrays.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1; got {val}, {test}")
    indices = np.asarray(indices, dtype=np.int64)
    n_val, n_test = _split_totals(len(indices), val, test)
    classes, inverse = np.unique(labels[indices], return_inverse=True)
    class_sizes = np.bincount(inverse.ravel(), minlength=len(classes))
    val_counts = _apportion(class_sizes, n_val, rng, cap=class_sizes)
    test_counts = _apportion(class_sizes, n_test, rng, cap=class_sizes - val_counts)
    split_of = np.zeros(len(indices), dtype=np.int64)  # 0 train, 1 val, 2 test
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse.ravel() == c))
        v, t = int(val_counts[c]), int(test_counts[c])
        split_of[members[:v]] = 1
        split_of[members[v : v + t]] = 2
    train, valid, tst = (np.sort(indices[split_of == s]) for s in range(3))
    return train, valid, tst


def sequential_split(
    indices: np.ndarray, *, val: float, test: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one client's ``indices`` into (train, val, test) in time order.

    For samples stored in time order (the windows of a text): the sizes are those of
    :func:`train_val_test_split` (round(n * val) and round(n * test), reduced so that train
    keeps at least one sample), but the first samples go to train, the next to validation
    and the last to test, so a client is tested on what comes after its training data.
    ``indices`` are taken in the order given; returns int64 arrays in that order.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1; got {val}, {test}")
    indices = np.asarray(indices, dtype=np.int64)
    n_val, n_test = _split_totals(len(indices), val, test)
    n_train = len(indices) - n_val - n_test
    return (
        indices[:n_train].copy(),
        indices[n_train : n_train + n_val].copy(),
        indices[n_train + n_val :].copy(),
    )
