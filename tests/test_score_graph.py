"""pFedLIA's central clustering on the score graph: block-structured score matrices of 20 to
1,000 clients, 2 to 20 groups of equal or very unequal sizes, one group (IID), sparse scores.

The synthetic matrices imitate a measured one (200 clients of rotated MNIST, 4 groups; in units
of the mean within-group score): within-group 1, cross-group 0.08 ± 0.05 per pair of groups,
per-entry noise 0.21 (0.16-0.31 by row), row scales ±15%, column effects ±0.1, own score +0.35.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from sklearn.metrics import adjusted_rand_score

from helpers_scores import related_groups
from plural.core.influence import (
    influence_features,
    merge_alike_clusters,
    optics_clusters,
    optics_fit,
)
from plural.core.score_graph import graph_clusters, modularity, score_edges
from plural.core.sparse_scores import SparseMatrix
from plural.experiment import parse_config
from plural.runner import build_algorithm


def block_scores(
    sizes: list[int], seed: int, noise: float = 0.21, cross: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    n, k = len(groups), len(sizes)
    mean = rng.normal(cross, 0.05, size=(k, k))
    np.fill_diagonal(mean, 1.0)
    row_noise = noise * np.exp(rng.normal(0, 0.25, n))
    scores = mean[groups][:, groups] + rng.normal(0, 0.1, n)[None, :]
    scores += row_noise[:, None] * rng.normal(size=(n, n))
    scores[np.arange(n), np.arange(n)] += 0.35
    return scores * np.exp(rng.normal(0, 0.15, n))[:, None], groups


@pytest.mark.parametrize(
    "sizes",
    [
        [5] * 4,
        [10] * 2,
        [25] * 4,
        [10] * 20,
        [3] * 20,
        [250, 100, 50, 20] + [3] * 8,
        [3, 250, 250, 3, 5],
        [50] * 20,
    ],
    ids=["4x5", "2x10", "4x25", "20x10", "20x3", "unequal-444", "unequal-511", "20x50"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_are_recovered_at_every_size(sizes: list[int], seed: int) -> None:
    if len(sizes) * max(sizes) >= 1000 and seed > 0:
        pytest.skip("1,000 clients: seed 0 in CI, all seeds in test_1000_clients_every_seed")
    scores, groups = block_scores(sizes, seed)
    labels = graph_clusters(scores)
    assert adjusted_rand_score(groups, labels) >= 0.95


@pytest.mark.parametrize(
    ("sizes", "seed", "least"),
    [
        ([10] * 20, 0, 0.95),
        ([10] * 20, 1, 0.95),
        ([10] * 20, 2, 0.95),
        ([50] * 20, 0, 0.95),
        ([50] * 20, 1, 0.95),
        *[([3] * 20, seed, 0.95) for seed in range(6)],
        *[([3] * 8, seed, 0.95) for seed in range(6)],
    ],
)
def test_pfedlia_central_defaults_recover_many_groups(
    sizes: list[int], seed: int, least: float
) -> None:
    # pFedLIA's default central rule (OPTICS, confirmed placements, splits, merging; 'auto'
    # hands 20 x 50 seed 1 to the score graph) where OPTICS alone leaves many clients of 20
    # groups out (at 1,000 clients most of them) or puts two groups of 3 in one leaf.
    # Measured: 20 x 10 0.989-1.000, 20 x 50 1.000, 20 x 3 and 8 x 3 1.000 on seeds 0-5
    # (0.87-0.96 and 0.89-1.00 before misplaced clients were moved; OPTICS then merging
    # 0.69-0.91 on 20 x 3).
    scores, groups = block_scores(sizes, seed)
    labels = _pfedlia_clusters(scores)
    assert adjusted_rand_score(groups, labels) >= least
    merged_only = merge_alike_clusters(
        scores, optics_clusters(influence_features(scores, "row"), min_samples=3, xi=0.05)
    )
    assert adjusted_rand_score(groups, labels) >= adjusted_rand_score(groups, merged_only)


def _pfedlia_clusters(scores: np.ndarray, **algorithm: object) -> np.ndarray:
    """pFedLIA's central clustering step with ``algorithm`` settings, on ``scores``."""
    config = parse_config(
        {
            "dataset": {"name": "digits"},
            "partition": {"name": "iid", "num_clients": len(scores)},
            "model": {"name": "logreg"},
            "algorithm": {"name": "pfedlia", **algorithm},
        }
    )
    return build_algorithm(config).central_clusters(SparseMatrix.from_dense(scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_clustering_hands_over_to_the_score_graph_where_optics_sees_noise(seed: int) -> None:
    # 4 groups of 25 at twice the measured noise: OPTICS calls 56-91% of the clients noise
    # (merging its leaves gives ARI 0.89-1.00); the default clusters the score graph instead.
    scores, groups = block_scores([25] * 4, seed, noise=0.42, cross=0.3)
    fit = optics_fit(influence_features(scores, "row"), min_samples=3, xi=0.05)
    assert np.mean(fit.absorbed == -1) > 0.5
    auto = _pfedlia_clusters(scores)
    np.testing.assert_array_equal(auto, _pfedlia_clusters(scores, clustering="spectral"))
    assert adjusted_rand_score(groups, auto) >= 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_hand_over_merges_halves_that_help_each_other_as_much_as_themselves(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One group of 200 whose halves score each other 0.05 against 0.06 within: the score
    # graph's test passes on such weak structure (2 clusters), as it did on a measured IID
    # federation of 200 clients; after the hand-over the merge joins them. 4 real groups
    # stay 4. The hand-over is forced (OPTICS places every client of these matrices).
    import plural.algorithms.pfedlia.regroup as regroup

    monkeypatch.setattr(regroup, "OPTICS_NOISE_LIMIT", -1.0)
    rng = np.random.default_rng(seed)
    half = np.arange(200) < 100
    levels = np.where(half[:, None] == half[None, :], 0.06, 0.05)
    weak = levels + 0.01 * rng.standard_normal(levels.shape)
    assert graph_clusters(weak).max() == 1
    assert _pfedlia_clusters(weak).tolist() == [0] * 200
    scores, groups = block_scores([25] * 4, seed)
    assert adjusted_rand_score(groups, _pfedlia_clusters(scores)) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_a_group_of_3_among_300_clients_of_very_unequal_groups(seed: int) -> None:
    # Groups of 150, 90, 36, 15, 6 and 3 (label swap with shares, 300 clients): levels and
    # noise as measured there (within 0.06-0.07, across -0.005 to -0.02, sd 0.015). The 3
    # clients of the smallest group stood alone (OPTICS's placement undone, then no top mode
    # above 0 in rows where 2 mates stand among 297 others): ARI 0.9999, 8 clusters, on the
    # real matrix and on seed 3 here.
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(6), [150, 90, 36, 15, 6, 3])
    levels = np.where(groups[:, None] == groups[None, :], 0.065, -0.012)
    scores = levels + 0.015 * rng.standard_normal(levels.shape)
    assert adjusted_rand_score(groups, _pfedlia_clusters(scores)) == 1.0


def test_auto_clustering_keeps_optics_where_it_places_every_client() -> None:
    scores, groups = block_scores([5] * 4, 0)
    auto = _pfedlia_clusters(scores)
    np.testing.assert_array_equal(auto, _pfedlia_clusters(scores, clustering="optics"))
    assert adjusted_rand_score(groups, auto) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_1000_clients_every_seed(seed: int) -> None:
    scores, groups = block_scores([50] * 20, seed)
    assert adjusted_rand_score(groups, graph_clusters(scores)) >= 0.95
    scores, _ = block_scores([1000], seed)
    assert graph_clusters(scores).max() == 0


@pytest.mark.parametrize(("n", "seed"), [(20, 0), (20, 1), (100, 0), (100, 1), (1000, 0)])
def test_one_group_stays_one_cluster(n: int, seed: int) -> None:
    scores, _ = block_scores([n], seed)
    assert graph_clusters(scores).tolist() == [0] * n


def test_twice_the_noise_still_separates_4_groups_of_25() -> None:
    for seed in range(3):
        scores, groups = block_scores([25] * 4, seed, noise=0.42, cross=0.3)
        assert adjusted_rand_score(groups, graph_clusters(scores)) == 1.0


@pytest.mark.parametrize(("size", "seed"), [(25, 0), (25, 1), (250, 2)])
def test_two_groups_in_one_eigengap_cluster_are_split_on_their_own_subgraph(
    size: int, seed: int
) -> None:
    # The whole graph's eigengap sees three clusters (groups 0 and 1 as one: ARI 0.71 before
    # the clusters were clustered again); their own subgraph separates them.
    # groups 0 and 1 help each other half as much as themselves (0.03 against 0.06)
    scores, groups = related_groups(size, seed, related=0.03, noise=0.02, pairs=[(0, 1)])
    assert adjusted_rand_score(groups, graph_clusters(scores)) == 1.0


def test_sparse_scores_of_20_peers_recover_4_groups_of_50() -> None:
    scores, groups = block_scores([50] * 4, 0)
    rng = np.random.default_rng(0)
    n = len(groups)
    rows, cols = [], []
    for i in range(n):
        peers = rng.choice(np.delete(np.arange(n), i), size=20, replace=False)
        rows += [i] * 20
        cols += peers.tolist()
    sparse = csr_matrix((scores[rows, cols], (rows, cols)), shape=(n, n))
    dense = np.full((n, n), np.nan)
    dense[rows, cols] = scores[rows, cols]
    for matrix in (sparse, dense):
        assert adjusted_rand_score(groups, graph_clusters(matrix)) >= 0.95
    assert score_edges(sparse).nnz <= 2 * 20 * n  # edges only where someone scored


def test_a_client_no_one_finds_helpful_is_on_its_own_or_joins_its_best() -> None:
    scores, groups = block_scores([5] * 4, 0)
    scores[:, 3] = -5.0  # everyone is hurt by client 3's lazy model
    scores[3, :] = -1.0
    scores[3, 7] = 1.0  # client 3 finds client 7 (group 1) helpful
    own = graph_clusters(scores, noise="own")
    assert np.sum(own == own[3]) == 1
    nearest = graph_clusters(scores, noise="nearest")
    assert nearest[3] == nearest[7]
    keep = np.arange(20) != 3
    assert adjusted_rand_score(groups[keep], own[keep]) == 1.0


def test_a_given_number_of_clusters_is_used() -> None:
    scores, groups = block_scores([10] * 4, 0)
    assert adjusted_rand_score(groups, graph_clusters(scores, k=4)) == 1.0
    assert graph_clusters(scores, k=1).tolist() == [0] * 40


def test_modularity_of_two_cliques() -> None:
    block = np.ones((3, 3)) - np.eye(3)
    graph = csr_matrix(np.kron(np.eye(2), block))
    assert modularity(graph, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(0.5)
    assert modularity(graph, np.zeros(6, dtype=np.int64)) == pytest.approx(0.0)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="square"):
        graph_clusters(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="noise"):
        graph_clusters(np.zeros((3, 3)), noise="drop")
    assert len(graph_clusters(np.zeros((0, 0)))) == 0
