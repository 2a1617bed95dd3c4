"""What the partitioners share: owner arrays to partitions, largest-remainder
apportioning, feasibility checks, Dirichlet draws and the quantity size laws."""

from __future__ import annotations

import numpy as np

from plural.config import ConfigError
from plural.data.types import Partition


def _partition_from_owner(
    owner: np.ndarray, num_clients: int, groups: np.ndarray | None = None
) -> Partition:
    """Turn ``owner[i]`` (client of sample ``i``, or -1 for unused) into a Partition."""
    order = np.argsort(owner, kind="stable").astype(np.int64)  # stable: ascending within a client
    used = owner >= 0
    sizes = np.bincount(owner[used], minlength=num_clients)
    bounds = np.cumsum(sizes)
    start = len(owner) - int(used.sum())  # the -1 entries sort first
    parts = np.split(order[start:], bounds[:-1])
    if any(len(p) == 0 for p in parts):  # a partitioner bug, not a user error
        raise RuntimeError("partitioner produced an empty client")
    return Partition(client_indices=parts, groups=groups)


def _owner_from_sizes(order: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Owner array giving the first ``sizes[0]`` samples of ``order`` to client 0, and so on."""
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[: int(sizes.sum())]] = np.repeat(np.arange(len(sizes)), sizes)
    return owner


def _shuffled_class_indices(
    labels: np.ndarray, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The sample indices of each class, each in random order."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _owner_from_counts(
    labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Owner array from ``counts[k, c]`` = samples of class ``c`` for client ``k``.

    Each class's samples are shuffled and dealt out in client order; a class's counts must not
    exceed its size (left-over samples stay unused).
    """
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c, idx in enumerate(_shuffled_class_indices(labels, counts.shape[1], rng)):
        column = counts[:, c]
        owner[idx[: int(column.sum())]] = np.repeat(np.arange(counts.shape[0]), column)
    return owner


def _equal_sizes(total: int, parts: int) -> np.ndarray:
    """``parts`` sizes summing to ``total`` that differ by at most 1."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _apportion(
    weights: np.ndarray,
    total: int,
    rng: np.random.Generator,
    cap: np.ndarray | None = None,
) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum to ``total`` (largest remainder).

    Ties between equal remainders are broken at random. With ``cap`` no count exceeds its
    cap (``total`` must not exceed ``cap.sum()``); the surplus goes to the next-largest
    remainders.
    """
    weights = _finite_weights(np.asarray(weights, dtype=np.float64))
    if cap is not None and total > int(cap.sum()):
        raise ValueError(f"cannot apportion {total} within caps summing to {int(cap.sum())}")
    if total == 0 or weights.sum() <= 0:  # nothing to share, or no one to share it with
        return np.zeros(len(weights), dtype=np.int64)
    quota = weights * (total / weights.sum())
    counts = np.floor(quota).astype(np.int64)
    if cap is not None:
        counts = np.minimum(counts, cap)
    fraction = quota - np.floor(quota)
    tie_break = rng.random(len(weights))
    while (left := total - int(counts.sum())) > 0:
        open_ = np.ones(len(weights), bool) if cap is None else counts < cap
        # highest remainder first; random order among equal remainders
        ranked = np.lexsort((tie_break, -fraction))
        ranked = ranked[open_[ranked]][:left]
        counts[ranked] += 1
        fraction[ranked] = -1.0  # each index gets at most one extra unit per pass
    return counts


def _finite_weights(weights: np.ndarray) -> np.ndarray:
    """``weights`` whose sum is finite, so the quotas are numbers and apportioning ends.

    Weights that overflowed (a lognormal with a huge sigma draws ``inf``) share equally and
    outweigh every finite one; finite weights whose sum overflows are scaled by their maximum.
    Weights with a finite sum are returned as they are.
    """
    with np.errstate(over="ignore"):
        total = weights.sum()
    if np.isfinite(total):
        return weights
    if np.isnan(weights).any():
        raise ValueError("apportioning weights must not be NaN")
    infinite = np.isinf(weights)
    if infinite.any():
        return infinite.astype(np.float64)
    return weights / weights.max()


def _require_clients(name: str, num_clients: int, n: int, min_samples: int | None = None) -> None:
    """ConfigError unless ``num_clients`` clients of ``min_samples`` (or 1) fit into ``n``."""
    if min_samples is None:
        if num_clients > n:
            raise ConfigError(
                f"partition ({name}): num_clients = {num_clients} exceeds the {n} samples; "
                f"use num_clients <= {n}"
            )
        return
    if num_clients * min_samples > n:
        raise ConfigError(
            f"partition ({name}): num_clients * min_samples = {num_clients} * {min_samples} = "
            f"{num_clients * min_samples} exceeds the {n} samples; use num_clients <= "
            f"{n // min_samples} or min_samples <= {n // num_clients}"
        )


def _dirichlet(rng: np.random.Generator, alpha: float, k: int, rows: int) -> np.ndarray:
    """``rows`` draws of Dir(alpha * 1_k), computed in log space so tiny alpha never gives NaN.

    Uses Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha) (Marsaglia & Tsang 2000).
    """
    uniform = 1.0 - rng.random((rows, k))  # in (0, 1], so the log is finite
    log_gamma = np.log(rng.gamma(alpha + 1.0, size=(rows, k))) + np.log(uniform) / alpha
    log_gamma -= log_gamma.max(axis=1, keepdims=True)
    weights = np.exp(log_gamma)
    return weights / weights.sum(axis=1, keepdims=True)


def _law_sizes(
    law: str,
    num_clients: int,
    n: int,
    min_samples: int,
    rng: np.random.Generator,
    *,
    sigma: float,
    exponent: float,
) -> np.ndarray:
    """Client sizes from a size law (quantity skew), summing to ``n``, each >= ``min_samples``.

    Each client first gets ``min_samples``; the other ``n - num_clients * min_samples`` samples
    are shared in proportion to weights ~ lognormal(0, sigma) (``"lognormal"``), or to
    rank^-exponent over a random ranking of the clients (``"power_law"``), with
    largest-remainder rounding. Shared by the quantity partitioner and dirichlet's ``sizes``,
    so both draw the same sizes from the same rng state.
    """
    if law == "lognormal":
        weights = rng.lognormal(0.0, sigma, num_clients)
    elif law == "power_law":
        weights = (rng.permutation(num_clients) + 1.0) ** (-exponent)
    else:
        raise ValueError(f"unknown size law {law!r}; use 'lognormal' or 'power_law'")
    if not (weights > 0).any():  # every lognormal weight underflowed to 0: none stands out
        weights = np.ones(num_clients)
    return min_samples + _apportion(weights, n - num_clients * min_samples, rng)
