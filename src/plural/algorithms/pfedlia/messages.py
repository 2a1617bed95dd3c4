"""pFedLIA's messages, client state and record helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from plural.algorithms.pfedlia.config import Votes
from plural.core.algorithm import ServerState
from plural.core.compression import CompressedDelta
from plural.core.influence import own_row_peers, standout_peers, upper_tier
from plural.core.params import Params
from plural.core.sparse_scores import SparseMatrix, SparseRow

# ---- messages and client state -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LazyReply:
    """Client to server: its lazy update, and how many samples it trained on (metadata)."""

    delta: CompressedDelta
    samples: int


@dataclasses.dataclass(frozen=True)
class ScoreMessage:
    """Server to client: the lazy updates to score (``theta0`` only if the client lacks it)."""

    theta0: Params | None
    peers: tuple[int, ...]
    deltas: tuple[CompressedDelta, ...]
    num_clients: int


@dataclasses.dataclass(frozen=True)
class ScoreReply:
    """Client to server: ``released`` is what it sends (central: its scores as float32 or its
    votes as int8, 0 = not scored; decentral: its peers' ids, with ``upper``, one bool a peer:
    in its upper tier, :func:`~plural.core.influence.upper_tier`, and ``standout``, the ids
    of :func:`~plural.core.influence.standout_peers`). ``scores`` is its row (the peers it
    scored and their scores), kept for measurement only: it is not communication and not
    counted."""

    released: torch.Tensor
    scores: SparseRow
    evaluated: int
    upper: torch.Tensor | None = None
    standout: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class LIAClientState:
    """What a client keeps: ``theta0`` and its lazy update between the lazy phase and its
    scoring, and its own score row (decentral clients re-choose peers from it): the peers it
    scored and their scores (checkpoints written before the scores were sparse hold a dense
    row, NaN where not scored: :func:`own_row` reads both)."""

    theta0: Params | None = None
    delta: CompressedDelta | None = None
    row: SparseRow | None = None


@dataclasses.dataclass(frozen=True)
class LIAServerState:
    """pFedLIA's own part of the server state, beside the per-cluster models and assignment
    of :class:`~plural.algorithms.clustered.ClusterState`. Frozen: a step returns a new one
    (:func:`with_lia`) and never writes into the arrays of the one it was given (a lazy
    phase copies before it writes)."""

    KEY: ClassVar[str] = "pfedlia"
    scores: SparseMatrix
    """(N, N) influence scores ``S[i, j]``, stored only where ``i`` scored ``j`` (O(N k) for
    k peers scored; a stored 0 is a score of 0)."""
    released: SparseMatrix
    """(N, N) what central clients sent, decoded (stored only where scored and sent)."""
    reference: np.ndarray
    """(N,) each client's lowest validation loss since it was clustered (``recluster:
    stale``)."""
    groups: np.ndarray | None = None
    """The true groups where the federation has them: only for the records' ARI and purity."""
    clustered: bool = False
    theta0: Params | None = None
    """The model the lazy phase started from (re-clustering scores against it too)."""
    deltas: Mapping[int, CompressedDelta] = dataclasses.field(default_factory=dict)
    """The lazy updates kept for re-clustering (``recluster: stale``)."""
    choices: SparseMatrix | None = None
    """Decentral: (N, N) bool, each client's first choice of peers (stored: chosen)."""
    peers: SparseMatrix | None = None
    """Decentral: (N, N) bool, the neighbourhoods clients train with (stored: a peer)."""
    upper: SparseMatrix | None = None
    """Decentral: (N, N) bool, each client's upper tier of its first choice (stored: in it;
    None in checkpoints written before the tiers were released)."""
    standout: SparseMatrix | None = None
    """Decentral: (N, N) bool, the clients standing out at the top of each client's row
    (stored: standing out; None in checkpoints written before they were released)."""
    stale: tuple[int, ...] = ()
    """Clients whose cluster went stale: they redo the lazy phase next round."""
    records: tuple[dict[str, Any], ...] = ()
    """One record per lazy phase (:func:`lia_records`)."""


def decentral_release(
    row: SparseRow, client_id: int, evaluated: int, marks: bool = True
) -> ScoreReply:
    """What a decentral client sends about its row (``evaluated``: metadata): its first choice
    (:func:`own_row_peers`) and, with ``marks`` (what the peers' agreement uses), which of
    those peers are in its upper tier (:func:`upper_tier`, one bool a peer) and the clients
    standing out at the top of its row (:func:`standout_peers`). Read from its scored
    entries only: the rules read a row's finite entries in column order, so the result is
    that of the dense row (NaN where not scored)."""
    columns, values = row.columns, row.values
    at = int(np.searchsorted(columns, client_id))
    if at == len(columns) or columns[at] != client_id:  # itself is always a peer
        columns, values = np.insert(columns, at, client_id), np.insert(values, at, np.nan)
    chosen = own_row_peers(values, at)
    peers = torch.as_tensor(columns[chosen], dtype=torch.int32)
    if not marks:
        return ScoreReply(peers, row, evaluated)
    return ScoreReply(
        released=peers,
        scores=row,
        evaluated=evaluated,
        upper=torch.as_tensor(upper_tier(values, chosen, at)[chosen]),
        standout=torch.as_tensor(columns[standout_peers(values, at)], dtype=torch.int32),
    )


def lia_state(server: ServerState) -> LIAServerState:
    """pFedLIA's own part of ``server`` (a dense one, from a checkpoint written before the
    matrices were sparse, is read as sparse)."""
    return upgraded(server.part(LIAServerState))


def upgraded(state: LIAServerState) -> LIAServerState:
    """``state`` with the dense (N, N) matrices of older checkpoints made sparse (NaN or
    False: not stored); a state already sparse is returned as it is."""
    if isinstance(state.scores, SparseMatrix):
        return state
    return dataclasses.replace(
        state,
        scores=as_sparse(state.scores),
        released=as_sparse(state.released),
        choices=as_sparse(state.choices),
        peers=as_sparse(state.peers),
        upper=as_sparse(state.upper),
        standout=as_sparse(state.standout),
        records=tuple(
            {
                k: as_sparse(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v
                for k, v in r.items()
            }
            for r in state.records
        ),
    )


def as_sparse(matrix: Any) -> Any:
    """A dense square matrix as :class:`SparseMatrix` (None and sparse ones as they are)."""
    return SparseMatrix.from_dense(matrix) if isinstance(matrix, np.ndarray) else matrix


def own_row(row: SparseRow | np.ndarray | None) -> SparseRow | None:
    """A client's kept score row as :class:`SparseRow` (older client states hold it dense)."""
    return SparseRow.from_dense(row) if isinstance(row, np.ndarray) else row


def with_lia(server: ServerState, **changes: Any) -> ServerState:
    """A new server state whose pFedLIA part has ``changes`` (the input is left alone)."""
    return server.with_parts(dataclasses.replace(lia_state(server), **changes))


NO_VALIDATION = (
    "pfedlia: client {client} has no validation samples; each client scores the lazy models on "
    "its own validation split, so use split.val > 0 (e.g. 0.1) or give clients more data"
)


DENSE_RECORDS = 2000
"""Up to this many clients :func:`lia_records` gives the matrices dense (32 MB each)."""


def lia_records(server: ServerState, dense: bool | None = None) -> list[dict[str, Any]]:
    """Every lazy phase of a pFedLIA run: round, scores (the influence matrix), assignment,
    peers (decentral), cost, privacy and cluster quality (``Results.server``).

    The matrices (``scores``, ``released``) are dense float arrays, NaN where not scored,
    when ``dense`` is True or (None) the federation has at most :data:`DENSE_RECORDS`
    clients; else the :class:`~plural.core.sparse_scores.SparseMatrix` kept (scored entries
    only; ``.csr()`` is a scipy view)."""
    state = server.part(LIAServerState, None)
    if state is None:
        return []
    state = upgraded(state)
    if dense is None:
        dense = len(state.reference) <= DENSE_RECORDS
    if not dense:
        return list(state.records)
    return [
        {k: v.dense() if isinstance(v, SparseMatrix) else v for k, v in r.items()}
        for r in state.records
    ]


def json_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A lazy-phase record without its matrices (those are saved as arrays)."""
    return {k: v for k, v in record.items() if not isinstance(v, (np.ndarray, SparseMatrix))}


def saved_matrix(matrix: np.ndarray | SparseMatrix) -> Any:
    """A record's matrix as an artifact: dense as it is (``.npy``), sparse as scipy CSR
    (``.npz``, scored entries only)."""
    return matrix.csr() if isinstance(matrix, SparseMatrix) else matrix


def decoded(released: torch.Tensor, votes: Votes) -> SparseRow:
    """A central client's released row, the entries it scored only (raw: not NaN; votes: not
    0, which is "not scored")."""
    values = released.double().numpy()
    if votes != "raw":
        values = np.where(values == 0, np.nan, values)
    return SparseRow.from_dense(values)


def inherited_clusters(previous: np.ndarray, labels: np.ndarray, moved: set[int]) -> list[int]:
    """For each new cluster, the old cluster whose model it continues: the one most of its
    members that were not re-scored belonged to (all members if every one was; ties: the
    lowest old cluster)."""
    source = []
    for cluster in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == cluster)
        stayed = [m for m in members if m not in moved] or list(members)
        source.append(int(np.bincount(previous[stayed]).argmax()))
    return source
