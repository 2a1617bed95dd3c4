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
