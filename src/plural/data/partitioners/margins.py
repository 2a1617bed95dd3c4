"""Counts with given client sizes and class totals, for ``dirichlet`` with a size law:
iterative proportional fitting, error-carrying rounding and the row repair."""

from __future__ import annotations

import numpy as np

_FIT_FLOOR = 1e-6  # added to every drawn class share before fitting, so no entry is exactly 0
_FIT_TOL = 1e-3  # samples: fitting stops once every client's fitted size is this close
_FIT_MAX_ITER = 1000  # fitting never runs longer (about 15 ms for 1000 clients x 10 classes)


def _fit_margins(mixes: np.ndarray, row_sums: np.ndarray, col_sums: np.ndarray) -> np.ndarray:
    """Iterative proportional fitting (Sinkhorn) of ``mixes`` (clients x classes) to margins.

    Returns diag(u) (mixes + _FIT_FLOOR) diag(v): rows and columns are rescaled in turn, columns
    last, so column sums equal ``col_sums`` (up to float rounding) and row sums are within
    ``_FIT_TOL`` of ``row_sums`` -- or as close as ``_FIT_MAX_ITER`` iterations get. Its limit
    is the matrix with these margins of least KL divergence from ``row_sums_k * mix_k`` (the
    I-projection, Ireland & Kullback 1968). The floor keeps every entry positive, so a solution
    always exists and tiny alpha (mixes with exact zeros) cannot block convergence; it only
    moves samples to a class a client did not draw where the margins force it.
    """
    p = mixes + _FIT_FLOOR
    v = np.ones(p.shape[1])
    pv = p @ v
    for _ in range(_FIT_MAX_ITER):
        u = row_sums / pv
        v = col_sums / (u @ p)
        pv = p @ v
        if np.abs(u * pv - row_sums).max() <= _FIT_TOL:
            break
    return u[:, None] * p * v[None, :]


def _round_to_total(want: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative integers near ``want`` that sum to ``total``.

    Starts from floor(max(want, 0)); then adds 1 at the largest remainders or takes 1 at the
    smallest (among positive counts) until the total is met; ties at random.
    """
    counts = np.floor(np.maximum(want, 0.0)).astype(np.int64)
    remainder = want - counts
    tie_break = rng.random(len(want))
    while (left := total - int(counts.sum())) != 0:
        if left > 0:
            ranked = np.lexsort((tie_break, -remainder))[:left]
            counts[ranked] += 1
            remainder[ranked] = -np.inf  # each index gets at most one unit per pass
        else:
            open_ = np.flatnonzero(counts > 0)
            ranked = open_[np.lexsort((tie_break[open_], remainder[open_]))][:-left]
            counts[ranked] -= 1
            remainder[ranked] = np.inf
    return counts


def _round_margins(
    fitted: np.ndarray, col_sums: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Integer counts near ``fitted`` with column sums exactly ``col_sums``.

    Each class (column) is apportioned in turn by :func:`_round_to_total`, with each client's
    rounding error so far carried into the next class (error diffusion), so a client's
    rounding errors cancel instead of adding up over classes and its row sum ends within 1 of
    its fitted size (in practice exactly on it; :func:`_repair_rows` guarantees it).
    """
    counts = np.empty(fitted.shape, dtype=np.int64)
    carry = np.zeros(fitted.shape[0])
    for c in range(fitted.shape[1]):
        want = fitted[:, c] + carry
        counts[:, c] = _round_to_total(want, int(col_sums[c]), rng)
        carry = want - counts[:, c]
    return counts


def _repair_rows(counts: np.ndarray, fitted: np.ndarray, row_sums: np.ndarray) -> np.ndarray:
    """Make every row sum of ``counts`` equal ``row_sums`` without changing any column sum.

    Deterministic and minimal: exactly sum(max(0, row sum - target)) single samples move, each
    within one class from a client above its target to one below. Each move picks the class
    and the pair that least increase the squared distance to ``fitted`` (take where rounding
    added the most, give where it cut the most). ``row_sums`` must sum to ``counts.sum()``.
    """
    counts = counts.copy()
    excess = counts.sum(axis=1) - row_sums
    if int(excess.sum()) != 0:
        raise ValueError(f"row sums differ from the total by {int(excess.sum())}")
    error = counts - fitted
    classes = np.arange(counts.shape[1])
    while (over := np.flatnonzero(excess > 0)).size:
        under = np.flatnonzero(excess < 0)
        give = np.where(counts[over] > 0, -error[over], np.inf)
        take = error[under]
        giver, taker = give.argmin(axis=0), take.argmin(axis=0)
        c = int(np.argmin(give[giver, classes] + take[taker, classes]))
        k, j = over[giver[c]], under[taker[c]]
        counts[k, c] -= 1
        counts[j, c] += 1
        error[k, c] -= 1
        error[j, c] += 1
        excess[k] -= 1
        excess[j] += 1
    return counts
