"""pFedLIA helpers: features, private votes, clustering rules, diagnostics, compression."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from helpers_scores import related_groups, small_related_group
from plural.core.compression import CompressedDelta, compress, decompress
from plural.core.influence import (
    OpticsFit,
    _noise_to_nearest,
    _share_lower_bound,
    _small_top_mode,
    absorptions_the_rows_confirm,
    agreed_peers,
    client_distances,
    fixed_clusters,
    follow_first_choices,
    helpful_side,
    influence_features,
    keep_probability,
    kmeans_peers,
    merge_alike_clusters,
    move_misplaced_clients,
    mutual_components,
    neighbourhood_quality,
    optics_clusters,
    own_row_peers,
    pair_lone_clients,
    randomized_response,
    rank_correlation,
    row_epsilon,
    row_modes,
    settled_clusters,
    sign_votes,
    split_off_subgroups,
    split_unalike_clusters,
    standout_peers,
    upper_tier,
)
from plural.core.params import nbytes

NAN = math.nan


def block_scores(groups: np.ndarray, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Influence matrix: +1 inside a group, -0.5 across groups, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    same = groups[:, None] == groups[None, :]
    return np.where(same, 1.0, -0.5) + noise * rng.standard_normal(same.shape)


GROUPS = np.repeat([0, 1, 2], 4)


# --------------------------------------------------------------------------- features


def test_row_normalisation_scales_rows_to_unit_max_and_keeps_signs() -> None:
    scores = np.array([[2.0, -4.0, NAN], [0.0, 0.0, NAN], [NAN, NAN, NAN], [0.5, 0.25, -0.1]])
    before = scores.copy()
    features = influence_features(scores)
    np.testing.assert_array_equal(scores, before, strict=True)
    assert features.dtype == np.float64
    np.testing.assert_allclose(features[0], [0.5, -1.0, NAN])
    np.testing.assert_array_equal(features[1:3], scores[1:3])  # zero / empty rows unchanged
    np.testing.assert_allclose(features[3], [1.0, 0.5, -0.2])
    np.testing.assert_array_equal(np.sign(features), np.sign(scores))


def test_normalize_none_is_a_copy() -> None:
    scores = np.array([[3.0, -1.0], [2.0, 5.0]])
    features = influence_features(scores, normalize="none")
    np.testing.assert_array_equal(features, scores)
    assert features is not scores


def test_symmetrize_uses_the_finite_side_where_one_is_missing() -> None:
    scores = np.array([[1.0, 2.0, NAN], [4.0, 1.0, NAN], [3.0, NAN, 1.0]])
    features = influence_features(scores, normalize="none", symmetrize=True)
    expected = np.array([[1.0, 3.0, 3.0], [3.0, 1.0, NAN], [3.0, NAN, 1.0]])
    np.testing.assert_array_equal(features, expected)


def test_influence_features_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="normalize must be one of"):
        influence_features(np.zeros((2, 2)), normalize="column")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        influence_features(np.zeros((2, 3)), symmetrize=True)


# --------------------------------------------------------------------------- private votes


def test_sign_votes() -> None:
    votes = sign_votes(np.array([[0.3, 0.0, -2.0, NAN]]))
    np.testing.assert_array_equal(votes, [[1.0, -1.0, -1.0, NAN]])


def test_keep_probability() -> None:
    assert keep_probability(math.log(3)) == pytest.approx(0.75, abs=1e-15)
    assert keep_probability(1000.0) == 1.0  # no overflow
    assert keep_probability(1e-9) == pytest.approx(0.5)
    for bad in (0.0, -1.0, NAN):
        with pytest.raises(ValueError, match="epsilon must be > 0"):
            keep_probability(bad)


def test_randomized_response_with_huge_epsilon_keeps_every_vote() -> None:
    votes = sign_votes(np.random.default_rng(1).standard_normal((50, 50)))
    votes[0, :5] = NAN
    released = randomized_response(votes, 60.0, np.random.default_rng(2))
    np.testing.assert_array_equal(released, votes)


@pytest.mark.parametrize("epsilon", [0.01, 1.0])
def test_randomized_response_flips_at_the_expected_rate(epsilon: float) -> None:
    votes = sign_votes(np.random.default_rng(3).standard_normal((400, 500)))
    released = randomized_response(votes, epsilon, np.random.default_rng(4))
    flip_rate = float(np.mean(released != votes))
    assert flip_rate == pytest.approx(1 - keep_probability(epsilon), abs=0.005)
    assert set(np.unique(released)) == {-1.0, 1.0}


def test_randomized_response_keeps_nan_and_draws_one_uniform_per_entry() -> None:
    votes = np.array([[1.0, NAN, -1.0], [NAN, 1.0, 1.0]])
    rng = np.random.default_rng(5)
    released = randomized_response(votes, 0.5, rng)
    np.testing.assert_array_equal(np.isnan(released), np.isnan(votes))
    expected = np.where(np.random.default_rng(5).random(votes.shape) < keep_probability(0.5), 1, -1)
    np.testing.assert_array_equal(released, votes * expected)
    # the generator advanced by exactly one uniform per entry
    reference = np.random.default_rng(5)
    reference.random(votes.shape)
    assert rng.random() == reference.random()


def test_randomized_response_rejects_non_votes() -> None:
    with pytest.raises(ValueError, match="votes must be"):
        randomized_response(np.array([0.5, 1.0]), 1.0, np.random.default_rng(0))


def test_row_epsilon_composes_sequentially() -> None:
    assert row_epsilon(0.5, 9) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="votes_per_row"):
        row_epsilon(0.5, -1)


# --------------------------------------------------------------------------- central rule


def test_client_distances_handles_rows_without_common_coordinates() -> None:
    features = np.array([[0.0, NAN], [NAN, 1.0], [3.0, 4.0], [0.0, 0.0]])
    distances = client_distances(features)
    assert distances.dtype == np.float64
    np.testing.assert_array_equal(distances, distances.T)
    np.testing.assert_array_equal(np.diag(distances), 0.0)
    assert np.isfinite(distances).all()
    largest = distances[2, 3]  # 5.0, the largest observed distance
    assert largest == pytest.approx(5.0)
    assert distances[0, 1] == pytest.approx(2 * largest)


def test_client_distances_without_any_finite_distance_uses_one() -> None:
    distances = client_distances(np.array([[1.0, NAN], [NAN, 2.0]]))
    np.testing.assert_array_equal(distances, [[0.0, 1.0], [1.0, 0.0]])


def test_optics_recovers_three_separated_groups() -> None:
    scores = block_scores(GROUPS)
    labels = optics_clusters(influence_features(scores))
    assert labels.dtype == np.int64
    assert adjusted_rand_score(GROUPS, labels) == 1.0
    assert labels[0] == 0


def test_optics_with_missing_scores() -> None:
    scores = block_scores(GROUPS, seed=1)
    rng = np.random.default_rng(2)
    scores[rng.random(scores.shape) < 0.15] = NAN
    labels = optics_clusters(influence_features(scores, symmetrize=True))
    assert adjusted_rand_score(GROUPS, labels) == 1.0


def outlier_features() -> np.ndarray:
    """A far outlier (row 0, nearer the second group) and two tight groups of four points."""
    rng = np.random.default_rng(0)
    first = rng.normal(0.0, 0.01, size=(4, 2))
    second = rng.normal(0.0, 0.01, size=(4, 2)) + np.array([10.0, 0.0])
    return np.vstack([[[30.0, 0.0]], first, second])


def test_noise_policies_on_an_outlier() -> None:
    features = outlier_features()
    own = optics_clusters(features, noise="own")
    np.testing.assert_array_equal(own, [0, 1, 1, 1, 1, 2, 2, 2, 2])
    nearest = optics_clusters(features, noise="nearest")
    np.testing.assert_array_equal(nearest, [0, 1, 1, 1, 1, 0, 0, 0, 0])


def test_nearest_policy_falls_back_to_singletons_when_everything_is_noise() -> None:
    # OPTICS hardly ever calls every point noise, so the fallback is checked directly
    labels = _noise_to_nearest(np.full(3, -1, dtype=np.int64), np.zeros((3, 3)))
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_optics_small_federations() -> None:
    np.testing.assert_array_equal(optics_clusters(np.array([[1.0, 2.0]])), [0])
    two = optics_clusters(np.array([[0.0, 1.0], [0.1, 1.0]]), min_samples=5)
    assert two.dtype == np.int64
    assert two[0] == 0 and set(two.tolist()) <= {0, 1}
    assert len(optics_clusters(np.zeros((0, 3)))) == 0


def test_optics_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_samples must be >= 2"):
        optics_clusters(np.zeros((3, 3)), min_samples=1)
    with pytest.raises(ValueError, match="noise must be one of"):
        optics_clusters(np.zeros((3, 3)), noise="drop")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- decentral rule


def scaled_blocks(sizes: list[int], within: float, across: float, seed: int) -> np.ndarray:
    """Scores ``within`` inside a group and ``across`` between groups, noise 0.1 x within."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    same = groups[:, None] == groups[None, :]
    return np.where(same, within, across) + 0.1 * within * rng.standard_normal(same.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sizes", [[50, 50, 50, 50], [250, 20, 3]])
def test_merging_joins_the_pieces_of_each_group_and_nothing_else(
    sizes: list[int], seed: int
) -> None:
    """OPTICS-like fragments (each group cut into pieces, some clients alone) merge back
    into exactly the true groups."""
    groups = np.repeat(np.arange(len(sizes)), sizes)
    scores = scaled_blocks(sizes, 0.09, 0.01, seed)  # rotated MNIST's within and across
    rng = np.random.default_rng(seed)
    pieces = groups * 10 + rng.integers(0, 4, size=len(groups))  # up to 4 pieces a group
    pieces[rng.choice(len(groups), size=5, replace=False)] = 1000 + np.arange(5)  # singletons
    merged = merge_alike_clusters(scores, pieces)
    assert adjusted_rand_score(groups, merged) == 1.0


def test_merging_keeps_close_but_distinct_groups_apart() -> None:
    # The fortunes federation: English and German score themselves 0.10 and 0.11 and each
    # other -0.04; every other pair of languages about -2.
    scores = scaled_blocks([3, 3, 3, 3], 0.1, -2.0, 0)
    scores[np.ix_(range(3), range(3, 6))] = -0.04
    scores[np.ix_(range(3, 6), range(3))] = -0.04
    labels = np.repeat([0, 1, 2, 3], 3)
    np.testing.assert_array_equal(merge_alike_clusters(scores, labels), labels)


def test_merging_reductions() -> None:
    scores = block_scores(GROUPS)
    # The true groups stay; a huge share merges nothing; every client alone pairs up into
    # its group (two singletons compare with their rows' top modes); clients that hurt
    # everyone stay alone.
    np.testing.assert_array_equal(merge_alike_clusters(scores, GROUPS), GROUPS)
    pieces = np.arange(12) // 2
    np.testing.assert_array_equal(merge_alike_clusters(scores, pieces, share=100.0), pieces)
    alone = np.arange(12)
    np.testing.assert_array_equal(merge_alike_clusters(scores, alone), GROUPS)
    np.testing.assert_array_equal(merge_alike_clusters(-np.abs(scores), alone), alone)
    # Pairs cut from the groups merge back; the input is left alone.
    before = pieces.copy()
    np.testing.assert_array_equal(merge_alike_clusters(scores, pieces), GROUPS)
    np.testing.assert_array_equal(pieces, before)


def test_merging_never_joins_clients_that_do_not_help_each_other() -> None:
    # Two clusters whose members hurt each other and their own mates: nothing to merge.
    scores = np.full((6, 6), -1.0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(merge_alike_clusters(scores, labels), labels)


def test_merging_uses_only_the_scores_that_exist() -> None:
    scores = block_scores(GROUPS)
    pieces = np.arange(12) // 2
    sparse = scores.copy()
    sparse[np.random.default_rng(0).random(scores.shape) < 0.4] = NAN  # 40% not scored
    np.testing.assert_array_equal(merge_alike_clusters(sparse, pieces), GROUPS)
    # Pieces with no score between them have no evidence to merge: group 0's two pairs stay
    # apart, the other groups' pairs merge.
    unscored = scores.copy()
    unscored[np.ix_(range(2), range(2, 4))] = NAN
    unscored[np.ix_(range(2, 4), range(2))] = NAN
    labels = merge_alike_clusters(unscored, pieces)
    assert labels[0] != labels[2]
    assert adjusted_rand_score(GROUPS[4:], labels[4:]) == 1.0


def test_a_pair_that_formed_on_a_high_draw_joins_its_group() -> None:
    # Six clients of one group score each other 1.0; clients 0 and 1 drew 2.8 for each other.
    # Against the pair's own mean within (2.8) the group is a stranger (1.0 / 2.8 = 0.36);
    # against the pooled mean within ((2 x 2.8 + 12 x 1.0) / 14 = 1.26) it is kin (0.80).
    scores = np.ones((6, 6))
    scores[0, 1] = scores[1, 0] = 2.8
    labels = np.array([0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(merge_alike_clusters(scores, labels), np.zeros(6))


def _fit(leaves: list[int], absorbed: list[int]) -> OpticsFit:
    n = len(leaves)
    return OpticsFit(np.array(leaves), np.array(absorbed), np.zeros((n, n)))


def test_the_row_must_confirm_a_placement_by_distance() -> None:
    # Leaf 0 (clients 0-2) and leaf 1 (clients 3-5); OPTICS left out clients 6 and 7 and the
    # hierarchy placed both in leaf 0. Leaf 0's members help client 6 as much as its best
    # helpers do; they hurt client 7, which only its pair mate 8 helps.
    scores = np.full((9, 9), -1.0)
    scores[np.ix_(range(3), range(3))] = 1.0
    scores[np.ix_(range(3, 6), range(3, 6))] = 1.0
    scores[6, :3] = 0.9
    scores[7, 8] = scores[8, 7] = 1.7
    fit = _fit([0, 0, 0, 1, 1, 1, -1, -1, -1], [0, 0, 0, 1, 1, 1, 0, 0, -1])
    kept = absorptions_the_rows_confirm(scores, fit)
    np.testing.assert_array_equal(kept, [0, 0, 0, 1, 1, 1, 0, -1, -1])
    # A row that is helped a little, far below what its best helpers give it, is not kin.
    scores[6, :3], scores[6, 3:6] = 0.2, 2.0
    assert absorptions_the_rows_confirm(scores, fit)[6] == -1
    # Clients placed by a leaf of their own (not absorbed) are never undone.
    np.testing.assert_array_equal(
        absorptions_the_rows_confirm(-np.ones((3, 3)), _fit([0, 0, 0], [0, 0, 0])), [0, 0, 0]
    )


def _three_groups_of_three() -> tuple[np.ndarray, np.ndarray]:
    """The true groups of 9 clients in groups of 3, and their scores."""
    groups = np.repeat([0, 1, 2], 3)
    return groups, block_scores(groups, noise=0.05)


def test_splitting_cuts_two_groups_out_of_one_cluster_and_nothing_else() -> None:
    groups, scores = _three_groups_of_three()
    # Groups 0 and 1 in one cluster: split; the true groups stay as they are.
    joined = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(split_unalike_clusters(scores, joined), groups)
    np.testing.assert_array_equal(split_unalike_clusters(scores, groups), groups)
    # All three in one: split into all three.
    assert adjusted_rand_score(groups, split_unalike_clusters(scores, np.zeros(9))) == 1.0
    # A client whose own model hurts its mates (they help it) is not cut off alone.
    one_way = block_scores(np.zeros(6, dtype=np.int64))
    one_way[1:, 0] = -1.0
    np.testing.assert_array_equal(split_unalike_clusters(one_way, np.zeros(6)), np.zeros(6))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splitting_leaves_one_noisy_group_whole(seed: int) -> None:
    groups = np.zeros(40, dtype=np.int64)
    scores = block_scores(groups, seed, noise=0.3)
    np.testing.assert_array_equal(split_unalike_clusters(scores, groups), groups)


def test_splitting_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        split_unalike_clusters(np.zeros((3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="share must be > 0"):
        split_unalike_clusters(np.zeros((3, 3)), np.zeros(3), share=-1.0)
    with pytest.raises(ValueError, match="share must be > 0"):
        absorptions_the_rows_confirm(np.zeros((3, 3)), _fit([0, 0, 0], [0, 0, 0]), share=0.0)
    with pytest.raises(ValueError, match="one entry per row"):
        absorptions_the_rows_confirm(np.zeros((4, 4)), _fit([0, 0, 0], [0, 0, 0]))
    with pytest.raises(ValueError, match="square"):
        split_unalike_clusters(np.zeros((3, 2)), np.zeros(3))


def test_a_client_in_another_groups_cluster_moves_to_its_mates() -> None:
    # Groups of 3; client 3 (group 1) sits with group 0 while its mates 4 and 5 form a pair:
    # no split cuts one client off and no merge joins the two clusters; the move does.
    groups, scores = _three_groups_of_three()
    misplaced = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(split_unalike_clusters(scores, misplaced), misplaced)
    np.testing.assert_array_equal(merge_alike_clusters(scores, misplaced), misplaced)
    np.testing.assert_array_equal(move_misplaced_clients(scores, misplaced), groups)
    # The true partition is left as it is, and so are clients alone.
    np.testing.assert_array_equal(move_misplaced_clients(scores, groups), groups)
    alone = np.arange(9)
    np.testing.assert_array_equal(move_misplaced_clients(scores, alone), alone)


def _unhappy_client(helped_by_b: float, helps_b: float) -> np.ndarray:
    """Clusters A = 0-3 and B = 4-7 (1.0 within, 0 across), C = 8-10 (-0.5 within). Client 0's
    model hurts its mates (-1.0), who help it 0.5: it is not alike them (mutual -0.25). B helps
    client 0 ``helped_by_b``; client 0's model helps B ``helps_b``."""
    scores = np.zeros((11, 11))
    for members in (range(4), range(4, 8)):
        scores[np.ix_(members, members)] = 1.0
    scores[np.ix_(range(8, 11), range(8, 11))] = -0.5
    scores[0, 1:4], scores[1:4, 0] = 0.5, -1.0
    scores[0, 4:8], scores[4:8, 0] = helped_by_b, helps_b
    return scores


UNHAPPY = np.array([0] * 4 + [1] * 4 + [2] * 3)


@pytest.mark.parametrize(
    ("helped_by_b", "helps_b", "moves"),
    [
        (0.6, 1.4, True),  # B helps it more than its mates (0.6 > 0.5), mutual 1.0: moves
        (0.4, 1.4, False),  # the row decides: B helps it less than its mates (0.4 < 0.5)
        (0.8, 0.1, False),  # the mutual score decides: 0.45 < 0.6 x B's within (1.0)
        (0.8, 0.6, True),  # mutual 0.7 >= 0.6: moves
    ],
)
def test_a_move_needs_the_row_and_the_mutual_score(
    helped_by_b: float, helps_b: float, moves: bool
) -> None:
    labels = move_misplaced_clients(_unhappy_client(helped_by_b, helps_b), UNHAPPY)
    assert bool(labels[0] == labels[4]) == moves and bool(labels[0] == labels[1]) != moves
    assert labels[8] == labels[9] == labels[10] != labels[4]  # C is never a destination


def test_a_client_goes_to_the_cluster_it_is_most_alike() -> None:
    scores = _unhappy_client(0.6, 1.4)
    scores[np.ix_(range(8, 11), range(8, 11))] = 1.0  # C now a good cluster too
    scores[0, 8:], scores[8:, 0] = 1.0, 1.6  # and more alike client 0 than B (1.3 > 1.0)
    labels = move_misplaced_clients(scores, UNHAPPY)
    assert labels[0] == labels[8] and labels[1] != labels[0] != labels[4]


def test_a_cluster_whose_members_do_not_help_each_other_takes_no_one() -> None:
    scores = _unhappy_client(0.6, 1.4)
    scores[0, 8:], scores[8:, 0] = 1.0, 1.6  # C (within -0.5) helps client 0 most
    labels = move_misplaced_clients(scores, UNHAPPY)
    assert labels[0] == labels[4] and labels[8] != labels[0]


def test_a_client_whose_model_hurts_its_group_stays_with_it() -> None:
    # Its mates help it (its row, 1.0); its model hurts them (-3.0), and another group
    # neither helps it nor is helped much: the row keeps it.
    groups = np.repeat([0, 1], 4)
    scores = block_scores(groups, noise=0.0)
    scores[1:4, 0] = -3.0
    np.testing.assert_array_equal(move_misplaced_clients(scores, groups), groups)


@pytest.mark.parametrize("seed", range(20))
def test_the_move_tables_equal_a_recount_after_every_move(seed: int) -> None:
    from plural.core.influence import _MoveTables

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 25))
    scores = rng.normal(size=(n, n))
    scores[rng.random((n, n)) < 0.3] = np.nan
    tables = _MoveTables(scores, rng.integers(0, 5, n))
    for _ in range(10):
        tables.move(int(rng.integers(n)), int(rng.integers(len(tables.sizes))))
        fresh = _MoveTables(scores, tables.labels.copy())
        k = len(fresh.sizes)  # the kept tables keep emptied clusters past the last label
        for kept, counted in zip(tables.sums, fresh.sums, strict=True):
            np.testing.assert_allclose(kept[:, :k], counted, atol=1e-12)
            np.testing.assert_allclose(kept[:, k:], 0.0, atol=1e-12)
        np.testing.assert_allclose(tables.within[:, :k], fresh.within, atol=1e-12)
        np.testing.assert_array_equal(tables.sizes[:k], fresh.sizes)


def test_a_client_alike_its_mates_is_not_drawn_into_a_fragment_of_its_group() -> None:
    # One group of 40 in a cluster of 38 and a pair whose two scores came out high (2.0);
    # client 0 scores the pair 1.5 (more than its mates' 1.0) but is alike its mates: stays.
    scores = np.ones((40, 40))
    scores[38, 39] = scores[39, 38] = 2.0
    scores[0, 38:] = scores[38:, 0] = 1.5
    labels = np.array([0] * 38 + [1, 1])
    np.testing.assert_array_equal(move_misplaced_clients(scores, labels), labels)


def test_settling_merges_pieces_and_moves_a_misplaced_client() -> None:
    # Group 0 in two pieces; client 6 of group 2 with group 3 while its mates pair up.
    groups = np.repeat([0, 1, 2, 3], 3)
    scores = block_scores(groups, noise=0.05)
    labels = np.array([0, 0, 4, 1, 1, 1, 2, 3, 3, 2, 2, 2])
    np.testing.assert_array_equal(settled_clusters(scores, labels), groups)
    np.testing.assert_array_equal(settled_clusters(scores, groups), groups)


def test_moving_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        move_misplaced_clients(np.zeros((3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        move_misplaced_clients(np.zeros((3, 3)), np.array([0, 0, -1]))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        merge_alike_clusters(np.zeros((3, 3)), np.array([0, 0, -1]))
    with pytest.raises(ValueError, match="share must be > 0"):
        settled_clusters(np.zeros((3, 3)), np.zeros(3), share=0.0)


def test_merging_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        merge_alike_clusters(np.zeros((3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="share must be > 0"):
        merge_alike_clusters(np.zeros((3, 3)), np.array([0, 1, 2]), share=0.0)


def test_kmeans_peers_picks_the_helpful_side() -> None:
    row = np.array([0.9, -0.4, 1.1, NAN, -0.5, 1.0, -0.3])
    peers = kmeans_peers(row, self_index=0)
    np.testing.assert_array_equal(peers, [True, False, True, False, False, True, False])


def test_kmeans_peers_always_includes_self_and_never_nan() -> None:
    row = np.array([1.0, 0.9, -1.0, NAN, 1.1])
    peers = kmeans_peers(row, self_index=2)
    np.testing.assert_array_equal(peers, [True, True, True, False, True])
    peers = kmeans_peers(np.array([NAN, 1.0, -1.0]), self_index=0)
    np.testing.assert_array_equal(peers, [True, True, False])


def test_kmeans_peers_degenerate_rows() -> None:
    np.testing.assert_array_equal(kmeans_peers(np.array([0.2, 0.2, NAN, 0.2]), 1), [1, 1, 0, 1])
    np.testing.assert_array_equal(kmeans_peers(np.array([NAN, 0.5, NAN]), 0), [1, 1, 0])
    np.testing.assert_array_equal(kmeans_peers(np.array([NAN, NAN]), 1), [0, 1])
    with pytest.raises(ValueError, match="self_index"):
        kmeans_peers(np.array([1.0, 2.0]), 2)


def test_kmeans_peers_tie_goes_to_the_higher_centre() -> None:
    # 1.0 is equally far from the centres 0.0 and 2.0 after the first step
    peers = kmeans_peers(np.array([0.0, 1.0, 2.0]), self_index=0)
    np.testing.assert_array_equal(peers, [True, True, True])
    peers = kmeans_peers(np.array([0.0, 1.0, 2.0]), self_index=2)
    np.testing.assert_array_equal(peers, [False, True, True])


def test_decentral_rule_recovers_groups() -> None:
    scores = block_scores(GROUPS, seed=3)
    peers = np.array([kmeans_peers(scores[i], i) for i in range(len(GROUPS))])
    assert adjusted_rand_score(GROUPS, mutual_components(peers)) == 1.0


def test_mutual_components_needs_both_directions() -> None:
    peers = np.eye(6, dtype=bool)
    peers[1, 3] = peers[3, 1] = True  # mutual: 1-3
    peers[3, 5] = peers[5, 3] = True  # mutual: 3-5
    peers[0, 2] = True  # one-sided: no edge
    peers[4, 0] = peers[0, 4] = True  # mutual: 0-4
    labels = mutual_components(peers)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 2, 1, 0, 1])


def test_neighbourhood_quality_hand_computed() -> None:
    groups = np.array([0, 0, 0, 1, 2])
    peers = np.array(
        [
            [1, 1, 0, 1, 0],  # other peers {1, 3}: purity 1/2, recall 1/2
            [1, 1, 1, 0, 0],  # {0, 2}: purity 1, recall 1
            [0, 0, 1, 0, 0],  # none: no purity, recall 0
            [0, 0, 0, 1, 1],  # {4}: purity 0, group has no other member
            [0, 0, 0, 0, 1],  # none, group alone
        ],
        dtype=bool,
    )
    quality = neighbourhood_quality(peers, groups)
    assert quality == pytest.approx({"purity": 0.5, "recall": 0.5, "size": 1.0})
    assert all(type(value) is float for value in quality.values())
    alone = neighbourhood_quality(np.eye(2, dtype=bool), np.array([0, 1]))
    assert math.isnan(alone["purity"]) and math.isnan(alone["recall"]) and alone["size"] == 0.0


# --------------------------------------------------------------------------- diagnostics


def test_rank_correlation() -> None:
    a = np.random.default_rng(0).standard_normal((5, 5))
    assert rank_correlation(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    b = np.exp(a)
    np.fill_diagonal(b, -np.diag(b) * 100)  # the diagonal must not count
    b[0, 1] = NAN
    assert rank_correlation(a, b) == pytest.approx(1.0)


def test_rank_correlation_degenerate() -> None:
    a = np.array([[0.0, 1.0], [2.0, 0.0]])
    assert math.isnan(rank_correlation(a, a))  # only two off-diagonal pairs
    assert math.isnan(rank_correlation(np.ones((3, 3)), np.arange(9.0).reshape(3, 3)))


# --------------------------------------------------------------------------- compression


def make_delta() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "weight": torch.randn(8, 5, generator=generator),
        "bias": torch.randn(5, generator=generator, dtype=torch.float64),
        "scalar": torch.tensor(-0.75),
        "zeros": torch.zeros(3),
        "steps": torch.tensor([7, -2, 3], dtype=torch.int64),
    }


def test_none_round_trips_exactly() -> None:
    delta = make_delta()
    compressed = compress(delta, "none")
    assert isinstance(compressed, CompressedDelta)
    assert nbytes(compressed) == sum(t.numel() * t.element_size() for t in delta.values())
    restored = decompress(compressed)
    for name, tensor in delta.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor)
        assert restored[name] is not tensor


def test_topk_keeps_the_largest_entries() -> None:
    delta = make_delta()
    before = {name: t.clone() for name, t in delta.items()}
    compressed = compress(delta, "topk", fraction=0.25)
    restored = decompress(compressed)
    for name, tensor in delta.items():
        assert torch.equal(tensor, before[name])  # nothing mutated
        assert restored[name].shape == tensor.shape and restored[name].dtype == tensor.dtype
    weight = delta["weight"]
    k = math.ceil(0.25 * weight.numel())  # 10
    kept = restored["weight"] != 0
    assert int(kept.sum()) == k
    threshold = weight.abs().flatten().sort(descending=True).values[k - 1]
    assert torch.equal(kept, weight.abs() >= threshold)
    assert torch.equal(restored["weight"][kept], weight[kept])
    assert torch.equal(restored["steps"], delta["steps"])
    assert restored["scalar"].item() == -0.75  # max(1, ceil(0.25)) = 1 entry kept
    float_entries = {
        name: math.ceil(0.25 * t.numel()) for name, t in delta.items() if name != "steps"
    }
    assert float_entries == {"weight": 10, "bias": 2, "scalar": 1, "zeros": 1}
    expected = sum(k * (4 + 4) for k in float_entries.values()) + 3 * 8
    assert nbytes(compressed) == expected


def test_topk_fraction_is_robust_to_round_off() -> None:
    # in floating point 0.07 * 100 is 7.000000000000001; seven entries are meant
    compressed = compress({"w": torch.arange(1.0, 101.0)}, "topk", fraction=0.07)
    assert compressed.tensors["w"]["indices"].numel() == 7
    assert torch.equal(decompress(compressed)["w"][:93], torch.zeros(93))


def test_int8_error_is_at_most_half_a_step() -> None:
    delta = make_delta()
    compressed = compress(delta, "int8")
    restored = decompress(compressed)
    for name, tensor in delta.items():
        parts = compressed.tensors[name]
        assert restored[name].shape == tensor.shape and restored[name].dtype == tensor.dtype
        if not tensor.is_floating_point():
            assert torch.equal(restored[name], tensor)
            continue
        assert parts["codes"].dtype == torch.int8 and parts["scale"].dtype == torch.float32
        scale = float(parts["scale"])
        error = (restored[name].double() - tensor.double()).abs().max()
        assert float(error) <= scale / 2 + 1e-6
    assert float(compressed.tensors["zeros"]["scale"]) == 1.0
    assert int(compressed.tensors["weight"]["codes"].abs().max()) == 127
    floating = [t for t in delta.values() if t.is_floating_point()]
    assert nbytes(compressed) == sum(t.numel() + 4 for t in floating) + 3 * 8


@pytest.mark.parametrize("method", ["none", "int8", "topk"])
def test_stacked_offsets_equal_each_model_bit_for_bit(method: str) -> None:
    from plural.core.batched_eval import stack_offsets, with_offset

    generator = torch.Generator().manual_seed(1)
    theta0 = {
        name: torch.randn(t.shape, generator=generator).to(t.dtype)
        for name, t in make_delta().items()
    }
    deltas = []
    for _ in range(5):
        delta = {
            name: torch.randn(t.shape, generator=generator).to(t.dtype)
            for name, t in theta0.items()
        }
        deltas.append(compress(delta, method, fraction=0.5))  # type: ignore[arg-type]
    stacked = stack_offsets(theta0, deltas)
    for c, compressed in enumerate(deltas):
        alone = with_offset(theta0, decompress(compressed))
        for name, tensor in alone.items():
            assert stacked[name].dtype == tensor.dtype
            assert torch.equal(stacked[name][c], tensor)
    if method == "none":  # the uncompressed deltas are read, not copied or changed
        view = decompress(deltas[0], copy=False)
        assert view["weight"].data_ptr() == deltas[0].tensors["weight"]["values"].data_ptr()


def test_a_memo_counts_shared_parts_once_and_the_same() -> None:
    shared = compress(make_delta(), "none")
    messages = [(shared, {"own": torch.zeros(4)}) for _ in range(3)]
    memo: dict[int, tuple[object, int]] = {}
    assert [nbytes(m, memo) for m in messages] == [nbytes(m) for m in messages]
    assert id(shared) in memo


def test_compress_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        compress(make_delta(), "topk", fraction=0.0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        compress(make_delta(), "topk", fraction=1.5)
    with pytest.raises(ValueError, match=r"method must be one of \['none', 'topk', 'int8'\]"):
        compress(make_delta(), "fp16")  # type: ignore[arg-type]


def test_helpful_features_keep_only_who_helps() -> None:
    scores = np.array([[2.0, -8.0, 1.0], [np.nan, 4.0, -1.0], [-3.0, -6.0, -2.0]])
    features = influence_features(scores, normalize="helpful")
    expected = np.array([[1.0, 0.0, 0.5], [np.nan, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(features, expected)


def test_peers_need_a_positive_score() -> None:
    row = np.array([-9.0, -1.0, -1.2, -10.0, 0.5])
    assert kmeans_peers(row, 4).tolist() == [False, False, False, False, True]
    assert kmeans_peers(row, 4, positive_only=False).tolist() == [False, True, True, False, True]


def test_fixed_clusters_gives_k_groups_by_first_appearance() -> None:
    rows = np.array([[5.0, 5.0], [0.0, 0.1], [5.1, 4.9], [0.1, 0.0], [np.nan, 5.0]])
    assert fixed_clusters(rows, 2).tolist() == [0, 1, 0, 1, 0]
    assert fixed_clusters(rows, 1).tolist() == [0] * 5
    assert fixed_clusters(rows, 5).tolist() == list(range(5))


# --------------------------------------------------------------------------- decentral agreement


def test_own_row_peers_is_the_whole_row_split_where_it_separates_helpful_peers() -> None:
    row = np.array([0.9, 1.1, 1.0, -3.0, -2.5, -3.2])
    np.testing.assert_array_equal(own_row_peers(row, 0), kmeans_peers(row, 0))
    np.testing.assert_array_equal(own_row_peers(row, 0), [1, 1, 1, 0, 0, 0])


def test_own_row_peers_looks_among_positive_scores_when_harmful_outliers_set_the_split() -> None:
    # One very harmful peer: the whole-row split only cuts it off, and its higher side holds
    # the near-zero scores of both signs; the rule splits the positive scores instead.
    row = np.array([0.0, 0.3, 0.28, 0.32, 0.02, -0.01, 0.01, -0.02, -3.0])
    whole = kmeans_peers(row, 0)
    assert whole[[4, 6]].all()  # positive near-zero scores pass the whole-row split
    np.testing.assert_array_equal(own_row_peers(row, 0), [1, 1, 1, 1, 0, 0, 0, 0, 0])


@pytest.mark.parametrize(
    ("draw", "n"),
    [("normal", 20), ("normal", 200), ("normal", 1000), ("student_t", 200), ("student_t", 1000)],
)
def test_row_modes_sees_one_mode_in_unimodal_noise(draw: str, n: int) -> None:
    # A client's group alone: one mode however many values (a split of unimodal values
    # gains less likelihood than its mixing weights and parameters cost). With 20 values a
    # heavy tail (Student t, 5 degrees) can set two outliers apart as a mode of their own.
    for seed in range(10):
        rng = np.random.default_rng(seed)
        values = rng.normal(size=n) if draw == "normal" else rng.standard_t(5, size=n)
        modes, centres = row_modes(values)
        assert len(centres) == 1 and not modes.any()


@pytest.mark.parametrize(
    ("sizes", "seed"), [((20, 20, 40), 0), ((50, 50, 100), 1), ((250, 250, 500), 2)]
)
def test_row_modes_sets_the_top_level_apart(sizes: tuple[int, int, int], seed: int) -> None:
    # The row of a client in the "mixed" federation: its group, a group that helps a little,
    # the rest (levels about 4 standard deviations apart, as measured within rows).
    rng = np.random.default_rng(seed)
    levels = np.repeat([0.06, 0.014, -0.03], sizes)
    values = levels + 0.01 * rng.standard_normal(len(levels))
    order = rng.permutation(len(values))
    modes, centres = row_modes(values[order])
    assert len(centres) >= 3 and np.all(np.diff(centres) > 0)
    truth = np.repeat([2, 1, 0], sizes)[order]
    top = modes == len(centres) - 1  # the client's group: what its first choice keeps
    assert (truth[top] == 2).mean() >= 0.98 and top[truth == 2].mean() >= 0.9


@pytest.mark.parametrize("seed", range(5))
def test_a_small_top_mode_is_two_or_more_clear_helpers_never_one_outlier(seed: int) -> None:
    # 297 peers around -0.005 (sd 0.015) and a client's 2 group mates near 0.075: the mates'
    # centre. Gaussian noise alone, or with one high value, has no small top mode. (Heavy
    # tails can give one: Student t with 5 degrees on 73 of 200 rows; see the docstring.)
    rng = np.random.default_rng(seed)
    bulk = -0.005 + 0.015 * rng.standard_normal(297)
    mates = np.array([0.073, 0.078])
    centre = _small_top_mode(np.sort(np.concatenate([bulk, mates])), most=14)
    assert centre == pytest.approx(mates.mean())
    assert math.isnan(_small_top_mode(np.sort(np.append(bulk, 0.08)), most=14))
    assert math.isnan(_small_top_mode(np.sort(bulk), most=14))


def test_row_modes_degenerate_inputs() -> None:
    modes, centres = row_modes(np.array([]))
    assert len(modes) == 0 and len(centres) == 0
    modes, centres = row_modes(np.array([0.3]))
    assert modes.tolist() == [0] and centres.tolist() == [0.3]
    modes, centres = row_modes(np.full(12, 0.2))  # identical values: one mode
    assert not modes.any() and centres.tolist() == pytest.approx([0.2])
    # Two exact levels: two modes, whatever the variance floor.
    modes, centres = row_modes(np.array([1.0] * 6 + [0.0] * 6))
    assert modes.tolist() == [1] * 6 + [0] * 6 and centres.tolist() == [0.0, 1.0]


def test_own_row_peers_keeps_the_top_mode_where_a_group_helps_a_little() -> None:
    # 2-means puts the group that helps a little on the helpful side; the top mode does not.
    rng = np.random.default_rng(0)
    levels = np.repeat([0.06, 0.014, -0.03], [30, 30, 60])
    row = levels + 0.01 * rng.standard_normal(len(levels))
    own, split = own_row_peers(row, 0), helpful_side(row, 0)
    group = levels == 0.06
    assert own[~group].sum() == 0 and own[group].mean() >= 0.9
    assert split[levels == 0.014].mean() > 0.5  # the 2-means rule keeps most of the other group
    # A row with one mode is the 2-means rule's.
    flat = 0.05 * rng.standard_normal(40)
    np.testing.assert_array_equal(own_row_peers(flat, 3), helpful_side(flat, 3))


def test_own_row_peers_keeps_everyone_where_everyone_helps() -> None:
    # An IID federation: one mode, every score positive (0.064 +- 0.021, as measured).
    rng = np.random.default_rng(0)
    row = 0.064 + 0.021 * rng.standard_normal(200)
    row[row <= 0] = 0.01
    np.testing.assert_array_equal(own_row_peers(row, 3), np.ones(200, dtype=bool))
    # A weak group signal: one mode too, but about half the scores negative: split as before.
    weak = 0.05 * rng.standard_normal(200)
    np.testing.assert_array_equal(own_row_peers(weak, 3), helpful_side(weak, 3))


@pytest.mark.parametrize(("n", "seed"), [(50, 0), (200, 1), (500, 2)])
def test_agreement_keeps_one_neighbourhood_where_everyone_chose_nearly_everyone(
    n: int, seed: int
) -> None:
    # Each client chose each other with probability 0.95: the shares are all high, and a
    # 2-means split of them cut noise (200 IID clients: 90 neighbourhoods).
    rng = np.random.default_rng(seed)
    first = rng.random((n, n)) < 0.95
    np.fill_diagonal(first, True)
    assert agreed_peers(first).all()
    # From the rows themselves: every score positive, one mode (an IID federation).
    scores = np.abs(0.064 + 0.021 * rng.standard_normal((n, n)))
    chosen = np.array([own_row_peers(scores[i], i) for i in range(n)])
    assert agreed_peers(chosen).all()


def test_own_row_peers_rejects_a_bad_index() -> None:
    with pytest.raises(ValueError, match="self_index 5 out of range"):
        own_row_peers(np.zeros(3), 5)


def _noisy_choices(
    sizes: list[int], hit: float, false: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """First choices: each client picks each group mate with probability ``hit`` and each
    other client with probability ``false``."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    same = groups[:, None] == groups[None, :]
    choices = rng.random(same.shape) < np.where(same, hit, false)
    np.fill_diagonal(choices, True)
    return choices, groups


@pytest.mark.parametrize(("sizes", "seed"), [([25] * 4, 0), ([250] * 4, 1), ([60, 20, 8, 4], 2)])
def test_agreed_peers_purifies_noisy_first_choices(sizes: list[int], seed: int) -> None:
    # First choices about as noisy as measured on weak-signal rows (purity about 0.75).
    choices, groups = _noisy_choices(sizes, hit=0.4, false=0.05, seed=seed)
    before = neighbourhood_quality(choices, groups)
    peers = agreed_peers(choices)
    after = neighbourhood_quality(peers, groups)
    assert before["purity"] < 0.85
    assert after["purity"] >= 0.98 and after["recall"] > before["recall"]
    _assert_mutual_but_for_followers(peers)


def _assert_mutual_but_for_followers(peers: np.ndarray) -> None:
    """Pairs are mutual, but for clients with no mutual peer, who follow one way."""
    assert peers.diagonal().all()
    one_way = peers & ~peers.T
    mutual = peers & peers.T
    assert (mutual[one_way.any(axis=1)].sum(axis=1) == 1).all()


@pytest.mark.parametrize(("size", "seed"), [(25, 0), (25, 1), (250, 2)])
def test_decentral_neighbourhoods_leave_out_a_group_that_helps_a_little(
    size: int, seed: int
) -> None:
    # the "mixed" federation: groups 0 and 1 (and 2 and 3) share a rotation, help a little
    scores, groups = related_groups(size, seed, related=0.014, noise=0.01)
    rows = range(len(groups))
    first = np.array([own_row_peers(scores[i], i) for i in rows])
    split = np.array([helpful_side(scores[i], i) for i in rows])
    agreed = neighbourhood_quality(agreed_peers(first), groups)
    assert agreed["purity"] >= 0.98 and agreed["recall"] >= 0.95
    # The 2-means first choice keeps the half-related group, and the agreement joins them.
    assert neighbourhood_quality(agreed_peers(split), groups)["purity"] < 0.6


def test_upper_tier_is_the_higher_half_of_the_peers_without_the_client() -> None:
    row = np.array([9.0, 0.3, 0.1, 0.5, 0.2, -1.0, 0.4])
    peers = np.array([True, True, True, True, True, False, True])
    # 5 peers besides client 0: the upper 3 by score (0.5, 0.4, 0.3); never client 0 itself
    np.testing.assert_array_equal(upper_tier(row, peers, 0), [0, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(upper_tier(row, np.eye(7, dtype=bool)[0], 0), np.zeros(7))
    ties = upper_tier(np.zeros(5), np.ones(5, dtype=bool), 2)  # ties: column order
    np.testing.assert_array_equal(ties, [1, 1, 0, 0, 0])


def _decentral(scores: np.ndarray, tiers: bool) -> np.ndarray:
    rows = range(len(scores))
    first = np.array([own_row_peers(scores[i], i) for i in rows])
    upper = np.array([upper_tier(scores[i], first[i], i) for i in rows]) if tiers else None
    return agreed_peers(first, None, upper)


@pytest.mark.parametrize(
    ("sizes", "seed"), [([90, 6, 100, 104], 0), ([90, 6, 100, 104], 1), ([180, 10, 60], 2)]
)
def test_a_small_group_related_to_a_large_one_is_set_apart_by_the_upper_tiers(
    sizes: list[int], seed: int
) -> None:
    scores, groups = small_related_group(sizes, seed, helpers=0.003)
    without = neighbourhood_quality(_decentral(scores, tiers=False), groups)
    peers = _decentral(scores, tiers=True)
    with_tiers = neighbourhood_quality(peers, groups)
    # Without the tiers the small group joins the large one (and the large one takes it in).
    assert without["purity"] < 0.97
    assert with_tiers["purity"] >= 0.99 and with_tiers["recall"] >= 0.95
    _assert_mutual_but_for_followers(peers)


@pytest.mark.parametrize(("sizes", "seed"), [([150, 100], 0), ([40, 40, 40], 1), ([500], 2)])
def test_upper_tiers_split_no_one_group_neighbourhood(sizes: list[int], seed: int) -> None:
    # Clients that help everyone more or less (strong column effects) are held by few upper
    # tiers, but they do not hold each other: nothing is split off.
    scores, groups = small_related_group([*sizes[:1], 0, *sizes[1:]], seed, helpers=0.008)
    peers = _decentral(scores, True)
    np.testing.assert_array_equal(peers, _decentral(scores, False))
    if len(sizes) > 1:  # (one group alone: no contrast, the first choices are noise modes)
        assert neighbourhood_quality(peers, groups)["purity"] == 1.0


def test_split_off_subgroups_reductions() -> None:
    groups = np.repeat(np.arange(3), [6, 2, 5])
    exact = groups[:, None] == groups[None, :]
    # No tier holds anyone, or every tier holds everyone: no subgroup.
    none, every = np.zeros_like(exact), ~np.eye(13, dtype=bool)
    np.testing.assert_array_equal(split_off_subgroups(exact, none).toarray(), exact)
    np.testing.assert_array_equal(split_off_subgroups(exact, every).toarray(), exact)
    # One neighbourhood of 20 whose last 3 members hold only each other and two of the 17,
    # and whom none of the 17 holds: held by 2 of 19 against a median of 16 of 19.
    everyone = np.ones((20, 20), dtype=bool)
    tiers = np.zeros((20, 20), dtype=bool)
    tiers[:17, :17] = tiers[17:, 17:] = True
    tiers[17:, :2] = True
    np.fill_diagonal(tiers, False)
    kept = split_off_subgroups(everyone, tiers).toarray()
    side = np.arange(20) >= 17
    np.testing.assert_array_equal(kept, side[:, None] == side[None, :])
    # Held as often, but not by each other: clients that help everyone little stay.
    weak = tiers.copy()
    weak[17:, 17:] = False
    np.testing.assert_array_equal(split_off_subgroups(everyone, weak).toarray(), everyone)
    # A voter without an opinion on a candidate does not count against it.
    asked = np.ones((20, 20), dtype=bool)
    asked[:17, 17:] = False  # the 17 never scored the 3
    np.testing.assert_array_equal(split_off_subgroups(everyone, tiers, asked).toarray(), everyone)


def test_standout_peers_are_a_few_clear_helpers_at_the_top_of_a_row() -> None:
    rng = np.random.default_rng(0)
    row = -0.006 + 0.014 * rng.standard_normal(300)
    row[[10, 20]] = [0.081, 0.063]  # the 2 mates of a client of a group of 3 (measured)
    row[0] = np.nan  # its own entry is never a standout
    assert row_modes(np.delete(row, 0))[1].size == 1  # one mode: they stay in the bulk
    np.testing.assert_array_equal(np.flatnonzero(standout_peers(row, 0)), [10, 20])
    # None: one value alone, a top part larger than 5% of the row, or a negative one.
    single = row.copy()
    single[20] = -0.006
    assert not standout_peers(single, 0).any()
    wide = np.where(np.arange(300) < 40, 0.07, -0.006) + 0.005 * rng.standard_normal(300)
    assert not standout_peers(wide, 299).any()
    assert not standout_peers(row - 1.0, 0).any()


def test_pair_lone_clients_pairs_only_clients_alone_that_single_each_other_out() -> None:
    peers = np.eye(6, dtype=bool)
    peers[0, 1] = peers[1, 0] = True  # 0 and 1 are peers; 2-5 are alone
    standout = np.zeros((6, 6), dtype=bool)
    standout[2, 3] = standout[3, 2] = True  # mutual: paired
    standout[4, 5] = True  # one way only: not paired
    standout[4, 0] = standout[0, 4] = True  # 0 is not alone, but 4 is: paired
    got = pair_lone_clients(peers, standout).toarray().astype(bool)
    expected = peers.copy()
    for a, b in [(2, 3), (4, 0)]:
        expected[a, b] = expected[b, a] = True
    np.testing.assert_array_equal(got, expected)
    # Nothing standing out: the neighbourhoods as they were.
    none = pair_lone_clients(peers, np.zeros_like(peers)).toarray().astype(bool)
    np.testing.assert_array_equal(none, peers)


_UNEQUAL_SCORES = Path(__file__).parent / "golden" / "unequal300_scores.npz"


def unequal_scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A decentral run's score matrix (float32) and true groups on the "unequal" label-swap
    federation: 300 clients in groups of 150, 90, 36, 15, 6 and 3, 30 rounds
    (`benchmarks/clustering_scale.py --sizes 300 --federations unequal --methods "pFedLIA
    decentral" --seeds 1 2 --save-scores`)."""
    saved = np.load(_UNEQUAL_SCORES)
    return saved[f"seed{seed}_scores"].astype(np.float64), saved[f"seed{seed}_groups"]


def _marked(scores: np.ndarray, upper: bool, standout: bool) -> dict[str, float]:
    rows = range(len(scores))
    first = np.array([own_row_peers(scores[i], i) for i in rows])
    tiers = np.array([upper_tier(scores[i], first[i], i) for i in rows]) if upper else None
    top = np.array([standout_peers(scores[i], i) for i in rows]) if standout else None
    return agreed_peers(first, None, tiers, top)


def test_on_real_scores_the_tiers_set_a_related_group_of_6_apart() -> None:
    scores, groups = unequal_scores(2)  # the 6 of group 4 share most labels with group 1
    plain = neighbourhood_quality(_marked(scores, False, False), groups)
    tiers = neighbourhood_quality(_marked(scores, True, False), groups)
    assert plain["purity"] < 0.97  # measured 0.962: group 4 inside group 1's neighbourhood
    assert tiers["purity"] == 1.0 and tiers["recall"] >= plain["recall"]


def test_on_real_scores_clients_of_tiny_groups_find_their_mates() -> None:
    # Voting with the peers kept so far left 11 clients of the groups of 15, 6 and 3 alone
    # (recall 0.948; standouts paired most: 0.984); first-choice votes keep them all.
    scores, groups = unequal_scores(1)
    peers = _marked(scores, False, False)
    small = groups >= 3
    assert (peers.sum(axis=1) == 1)[small].sum() == 0
    quality = neighbourhood_quality(peers, groups)
    assert quality["purity"] == 1.0 and quality["recall"] >= 0.99
    # Both marks together keep each one's gain (seed 2 holds the related group of 6).
    scores, groups = unequal_scores(2)
    both = neighbourhood_quality(_marked(scores, True, True), groups)
    assert both["purity"] == 1.0 and both["recall"] >= 0.99


def test_clients_left_alone_follow_the_neighbourhood_of_their_first_choices() -> None:
    # Two groups of 20. Client 0 chooses its mates, but only 4 of them choose it: the
    # agreement leaves it alone, and it follows its group one way. Client 40 chose 10 of each group
    # (no majority) and client 41 chose 5 of group 1, which never chose it (chance): both
    # stay alone.
    groups = np.repeat([0, 1, 2, 3], [20, 20, 1, 1])
    choices = (groups[:, None] == groups[None, :]) & (groups[:, None] < 2)
    choices[:, 0] = False
    choices[1:5, 0] = True
    choices[0, :20] = True
    choices[40, 1:11] = choices[40, 20:30] = True
    choices[41, 20:25] = True
    np.fill_diagonal(choices, True)
    peers = agreed_peers(choices)
    np.testing.assert_array_equal(np.flatnonzero(peers[0]), np.arange(20))
    assert not peers[1:, 0].any()  # one way: the group does not take client 0's update
    assert peers[40].sum() == peers[41].sum() == 1
    _assert_mutual_but_for_followers(peers)
    # Where no mate chooses client 0 (chance, as far as the group's choices tell), it stays
    # alone.
    choices[1:5, 0] = False
    assert agreed_peers(choices)[0].sum() == 1


def _pair_beside_a_clique() -> tuple[np.ndarray, np.ndarray]:
    """Agreed peers and first choices: clients 0 and 1 are each other's only peer; 2-31 a
    clique that chooses each other and, a third of them, 0 and 1; 32-41 another clique.
    0 and 1 chose 2-31 and each other."""
    n = 42
    peers = np.zeros((n, n), dtype=bool)
    peers[2:32, 2:32] = peers[32:, 32:] = True
    peers[0, 1] = peers[1, 0] = True
    np.fill_diagonal(peers, True)
    choices = peers.copy()
    choices[0:2, 2:32] = True
    choices[2:12, 0:2] = True
    return peers, choices


def test_a_client_with_few_peers_it_ranks_no_higher_follows_its_first_choices() -> None:
    peers, choices = _pair_beside_a_clique()
    upper = np.zeros_like(peers)
    upper[0, 2:32:2] = True  # half of the clique, not its one peer: a fragment of the clique
    upper[1, 0] = True  # client 1 ranks its one peer above the clique: a group of its own
    upper[1, 2:5] = True
    got = follow_first_choices(peers, choices, upper).toarray().astype(bool)
    np.testing.assert_array_equal(np.flatnonzero(got[0]), np.arange(32))
    assert not got[2:, 0].any()  # one way
    np.testing.assert_array_equal(got[1:], peers[1:])
    # Without tiers only clients with no peer follow.
    np.testing.assert_array_equal(follow_first_choices(peers, choices).toarray(), peers)


def test_share_lower_bound_discounts_few_votes() -> None:
    yes, votes = np.array([1.0, 20.0, 0.0, 0.0, 500.0]), np.array([1.0, 20.0, 5.0, 0.0, 1000.0])
    bound = _share_lower_bound(yes, votes)
    assert bound[0] < 0.6 < bound[1] < 1.0  # 1 of 1 counts for less than 20 of 20
    assert bound[2] == pytest.approx(0.0) and math.isnan(bound[3])  # no voter: no share
    assert bound[4] == pytest.approx(0.5, abs=0.02)  # many votes: about the share itself


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_with_few_peers_scored_does_not_grow_into_other_groups(seed: int) -> None:
    # 4 groups of 50, each client scores 20 random peers and chooses 90% of the group mates it
    # scored and 5% of the strangers. A candidate is often judged by one or two voters; with
    # the raw yes-share the neighbourhoods grew into other groups (purity 0.25-0.40).
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(4), 50)
    n = len(groups)
    scored = np.zeros((n, n), dtype=bool)
    for i in range(n):
        scored[i, rng.choice(np.delete(np.arange(n), i), 20, replace=False)] = True
    same = groups[:, None] == groups[None, :]
    first = scored & (rng.random((n, n)) < np.where(same, 0.9, 0.05))
    after = neighbourhood_quality(agreed_peers(first, scored), groups)
    assert after["purity"] >= 0.85 and after["recall"] >= 0.8


def test_agreed_peers_keeps_exact_groups() -> None:
    groups = np.repeat(np.arange(3), [5, 3, 7])
    exact = groups[:, None] == groups[None, :]
    np.testing.assert_array_equal(agreed_peers(exact), exact)


def test_agreed_peers_votes_only_on_what_voters_scored() -> None:
    # 4 groups of 25, each client scores 20 random others and picks its scored group mates:
    # group mates no client scored itself are reached through its peers' votes.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 25)
    n = len(groups)
    scored = np.zeros((n, n), dtype=bool)
    for i in range(n):
        scored[i, rng.choice(np.delete(np.arange(n), i), 20, replace=False)] = True
    choices = scored & (groups[:, None] == groups[None, :])
    first = neighbourhood_quality(choices | np.eye(n, dtype=bool), groups)
    peers = agreed_peers(choices, scored)
    after = neighbourhood_quality(peers, groups)
    assert first["recall"] < 0.3
    assert after["purity"] == 1.0 and after["recall"] > 0.8
    # Counting unscored candidates as "no" votes loses them instead.
    assert neighbourhood_quality(agreed_peers(choices), groups)["recall"] < after["recall"]


def test_lazy_deltas_of_mixed_dtypes_are_evaluated_one_by_one() -> None:
    from plural.core.batched_eval import stack_offsets

    theta0 = {"w": torch.zeros(3)}
    deltas = [
        compress({"w": torch.ones(3)}, "none"),
        compress({"w": torch.ones(3).double()}, "none"),
    ]
    with pytest.raises(NotImplementedError, match="dtype"):  # evaluate_offsets then falls back
        stack_offsets(theta0, deltas)
    scalar = stack_offsets(
        {"s": torch.tensor(1.0, dtype=torch.float64)}, [compress({"s": torch.tensor(1e-9)}, "none")]
    )
    assert scalar["s"].dtype == torch.float64 and float(scalar["s"][0]) == 1.0 + float(
        torch.tensor(1e-9)
    )
