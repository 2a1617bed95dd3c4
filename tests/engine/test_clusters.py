from __future__ import annotations

import math

import numpy as np
import pytest

from plural.core.cluster_quality import changed_fraction, cluster_quality


def test_relabelling_is_not_a_change() -> None:
    assert changed_fraction(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 0.0
    assert changed_fraction(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(0.25)
    assert math.isnan(changed_fraction(np.array([-1, -1]), np.array([0, 1])))


def test_quality_against_true_groups_ignores_unassigned_clients() -> None:
    groups = np.array([0, 0, 1, 1, 2, 2])
    perfect = cluster_quality(np.array([5, 5, 7, 7, 9, 9]), groups)
    assert perfect["ari"] == pytest.approx(1.0) and perfect["nmi"] == pytest.approx(1.0)
    assert perfect["clusters"] == 3 and "changed" not in perfect
    partial = cluster_quality(np.array([0, 0, 1, 1, -1, -1]), groups, np.array([0, 0, 0, 1, 1, 1]))
    assert partial["clusters"] == 2 and partial["ari"] == pytest.approx(1.0)
    assert partial["changed"] == pytest.approx(0.25)
    assert "ari" not in cluster_quality(np.array([0, 1]), None)
