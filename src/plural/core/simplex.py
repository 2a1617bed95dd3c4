"""Euclidean projection onto the probability simplex.

Written by hand because neither NumPy nor SciPy offers it; the sort-based algorithm is that of
Duchi, Shalev-Shwartz, Singer and Chandra (2008, "Efficient Projections onto the l1-Ball for
Learning in High Dimensions"), exact in O(n log n).
"""

from __future__ import annotations

import numpy as np


def project_to_simplex(vector: np.ndarray) -> np.ndarray:
    """The point of ``{x : x >= 0, sum(x) = 1}`` nearest to ``vector`` (float64)."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("project_to_simplex: the vector is empty")
    if not np.all(np.isfinite(v)):
        raise ValueError("project_to_simplex: the vector has non-finite entries")
    ordered = np.sort(v)[::-1]
    cumulative = np.cumsum(ordered) - 1.0
    ranks = np.arange(1, v.size + 1)
    support = ordered - cumulative / ranks > 0
    last = int(np.flatnonzero(support)[-1])
    threshold = cumulative[last] / (last + 1)
    return np.clip(v - threshold, 0.0, None)
