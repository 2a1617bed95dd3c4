"""pFedLIA's server keeps no dense N x N matrix (issue 20): its scores, released values, first
choices and neighbourhoods are sparse (only the scored entries), in the state and in every
lazy-phase record, at 10,000 clients scoring 20 peers each; sparse and dense inputs cluster
alike; checkpoints of the dense layout are still read."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

import plural
from plural.algorithms.pfedlia import LIAServerState, lia_records, lia_state
from plural.algorithms.pfedlia.messages import LazyReply, ScoreReply, with_lia
from plural.core.algorithm import FederationInfo, ServerState
from plural.core.compression import compress
from plural.core.influence import agreed_peers, mutual_components, neighbourhood_quality
from plural.core.score_graph import graph_clusters
from plural.core.sparse_scores import SparseMatrix, SparseRow
from plural.experiment import load_config
from plural.runner import build_algorithm
from plural.safety.plain import from_plain, load_plain, save_plain, to_plain

N, PEERS, GROUPS = 10_000, 20, 4


def pfedlia(n: int, **settings: Any) -> Any:
    cfg = {
        "name": "sparse",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [4]},
        "partition": {"name": "iid", "num_clients": n},
        "algorithm": {"name": "pfedlia", "peers_scored": PEERS, **settings},
    }
    return build_algorithm(load_config(cfg))


def start(algorithm: Any, n: int) -> ServerState:
    info = FederationInfo(n, 2, (2,), np.arange(n) % GROUPS)
    return algorithm.init({"w": torch.zeros(2)}, info, np.random.default_rng(0))


class SyntheticContext:
    """A round context whose clients answer at once: lazy updates of a 2-entry model, and
    score rows +-1 (same group or not, with noise) over the peers they were sent."""

    def __init__(self, algorithm: Any, n: int) -> None:
        self.algorithm, self.num_clients, self.round = algorithm, n, 1
        self.clients = list(range(n))
        self.delta = compress({"w": torch.ones(2)}, "none", 0.1)
        self.noise = np.random.default_rng(1)

    def rng(self, purpose: str) -> np.random.Generator:
        return np.random.default_rng(0)

    def map(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        per_client: Mapping[int, Any] | None = None,
    ) -> list[Any]:
        if phase == "lazy_train":
            return [LazyReply(self.delta, 10) for _ in cohort]
        assert per_client is not None
        return [self.reply(i, per_client[i].peers) for i in cohort]

    def reply(self, i: int, peers: Sequence[int]) -> ScoreReply:
        columns = np.array(sorted([*peers, i]), dtype=np.int64)
        same = columns % GROUPS == i % GROUPS
        values = np.where(same, 1.0, -1.0) + 0.1 * self.noise.standard_normal(len(columns))
        values[columns == 3] = 0.0  # a score of 0 is a score, not "not scored"
        row = SparseRow(columns, values)
        return self.algorithm.reply(row, i, self.num_clients, torch.Generator(), len(columns))


def arrays(value: Any, path: str = "state") -> Iterator[tuple[str, int]]:
    """Every array inside ``value`` (sparse matrices, NumPy arrays, tensors) with its size:
    stored entries for sparse ones."""
    if isinstance(value, SparseMatrix):
        yield path, value.nnz
        yield from arrays(dataclasses.asdict(value), path)
    elif isinstance(value, np.ndarray):
        yield path, value.size
    elif isinstance(value, torch.Tensor):
        yield path, value.numel()
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from arrays(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from arrays(item, f"{path}[{k}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from arrays(getattr(value, field.name), f"{path}.{field.name}")


def assert_linear(server: ServerState, n: int) -> None:
    """No array of pFedLIA's state or records is larger than O(N k) entries."""
    state = server.part(LIAServerState)
    sizes = dict(arrays(state))
    assert sizes, "nothing was walked"
    bound = 4 * n * (PEERS + 1)  # scores, peers and their agreed neighbours: a few per row
    large = {p: s for p, s in sizes.items() if s > bound}
    assert not large, f"arrays of O(N^2) size: {large}"
    assert state.scores.nnz == n * (PEERS + 1)  # 20 peers and its own lazy model a row
    assert len(state.records) == 1 and state.records[0]["scores"] is state.scores


def test_decentral_lazy_phase_at_10k_clients_keeps_no_dense_matrix() -> None:
    algorithm = pfedlia(N, variant="decentral")
    server = start(algorithm, N)
    ctx = SyntheticContext(algorithm, N)
    server = algorithm.lazy_phase(server, list(range(N)), ctx)  # type: ignore[arg-type]
    assert_linear(server, N)
    lia = lia_state(server)
    assert lia.peers is not None and lia.choices is not None
    assert lia.peers.nnz <= 4 * N * (PEERS + 1) and lia.choices.nnz <= N * (PEERS + 1)
    record = lia_records(server)[0]  # above DENSE_RECORDS clients: kept sparse
    assert isinstance(record["scores"], SparseMatrix)
    assert record["neighbourhoods"]["purity"] == 1.0  # the synthetic groups separate


def test_central_bookkeeping_at_10k_clients_keeps_no_dense_matrix() -> None:
    # Central clients send a dense row (the paper's wire format, 40 kB each here), so the
    # replies are built straight into the state; clustering is the sparse score graph's.
    algorithm = pfedlia(N, clustering="spectral", clusters=GROUPS)
    server = start(algorithm, N)
    ctx = SyntheticContext(algorithm, N)
    plan = algorithm.scoring_plan(ctx.clients, True, ctx.clients, ctx.rng("lia_peers"))
    rows = {}
    for i, peers in plan.items():
        columns = np.array(sorted([*peers, i]), dtype=np.int64)
        rows[i] = SparseRow(columns, np.where(columns % GROUPS == i % GROUPS, 1.0, -1.0))
    lia = lia_state(server)
    scores = lia.scores.with_rows(rows)
    server = with_lia(server, scores=scores, released=lia.released.with_rows(rows))
    clients = ctx.clients
    theta0 = {"w": torch.zeros(2)}
    server = algorithm.regroup(server, lambda members: theta0, True, clients, clients, [], clients)
    record = algorithm.record(server, 1, True, clients, {}, plan, clients)
    server = with_lia(server, records=(record,))
    assert_linear(server, N)
    assert record["clusters"] == GROUPS and record["ari"] == 1.0


def test_scored_zero_is_kept_apart_from_not_scored() -> None:
    dense = np.array([[0.0, np.nan], [np.nan, -1.0]])
    matrix = SparseMatrix.from_dense(dense)
    assert matrix.nnz == 2 and matrix[0, 0] == 0.0 and np.isnan(matrix[0, 1])
    np.testing.assert_array_equal(matrix.dense(), dense)
    row = SparseRow.empty().merged([1, 0], [0.0, np.nan])
    assert row.columns.tolist() == [1] and row.values.tolist() == [0.0]
    rebuilt = from_plain(to_plain(matrix))  # checkpoints hold it as plain arrays
    np.testing.assert_array_equal(rebuilt.dense(), dense)
    assert SparseMatrix.from_csr(matrix.csr()).nnz == 2  # scipy keeps the explicit 0


def _dense_agreed_peers(first: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """The dense agreement rule as it was before the matrices were sparse (reference; with
    the shares' lower bound, the clear majority, first-choice votes and following since)."""
    from plural.core.influence import _CLEAR_MAJORITY, _share_lower_bound, kmeans_peers

    n = len(first)
    choices = first | np.eye(n, dtype=bool)
    peers = choices
    for _ in range(5):
        voters = peers.astype(np.float64)
        yes, asked = voters @ choices, voters @ (scored | choices).astype(np.float64)
        kept = np.zeros((n, n), dtype=bool)
        for i in range(n):
            shares = _share_lower_bound(yes[i], asked[i])
            kept[i] = kmeans_peers(shares, i) | (np.nan_to_num(shares) >= _CLEAR_MAJORITY)
        kept &= kept.T
        if np.array_equal(kept, peers):
            break
        peers = kept
    return _dense_follow(peers, choices)


def _dense_follow(peers: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """Clients alone take the clients a majority of their first choices have as peers, if
    those choose them more often than they choose others (reference for
    ``follow_first_choices``)."""
    from plural.core.influence import _share_lower_bound

    n, out = len(peers), peers.copy()
    for i in np.flatnonzero(peers.sum(axis=1) == 1):
        voters = np.flatnonzero(choices[i])
        voters = voters[voters != i]
        if len(voters) == 0:
            continue
        held = peers[voters].sum(axis=0).astype(np.float64)
        followed = _share_lower_bound(held, np.full(n, float(len(voters)))) >= 0.5
        followed[i] = False
        members = np.flatnonzero(followed)
        if len(members) == 0:
            continue
        outside = ~followed
        outside[i] = False
        rate = choices[np.ix_(members, outside)].mean() if outside.any() else 0.0
        toward = np.array([float(choices[members, i].sum())])
        if _share_lower_bound(toward, np.array([float(len(members))]), z=2.0)[0] > rate:
            out[i] |= followed
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_and_dense_cluster_alike_at_small_n(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    groups = np.arange(n) % 3
    scores = np.where(groups[:, None] == groups[None, :], 0.5, -0.2) + rng.normal(0, 0.3, (n, n))
    scores[rng.random((n, n)) < 0.6] = np.nan  # about 40% of the pairs scored
    np.fill_diagonal(scores, 1.0)
    scores[0, 1] = 0.0
    sparse = SparseMatrix.from_dense(scores)
    np.testing.assert_array_equal(graph_clusters(sparse.csr()), graph_clusters(scores))
    first = np.array([np.nan_to_num(r, nan=-1.0) > 0.3 for r in scores])
    scored = np.isfinite(scores)
    expected = _dense_agreed_peers(first, scored)
    got = agreed_peers(csr_matrix(first), csr_matrix(scored))
    np.testing.assert_array_equal(got.toarray(), expected)
    np.testing.assert_array_equal(agreed_peers(first, scored), expected)
    np.testing.assert_array_equal(mutual_components(got), mutual_components(expected))
    assert neighbourhood_quality(got, groups) == neighbourhood_quality(expected, groups)


def _densified(value: Any) -> Any:
    """A checkpoint as written before pFedLIA's matrices were sparse (dense, NaN / False)."""
    if isinstance(value, SparseMatrix):
        return value.dense()
    if isinstance(value, SparseRow):
        return value.dense(6)
    if isinstance(value, dict):
        return {k: _densified(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_densified(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_densified(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _densified(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields) if fields else value
    return value


@pytest.mark.parametrize("variant", ["central", "decentral"])
def test_a_checkpoint_of_the_dense_layout_resumes_exactly(
    variant: str, tiny_config: dict[str, Any], tmp_path: Any, crash_after: Any
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["rounds"] = 4
    cfg["algorithm"] = {"name": "pfedlia", "warmup_rounds": 1, "variant": variant}
    whole = plural.run(cfg)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        plural.run(cfg, out=out, callbacks=[crash_after(2)])
    checkpoint = load_plain(out / "checkpoint.pt")
    assert isinstance(checkpoint["server"].part(LIAServerState).scores, SparseMatrix)
    save_plain(_densified(checkpoint), out / "checkpoint.pt")
    old = load_plain(out / "checkpoint.pt")
    assert isinstance(old["server"].part(LIAServerState).scores, np.ndarray)
    resumed = plural.run(cfg, out=out, resume=True)
    assert plural.core.params.max_abs_difference(whole.server.params, resumed.server.params) == 0
    for a, b in zip(lia_records(whole.server), lia_records(resumed.server), strict=True):
        np.testing.assert_array_equal(a["scores"], b["scores"])
        assert a["assignment"] == b["assignment"]
