"""Cluster quality of methods that assign clients to clusters (IFCA, CFL, pFedLIA, Oracle).

Per round: the assignment, the number of clusters, the adjusted Rand index and normalized
mutual information against the federation's true groups (where known), and stability: the
fraction of clients whose cluster changed since the previous round, after matching the two
rounds' cluster labels optimally (labels are arbitrary; a relabelling is not a change).
Clients without a cluster yet (``-1``) are left out of every measure. The one home of the
agreement with the true groups (:func:`group_agreement`): the run's cluster records,
pFedLIA's lazy-phase records and ``plural diagnose`` all use it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def changed_fraction(previous: np.ndarray, current: np.ndarray) -> float:
    """Share of clients (assigned in both) whose cluster changed, up to relabelling."""
    both = (previous >= 0) & (current >= 0)
    if not both.any():
        return math.nan
    prev, cur = previous[both], current[both]
    prev_labels, prev_idx = np.unique(prev, return_inverse=True)
    cur_labels, cur_idx = np.unique(cur, return_inverse=True)
    overlap = np.zeros((len(prev_labels), len(cur_labels)), dtype=np.int64)
    np.add.at(overlap, (prev_idx, cur_idx), 1)
    rows, cols = linear_sum_assignment(-overlap)
    return 1.0 - overlap[rows, cols].sum() / both.sum()


def cluster_quality(
    assignment: np.ndarray, groups: np.ndarray | None, previous: np.ndarray | None = None
) -> dict[str, object]:
    """The per-round record of a clustering (see the module docstring)."""
    assignment = np.asarray(assignment, dtype=np.int64)
    known = assignment >= 0
    record: dict[str, object] = {
        "assignment": assignment.tolist(),
        "clusters": len(np.unique(assignment[known])),
    }
    if groups is not None and known.sum() >= 2:
        record.update(group_agreement(groups[known], assignment[known]))
    if previous is not None:
        record["changed"] = changed_fraction(np.asarray(previous), assignment)
    return record


def group_agreement(groups: np.ndarray, assignment: np.ndarray) -> dict[str, float]:
    """``ari`` (adjusted Rand index, Hubert & Arabie 1985) and ``nmi`` (normalized mutual
    information) of a clustering against the true groups, client for client."""
    groups, assignment = np.asarray(groups), np.asarray(assignment)
    return {
        "ari": float(adjusted_rand_score(groups, assignment)),
        "nmi": float(normalized_mutual_info_score(groups, assignment)),
    }
