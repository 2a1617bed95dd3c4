"""Similarity of client updates: flattening, norms, alignment, cosine similarities and the
bipartition of clustered FL (Sattler et al. 2020, "Clustered Federated Learning:
Model-Agnostic Distributed Multitask Optimization Under Privacy Constraints")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from plural.core.params import Params


def flat_delta(new: Params, old: Params, names: Sequence[str]) -> torch.Tensor:
    """``new - old`` over the floating-point entries ``names``, flattened to float32."""
    parts = [
        (new[n].detach().float() - old[n].detach().float()).reshape(-1)
        for n in names
        if old[n].is_floating_point()
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def update_norms(deltas: torch.Tensor, weights: np.ndarray) -> tuple[float, float]:
    """(``||sum_i w_i dW_i||``, ``max_i ||dW_i||``): the two split criteria of the paper."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    mean = (w[:, None] * deltas.double()).sum(dim=0)
    return float(mean.norm()), float(deltas.double().norm(dim=1).max())


def update_alignment(deltas: torch.Tensor, weights: np.ndarray) -> float:
    """``||sum_i w_i dW_i|| / sum_i w_i ||dW_i||`` in [0, 1]: the paper's mean-norm criterion
    divided by the clients' mean norm, so that it no longer depends on the learning rate, the
    local work or the model size (1: all updates agree; near 0: they cancel out)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    x = deltas.double()
    mean_of_norms = float((w * x.norm(dim=1)).sum())
    if mean_of_norms == 0:
        return 1.0
    return float((w[:, None] * x).sum(dim=0).norm()) / mean_of_norms


def cosine_similarities(deltas: torch.Tensor) -> np.ndarray:
    """Pairwise cosine similarities of the rows of ``deltas`` (zero rows: similarity 0)."""
    x = deltas.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x @ x.T).clamp(-1.0, 1.0).numpy()


def separation_gap(similarity: np.ndarray, labels: np.ndarray) -> float:
    """Mean update similarity within the two parts minus the mean across them: how much more
    alike the parts are inside than across (a mean-based form of Sattler et al. 2020's
    separation gap, which uses the extremes and is thrown off by one outlier client)."""
    inside = [
        similarity[np.ix_(labels == s, labels == s)][~np.eye(int((labels == s).sum()), dtype=bool)]
        for s in (0, 1)
    ]
    within = np.concatenate(inside)
    cross = similarity[np.ix_(labels == 0, labels == 1)]
    return float(within.mean() - cross.mean()) if within.size and cross.size else -np.inf


def bipartition(similarity: np.ndarray) -> np.ndarray:
    """Labels 0/1 splitting the clients so that the largest cross-cluster similarity is small:
    complete-linkage agglomerative clustering into two clusters on ``1 - cos`` (Sattler et al.
    2020, Eq. 26 and their implementation). The label of the first client is 0."""
    distance = 1.0 - similarity
    np.fill_diagonal(distance, 0.0)
    distance = np.clip((distance + distance.T) / 2, 0.0, None)
    labels = fcluster(linkage(squareform(distance, checks=False), "complete"), 2, "maxclust") - 1
    return labels if labels[0] == 0 else 1 - labels
