"""What the dataset loaders share: their errors, the digit class names, standardization
over the pool and random subsets with the official test marks."""

from __future__ import annotations

import numpy as np


class DatasetUnavailable(RuntimeError):
    """The data of a dataset is not on this machine; the message says how to get it."""


class DataError(ValueError):
    """The data is there but malformed (a missing key or column, a corrupt file, bad labels)."""


DIGIT_NAMES = tuple(str(i) for i in range(10))


def _feature_sums(x2d: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-column sum and sum of squares in float64, over row chunks (no full float64 copy)."""
    s1 = np.zeros(x2d.shape[1], dtype=np.float64)
    s2 = np.zeros(x2d.shape[1], dtype=np.float64)
    for start in range(0, x2d.shape[0], chunk):
        block = x2d[start : start + chunk].astype(np.float64)
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
    return s1, s2


def _scale_in_place(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """``x = (x - mean) / std`` in place; where std is 0 the value is left at ``x - mean``."""
    safe = np.where(std > 0, std, 1.0)
    x -= mean.astype(np.float32)
    x /= safe.astype(np.float32)


def _standardize_features(x: np.ndarray) -> np.ndarray:
    """Per-feature (per-pixel) zero mean and unit std over the pool, in place.

    Constant features are centred and stay at 0.
    """
    n = x.shape[0]
    if n == 0:
        return x
    flat = x.reshape(n, -1)
    s1, s2 = _feature_sums(flat)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std[std < 1e-12] = 0.0
    _scale_in_place(flat, mean, std)
    return x


def _standardize_channels(x: np.ndarray) -> np.ndarray:
    """Per-channel zero mean and unit std over the pool for ``x`` of shape (n, C, H, W)."""
    n, channels = x.shape[0], x.shape[1]
    if n == 0:
        return x
    s1, s2 = _feature_sums(x.reshape(n, -1))
    per_channel = n * x[0, 0].size
    s1 = s1.reshape(channels, -1).sum(axis=1)
    s2 = s2.reshape(channels, -1).sum(axis=1)
    mean = s1 / per_channel
    std = np.sqrt(np.maximum(s2 / per_channel - mean**2, 0.0))
    std[std < 1e-12] = 0.0
    _scale_in_place(x, mean[:, None, None], std[:, None, None])
    return x


def _subset(n: int, max_samples: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted indices of a random subset of ``max_samples`` samples, or None for all."""
    if max_samples is None or max_samples >= n:
        return None
    return np.sort(rng.choice(n, size=max_samples, replace=False))


def _official_test(n: int, test_count: int, idx: np.ndarray | None) -> np.ndarray:
    """Per kept sample, True for the official test set (the last ``test_count`` of ``n``)."""
    mask = np.arange(n) >= n - test_count
    return mask if idx is None else mask[idx]


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``x`` and ``y`` (rows ``idx`` if given), so caches are never mutated."""
    if idx is None:
        return x.copy(), y.copy()
    return x[idx], y[idx]
