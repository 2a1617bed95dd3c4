"""Score matrices of four groups where some pairs of groups are related (test helper)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def related_groups(
    size: int,
    seed: int,
    related: float,
    noise: float,
    pairs: Sequence[tuple[int, int]] = ((0, 1), (2, 3)),
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of 4 groups of ``size`` clients: 0.06 within a group, ``related`` between the
    groups of each pair in ``pairs`` (they share a rotation or a labelling), -0.025 between
    any other two groups (levels as measured on the "mixed" federation at 200 clients), plus
    Gaussian noise of sd ``noise``. Returns (scores, groups)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(4), size)
    same = groups[:, None] == groups[None, :]
    paired = np.zeros_like(same)
    for a, b in pairs:
        members = np.isin(groups, (a, b))
        paired |= members[:, None] & members[None, :]
    levels = np.where(same, 0.06, np.where(paired, related, -0.025))
    return levels + noise * rng.standard_normal(levels.shape), groups


def small_related_group(
    sizes: Sequence[int], seed: int, helpers: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores where group 1 (small) is related to group 0 (large), at the levels measured on
    a label-swap federation of 300 clients (benchmarks/README.md, "Decentral: a small related
    group"): 0.05 within group 0 and the other groups, 0.043 within group 1, 0.022 between
    groups 0 and 1, -0.015 between any other two, Gaussian noise of sd 0.012, and each column
    shifted by how much that client helps everyone (sd ``helpers``). Returns (scores,
    groups)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    same = groups[:, None] == groups[None, :]
    small = (groups == 1)[:, None] & same
    related = np.isin(groups, (0, 1))[:, None] & np.isin(groups, (0, 1))[None, :] & ~same
    levels = np.where(small, 0.043, np.where(same, 0.05, np.where(related, 0.022, -0.015)))
    columns = helpers * rng.standard_normal(len(groups))
    return levels + columns[None, :] + 0.012 * rng.standard_normal(levels.shape), groups
