"""pFedLIA's central clustering on the score graph: spectral clustering whose number of
clusters comes from the eigengap and a modularity test against a shuffled graph.

Why not OPTICS (the earlier default, still ``clustering: optics``): OPTICS clusters the score
*rows* as points in N dimensions. Real lazy-influence rows are noisy (on a 200-client rotated
MNIST run the within-group scores are 0.09 ± 0.02 and the cross-group ones 0.01 ± 0.02, in
loss units), so the distance between two rows of one group grows with N and varies from client
to client (1.0 to 5.0 there, against 4.1 to 9.0 across groups); the reachability plot of a
large group then has dips of more than ``xi`` (5%) inside it and OPTICS cuts the group into
leaves (8 clusters for 4 groups, ARI 0.74). ``benchmarks/README.md`` (clustering_scale) has
the measurements. The procedure here uses each score as an edge, not rows as points, so the
signal of a group adds up with its size instead of drowning in N coordinates:

1. **Rows** (:func:`score_edges`): each row's observed scores, minus the row's median (most
   of a row is other groups', so this removes the level every lazy model reaches on the
   client: the cross-group offset), divided by the row's largest absolute value.
2. **Helpful sides**: in each row, the entries on the high side of a 1-D 2-means split that
   are also positive (:func:`plural.algorithms.influence.kmeans_peers`, the rule decentral
   clients use on their own rows).
3. **Graph**: edge ``i - j`` if ``j`` is on ``i``'s helpful side or ``i`` on ``j``'s, weighted
   by the mean of the two centred scores (the one observed, when only one is), kept if
   positive. Sparse: a client that scored 20 peers has at most 20 + (those that scored it)
   edges.
4. **Spectral clustering** (Ng, Jordan, Weiss 2001) of the normalised adjacency
   ``D^-1/2 W D^-1/2``: ``k`` is the largest eigengap among ``k >= 2``; the rows of the top
   ``k`` eigenvectors, normalised, are grouped by k-means (10 starts, fixed seed).
5. **One cluster or k** (:func:`modularity`, Newman 2006): the ``k``-partition is kept if its
   modularity exceeds by ``min_gain`` (0.1) the modularity the same procedure reaches on the
   graph with its edge weights shuffled (same edges, no group structure). Spectral clustering
   always finds *some* split; this asks whether it is better than the split of a graph of the
   same size and density that has no groups, so the test does not depend on N.
6. **Clusters inside clusters**: each cluster of 4 or more clients is clustered again on its
   own subgraph by steps 4-5 and split when its partition passes the same shuffled-graph
   test; the parts are tested again. The eigengap of the whole graph sees the largest level
   of a hierarchy: on a 1,000-client "mixed" federation (2 rotations x 2 label permutations,
   groups of 250, so each group shares its rotation with one group and its labels with
   another) it picks 3 clusters, one of them two groups, which their own subgraph then
   separates (ARI 0.718 -> 0.997).
7. Clients without any edge (no one on their helpful side, on no one's) are left out of the
   spectral step and become their own cluster (``noise: own``) or join the cluster of the
   client they score highest (``noise: nearest``).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh
from scipy.sparse import coo_matrix, csr_matrix, diags
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans

from plural.core.influence import kmeans_peers

__all__ = ["graph_clusters", "modularity", "score_edges", "spectral_labels"]

_DENSE_LIMIT = 2000  # up to this many clients the eigenproblem is solved densely
_MAX_CLUSTERS = 100  # the eigengap is looked for among k <= min(this, clients / 2)
_KMEANS_STARTS = 10
_MIN_GAIN = 0.1
_NULL_DRAWS = 5
_MIN_SPLIT = 4  # clusters of fewer clients are not clustered again (step 6)


def _rows(scores: np.ndarray | csr_matrix) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's observed (finite) entries as (columns, values), the diagonal left out."""
    out = []
    if isinstance(scores, csr_matrix):
        for i in range(scores.shape[0]):
            start, end = scores.indptr[i], scores.indptr[i + 1]
            cols, vals = scores.indices[start:end], scores.data[start:end]
            keep = np.isfinite(vals) & (cols != i)
            out.append((cols[keep].astype(np.int64), vals[keep].astype(np.float64)))
        return out
    matrix = np.asarray(scores, dtype=np.float64)
    for i, row in enumerate(matrix):
        keep = np.isfinite(row)
        keep[i] = False
        cols = np.flatnonzero(keep)
        out.append((cols, row[cols]))
    return out


def score_edges(scores: np.ndarray | csr_matrix, mutual: bool = True) -> csr_matrix:
    """The symmetric helpful-score graph of steps 1-3 (module docstring), as CSR float64;
    ``mutual=False``: an edge where either side chose the other.

    ``scores`` is the (N, N) score matrix, dense with NaN for "not scored", or sparse (CSR)
    holding only the scored entries."""
    n = scores.shape[0]
    heads, tails, values, helpful = [], [], [], []
    for i, (cols, vals) in enumerate(_rows(scores)):
        if len(vals) == 0:
            continue
        centred = vals - np.median(vals)
        scale = np.abs(centred).max()
        centred = centred / scale if scale > 0 else centred
        side = kmeans_peers(np.append(centred, 0.0), len(centred))[:-1]
        heads.append(np.full(len(cols), i))
        tails.append(cols)
        values.append(centred)
        helpful.append(side)
    if not heads:
        return csr_matrix((n, n))
    return _graph(n, heads, tails, values, helpful, mutual)


def _graph(
    n: int,
    heads: list[np.ndarray],
    tails: list[np.ndarray],
    values: list[np.ndarray],
    helpful: list[np.ndarray],
    mutual: bool,
) -> csr_matrix:
    """Symmetric CSR graph from directed (head, tail, centred score, helpful) entries."""
    row, col = np.concatenate(heads), np.concatenate(tails)
    value, side = np.concatenate(values), np.concatenate(helpful).astype(np.float64)
    # Sum both directions: value sums, how many directions observed, helpful in either.
    both = (np.concatenate([row, col]), np.concatenate([col, row]))
    total = coo_matrix((np.concatenate([value, value]), both), shape=(n, n)).tocsr()
    count = coo_matrix((np.ones(2 * len(value)), both), shape=(n, n)).tocsr()
    chosen = coo_matrix((np.concatenate([side, side]), both), shape=(n, n)).tocsr()
    mean = total.multiply(count.power(-1.0)).tocsr()
    agreed = chosen.multiply(count.power(-1.0)).tocsr()  # 1 where every observed side chose
    agreed.data = (agreed.data >= (1.0 - 1e-9 if mutual else 1e-9)).astype(np.float64)
    weight = mean.multiply(agreed).tocsr()
    weight.data = np.clip(weight.data, 0.0, None)
    weight.setdiag(0.0)
    weight.eliminate_zeros()
    return weight


def modularity(graph: csr_matrix, labels: np.ndarray) -> float:
    """Newman's modularity of a partition of a weighted undirected graph (0 without edges)."""
    two_m = float(graph.sum())
    if two_m <= 0:
        return 0.0
    degree = np.asarray(graph.sum(axis=1)).ravel()
    coo = graph.tocoo()
    inside = float(coo.data[labels[coo.row] == labels[coo.col]].sum())
    share = np.bincount(labels, weights=degree) / two_m
    return inside / two_m - float((share**2).sum())


def _top_eigenvectors(adjacency: csr_matrix, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending) of a symmetric matrix, with vectors."""
    m = adjacency.shape[0]
    if m <= _DENSE_LIMIT:
        vals, vecs = eigh(adjacency.toarray(), subset_by_index=[m - count, m - 1])
    else:
        vals, vecs = eigsh(adjacency, k=count, which="LA", v0=np.ones(m))
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def spectral_labels(graph: csr_matrix, k: int | None = None) -> np.ndarray:
    """Spectral clustering of a connected-enough graph (every node has an edge): ``k``
    clusters, or the largest eigengap among ``k >= 2`` when ``k`` is None."""
    m = graph.shape[0]
    if m <= 2 or k == 1:
        return np.zeros(m, dtype=np.int64)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = diags(1.0 / np.sqrt(degree)).tocsr()
    adjacency = (scale @ graph @ scale).tocsr()
    kmax = min(m - 1, max(2, min(_MAX_CLUSTERS, m // 2)))
    count = min(m, (k if k is not None else kmax) + 1)
    vals, vecs = _top_eigenvectors(adjacency, count)
    if k is None:
        gaps = -np.diff(vals)  # lambda_k - lambda_{k+1} of the adjacency
        gaps[0] = -np.inf  # k = 1 is decided by the modularity test
        k = int(np.argmax(gaps)) + 1
    k = min(k, m)
    embedding = vecs[:, :k]
    embedding = embedding / np.clip(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12, None)
    kmeans = KMeans(n_clusters=k, n_init=_KMEANS_STARTS, random_state=0)
    return kmeans.fit_predict(embedding).astype(np.int64)


def _shuffled(graph: csr_matrix, rng: np.random.Generator) -> csr_matrix:
    """The graph with its edges' weights put on node pairs drawn at random (the same number of
    edges and the same weights, no group structure)."""
    upper = coo_matrix(graph)
    keep = upper.row < upper.col
    weights = rng.permutation(upper.data[keep])
    n = graph.shape[0]
    if n <= _DENSE_LIMIT:
        i, j = np.triu_indices(n, k=1)
        pick = rng.permutation(len(i))[: len(weights)]
        i, j = i[pick], j[pick]
    else:  # sparse graph: random pairs, duplicates dropped
        draws = rng.integers(0, n, size=(2, 2 * len(weights) + 16))
        pairs = np.unique(np.sort(draws, axis=0)[:, draws[0] != draws[1]], axis=1)
        pairs = pairs[:, rng.permutation(pairs.shape[1])[: len(weights)]]
        i, j = pairs
        weights = weights[: len(i)]
    rewired = coo_matrix((weights, (i, j)), shape=(n, n)).tocsr()
    return (rewired + rewired.T).tocsr()


def _null_modularity(graph: csr_matrix) -> float:
    """The modularity spectral clustering reaches on a graph (its nodes with edges)."""
    degree = np.asarray(graph.sum(axis=1)).ravel()
    connected = np.flatnonzero(degree > 0)
    sub = graph[connected][:, connected].tocsr()
    return modularity(sub, spectral_labels(sub))


def _label_components(graph: csr_matrix, k: int | None, min_gain: float) -> np.ndarray:
    """Spectral labels of a graph whose nodes all have an edge, or all zeros when the
    partition is no better than that of the shuffled graph (step 5)."""
    labels = spectral_labels(graph, k)
    if k is not None or labels.max() == 0:
        return labels
    gain = modularity(graph, labels)
    rng = np.random.default_rng(0)
    baseline = max(_null_modularity(_shuffled(graph, rng)) for _ in range(_NULL_DRAWS))
    return labels if gain >= baseline + min_gain else np.zeros_like(labels)


def _split_within(graph: csr_matrix, labels: np.ndarray, min_gain: float) -> np.ndarray:
    """Step 6: every cluster of ``_MIN_SPLIT`` or more nodes whose own subgraph passes the
    shuffled-graph test is replaced by that subgraph's clusters, and the parts are tested
    again. A node with no edge inside its split cluster becomes -1 (placed afterwards like a
    client without a mutual edge)."""
    out = labels.copy()
    pending = list(np.unique(out[out >= 0]))
    while pending:
        members = np.flatnonzero(out == pending.pop())
        if len(members) < _MIN_SPLIT:
            continue
        sub = graph[members][:, members].tocsr()
        linked = np.asarray(sub.sum(axis=1)).ravel() > 0
        if linked.sum() < _MIN_SPLIT:
            continue
        parts = _label_components(sub[linked][:, linked].tocsr(), None, min_gain)
        if parts.max() == 0:
            continue
        out[members[~linked]] = -1
        for part in range(parts.max() + 1):
            new_label = out.max() + 1
            out[members[linked][parts == part]] = new_label
            pending.append(new_label)
    return out


def graph_clusters(
    scores: np.ndarray | csr_matrix,
    k: int | None = None,
    noise: str = "own",
    min_gain: float = _MIN_GAIN,
) -> np.ndarray:
    """Cluster clients from their score matrix (the procedure of the module docstring).

    ``scores``: (N, N) dense with NaN where not scored, or CSR with the scored entries only.
    ``k``: the number of clusters (None: found). ``noise``: 'own' or 'nearest' for clients
    without any edge. Returns int64 labels 0..K-1 in order of first appearance."""
    if noise not in ("own", "nearest"):
        raise ValueError(f"noise must be one of ['own', 'nearest'], got {noise!r}")
    n = scores.shape[0]
    if scores.ndim != 2 or scores.shape[1] != n:
        raise ValueError(f"scores must be a square 2-D matrix, got shape {scores.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = score_edges(scores, mutual=True)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    linked = np.flatnonzero(degree > 0)
    labels = np.full(n, -1, dtype=np.int64)
    if len(linked):
        sub = graph[linked][:, linked].tocsr()
        labels[linked] = _label_components(sub, k, min_gain)
        if k is None and labels.max() > 0:  # one cluster: its graph has just failed the test
            labels[linked] = _split_within(sub, labels[linked], min_gain)
    labels = _join_strongest(labels, score_edges(scores, mutual=False))
    labels = _place_loners(labels, scores, noise)
    return _first_appearance(labels)


def _join_strongest(labels: np.ndarray, union: csr_matrix) -> np.ndarray:
    """Clients without a mutual edge (-1) that one side still chose join the cluster of their
    strongest such edge to a clustered client."""
    out = labels.copy()
    for i in np.flatnonzero(labels < 0):
        start, end = union.indptr[i], union.indptr[i + 1]
        cols, weights = union.indices[start:end], union.data[start:end]
        known = labels[cols] >= 0
        if known.any():
            out[i] = labels[cols[known][np.argmax(weights[known])]]
    return out


def _place_loners(labels: np.ndarray, scores: np.ndarray | csr_matrix, noise: str) -> np.ndarray:
    """Clients without an edge (-1): their own cluster, or that of the client they score
    highest (``nearest``; their own when they scored no clustered client)."""
    out = labels.copy()
    rows = _rows(scores)
    for i in np.flatnonzero(labels < 0):
        cols, vals = rows[i]
        known = labels[cols] >= 0
        if noise == "nearest" and known.any():
            out[i] = labels[cols[known][np.argmax(vals[known])]]
        else:
            out[i] = max(out.max(), labels.max()) + 1
    return out


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` to 0..K-1 in order of first appearance (int64)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
