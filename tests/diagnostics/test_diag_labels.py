from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from plural.diagnostics.labels import (
    gini,
    global_distribution,
    js_divergence,
    l1_distance,
    label_distributions,
    label_skew,
    skew_from_histogram,
    tv_distance,
)


def test_distances_of_identical_and_disjoint_distributions() -> None:
    p = np.array([0.2, 0.3, 0.5])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert l1_distance(p, p) == 0.0 and tv_distance(p, p) == 0.0
    a, b = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, 0.3, 0.7])
    assert js_divergence(a, b) == pytest.approx(1.0)
    assert l1_distance(a, b) == pytest.approx(2.0)
    assert tv_distance(a, b) == pytest.approx(1.0)


def test_distances_known_values_symmetry_and_counts() -> None:
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    # JS = KL(p||m)/2 + KL(q||m)/2 with m = (0.75, 0.25), in bits.
    by_hand = (np.log2(1 / 0.75) + 0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)) / 2
    assert js_divergence(p, q) == pytest.approx(by_hand)
    assert l1_distance(p, q) == pytest.approx(1.0) and tv_distance(p, q) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.dirichlet(np.ones(6) * 0.3), rng.dirichlet(np.ones(6))
        assert js_divergence(a, b) == pytest.approx(jensenshannon(a, b, base=2) ** 2)
        assert js_divergence(a, b) == pytest.approx(js_divergence(b, a))
        assert 0.0 <= js_divergence(a, b) <= 1.0 and 0.0 <= l1_distance(a, b) <= 2.0
    # counts are normalised first
    assert js_divergence([3, 1], [30, 10]) == pytest.approx(0.0, abs=1e-12)
    assert l1_distance([2, 2], [4, 0]) == pytest.approx(1.0)


def test_distances_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no mass"):
        js_divergence([0, 0], [1, 1])
    with pytest.raises(ValueError, match="different supports"):
        l1_distance([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        tv_distance([1, -1], [1, 1])


def test_label_distributions_and_pooled_distribution() -> None:
    histogram = np.array([[2, 2, 0], [0, 0, 0], [0, 1, 3]])
    dists = label_distributions(histogram)
    np.testing.assert_allclose(dists, [[0.5, 0.5, 0], [0, 0, 0], [0, 0.25, 0.75]])
    np.testing.assert_allclose(global_distribution(histogram), [0.25, 0.375, 0.375])
    assert global_distribution(np.zeros((2, 3))).tolist() == [0.0, 0.0, 0.0]


def test_gini_known_values() -> None:
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n - 1) / n
    values = np.array([1.0, 2.0, 7.0])
    pairs = np.abs(values[:, None] - values[None, :]).sum()
    assert gini(values) == pytest.approx(pairs / (2 * len(values) ** 2 * values.mean()))
    assert gini(np.array([])) == 0.0


def test_skew_from_a_hand_made_histogram() -> None:
    histogram = np.array([[10, 10, 0, 0], [0, 0, 5, 15], [5, 5, 5, 5], [0, 0, 0, 0]])
    skew = skew_from_histogram(histogram, sizes=np.array([14, 14, 14, 0]))
    pooled = histogram.sum(axis=0)
    assert skew.js[0] == pytest.approx(js_divergence(histogram[0], pooled))
    assert skew.emd[1] == pytest.approx(l1_distance(histogram[1], pooled))
    assert np.isnan(skew.js[3]) and np.isnan(skew.emd[3])  # a client without samples
    assert skew.classes_present.tolist() == [2, 2, 4, 0]
    np.testing.assert_allclose(skew.dominant_share, [0.5, 0.75, 0.25, 0.0])
    assert skew.mean_classes == pytest.approx(8 / 3)  # over clients with samples
    assert skew.mean_js == pytest.approx(np.nanmean(skew.js))
    assert skew.max_js == pytest.approx(np.nanmax(skew.js))
    assert skew.num_classes == 4 and skew.num_clients == 4
    assert (skew.size_min, skew.size_max, skew.size_mean) == (0, 14, 10.5)
    assert skew.size_cv == pytest.approx(np.std([14, 14, 14, 0]) / 10.5)
    assert skew.size_gini == pytest.approx(gini(np.array([14, 14, 14, 0])))
    np.testing.assert_allclose(skew.samples_per_class, [7, 7, 3.5, 0])
    encoded = json.dumps(skew.to_dict(), allow_nan=False)  # strict JSON: NaN -> null
    assert json.loads(encoded)["js"][3] is None


def test_label_skew_of_iid_and_two_class_federations(make_federation) -> None:
    iid = label_skew(make_federation({"name": "iid", "num_clients": 5}))
    skewed = label_skew(
        make_federation({"name": "classes_per_client", "num_clients": 5, "classes": 2})
    )
    assert iid.mean_js < 0.03 and iid.mean_emd < 0.25 and iid.mean_classes == 10
    assert iid.size_cv < 0.02 and iid.size_gini < 0.01
    assert skewed.mean_js > 0.5 and skewed.mean_emd > 1.4
    assert skewed.classes_present.tolist() == [2] * 5
    assert skewed.dominant_share.min() >= 0.45
    assert iid.sizes.sum() < 1797 and (iid.sizes > 0).all()  # training splits only
