"""Per-client result summaries: mean, sample-weighted mean, spread and the tails.

``worst10`` / ``best10`` are the mean over the worst / best 10% of clients (at least one
client), the convention of the fairness papers (Li et al. 2020, q-FFL; Li et al. 2021, Ditto).
"""

from __future__ import annotations

import math

import numpy as np


def tail_mean(values: np.ndarray, fraction: float, *, worst: bool) -> float:
    """Mean of the lowest (``worst``) or highest ``fraction`` of ``values``."""
    if len(values) == 0:
        return float("nan")
    k = max(1, math.ceil(fraction * len(values)))
    ordered = np.sort(values)
    return float(ordered[:k].mean() if worst else ordered[-k:].mean())


def summarize(
    values: np.ndarray, weights: np.ndarray | None = None, *, higher_is_better: bool = True
) -> dict[str, float]:
    """Summary of one metric over clients (NaN entries, e.g. empty splits, are ignored).

    ``worst10`` / ``best10`` are the mean of the worst / best 10% of clients: the lowest
    values for a metric where higher is better (accuracy), the highest for a loss."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(values)
    values, weights = values[keep], weights[keep]
    if len(values) == 0:
        nan = float("nan")
        return {
            "mean": nan,
            "weighted_mean": nan,
            "std": nan,
            "worst10": nan,
            "best10": nan,
            "min": nan,
            "max": nan,
            "clients": 0,
        }
    total = weights.sum()
    return {
        "mean": float(values.mean()),
        "weighted_mean": float((values * weights).sum() / total) if total > 0 else float("nan"),
        "std": float(values.std()),
        "worst10": tail_mean(values, 0.1, worst=higher_is_better),
        "best10": tail_mean(values, 0.1, worst=not higher_is_better),
        "min": float(values.min()),
        "max": float(values.max()),
        "clients": len(values),
    }
