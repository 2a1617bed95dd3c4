"""Lazy-influence helpers for pFedLIA: scores, private votes, clustering, compressed updates.

pFedLIA (Rokvic, Danassis, Faltings 2025, "Lazy But Effective: Collaborative Personalized
Federated Learning with Heterogeneous Data", arXiv:2505.02540) lets every client find the
clients whose data helps it before models are aggregated. It builds on the *lazy influence*
of Rokvic, Danassis, Karimireddy, Faltings ("LIA: Privacy-Preserving Data Quality Evaluation
in Federated Learning Using a Lazy Influence Approximation", arXiv:2205.11518): instead of
retraining with and without someone's data, client ``j`` trains the shared model ``theta0``
for only a few local steps ("lazily") and ships the result ``theta_j``; client ``i`` then
measures how much that cheap model changes the loss on its own validation data.

Everything here works on the resulting score matrix ``S`` of shape ``(N, N)`` (float64)::

    S[i, j] = L_i(theta0) - L_i(theta_j)

the drop in client ``i``'s validation loss brought by ``j``'s lazily trained model. A
positive score means ``j`` helps ``i``; ``NaN`` means ``i`` did not score ``j``. Row ``i`` is
``i``'s view of the federation, so clients with similar data have similar rows. pFedLIA
keeps ``S`` sparse (:mod:`plural.core.sparse_scores`: only the scored entries); the decentral
helpers below take scipy sparse matrices as well as dense arrays, and the central ones
(OPTICS on row distances) dense arrays.

The helpers are pure (inputs are never mutated) and deterministic given their arguments:

* :func:`influence_features` turns scores into clustering features (row scaling, symmetry).
* :func:`sign_votes`, :func:`randomized_response`, :func:`keep_probability` and
  :func:`row_epsilon` reduce scores to ±1 votes and release them with local differential
  privacy, as the lazy-influence paper does with its obfuscated votes.
* :func:`client_distances`, :func:`optics_fit`, :func:`absorptions_the_rows_confirm`,
  :func:`split_unalike_clusters`, :func:`merge_alike_clusters`,
  :func:`move_misplaced_clients` and :func:`settled_clusters` are the central rule: a server
  clusters the rows with OPTICS, without being told the number of clusters, keeps the
  placements of left-out clients their rows confirm, splits clusters whose halves score each
  other low, merges clusters whose members score each other as highly as their mates, then
  moves clients that another cluster serves better and merges once more.
* :func:`row_modes`, :func:`own_row_peers`, :func:`helpful_side`, :func:`kmeans_peers`,
  :func:`agreed_peers` and :func:`mutual_components` are the decentral rule: every client
  keeps as its first choice the top mode of its own row (or, where the row has one mode, the
  helpful side of a 1-D 2-means split); then keeps the candidates most of its peers chose
  first, if they keep it too; :func:`upper_tier` and :func:`split_off_subgroups` set a
  small related group apart from a large one; :func:`standout_peers` and
  :func:`pair_lone_clients` pair the members of tiny groups the agreement left alone, and
  :func:`follow_first_choices` lets a client alone or in a small neighbourhood follow its
  first choices' neighbourhood one way; mutual peers form groups.
* :func:`neighbourhood_quality` and :func:`rank_correlation` are diagnostics against the
  true groups or a reference score matrix.
* Compressing the lazy update that travels between clients is
  :mod:`plural.core.compression`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from scipy.sparse import csr_matrix, identity, issparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import spearmanr
from sklearn.cluster import OPTICS, AgglomerativeClustering
from sklearn.metrics.pairwise import nan_euclidean_distances

__all__ = [
    "NoisePolicy",
    "Normalize",
    "OpticsFit",
    "absorptions_the_rows_confirm",
    "agreed_peers",
    "client_distances",
    "fixed_clusters",
    "helpful_side",
    "influence_features",
    "keep_probability",
    "kmeans_peers",
    "merge_alike_clusters",
    "move_misplaced_clients",
    "mutual_components",
    "neighbourhood_quality",
    "optics_clusters",
    "optics_fit",
    "own_row_peers",
    "pair_lone_clients",
    "placed_noise",
    "randomized_response",
    "rank_correlation",
    "row_epsilon",
    "row_modes",
    "settled_clusters",
    "sign_votes",
    "split_off_subgroups",
    "split_unalike_clusters",
    "standout_peers",
    "upper_tier",
]

Normalize = Literal["none", "row", "helpful"]
NoisePolicy = Literal["own", "nearest"]

_KMEANS_MAX_ITER = 100


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming the allowed values if ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _as_matrix(array: np.ndarray, name: str, square: bool = False) -> np.ndarray:
    """``array`` as a 2-D float64 array (a copy), checking its shape."""
    matrix = np.array(array, dtype=np.float64)
    if matrix.ndim != 2 or (square and matrix.shape[0] != matrix.shape[1]):
        kind = "square 2-D" if square else "2-D"
        raise ValueError(f"{name} must be a {kind} array, got shape {matrix.shape}")
    return matrix


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` to 0..K-1 in order of first appearance (int64)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


# --------------------------------------------------------------------------- features


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Divide each row by its largest absolute finite entry (all-zero/empty rows unchanged)."""
    finite_abs = np.where(np.isfinite(matrix), np.abs(matrix), 0.0)
    scale = finite_abs.max(axis=1, initial=0.0)
    scale[scale == 0.0] = 1.0
    return matrix / scale[:, None]


def _symmetrize(matrix: np.ndarray) -> np.ndarray:
    """``(F + F.T) / 2`` where both are finite, the finite one where only one is, else NaN."""
    transposed = matrix.T
    mine, theirs = np.isfinite(matrix), np.isfinite(transposed)
    one_sided = np.where(mine, matrix, np.where(theirs, transposed, np.nan))
    return np.where(mine & theirs, (matrix + transposed) / 2.0, one_sided)


def influence_features(
    scores: np.ndarray, normalize: Normalize = "row", symmetrize: bool = False
) -> np.ndarray:
    """Clustering features from an influence matrix (a new float64 array).

    ``normalize="row"`` divides each row by its largest absolute finite entry, so that every
    client's scores are on the same scale (signs kept). ``normalize="helpful"`` first sets
    the negative scores to 0, so that a row says only who helps the client and how much,
    relative to its best helper (how strongly the others hurt it is left out: that mostly
    measures how far one lazy epoch on foreign data moves the model). ``symmetrize`` then averages
    ``F[i, j]`` and ``F[j, i]`` (one-sided entries are taken as they are).
    """
    _check_choice("normalize", normalize, get_args(Normalize))
    features = _as_matrix(scores, "scores", square=symmetrize)
    if normalize == "helpful":
        features = np.where(np.isnan(features), np.nan, np.clip(features, 0.0, None))
    if normalize in ("row", "helpful"):
        features = _normalize_rows(features)
    return _symmetrize(features) if symmetrize else features


# --------------------------------------------------------------------------- private votes


def sign_votes(scores: np.ndarray) -> np.ndarray:
    """+1.0 where a score is positive, -1.0 where it is not, NaN where it is NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), np.nan, np.where(scores > 0, 1.0, -1.0))


def _check_epsilon(epsilon: float) -> None:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")


def keep_probability(epsilon: float) -> float:
    """Probability ``e^eps / (1 + e^eps)`` that randomized response keeps a vote."""
    _check_epsilon(epsilon)
    return 1.0 / (1.0 + math.exp(-epsilon))


def randomized_response(votes: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Warner's randomized response: keep each ±1 vote w.p. ``keep_probability``, else flip.

    Every released vote is ``epsilon``-differentially private with respect to the true vote.
    Exactly one uniform is drawn per entry (``rng.random(votes.shape)``), NaN entries
    included, so results depend only on the generator's state; NaN stays NaN.
    """
    keep = keep_probability(epsilon)
    votes = np.asarray(votes, dtype=np.float64)
    finite = votes[~np.isnan(votes)]
    if not np.all(np.abs(finite) == 1.0):
        raise ValueError("votes must be +1.0, -1.0 or NaN (see sign_votes)")
    flip = rng.random(votes.shape) >= keep
    return np.where(flip, -votes, votes)


def row_epsilon(epsilon: float, votes_per_row: int) -> float:
    """Privacy cost of releasing ``votes_per_row`` votes (sequential composition)."""
    _check_epsilon(epsilon)
    if votes_per_row < 0:
        raise ValueError(f"votes_per_row must be >= 0, got {votes_per_row!r}")
    return float(votes_per_row * epsilon)


# --------------------------------------------------------------------------- central rule


def client_distances(features: np.ndarray) -> np.ndarray:
    """Symmetric distances between the rows of ``features``, NaN coordinates skipped.

    Uses :func:`sklearn.metrics.pairwise.nan_euclidean_distances` (non-finite coordinates
    count as missing). Two rows with no coordinate observed in common are put at twice the
    largest finite distance (1.0 when no distance is positive). Zero diagonal, float64.
    """
    matrix = _as_matrix(features, "features")
    matrix[~np.isfinite(matrix)] = np.nan
    if matrix.shape[0] == 0:
        return np.zeros((0, 0))
    distances = nan_euclidean_distances(matrix, matrix)
    unknown = np.isnan(distances)
    largest = float(distances[~unknown].max(initial=0.0))
    distances[unknown] = 2.0 * largest if largest > 0 else 1.0
    distances = (distances + distances.T) / 2.0
    np.fill_diagonal(distances, 0.0)
    return distances


def _noise_to_nearest(labels: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Give every noise point (-1) the label of its nearest non-noise point."""
    noise = labels == -1
    if noise.all():
        return _noise_to_own(labels)
    nearest = np.flatnonzero(~noise)[np.argmin(distances[np.ix_(noise, ~noise)], axis=1)]
    out = labels.copy()
    out[noise] = labels[nearest]
    return out


def _absorb_into_enclosing(optics: OPTICS, distances: np.ndarray) -> np.ndarray:
    """OPTICS's labels, with the points it leaves out of every leaf cluster although they lie
    inside a larger cluster of its hierarchy (not the one spanning everyone) given the label
    of the nearest labelled point of the smallest such cluster. scikit-learn labels only the
    leaves of the xi hierarchy, so a group whose reachability has a dip inside would
    otherwise lose its members outside the dip to noise. Points outside every cluster stay
    noise (-1)."""
    labels = optics.labels_.astype(np.int64)
    n = len(labels)
    position = np.empty(n, dtype=np.int64)
    position[optics.ordering_] = np.arange(n)
    spans = [(int(e - s), int(s), int(e)) for s, e in optics.cluster_hierarchy_ if e - s + 1 < n]
    out = labels.copy()
    for point in np.flatnonzero(labels == -1):
        enclosing = [span for span in spans if span[1] <= position[point] <= span[2]]
        if not enclosing:
            continue
        _, start, end = min(enclosing)
        members = optics.ordering_[start : end + 1]
        labelled = members[labels[members] >= 0]
        if len(labelled):
            out[point] = labels[labelled[np.argmin(distances[point, labelled])]]
    return out


def _noise_to_own(labels: np.ndarray) -> np.ndarray:
    """Give every noise point (-1) a singleton label of its own."""
    out = labels.copy()
    noise = np.flatnonzero(labels == -1)
    out[noise] = labels.max(initial=-1) + 1 + np.arange(len(noise))
    return out


class OpticsFit(NamedTuple):
    """What :func:`optics_fit` finds: OPTICS's leaf labels (-1: noise), the same with the
    points inside a larger cluster of its hierarchy placed (:func:`_absorb_into_enclosing`),
    and the row distances it ran on."""

    leaves: np.ndarray
    absorbed: np.ndarray
    distances: np.ndarray


def optics_fit(features: np.ndarray, min_samples: int = 2, xi: float = 0.05) -> OpticsFit:
    """OPTICS (xi method) on :func:`client_distances` of the rows of ``features``."""
    if min_samples < 2:
        raise ValueError(f"min_samples must be >= 2, got {min_samples!r}")
    distances = client_distances(features)
    n = distances.shape[0]
    if n <= 1:
        labels = np.zeros(n, dtype=np.int64)
        return OpticsFit(labels, labels, distances)
    optics = OPTICS(
        metric="precomputed", min_samples=min(min_samples, n), xi=xi, cluster_method="xi"
    )
    with np.errstate(divide="ignore", invalid="ignore"):  # identical rows: zero reachability
        optics.fit(distances)
    leaves = optics.labels_.astype(np.int64)
    return OpticsFit(leaves, _absorb_into_enclosing(optics, distances), distances)


def placed_noise(labels: np.ndarray, distances: np.ndarray, noise: NoisePolicy) -> np.ndarray:
    """``labels`` with its noise (-1) placed: each a singleton (``noise="own"``) or in the
    cluster of its nearest non-noise point (``"nearest"``; singletons if all are noise);
    int64 labels 0..K-1 in order of first appearance."""
    _check_choice("noise", noise, get_args(NoisePolicy))
    placed = _noise_to_nearest(labels, distances) if noise == "nearest" else _noise_to_own(labels)
    return _first_appearance(placed)


def optics_clusters(
    features: np.ndarray, min_samples: int = 2, xi: float = 0.05, noise: NoisePolicy = "own"
) -> np.ndarray:
    """Cluster the rows of ``features`` with OPTICS (:func:`optics_fit`); the number of
    clusters is found by OPTICS, the points it calls noise placed by :func:`placed_noise`."""
    _check_choice("noise", noise, get_args(NoisePolicy))
    fit = optics_fit(features, min_samples, xi)
    return placed_noise(fit.absorbed, fit.distances, noise)


def _checked(
    scores: np.ndarray, labels: np.ndarray, share: float, placed: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The score matrix (float64) and a copy of ``labels`` (int64) of a central clustering
    step, after checking a square matrix, one label per row, labels >= 0 if ``placed`` (-1,
    noise, is allowed only before placement) and a share above 0."""
    matrix = _as_matrix(scores, "scores", square=True)
    labels = np.array(labels, dtype=np.int64)
    if labels.shape != (len(matrix),):
        raise ValueError(f"labels must have one entry per row of scores, got {labels.shape}")
    if placed and len(labels) and labels.min() < 0:
        raise ValueError(
            "labels must be >= 0 (every client in a cluster); place the clients left out as "
            f"noise first (placed_noise), got {int(labels.min())}"
        )
    if not share > 0:
        raise ValueError(f"share must be > 0, got {share!r}")
    return matrix, labels


def absorptions_the_rows_confirm(
    scores: np.ndarray, fit: OpticsFit, share: float = 0.6
) -> np.ndarray:
    """``fit.absorbed`` where each client that OPTICS left out of its leaves keeps the leaf
    :func:`_absorb_into_enclosing` gave it only if its own row confirms it: the mean score
    it gives that leaf's members (how much they help it) is positive and at least ``share``
    times the centre of the top mode of its mutual scores (what it and its closest peers
    give each other, as in :func:`_singleton_references`); else it goes back to noise (-1).

    Row distance alone is no evidence that a far point belongs with its nearest leaf: in a
    federation with label-noise clients, two clean pairs (whose other group members were
    noisy) sat at reachability 1.3-1.5 (0.04-0.08 inside the leaves) in an enclosing cluster
    of 16 of 20 clients and were placed with the noisy clients, whose models hurt them
    (mean score -1.1). The row, not the mutual score, is asked: a client whose own lazy
    model is poor (it hurts even itself) is still helped by its group (class pairs, 200
    clients: 0.37-0.58 against 0.66 within the group) and belongs there."""
    matrix, labels = _checked(scores, fit.absorbed, share, placed=False)
    mutual = _symmetrize(matrix)
    for client in np.flatnonzero((fit.leaves == -1) & (fit.absorbed >= 0)):
        mates = np.flatnonzero(fit.leaves == fit.absorbed[client])
        given = matrix[client, mates]
        given = given[np.isfinite(given)]
        helped = float(given.mean()) if len(given) else math.nan
        best = _top_mode_centre(np.delete(mutual[client], client))
        if not (helped > 0 and helped >= share * best):
            labels[client] = -1
    return labels


_SMALLEST_PART = 2


def split_unalike_clusters(
    scores: np.ndarray, labels: np.ndarray, share: float = 0.6
) -> np.ndarray:
    """Split every cluster whose two halves :func:`merge_alike_clusters` would not join.

    Each cluster of 4 or more is cut in two by average linkage on its members' mutual scores
    (:func:`_symmetrize`); if both parts hold at least 2 clients and their mean score across
    is below ``share`` times their pooled mean within, the cut stands and both parts are
    checked again. Row distances put two small groups in one OPTICS leaf when the groups are
    small against the federation (20 groups of 3: 2 of 20 leaves held two groups), while the
    scores between the groups are as low as between any others. Parts of one client are not
    cut off: a client whose lazy model hurts its group is helped by it (see
    :func:`absorptions_the_rows_confirm`) and belongs with it. Labels 0..K-1 by first
    appearance."""
    matrix, labels = _checked(scores, labels, share)
    mutual = _symmetrize(matrix)
    np.fill_diagonal(mutual, np.nan)
    pending = [int(c) for c in np.unique(labels)]
    while pending:
        label = pending.pop()
        members = np.flatnonzero(labels == label)
        part = _two_part_cut(mutual[np.ix_(members, members)], share)
        if part is not None:
            new_label = int(labels.max()) + 1
            labels[members[part]] = new_label
            pending += [label, new_label]
    return _first_appearance(labels)


def _two_part_cut(mutual: np.ndarray, share: float) -> np.ndarray | None:
    """For one cluster's mutual scores (NaN diagonal): the members of the second part of an
    average-linkage cut in two (a bool mask), if the parts are unalike
    (:func:`split_unalike_clusters`); else None."""
    size = len(mutual)
    if size < 2 * _SMALLEST_PART:
        return None
    known = np.isfinite(mutual)
    similarity = np.where(known, mutual, np.nanmean(mutual) if known.any() else 0.0)
    distance = similarity.max() - similarity
    np.fill_diagonal(distance, 0.0)
    model = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average")
    second = model.fit_predict(distance) == 1
    if min(second.sum(), size - second.sum()) < _SMALLEST_PART:
        return None
    values = np.where(known, mutual, 0.0)
    same = second[:, None] == second[None, :]
    within = values[same].sum() / max(known[same].sum(), 1)
    across = values[~same].sum() / max(known[~same].sum(), 1)
    return second if within > 0 and across < share * within else None


def _membership(labels: np.ndarray) -> np.ndarray:
    """The (N, K) 0/1 matrix of which client is in which cluster (labels 0..K-1)."""
    onehot = np.zeros((len(labels), int(labels.max(initial=-1)) + 1))
    onehot[np.arange(len(labels)), labels] = 1.0
    return onehot


def merge_alike_clusters(scores: np.ndarray, labels: np.ndarray, share: float = 0.6) -> np.ndarray:
    """Merge clusters whose members help each other about as much as they help their own
    cluster mates.

    OPTICS on score rows cuts a large group into pieces: the noise of N coordinates adds up,
    so distances inside a group of 50 vary as much as the gaps OPTICS looks for. The scores
    themselves do not: two pieces of one group score each other as highly as each scores
    itself, while distinct groups score each other far lower (rotated MNIST, 200 clients:
    within 0.09, across groups 0.01; fortunes: English and German 0.10 and 0.11 within,
    -0.04 across). Clusters ``a`` and ``b`` merge when the mean finite score between them
    (both directions) is at least ``share`` times their pooled mean score within (all
    within-cluster pairs of both, off the diagonal), best pair first, until no pair
    qualifies. A singleton is compared with the other cluster's mean within; two singletons
    with the higher centre of their mutual rows' top modes (:func:`_singleton_references`:
    what each gives and gets from the clients it helps most alike). Two clusters whose
    members do not help each other (pooled within <= 0) never merge. Labels 0..K-1 by first
    appearance.

    Pooled, not the higher of the two: a pair's mean within is two scores, and a pair of one
    group of 50 that formed on a high draw (2.76 and 0.95 against 1.02 for the group) then
    never joined its group under the higher-of-two reference.

    Singletons must be able to pair up: where OPTICS leaves most of a group's members alone
    (20 groups of 50 at 1,000 clients, synthetic block matrices at the measured noise), no
    cluster of the group exists to take them, and without pairing ARI stayed at 0.66-0.82;
    with it 0.98 (benchmarks/README.md, "Singletons").
    """
    matrix, labels = _checked(scores, labels, share)
    finite = np.isfinite(matrix)
    np.fill_diagonal(finite, False)
    onehot = _membership(labels)
    sums = onehot.T @ np.where(finite, matrix, 0.0) @ onehot  # sums[a, b]: i in a scores j in b
    counts = onehot.T @ finite.astype(np.float64) @ onehot
    alone = _singleton_references(matrix, labels, onehot.shape[1])
    while True:
        pair = _most_alike_pair(sums, counts, alone, share)
        if pair is None:
            return _first_appearance(labels)
        a, b = pair
        for table in (sums, counts):
            table[a] += table[b]
            table[:, a] += table[:, b]
            table[b], table[:, b] = 0.0, 0.0
        alone[[a, b]] = np.nan
        labels[labels == b] = a


def settled_clusters(scores: np.ndarray, labels: np.ndarray, share: float = 0.6) -> np.ndarray:
    """The last steps of the central rule: alike clusters merged
    (:func:`merge_alike_clusters`), misplaced clients moved (:func:`move_misplaced_clients`;
    after the merge, so that a client's true mates are one cluster to move to), and alike
    clusters merged again."""
    labels = merge_alike_clusters(scores, labels, share)
    return merge_alike_clusters(scores, move_misplaced_clients(scores, labels, share), share)


_MOVE_PASSES = 10


def move_misplaced_clients(
    scores: np.ndarray, labels: np.ndarray, share: float = 0.6
) -> np.ndarray:
    """Move each client that another cluster serves better than its own: where cluster ``b``
    (2+ members) helps the client more than its own mates do (its row: how their lazy models
    lower its loss), it and ``b``'s members score each other more than it and its mates do
    (mutual scores, :func:`_symmetrize`), and as much as :func:`merge_alike_clusters` asks of
    two clusters (at least ``share`` times ``b``'s mean within, which is > 0). The best such
    ``b`` by mutual score takes it. Only a client that is not alike its own mates moves: its
    mutual score with them is below ``share`` times their mean within without it, or that
    mean is <= 0 (so a client of a large group, whose mates' mean is exact, is not drawn
    into a small fragment of it whose mean of two scores came out high: class pairs at 1,000
    clients, 48 clients of a group of 200 moved into a pair before this condition). Clients
    are visited in order, the sums updated after each move, until a pass moves none (at
    most 10 passes). Clients alone are left to the merge; the two clients of a pair may each
    move (one mate gives no mean within to be alike: a pair of two groups of 3, formed on a
    high draw, breaks up this way).

    OPTICS's leaves are never checked by the scores: among 20 groups of 3, one client sat in
    the leaf of another group (scores 0.08 across against 1.0 within) while its two mates
    formed a pair; no split cuts one client off a cluster (see
    :func:`split_unalike_clusters`) and no merge joins unalike clusters, so it stayed (ARI
    0.87-0.96 on 6 seeds). Both sides must prefer the move: a client whose lazy model hurts
    its group (its column) is still helped by it (its row) and stays; one whose model helps
    another cluster but which that cluster does not help stays too. Labels 0..K-1 by first
    appearance."""
    matrix, labels = _checked(scores, labels, share)
    tables = _MoveTables(matrix, labels)
    for _ in range(_MOVE_PASSES):
        moved = False
        for client in range(len(labels)):
            target = tables.better_cluster(client, share)
            if target is not None:
                tables.move(client, target)
                moved = True
        if not moved:
            break
    return _first_appearance(tables.labels)


class _MoveTables:
    """Per client and cluster: the sum and count of the scores it gets from the cluster's
    members (its row) and of its mutual scores with them; per cluster, the sum and count of
    mutual scores within. Kept up to date move by move (O(N) a move)."""

    def __init__(self, matrix: np.ndarray, labels: np.ndarray) -> None:
        self.labels = labels
        mutual = _symmetrize(matrix)
        finite, known = np.isfinite(matrix), np.isfinite(mutual)
        np.fill_diagonal(finite, False)
        np.fill_diagonal(known, False)
        self.columns = (  # what each client gets (its row), and mutual scores; with counts
            np.where(finite, matrix, 0.0),
            finite.astype(np.float64),
            np.where(known, mutual, 0.0),
            known.astype(np.float64),
        )
        onehot = _membership(labels)
        self.sums = [column @ onehot for column in self.columns]  # (N, K) each
        self.within = np.array([(onehot * self.sums[k]).sum(axis=0) for k in (2, 3)])
        self.sizes = onehot.sum(axis=0)

    def better_cluster(self, client: int, share: float) -> int | None:
        """The cluster ``client`` moves to (:func:`move_misplaced_clients`), if any."""
        own = self.labels[client]
        if self.sizes[own] < 2 or self._alike_its_mates(client, share):
            return None
        help_sum, help_count, pair_sum, pair_count = (table[client] for table in self.sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            helped = help_sum / help_count
            alike = pair_sum / pair_count
            within = self.within[0] / self.within[1]
        better = (  # a mean within > 0 also rules out clusters of one (no pair within)
            (helped > helped[own]) & (alike > alike[own]) & (within > 0) & (alike >= share * within)
        )
        better[own] = False
        if not better.any():
            return None
        return int(np.argmax(np.where(better, alike, -np.inf)))

    def _alike_its_mates(self, client: int, share: float) -> bool:
        """Whether ``client``'s mutual score with its mates is at least ``share`` times their
        mean within without it, which is > 0 (False where the mates have no known score
        among themselves: one mate, as a pair)."""
        own = self.labels[client]
        pairs_left = self.within[1, own] - 2 * self.sums[3][client, own]  # exact: counts
        if pairs_left == 0 or self.sums[3][client, own] == 0:
            return False
        without = (self.within[0, own] - 2 * self.sums[2][client, own]) / pairs_left
        alike = self.sums[2][client, own] / self.sums[3][client, own]
        return bool(without > 0 and alike >= share * without)

    def move(self, client: int, target: int) -> None:
        source = self.labels[client]
        for table, column in zip(self.sums, self.columns, strict=True):
            table[:, source] -= column[:, client]
            table[:, target] += column[:, client]
        for row, k in enumerate((2, 3)):
            self.within[row, source] -= 2 * self.sums[k][client, source]
            self.within[row, target] += 2 * self.sums[k][client, target]
        self.sizes[source] -= 1
        self.sizes[target] += 1
        self.labels[client] = target


def _singleton_references(matrix: np.ndarray, labels: np.ndarray, clusters: int) -> np.ndarray:
    """Per cluster: for a singleton, the centre of the top mode of its mutual scores
    (:func:`_symmetrize`, what it and each other client give each other; NaN for the
    others). Mutual, as the cross score it is compared with: a client's own row alone has
    one mode where two clear helpers stand among 57 others (20 groups of 3), and the
    symmetric row sets them apart. Where the modes leave no top mode above 0, a small top
    mode of a few clear helpers (:func:`_small_top_mode`, up to 5% of the row) is used:
    the mates of a client of a group of 3 among 300 clients."""
    alone = np.full(clusters, np.nan)
    members = np.bincount(labels, minlength=clusters)
    mutual = _symmetrize(matrix)
    for client in np.flatnonzero(members[labels] == 1):
        row = np.delete(mutual[client], client)
        centre = _top_mode_centre(row)
        if not centre > 0:
            finite = np.sort(row[np.isfinite(row)])
            centre = _small_top_mode(finite, max(2, len(finite) // 20))
        alone[labels[client]] = centre
    return alone


def _top_mode_centre(row: np.ndarray) -> float:
    """The centre of the top mode (:func:`row_modes`) of the finite values of ``row``; NaN
    if none is finite."""
    _, centres = row_modes(row[np.isfinite(row)])
    return float(centres[-1]) if len(centres) else math.nan


def _most_alike_pair(
    sums: np.ndarray, counts: np.ndarray, alone: np.ndarray, share: float
) -> tuple[int, int] | None:
    """The pair of clusters with the highest ratio of score across to score within, if at
    least ``share`` (see :func:`merge_alike_clusters`; ``alone``: the singletons' top-mode
    centres)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inside, pairs = np.diag(sums), np.diag(counts)
        cross = (sums + sums.T) / (counts + counts.T)
        reference = (inside[:, None] + inside[None, :]) / (pairs[:, None] + pairs[None, :])
        both_alone = np.fmax(alone[:, None], alone[None, :])
        reference = np.where(np.isnan(reference), both_alone, reference)
        ratio = np.where(reference > 0, cross / reference, -np.inf)
    ratio = np.where(np.triu(np.isfinite(ratio), k=1), ratio, -np.inf)
    a, b = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return (int(a), int(b)) if ratio[a, b] >= share else None


def fixed_clusters(features: np.ndarray, k: int) -> np.ndarray:
    """``k`` clusters by average-linkage agglomerative clustering of the NaN-aware
    distances (labels by first appearance)."""
    n = len(features)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    model = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average")
    labels = model.fit_predict(client_distances(features))
    return _first_appearance(labels)


# --------------------------------------------------------------------------- decentral rule


def _two_means(values: np.ndarray) -> np.ndarray:
    """1-D k-means with k=2 from the min and max; True for the higher cluster (ties high)."""
    centres = np.array([values.min(), values.max()])
    high = np.abs(values - centres[1]) <= np.abs(values - centres[0])
    for _ in range(_KMEANS_MAX_ITER):
        if high.any():
            centres[1] = values[high].mean()
        if not high.all():
            centres[0] = values[~high].mean()
        updated = np.abs(values - centres[1]) <= np.abs(values - centres[0])
        if np.array_equal(updated, high):
            break
        high = updated
    return high


_MAX_ROW_MODES = 4


def _intervals(ordered: np.ndarray, bounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each position's interval (int64) for ascending edges ``bounds``, and each interval's
    mean of ``ordered``."""
    sizes = np.diff(bounds)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return labels, np.bincount(labels, weights=ordered) / sizes


def _classification_bic(ordered: np.ndarray, bounds: list[int]) -> float:
    """BIC of ascending 1-D values cut at ``bounds`` into intervals, each a Gaussian with its
    own mean and one variance shared by all (mixing weights from the counts; the "E" model
    of Fraley & Raftery 2002, fitted to the hard partition). A shared variance lets a mode
    hold a single value (a client with one clear helper among 20 scored peers); the variance
    is floored at 1e-12 of the total so that identical values stay finite."""
    n, sizes = len(ordered), np.diff(bounds)
    labels, centres = _intervals(ordered, bounds)
    floor = 1e-12 * max(float(ordered.var()), np.finfo(np.float64).tiny)
    variance = max(float(((ordered - centres[labels]) ** 2).mean()), floor)
    log_likelihood = float((sizes * np.log(sizes / n)).sum())
    log_likelihood -= 0.5 * n * (math.log(2 * math.pi * variance) + 1.0)
    return -2.0 * log_likelihood + 2 * len(sizes) * math.log(n)


def _cut_deviations(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Every 2-split of ascending 1-D values (n >= 2) into ``[:cut]`` and ``[cut:]``: the cuts
    1..n-1 and the summed squared deviations after each, from prefix sums in one pass; and
    the sum before any cut."""
    n = len(ordered)
    x = ordered - ordered.mean()  # centred: the prefix-sum formula loses no precision
    sums, squares = np.cumsum(x), np.cumsum(x * x)
    cuts = np.arange(1, n)
    left = squares[cuts - 1] - sums[cuts - 1] ** 2 / cuts
    right = squares[-1] - squares[cuts - 1] - (sums[-1] - sums[cuts - 1]) ** 2 / (n - cuts)
    return cuts, left + right, float(squares[-1])


def _best_cut(ordered: np.ndarray) -> tuple[int, float]:
    """The exact best 2-split of ascending 1-D values into ``[:cut]`` and ``[cut:]``: the cut
    and how much it lowers the summed squared deviations. ``(0, -inf)`` with fewer than 2
    values."""
    if len(ordered) < 2:
        return 0, -math.inf
    cuts, after, before = _cut_deviations(ordered)
    best = int(np.argmin(after))
    return int(cuts[best]), before - float(after[best])


def _small_top_mode(ordered: np.ndarray, most: int) -> float:
    """The centre of the top part of the 2-split of ascending values with the lowest BIC
    (:func:`_classification_bic`, over every cut, in one pass) when that part holds 2 to
    ``most`` values and the split's BIC beats one mode's; NaN otherwise.

    Bisection (:func:`row_modes`) first halves a wide bulk, which lowers the squared
    deviations more than cutting off a few values far above it, so it never sets apart the
    2 mates of a client of a group of 3 among hundreds (300 clients, groups of 150 to 3:
    mates 5 standard deviations above the rest); the BIC's mixing weights favour that cut.
    At least 2 values: a single high value is as likely a heavy tail's outlier. Heavy tails
    can still give one (Student t with 5 degrees of freedom, 299 values: 73 of 200 rows);
    it is used only for a singleton with no top mode above 0 (a member of a tiny group, or a
    client no group helps), where pairing two such clients costs little."""
    cut = _small_top_cut(ordered, most)
    return math.nan if cut is None else float(ordered[cut:].mean())


def _small_top_cut(ordered: np.ndarray, most: int) -> int | None:
    """Where the top part of :func:`_small_top_mode` starts in ``ordered``; None where there
    is none."""
    n = len(ordered)
    if n < 3:
        return None
    cuts, after, _ = _cut_deviations(ordered)
    floor = n * 1e-12 * max(float(ordered.var()), np.finfo(np.float64).tiny)
    weights = cuts * np.log(cuts / n) + (n - cuts) * np.log((n - cuts) / n)
    log_likelihood = weights - 0.5 * n * (np.log(2 * np.pi * np.maximum(after, floor) / n) + 1)
    bic = -2.0 * log_likelihood + 4 * math.log(n)
    best = int(np.argmin(bic))
    if not 2 <= n - cuts[best] <= most or bic[best] >= _classification_bic(ordered, [0, n]):
        return None
    return int(cuts[best])


def _bisect_once(ordered: np.ndarray, bounds: list[int]) -> list[int] | None:
    """``bounds`` (part edges in ``ordered``) with the part whose best cut lowers the summed
    squared deviations most cut in two; None if no part can be cut."""
    best_gain, best_bounds = -math.inf, None
    for start, end in itertools.pairwise(bounds):
        cut, gain = _best_cut(ordered[start:end])
        if gain > best_gain:
            best_gain, best_bounds = gain, sorted([*bounds, start + cut])
    return best_bounds


def row_modes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The modes of the values of a score row: the values cut into 1 to 4 intervals by
    bisection (each step cuts the interval whose exact best 2-split lowers the summed squared
    deviations most), the count with the lowest BIC of :func:`_classification_bic`. Returns
    each value's mode (int64, 0 the lowest) and the modes' centres (ascending).

    Bisection with exact 1-D splits is deterministic and O(n log n); Lloyd iterations from
    quantiles stopped in a local optimum on three-level rows (the client's group, a group
    that helps a little, the rest: the two upper levels kept together)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or np.ptp(values) == 0:
        return np.zeros(len(values), dtype=np.int64), values[:1].copy()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    bounds = [0, len(values)]
    best_bic, best_bounds = _classification_bic(ordered, bounds), bounds
    while len(bounds) - 1 < _MAX_ROW_MODES:
        cut = _bisect_once(ordered, bounds)
        if cut is None:
            break
        bounds = cut
        bic = _classification_bic(ordered, bounds)
        if bic < best_bic:
            best_bic, best_bounds = bic, bounds
    labels, centres = _intervals(ordered, best_bounds)
    modes = np.empty(len(values), dtype=np.int64)
    modes[order] = labels
    return modes, centres


def kmeans_peers(row: np.ndarray, self_index: int, positive_only: bool = True) -> np.ndarray:
    """Client ``self_index``'s peers: the helpful side of a 1-D 2-means split of its row.

    Clusters the finite entries of ``row`` (its own included) into two with deterministic
    Lloyd iterations and returns a bool mask that is True on the cluster with the larger
    centre. ``self_index`` is always a peer, NaN entries never are. With fewer than two
    finite entries, or all of them equal, every finite entry is a peer. With
    ``positive_only`` (the default) a peer must also have a positive score: the higher side
    of a row in which everyone hurts the client holds only the least harmful clients, not
    helpful ones (measured: clean clients otherwise took every noisy client as a peer).
    """
    row = np.asarray(row, dtype=np.float64)
    if row.ndim != 1 or not 0 <= self_index < len(row):
        raise ValueError(f"self_index {self_index} out of range for a row of shape {row.shape}")
    finite = np.isfinite(row)
    peers = finite.copy()
    values = row[finite]
    if len(values) >= 2 and values.min() < values.max():
        peers[finite] = _two_means(values)
    if positive_only:
        peers &= np.where(finite, row, 0.0) > 0
    peers[self_index] = True
    return peers


def own_row_peers(row: np.ndarray, self_index: int) -> np.ndarray:
    """A decentral client's first choice (a bool mask, itself included): the positive scores
    of the top mode of its row (:func:`row_modes`, its own score left out) where the row has
    several modes and the top one's centre is positive; every positive score where the row
    has one mode and at least 95% of its scores are positive (everyone helps); else
    :func:`helpful_side`, the higher side of a 1-D 2-means split of the row
    (:func:`kmeans_peers`) and, where that side still holds scores of 0 or less, the higher
    side of a split of the row's positive scores.

    The top mode holds the clients that help most alike. A 2-means split cannot tell a group
    that helps a little from the client's own group: in a federation where two groups share a
    rotation but not the labelling, such a group scores about a fifth of the client's group
    (0.014 against 0.066) and the split put it on the helpful side. Measured on saved score
    matrices (purity / recall after the peers' agreement; benchmarks/README.md, "Decentral:
    the top mode"): that federation 0.75 / 1.00 -> 1.00 / 1.00; class pairs 1.00 / 0.84 ->
    1.00 / 0.93; 100 clients scoring 20 peers 0.98 / 0.88 -> 1.00 / 0.88; rows with a weak
    signal (1,000 clients of 14 validation images) unchanged, their rows having one mode.

    Where the row has one mode, the whole-row split finds the boundary between helpful and
    harmful peers when there is one. When the row's signal is weak and a few peers are very
    harmful, the split only cuts those off, zero falls inside the higher side, and that side
    is most of the federation; then the helpful peers are looked for among those that help at
    all. Measured on rotated-MNIST rows with a weak signal (200-1,000 clients with 14
    validation images each: within-group scores 0.02 ± 0.05, cross-group -0.02 ± 0.04), the
    whole-row split kept 45% same-group peers, this rule 74% (benchmarks/README.md,
    clustering_scale).
    """
    row = np.asarray(row, dtype=np.float64)
    if row.ndim != 1 or not 0 <= self_index < len(row):
        raise ValueError(f"self_index {self_index} out of range for a row of shape {row.shape}")
    others = np.isfinite(row)
    others[self_index] = False
    columns = np.flatnonzero(others)
    modes, centres = row_modes(row[columns])
    top = columns[modes == len(centres) - 1]
    if len(centres) > 1 and centres[-1] > 0:
        chosen = top
    elif len(columns) and np.mean(row[columns] > 0) >= _EVERYONE_HELPS:
        chosen = columns  # one mode and nearly everyone helps (IID): nothing to split off
    else:
        return helpful_side(row, self_index)
    peers = np.zeros(len(row), dtype=bool)
    peers[chosen[row[chosen] > 0]] = True
    peers[self_index] = True
    return peers


# A row with one mode in which at least this share of the scored clients help keeps all of
# them: on an IID federation of 200 clients every score was positive (0.064 +- 0.021), and
# the 2-means split of such a row kept a random half, which the agreement then fragmented
# (90 neighbourhoods, 5.4 points below FedAvg). Rows with a weak group signal have one mode
# too, but about half their scores are negative (benchmarks/README.md).
_EVERYONE_HELPS = 0.95


def upper_tier(row: np.ndarray, peers: np.ndarray, self_index: int) -> np.ndarray:
    """The upper half (rounded up) of a client's peers by its own scores, itself left out:
    a bool mask over ``row``. A decentral client releases it beside its peers (one bit a
    peer, no score), for :func:`split_off_subgroups`; ties are broken by column order."""
    row = np.asarray(row, dtype=np.float64)
    others = np.flatnonzero(np.asarray(peers, dtype=bool))
    others = others[others != self_index]
    upper = np.zeros(len(row), dtype=bool)
    if len(others):
        ranked = others[np.argsort(-row[others], kind="stable")]
        upper[ranked[: (len(others) + 1) // 2]] = True
    return upper


def standout_peers(row: np.ndarray, self_index: int) -> np.ndarray:
    """The few clients that stand out at the top of a client's row, itself left out: the
    top part of the row's best 2-split by BIC (:func:`_small_top_mode`) where it holds 2 to
    5% of the scored clients and every score in it is positive; none otherwise (a bool mask
    over ``row``). The mates of a client of a group of 3 or 6 among 300 stand out so, where
    the row's modes (:func:`row_modes`) leave them inside the bulk. A decentral client left
    alone by the agreement pairs with those of them that count it among theirs
    (:func:`pair_lone_clients`)."""
    row = np.asarray(row, dtype=np.float64)
    others = np.isfinite(row)
    others[self_index] = False
    columns = np.flatnonzero(others)
    order = np.argsort(row[columns], kind="stable")
    ordered = row[columns][order]
    standout = np.zeros(len(row), dtype=bool)
    cut = _small_top_cut(ordered, max(2, len(ordered) // 20))
    if cut is not None and ordered[cut] > 0:
        standout[columns[order[cut:]]] = True
    return standout


def helpful_side(row: np.ndarray, self_index: int) -> np.ndarray:
    """The higher side of a 1-D 2-means split of ``row`` (:func:`kmeans_peers`), or where that
    side holds scores of 0 or less, the higher side of a split of the positive scores: the
    rule :func:`own_row_peers` falls back on for a row with one mode."""
    row = np.asarray(row, dtype=np.float64)
    peers = kmeans_peers(row, self_index, positive_only=False)
    helpful = peers.copy()
    helpful[self_index] = False
    if np.all(row[helpful] > 0):
        return peers
    return kmeans_peers(np.where(row > 0, row, np.nan), self_index)


_AGREEMENT_PASSES = 5


def agreed_peers(
    first: np.ndarray | csr_matrix,
    scored: np.ndarray | csr_matrix | None = None,
    upper: np.ndarray | csr_matrix | None = None,
    standout: np.ndarray | csr_matrix | None = None,
) -> np.ndarray | csr_matrix:
    """Neighbourhoods from every client's first choice (``first[i, j]``: ``i`` chose ``j``);
    ``scored[i, j]``: ``i`` scored ``j`` (None: everyone scored everyone); ``upper``: each
    client's upper tier of its first choice (:func:`upper_tier`; None: no subgroup split);
    ``standout``: the clients standing out at the top of each row (:func:`standout_peers`;
    None: clients left alone stay alone). Dense bool arrays or sparse matrices (stored
    entries are True); the result is of ``first``'s kind.

    One pass: client ``i`` and its current peers vote on each candidate ``j``; a voter that
    has an opinion on ``j`` (scored it, or chose it) votes yes if its first choice holds
    ``j``. ``i`` keeps ``j`` if the share of yes votes (its lower bound,
    :func:`_share_lower_bound`) is on the high side of a 1-D 2-means split of those shares
    (:func:`kmeans_peers`; candidates no voter has an opinion on are left out) or at least
    0.81 (a clear majority: where everyone keeps nearly everyone the split would cut noise),
    and ``j`` keeps ``i`` in the same way. Passes repeat with the kept peers as voters until
    they stop changing (at most 5). Then a small related group is set apart
    (:func:`split_off_subgroups`), clients left alone pair (:func:`pair_lone_clients`) and
    those still alone, or (with ``upper``) in a small neighbourhood, follow the
    neighbourhood of their first choices (:func:`follow_first_choices`: one-way, the only
    entries that are not symmetric). True on the diagonal.

    One noisy row mislabels peers independently of the others; the share of a client's
    peers that chose a candidate pools ~|peers| rows, so a cross-group client chosen by
    chance is rarely chosen by many of them, and a group mate one row missed is chosen by
    many. The votes are always the first choices (the rows' own evidence); only the voters
    change from pass to pass. Voting with the kept peers instead let the first cliques
    close: a mate the others had not kept yet got no yes votes, and at 1,000 clients of 14
    validation images 28% of the clients ended alone (recall 0.46; first-choice votes: 0.53
    and 11%, purity 0.995; benchmarks/README.md, "Decentral: first-choice votes"). Only peer
    lists travel for this (scores never leave a client).
    """
    n = first.shape[0]
    choices = _union(_peer_graph(first), identity(n, format="csr"))
    opinions = None if scored is None else _peer_graph(scored)
    full = opinions is None or opinions.nnz == n * n
    asked = None if full else _union(opinions, choices)
    peers = choices
    for _ in range(_AGREEMENT_PASSES):
        kept = _agreement_pass(peers, choices, asked)
        if (kept != peers).nnz == 0:
            break
        peers = kept
    if upper is not None:
        peers = split_off_subgroups(peers, upper, None if full else opinions)
    if standout is not None:
        peers = pair_lone_clients(peers, standout)
    peers = follow_first_choices(peers, choices, upper)
    return peers.astype(bool) if issparse(first) else peers.toarray().astype(bool)


def pair_lone_clients(
    peers: np.ndarray | csr_matrix, standout: np.ndarray | csr_matrix
) -> csr_matrix:
    """``peers`` (sparse, symmetric, True on the diagonal) where every client with no other
    peer also takes each client that stands out in its row and in whose row it stands out
    (``standout[i, j]``: :func:`standout_peers`).

    The members of a tiny group (3 or 6 of 300 clients) rarely pass the agreement: where
    their rows have one mode their first choices are a large group's clients, whose votes
    leave them out, so each ends alone. Their mates stand out in their rows all the same,
    and two such clients that single each other out are rarely there by chance (rows of
    heavy-tailed noise, 1,000 clients: one chance pair among 94 clients alone). Measured on
    saved score matrices of very unequal groups (200-500 clients), when the agreement voted
    with the peers kept so far: recall 0.95 -> 0.97-0.98, purity unchanged
    (benchmarks/README.md, "Decentral: a small related group"). With first-choice votes the
    agreement itself keeps those clients, and this rule changed 6 entries of the 23 saved
    matrices (a safety net for rows whose first choice misses their group)."""
    n = peers.shape[0]
    graph = _union(_peer_graph(peers), identity(n, format="csr"))
    marks = _peer_graph(standout)
    mutual = _canonical(marks.multiply(marks.T))
    lone = np.flatnonzero(np.asarray(graph.sum(axis=1)).ravel() == 1)
    found = mutual[lone].tocoo()
    if found.nnz == 0:
        return graph
    rows, cols = lone[found.row], found.col
    return _union(graph, _from_pairs(n, [rows, cols], [cols, rows]))


# A client follows the clients that at least this share of its first choices (the lower
# bound of the share, :func:`_share_lower_bound`) have as peers: a majority.
_FOLLOW_SHARE = 0.5
# ... where its own neighbourhood is smaller than this share of theirs.
_FOLLOW_SMALLER = 0.5


def follow_first_choices(
    peers: np.ndarray | csr_matrix,
    choices: np.ndarray | csr_matrix,
    upper: np.ndarray | csr_matrix | None = None,
) -> csr_matrix:
    """``peers`` (sparse, True on the diagonal) where a client whose neighbourhood is small
    also takes, one way, the clients that a majority of its first choices (``choices[i, j]``:
    ``i`` chose ``j``) have as peers (:data:`_FOLLOW_SHARE`), where those choose it more often
    than chance (:func:`_chosen_above_chance`). Small: no other peer, or (with ``upper``, the
    upper tiers of :func:`upper_tier`) fewer than half of those clients
    (:data:`_FOLLOW_SMALLER`) while the client ranks its own peers no higher than the others
    it chose (the share of each in its upper tier).

    The agreement keeps a pair only where both keep it; a client whose data helps its mates
    less than most do is chosen by few of them and ends alone or with a few peers, though its
    own first choice points at its group (1,000 clients of 14 validation images: 107 clients
    alone, chosen by 13% of their mates against 34% for the others, their first choices 84%
    same-group). Such a client then trains with the neighbourhood most of its first choices
    agree on: its model averages their updates, theirs do not take its update. A client
    whose first choices agree on no one (an outlier, noisy data) stays alone. A small group
    beside a related large one (3 or 6 clients beside 90 that share most of their labelling)
    looks the same from the peer lists, but its members rank each other above the large
    group, and stay. Measured on saved score matrices (benchmarks/README.md, "Decentral:
    first-choice votes"): at 1,000 clients recall 0.485 -> 0.559 (rotation) and 0.534 ->
    0.639 (mixed), clients alone 82 -> 42 and 107 -> 33, purity unchanged; of the 7 saved
    very unequal federations one client of a group of 2 followed the large group (it ranks
    its one mate low)."""
    n = peers.shape[0]
    graph = _union(_peer_graph(peers), identity(n, format="csr"))
    chosen = _peer_graph(choices)
    tiers = None if upper is None else _peer_graph(upper)
    sizes = np.asarray(graph.sum(axis=1)).ravel() - 1
    heads, tails = [], []
    for i in np.flatnonzero((sizes == 0) if tiers is None else np.ones(n, dtype=bool)):
        voters, _ = _row(chosen, i)
        voters = voters[voters != i]
        # A followed client is held by at least half the voters, so there are at most twice
        # their mean neighbourhood size of them: a neighbourhood that large never follows.
        if len(voters) == 0 or sizes[i] >= _FOLLOW_SMALLER * 2 * (sizes[voters] + 1).mean():
            continue
        held = np.asarray(graph[voters].sum(axis=0)).ravel()
        bound = _share_lower_bound(held, np.full(n, float(len(voters))))
        followed = np.flatnonzero(bound >= _FOLLOW_SHARE)
        followed = followed[followed != i]
        if sizes[i] >= _FOLLOW_SMALLER * len(followed):
            continue
        if sizes[i] and not _ranks_own_no_higher(graph, tiers, voters, followed, i):
            continue
        if _chosen_above_chance(chosen, followed, i):
            heads.append(np.full(len(followed), i))
            tails.append(followed)
    return _union(graph, _from_pairs(n, heads, tails))


def _ranks_own_no_higher(
    graph: csr_matrix, tiers: csr_matrix, voters: np.ndarray, followed: np.ndarray, i: int
) -> bool:
    """Whether client ``i`` puts its own peers (in ``graph``) in its upper tier no more often
    than the other clients it chose (``voters``) that ``followed`` holds: where it ranks its
    peers higher, they are its group and the followed clients a related one."""
    own, _ = _row(graph, i)
    in_tier, _ = _row(tiers, i)
    mine = np.intersect1d(voters, own[own != i])
    others = np.setdiff1d(np.intersect1d(voters, followed), mine)
    if len(mine) == 0 or len(others) == 0:
        return False
    share_mine = np.isin(mine, in_tier).mean()
    return bool(share_mine <= np.isin(others, in_tier).mean())


def _chosen_above_chance(chosen: csr_matrix, members: np.ndarray, i: int) -> bool:
    """Whether ``members`` first-choose client ``i`` more often (the lower bound of the share
    two standard errors down, :func:`_share_lower_bound`) than they choose the clients outside
    them: a client of another group is chosen at the outside rate. A client of a tiny group
    whose first choices are mostly a large group's (one mate, four strangers) is held by that
    group only by chance and stays alone (synthetic groups of 60, 20, 8 and 4, and 100, 10,
    5 and 3: purity 0.978 and 0.965 without this test, 0.989 and 1.000 with it)."""
    n = chosen.shape[0]
    block = chosen[members]
    toward_i = float(block[:, i].sum())
    outside = float(block.sum() - block[:, members].sum()) - toward_i
    pairs_outside = len(members) * (n - len(members) - 1)
    rate_outside = outside / pairs_outside if pairs_outside else 0.0
    bound = _share_lower_bound(np.array([toward_i]), np.array([float(len(members))]), z=2.0)[0]
    return bool(bound > rate_outside)


# A candidate is apart from a neighbourhood when its members' upper tiers hold it less than
# this share of the neighbourhood's median: the 6 clients of a group related to a group of 90
# were held at 0.04-0.07 against a median of 0.5; in one-group neighbourhoods of 200-500
# clients (19 saved score matrices) the least-held clients reach 0.00-0.35 of the median,
# and they fail the second test (they do not hold each other). benchmarks/README.md.
_APART_SHARE = 0.25


def split_off_subgroups(
    peers: np.ndarray | csr_matrix,
    upper: np.ndarray | csr_matrix,
    scored: np.ndarray | csr_matrix | None = None,
) -> csr_matrix:
    """Neighbourhoods with a distinct subgroup set apart (sparse, symmetric, True on the
    diagonal). ``peers``: the agreed neighbourhoods; ``upper[v, j]``: ``j`` is in ``v``'s upper
    tier (:func:`upper_tier`); ``scored[v, j]``: ``v`` has an opinion on ``j`` (None: all).

    A small group whose data is related to a large one (two label swaps that agree on most
    classes) helps it, and it helps them, so both take each other as peers: no single row
    can tell them apart (the small group's mates scored 1.75 standard deviations above the
    large group in its rows; benchmarks/README.md, "Decentral: a small related group"), and
    their peer lists are the same. Their upper tiers differ: the large group's members rank
    the small group low, the small group's members rank each other high. In each
    neighbourhood, the candidates the members' upper tiers hold at under a quarter of the
    median share (:data:`_APART_SHARE`) are a subgroup if they hold each other at least at
    the median share (clients that help everyone little are held by no one, each other
    included); then each member keeps its own side, and a pair stays only if both keep it.
    Only the tiers travel (one bit a peer), never scores. Cost: one pass per distinct
    neighbourhood (O(size^2) each)."""
    n = peers.shape[0]
    graph = _union(_peer_graph(peers), identity(n, format="csr"))
    tiers = _peer_graph(upper)
    opinions = None if scored is None else _peer_graph(scored)
    subgroups: dict[bytes, np.ndarray | None] = {}  # members of a neighbourhood -> apart
    heads, tails = [], []
    for i in range(n):
        members, _ = _row(graph, i)
        key = members.tobytes()
        if key not in subgroups:
            subgroups[key] = _subgroup(members, tiers, opinions)
        apart = subgroups[key]
        kept = members if apart is None else members[apart == apart[members == i][0]]
        heads.append(np.full(len(kept), i))
        tails.append(kept)
    kept = _from_pairs(n, heads, tails)
    return _union(_canonical(kept.multiply(kept.T)), identity(n, format="csr"))


def _subgroup(
    members: np.ndarray, tiers: csr_matrix, opinions: csr_matrix | None
) -> np.ndarray | None:
    """A bool mask of the subgroup set apart in a neighbourhood of ``members`` (see
    :func:`split_off_subgroups`), or None where there is none."""
    size = len(members)
    if size < 4:
        return None
    held = tiers[members][:, members].toarray()
    np.fill_diagonal(held, 0.0)
    if opinions is None:
        asked = np.ones((size, size)) - np.eye(size)
    else:
        asked = opinions[members][:, members].toarray()
        np.fill_diagonal(asked, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = held.sum(axis=0) / asked.sum(axis=0)
    typical = float(np.nanmedian(share)) if np.isfinite(share).any() else 0.0
    apart = np.nan_to_num(share, nan=np.inf) < _APART_SHARE * typical
    count = int(apart.sum())
    if count < 2 or count == size:
        return None
    inner_asked = asked[np.ix_(apart, apart)].sum()
    inner = held[np.ix_(apart, apart)].sum() / inner_asked if inner_asked else 0.0
    return apart if inner >= typical else None


def _agreement_pass(
    peers: csr_matrix, choices: csr_matrix, opinions: csr_matrix | None
) -> csr_matrix:
    """One pass of :func:`agreed_peers` on sparse 0/1 matrices: ``peers`` vote, their
    ``choices`` are the yes votes; each row's shares are those of the candidates some voter
    has an opinion on (all clients when ``opinions`` is None)."""
    n = peers.shape[0]
    yes = _canonical(peers @ choices)  # [i, j]: how many of i's voters chose j
    counts = np.asarray(peers.sum(axis=1)).ravel()
    asked = None if opinions is None else _canonical(peers @ opinions)
    heads, tails = [], []
    for i in range(n):
        # The candidates i's voters have an opinion on, and how many of them do.
        if asked is None:
            columns, votes = np.arange(n), np.full(n, counts[i])
        else:
            columns, votes = _row(asked, i)
        columns, votes = _with_self(columns, votes, i)
        voted, yes_votes = _row(yes, i)
        agree = np.zeros(len(columns))
        agree[np.searchsorted(columns, voted)] = yes_votes  # yes votes come from opinions
        shares = _share_lower_bound(agree, votes)
        high = kmeans_peers(shares, int(np.searchsorted(columns, i)))
        chosen = columns[high | (np.nan_to_num(shares, nan=0.0) >= _CLEAR_MAJORITY)]
        heads.append(np.full(len(chosen), i))
        tails.append(chosen)
    kept = _from_pairs(n, heads, tails)
    return _canonical(kept.multiply(kept.T))


_SHARE_Z = 1.0
# A candidate most voters keep is kept even where the shares' 2-means split falls above it:
# where everyone keeps nearly everyone (an IID federation) the split cuts noise. The share's
# lower bound (:func:`_share_lower_bound`) must reach this: 5 of 5 votes do (0.83), 4 of 4
# (0.80), 9 of 10 (0.77) and 1 of 1 (0.50) do not.
_CLEAR_MAJORITY = 0.81


def _share_lower_bound(yes: np.ndarray, votes: np.ndarray, z: float = _SHARE_Z) -> np.ndarray:
    """Wilson's lower bound (Wilson 1927), one standard error (z = 1) below, of each
    candidate's share of yes votes; NaN where no voter has an opinion.

    Where clients score a few peers, a candidate is often judged by one or two voters, and a
    raw share of 1/1 counts like 20/20: neighbourhoods then grew pass after pass into other
    groups (200 clients scoring 20 peers: purity 0.99 after two passes, 0.75 after five; with
    the bound 0.99, recall 0.87 instead of 0.92). With every pair scored a candidate has as
    many voters as the client has peers and the bound changes little (benchmarks/README.md,
    "Decentral: the top mode")."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.maximum(votes, 1.0)
        share = yes / n
        z2 = z * z
        centre = share + z2 / (2 * n)
        spread = z * np.sqrt(share * (1 - share) / n + z2 / (4 * n * n))
        return np.where(votes > 0, (centre - spread) / (1 + z2 / n), np.nan)


def _row(matrix: csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i``'s stored columns (ascending) and values."""
    start, end = matrix.indptr[i], matrix.indptr[i + 1]
    return matrix.indices[start:end].astype(np.int64), matrix.data[start:end]


def _with_self(columns: np.ndarray, votes: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """``columns`` with ``i`` among them (0 votes, i.e. no share, where it was missing)."""
    at = int(np.searchsorted(columns, i))
    if at < len(columns) and columns[at] == i:
        return columns, votes
    return np.insert(columns, at, i), np.insert(votes.astype(np.float64), at, 0.0)


def _from_pairs(n: int, heads: list[np.ndarray], tails: list[np.ndarray]) -> csr_matrix:
    """The 0/1 matrix with an entry at every (head, tail)."""
    row = np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)
    col = np.concatenate(tails) if tails else np.zeros(0, dtype=np.int64)
    return _canonical(csr_matrix((np.ones(len(row)), (row, col)), shape=(n, n)))


def _canonical(matrix: Any) -> csr_matrix:
    """CSR, sorted columns, no explicit zeros."""
    out = csr_matrix(matrix)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _union(a: csr_matrix, b: csr_matrix) -> csr_matrix:
    """Entries of either 0/1 matrix, as a 0/1 matrix."""
    both = _canonical(a + b)
    both.data[:] = 1.0
    return both


def _peer_graph(peers: np.ndarray | csr_matrix) -> csr_matrix:
    """``peers`` (a square bool array, or a sparse matrix whose nonzero entries are True) as
    a sparse 0/1 float matrix."""
    if issparse(peers):
        if peers.shape[0] != peers.shape[1]:
            raise ValueError(f"peers must be a square matrix, got shape {peers.shape}")
        graph = _canonical(csr_matrix(peers, dtype=bool).astype(np.float64))
    else:
        graph = csr_matrix(_as_peers(peers), dtype=np.float64)
    graph.data[:] = 1.0
    return graph


def _as_peers(peers: np.ndarray) -> np.ndarray:
    """``peers`` as a square bool matrix."""
    peers = np.asarray(peers, dtype=bool)
    if peers.ndim != 2 or peers.shape[0] != peers.shape[1]:
        raise ValueError(f"peers must be a square 2-D array, got shape {peers.shape}")
    return peers


def mutual_components(peers: np.ndarray | csr_matrix) -> np.ndarray:
    """Connected components of the graph with edge i–j iff i and j choose each other
    (``peers``: a square bool array or a sparse matrix).

    Returns int64 labels 0..K-1 in order of first appearance.
    """
    graph = _peer_graph(peers)
    _, labels = connected_components(_canonical(graph.multiply(graph.T)), directed=False)
    return _first_appearance(labels)


# --------------------------------------------------------------------------- diagnostics


def _mean_ratio(hits: np.ndarray, sizes: np.ndarray) -> float:
    """Mean of ``hits / sizes`` over entries with a positive size (NaN if none)."""
    valid = sizes > 0
    return float(np.mean(hits[valid] / sizes[valid])) if valid.any() else math.nan


def neighbourhood_quality(peers: np.ndarray | csr_matrix, groups: np.ndarray) -> dict[str, float]:
    """How well each client's peers match its true group, self excluded (``peers``: a
    square bool array or a sparse matrix).

    ``purity``: mean share of a client's other peers that are in its group (clients with
    at least one other peer). ``recall``: mean share of a client's other group members that
    are its peers (clients whose group has another member). ``size``: mean number of other
    peers. NaN where no client qualifies.
    """
    graph = _peer_graph(peers).tocoo()
    groups = np.asarray(groups)
    n = graph.shape[0]
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    others = graph.row != graph.col
    heads, tails = graph.row[others], graph.col[others]
    hits = np.bincount(heads[groups[heads] == groups[tails]], minlength=n)
    sizes = np.bincount(heads, minlength=n)
    _, inverse, members = np.unique(groups, return_inverse=True, return_counts=True)
    mates = members[inverse.reshape(-1)] - 1
    return {
        "purity": _mean_ratio(hits, sizes),
        "recall": _mean_ratio(hits, mates),
        "size": float(sizes.mean()) if len(sizes) else math.nan,
    }


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two (N, N) matrices over off-diagonal entries finite in both.

    NaN with fewer than three such entries or when either side is constant on them.
    """
    a = _as_matrix(a, "a", square=True)
    b = _as_matrix(b, "b", square=True)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    mask = np.isfinite(a) & np.isfinite(b) & ~np.eye(a.shape[0], dtype=bool)
    x, y = a[mask], b[mask]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y)[0])
