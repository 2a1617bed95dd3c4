from __future__ import annotations

import json

import numpy as np
import pytest

import plural
from plural.diagnostics.gradients import (
    ClientDrift,
    GradientDissimilarity,
    client_drift,
    gradient_dissimilarity,
)
from plural.diagnostics.labels import LabelSkew, label_skew, skew_from_histogram
from plural.diagnostics.recommend import (
    DEFAULT_FAMILY,
    FALLBACK_FAMILIES,
    FAMILY_METHODS,
    RULES,
    ClusterSignal,
    Recommendation,
    cluster_structure,
    recommend,
)

ALL_METHODS = {m for methods in FAMILY_METHODS.values() for m in methods}
CLIENTS, CLASSES = 10, 10


# --- constructed measurements ------------------------------------------------------------------


def iid_labels(per_class: int = 20) -> LabelSkew:
    """Every client holds every class equally: JS 0."""
    histogram = np.full((CLIENTS, CLASSES), per_class)
    return skew_from_histogram(histogram, histogram.sum(axis=1))


def two_class_labels(per_class: int) -> LabelSkew:
    """Client k holds classes k and k+1 (mod 10), ``per_class`` training samples of each."""
    histogram = np.zeros((CLIENTS, CLASSES), dtype=np.int64)
    for k in range(CLIENTS):
        histogram[k, [k, (k + 1) % CLASSES]] = per_class
    return skew_from_histogram(histogram, histogram.sum(axis=1))


def dissimilarity(b2: float) -> GradientDissimilarity:
    weights = np.full(CLIENTS, 1 / CLIENTS)
    return GradientDissimilarity(
        clients=np.arange(CLIENTS),
        weights=weights,
        g2=b2 - 1.0,  # with ||grad F|| = 1
        b2=b2,
        deviation=np.full(CLIENTS, (b2 - 1.0) ** 0.5),
        grad_norm=np.full(CLIENTS, b2**0.5),
        global_grad_norm=1.0,
    )


def drift(cv: float) -> ClientDrift:
    """Drifts with the given std/mean; updates that agree (cosine 0.8), no groups."""
    signs = np.where(np.arange(CLIENTS) % 2 == 0, 1.0, -1.0)
    cosine = np.full((CLIENTS, CLIENTS), 0.8)
    np.fill_diagonal(cosine, 1.0)
    return ClientDrift(np.arange(CLIENTS), 1.0 + cv * signs, cosine)


NO_GROUPS = ClusterSignal(3, 0.2, 0.05, np.arange(CLIENTS) % 3, {3: 0.2})
TWO_GROUPS = ClusterSignal(2, 0.8, 0.6, np.arange(CLIENTS) % 2, {2: 0.8})


def quoted(value: float) -> str:
    return format(value, ".3g")


def assert_quotes(advice: Recommendation, *pieces: str) -> None:
    text = " | ".join(advice.reasons)
    for piece in pieces:
        assert piece in text, (piece, text)


# --- cluster structure -------------------------------------------------------------------------


def block_similarity(sizes: list[int], within: float, between: float, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    s = np.where(labels[:, None] == labels[None, :], within, between)
    s = s + rng.normal(0, noise, s.shape)
    s = np.clip((s + s.T) / 2, -1, 1)
    np.fill_diagonal(s, 1.0)
    return s, labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])))


def test_cluster_structure_finds_two_blocks() -> None:
    s, labels = block_similarity([5, 7], within=0.8, between=-0.2, noise=0.05, seed=0)
    signal = cluster_structure(s)
    assert signal.k == 2 and signal.distinct
    assert signal.silhouette > 0.7 and signal.separation > 0.8
    assert same_partition(signal.assignment, labels)
    assert set(signal.silhouettes) == set(range(2, 9))
    again = cluster_structure(s)
    assert again.k == signal.k and np.array_equal(again.assignment, signal.assignment)
    encoded = json.loads(json.dumps(signal.to_dict(), allow_nan=False))
    assert encoded["distinct"] is True


def test_cluster_structure_finds_three_blocks() -> None:
    s, labels = block_similarity([4, 4, 4], within=0.9, between=0.0, noise=0.05, seed=1)
    signal = cluster_structure(s)
    assert signal.k == 3 and signal.distinct and same_partition(signal.assignment, labels)


def test_no_clusters_in_noise() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        vectors = rng.normal(size=(12, 40))
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        assert not cluster_structure(unit @ unit.T).distinct


def test_an_outlier_or_too_few_clients_are_no_groups() -> None:
    s, _ = block_similarity([9, 1], within=0.9, between=-0.5, noise=0.02, seed=3)
    assert not cluster_structure(s).distinct
    tiny = cluster_structure(np.eye(2))
    assert tiny.k == 1 and np.isnan(tiny.silhouette) and not tiny.distinct
    with pytest.raises(ValueError, match="square"):
        cluster_structure(np.ones((2, 3)))


# --- every branch of the decision list ---------------------------------------------------------


def test_near_iid_gives_fedavg() -> None:
    advice = recommend(
        iid_labels(), dissimilarity(1.3), drift(0.1), cluster=NO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "fedavg" and advice.available_methods == ["fedavg"]
    assert_quotes(advice, "mean JS divergence 0 < 0.05", "B^2 1.3 < 2.5", f"{quoted(0.1)} < 0.3")


def test_distinct_groups_give_clustered() -> None:
    advice = recommend(
        iid_labels(), dissimilarity(2.0), drift(0.1), cluster=TWO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "clustered"
    assert advice.methods == ["ifca", "cfl", "pfedlia"] == advice.available_methods
    assert_quotes(advice, "silhouette of 2 update clusters 0.8 >= 0.5", "0.6 >= 0.2")


def weak_groups(silhouette: float) -> ClusterSignal:
    assignment = np.repeat([0, 1], CLIENTS // 2)
    return ClusterSignal(2, silhouette, 0.4, assignment, {2: silhouette})


def test_weaker_groups_count_only_when_labels_cannot_explain_them() -> None:
    advice = recommend(
        iid_labels(),
        dissimilarity(3.0),
        drift(0.1),
        cluster=weak_groups(0.4),
        available=ALL_METHODS,
    )
    assert advice.family == "clustered"
    assert_quotes(advice, "0.4 >= 0.3")
    skewed = recommend(
        two_class_labels(per_class=5),
        dissimilarity(3.0),
        drift(0.1),
        cluster=weak_groups(0.4),
        available=ALL_METHODS,
    )
    assert skewed.family != "clustered"
    too_weak = recommend(
        iid_labels(),
        dissimilarity(3.0),
        drift(0.1),
        cluster=weak_groups(0.2),
        available=ALL_METHODS,
    )
    assert too_weak.family != "clustered"


def test_strong_skew_with_enough_data_gives_personalized() -> None:
    skew = two_class_labels(per_class=60)
    advice = recommend(
        skew, dissimilarity(20.0), drift(0.2), cluster=NO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "personalized"
    assert advice.methods == ["finetune", "ditto", "pfedme"]
    assert_quotes(advice, f"mean JS divergence {quoted(skew.mean_js)} >= 0.3", "60 >= 25")


def test_severe_dissimilarity_with_enough_data_gives_personalized() -> None:
    advice = recommend(
        iid_labels(per_class=40),
        dissimilarity(45.0),
        drift(0.5),
        cluster=NO_GROUPS,
        available=ALL_METHODS,
    )
    assert advice.family == "personalized"
    assert_quotes(advice, "B^2 45 >= 30", "40 >= 25")


def test_strong_skew_few_classes_little_data_gives_shared_body() -> None:
    skew = two_class_labels(per_class=8)
    advice = recommend(
        skew, dissimilarity(20.0), drift(0.2), cluster=NO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "shared_body" and advice.methods == ["fedper", "fedrep"]
    assert_quotes(advice, "0.2 <= 0.5: few classes per client", "8 < 25: little local data")


def test_severe_dissimilarity_and_little_data_give_multi_task() -> None:
    advice = recommend(
        two_class_labels(per_class=8),
        dissimilarity(40.0),
        drift(0.2),
        cluster=TWO_GROUPS,
        available=ALL_METHODS,
    )
    assert advice.family == "multi_task" and advice.methods == ["mocha", "local"]
    assert_quotes(advice, "B^2 40 >= 30", "8 < 25")


def test_huge_dissimilarity_gives_multi_task_whatever_the_data() -> None:
    advice = recommend(
        iid_labels(per_class=500),
        dissimilarity(250.0),
        drift(0.1),
        cluster=NO_GROUPS,
        available=ALL_METHODS,
    )
    assert advice.family == "multi_task"
    assert advice.reasons == ["B^2 250 >= 100: client gradients cancel almost completely"]


def test_moderate_heterogeneity_gives_robust_global() -> None:
    advice = recommend(
        iid_labels(), dissimilarity(5.0), drift(0.5), cluster=NO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "robust_global" and advice.methods == ["fedprox", "scaffold"]
    assert_quotes(advice, "B^2 5 >= 2.5", "0.5 >= 0.3: clients drift unevenly", "0.2 < 0.5")
    # strong label skew, but 6 of 10 classes per client and little data: robust_global too
    histogram = np.zeros((CLIENTS, CLASSES), dtype=np.int64)
    for k in range(CLIENTS):
        histogram[k, [(k + j) % CLASSES for j in range(6)]] = [12, 1, 1, 1, 1, 1]
    skewed = skew_from_histogram(histogram)
    advice = recommend(
        skewed, dissimilarity(5.0), drift(0.5), cluster=NO_GROUPS, available=ALL_METHODS
    )
    assert advice.family == "robust_global"
    assert_quotes(advice, f"mean JS divergence {quoted(skewed.mean_js)} >= 0.3")


def test_recommend_without_gradient_measurements() -> None:
    advice = recommend(iid_labels(), None, None, available=ALL_METHODS)
    assert advice.family == "fedavg"
    assert_quotes(advice, "B^2 not measured", "drift dispersion (std/mean) not measured")
    assert np.isnan(advice.scores["b2"])
    skewed = recommend(two_class_labels(per_class=60), None, None, available=ALL_METHODS)
    assert skewed.family == "personalized"


def test_recommend_without_labels_as_for_regression() -> None:
    advice = recommend(None, dissimilarity(1.2), drift(0.1), available=ALL_METHODS)
    assert advice.family == "fedavg" and np.isnan(advice.scores["mean_js"])
    assert_quotes(advice, "mean JS divergence not measured", "B^2 1.2 < 2.5")
    severe = recommend(None, dissimilarity(45.0), drift(0.1), available=ALL_METHODS)
    assert severe.family == "robust_global"  # data per class unknown: no personal models
    with pytest.raises(ValueError, match="at least one"):
        recommend(None, None, None, available=ALL_METHODS)


def test_cluster_signal_is_computed_from_the_drift_when_not_given() -> None:
    s, _ = block_similarity([5, 5], within=0.9, between=-0.3, noise=0.03, seed=4)
    grouped = ClientDrift(np.arange(CLIENTS), np.ones(CLIENTS), s)
    advice = recommend(iid_labels(), dissimilarity(2.0), grouped, available=ALL_METHODS)
    assert advice.family == "clustered" and advice.scores["clusters"] == 2.0


def test_unavailable_methods_fall_back_to_the_closest_family() -> None:
    skew, b2 = two_class_labels(per_class=60), dissimilarity(20.0)
    advice = recommend(skew, b2, drift(0.2), cluster=NO_GROUPS, available={"fedavg", "local"})
    assert advice.family == "personalized" and advice.available_methods == ["local"]
    assert "closest available: local (multi_task)" in advice.notes[0]
    some = recommend(skew, b2, drift(0.2), cluster=NO_GROUPS, available={"ditto", "fedavg"})
    assert some.available_methods == ["ditto"] and some.notes == []
    robust = recommend(
        iid_labels(),
        dissimilarity(5.0),
        drift(0.5),
        cluster=NO_GROUPS,
        available=["fedavg", "local"],
    )
    assert robust.available_methods == ["fedavg"] and "fedprox" in robust.notes[0]
    nothing = recommend(skew, b2, drift(0.2), cluster=NO_GROUPS, available=set())
    assert nothing.available_methods == [] and "nor a fallback" in nothing.notes[0]
    assert json.dumps(nothing.to_dict(), allow_nan=False)


def test_every_family_has_a_fallback_chain_of_known_families() -> None:
    assert set(FALLBACK_FAMILIES) == set(FAMILY_METHODS)
    for chain in FALLBACK_FAMILIES.values():
        assert set(chain) <= set(FAMILY_METHODS)
    assert {family for family, _ in RULES} | {DEFAULT_FAMILY} == set(FAMILY_METHODS)


# --- end to end on digits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "family"),
    [
        ({"name": "iid", "num_clients": 6}, "fedavg"),
        ({"name": "classes_per_client", "num_clients": 6, "classes": 2}, "personalized"),
    ],
)
def test_recommend_on_digits(make_federation, make_trainer, partition, family) -> None:
    federation = make_federation(partition)
    trainer, params = make_trainer(federation)
    advice = recommend(
        label_skew(federation),
        gradient_dissimilarity(trainer, params, federation),
        client_drift(trainer, params, federation, rng_seed=0),
        available=plural.ALGORITHMS.names(),
    )
    assert advice.family == family, advice.reasons
    assert advice.available_methods  # fedavg and local are always registered
