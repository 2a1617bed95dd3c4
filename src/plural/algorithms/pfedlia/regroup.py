"""pFedLIA's clustering step: central clusters or decentral neighbourhoods, records."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from plural.algorithms.pfedlia.config import (
    PFedLIAConfig,
)
from plural.algorithms.pfedlia.messages import (
    ScoreReply,
    inherited_clusters,
    lia_state,
    with_lia,
)
from plural.core.aggregators import weighted_mean
from plural.core.algorithm import ServerState, Update
from plural.core.cluster_quality import group_agreement
from plural.core.influence import (
    absorptions_the_rows_confirm,
    agreed_peers,
    fixed_clusters,
    influence_features,
    keep_probability,
    merge_alike_clusters,
    mutual_components,
    neighbourhood_quality,
    optics_fit,
    placed_noise,
    row_epsilon,
    settled_clusters,
    split_unalike_clusters,
)
from plural.core.params import Params
from plural.core.score_graph import graph_clusters
from plural.core.sparse_scores import SparseMatrix, SparseRow

# 'auto': where OPTICS calls more than this share of the clients noise, the rows carry no
# density structure it can use, and the score graph is clustered instead. Measured OPTICS noise
# shares: 0.00 on real matrices it clusters right (rotation, label swap, class pairs, mixed at
# 200 clients; fortunes), 0.82-0.94 where it fails (1,000 clients of 14 validation images:
# ARI 0.27 after merging, spectral 1.00; 200 clients of 7); benchmarks/README.md.
OPTICS_NOISE_LIMIT = 0.5


class Regrouping:
    """Clustering from the released scores, records and staleness (part of
    :class:`~plural.algorithms.pfedlia.algorithm.PFedLIA`)."""

    config: PFedLIAConfig

    def regroup(
        self,
        server: ServerState,
        start: Callable[[Sequence[int]], Params],
        first: bool,
        lazy_clients: list[int],
        scorers: list[int],
        replies: Sequence[ScoreReply],
        clients: Sequence[int],
    ) -> ServerState:
        """New clusters (central) or neighbourhoods (decentral) of ``clients`` (those that
        take part), with the models they start from: the first time, ``start`` of their
        members (see ``cluster_start``); on re-clustering, the models the clusters had.
        Clients that never train (unseen) are in no one's neighbourhood, and join cluster 0
        (they are served as newcomers)."""
        n = len(self.assignment(server))
        if self.config.variant == "decentral":
            server, peers = self.neighbourhoods(server, first, scorers, replies)
            labels = mutual_components(peers.csr())
            if first:
                models = [start(peers.chosen(i).tolist()) for i in range(n)]
                return self.with_clusters(server, models, labels, [{} for _ in range(n)])
            return self.with_clusters(
                server,
                models=self.rejoined_neighbours(server, peers, lazy_clients),
                assignment=labels,
            )
        part = np.asarray(clients, dtype=np.int64)
        labels = np.zeros(n, dtype=np.int64)
        labels[part] = self.central_clusters(lia_state(server).released.submatrix(part))
        k = int(labels.max()) + 1
        if first:
            models = [start(np.flatnonzero(labels == c).tolist()) for c in range(k)]
            return self.with_clusters(server, models, labels, [{} for _ in range(k)])
        source = inherited_clusters(self.assignment(server), labels, set(lazy_clients))
        models, opts = self.models(server), self.opt_states(server)
        return self.with_clusters(
            server, [models[s] for s in source], labels, [dict(opts[s]) for s in source]
        )

    def neighbourhoods(
        self, server: ServerState, first: bool, scorers: list[int], replies: Sequence[ScoreReply]
    ) -> tuple[ServerState, SparseMatrix]:
        """Decentral: the scorers' new first choices, upper tiers and standouts (the others'
        kept on re-clustering) and the neighbourhoods agreed from them, stored sparse (a few
        peers a client)."""
        lia = lia_state(server)
        n = lia.scores.n
        empty = SparseMatrix.empty(n, bool)
        fresh = first or lia.choices is None
        # Re-clustering keeps the clients' that are not re-scored. A checkpoint from before
        # tiers and standouts were released has none (None): then neither rule is used.
        choices = empty if fresh else lia.choices
        upper = empty if fresh else lia.upper
        standout = empty if fresh else lia.standout
        chosen, ranked_high, singled_out = {}, {}, {}
        for i, reply in zip(scorers, replies, strict=True):
            ids = reply.released.numpy().astype(np.int64)
            chosen[i] = _bool_row(ids)
            if reply.upper is not None and reply.standout is not None:  # peer_agreement
                ranked_high[i] = _bool_row(ids[reply.upper.numpy().astype(bool)])
                singled_out[i] = _bool_row(reply.standout.numpy().astype(np.int64))
        choices = choices.with_rows(chosen)
        upper = None if upper is None else upper.with_rows(ranked_high)
        standout = None if standout is None else standout.with_rows(singled_out)
        peers = choices
        if self.config.peer_agreement:
            # Who scored whom (the scoring plans, not the scores): a peer votes only on the
            # clients it has an opinion on.
            scored = lia.scores.stored().csr()
            marks = [None if m is None else m.csr() for m in (upper, standout)]
            peers = SparseMatrix.from_csr(agreed_peers(choices.csr(), scored, *marks))
        server = with_lia(server, choices=choices, upper=upper, standout=standout, peers=peers)
        return server, peers

    def central_clusters(self, released: SparseMatrix) -> np.ndarray:
        cfg = self.config
        if self.clustering() == "spectral":  # the sparse score graph (plural.core.score_graph)
            return graph_clusters(released.csr(), cfg.clusters, cfg.noise)
        # OPTICS and average linkage cluster the rows as points, on (N, N) NaN-aware
        # distances that are dense whatever the scores: the rows are made dense here, for
        # this step only (NaN: not scored), and nothing dense is kept.
        scores = released.dense()
        symmetrize = self.partial_scoring() if cfg.symmetrize is None else cfg.symmetrize
        features = influence_features(scores, cfg.normalize, symmetrize)
        if cfg.clusters is not None:
            return fixed_clusters(features, cfg.clusters)
        fit = optics_fit(features, cfg.min_samples, cfg.xi)
        if cfg.clustering == "auto" and np.mean(fit.absorbed == -1) > OPTICS_NOISE_LIMIT:
            labels = graph_clusters(released.csr(), cfg.clusters, cfg.noise)
            # The graph's test asks whether a split beats a graph without groups, which weak
            # real structure passes (an IID federation at 200 clients split in two halves
            # that score each other as much as themselves); the merge asks whether the split
            # matters, as it does after OPTICS.
            if cfg.merge_share is None:
                return labels
            return settled_clusters(scores, labels, cfg.merge_share)
        if cfg.merge_share is None:
            return placed_noise(fit.absorbed, fit.distances, cfg.noise)
        # The scores check what row distances decided (benchmarks/README.md, "Noisy clients"):
        # placements of left-out clients their rows do not confirm are undone, clusters of
        # unalike halves split, alike clusters merged and split again (singletons OPTICS
        # left out pair on a high draw, and the pair grows with two groups of 3), then
        # misplaced clients moved. The score graph's clusters are not split: halves of its
        # large noisy groups score each other low (1,000 clients, mixed: ARI 1.00 -> 0.82).
        confirmed = absorptions_the_rows_confirm(scores, fit, cfg.merge_share)
        labels = placed_noise(confirmed, fit.distances, cfg.noise)
        labels = split_unalike_clusters(scores, labels, cfg.merge_share)
        merged = merge_alike_clusters(scores, labels, cfg.merge_share)
        labels = split_unalike_clusters(scores, merged, cfg.merge_share)
        return settled_clusters(scores, labels, cfg.merge_share)

    def clustering(self) -> str:
        """The central clustering that runs first: ``clustering``, where 'auto' is 'spectral'
        when clients score a subset of their peers (the score graph is sparse) and 'optics'
        otherwise (which hands over to 'spectral' when OPTICS calls most clients noise)."""
        if self.config.clustering != "auto":
            return self.config.clustering
        return "spectral" if self.partial_scoring() else "optics"

    def rejoined_neighbours(
        self, server: ServerState, peers: SparseMatrix, moved: list[int]
    ) -> list[Params]:
        """Decentral re-clustering: a re-scored client starts from the mean of its new peers'
        models (its own model fitted the data it had before)."""
        models = self.models(server)
        for i in moved:
            others = [j for j in peers.chosen(i) if j != i]
            if others:
                models[i] = weighted_mean([(models[j], 1.0) for j in others])
        return models

    def record(
        self,
        server: ServerState,
        round_index: int,
        first: bool,
        lazy_clients: list[int],
        cost: dict[str, Any],
        plan: Mapping[int, list[int]],
        clients: Sequence[int],
    ) -> dict[str, Any]:
        """What one lazy phase found and cost (see :func:`lia_records`); its quality against
        the true groups is of ``clients``, those that take part."""
        lia, cfg = lia_state(server), self.config
        assignment = self.assignment(server)
        record: dict[str, Any] = {
            "round": round_index,
            "kind": "cluster" if first else "recluster",
            "lazy_clients": list(lazy_clients),
            "scores": lia.scores,  # sparse, never written into
            "assignment": assignment.tolist(),
            "clusters": len(np.unique(assignment)),
            "cost": cost,
        }
        if cfg.variant == "central" and cfg.votes != "raw":
            record["released"] = lia.released
        if cfg.votes == "private":
            per_row = max(len(p) for p in plan.values()) + 1
            record["privacy"] = {
                "epsilon_per_vote": cfg.epsilon,
                "votes_per_row": per_row,
                "epsilon_per_row": row_epsilon(cfg.epsilon, per_row),
                "keep_probability": keep_probability(cfg.epsilon),
            }
        part = np.asarray(clients, dtype=np.int64)
        groups = None if lia.groups is None else lia.groups[part]
        if lia.peers is not None and lia.choices is not None:  # decentral
            record["peers"] = [lia.peers.chosen(i).tolist() for i in range(lia.peers.n)]
            if groups is not None:
                taking_part = lia.peers.submatrix(part).csr()
                record["neighbourhoods"] = neighbourhood_quality(taking_part, groups)
                first_choices = lia.choices.submatrix(part).csr()
                record["first_choices"] = neighbourhood_quality(first_choices, groups)
        if groups is not None:
            record.update(group_agreement(groups, assignment[part]))
        return record

    # ---- server side: staleness ----------------------------------------------------------------

    def watch_staleness(
        self, server: ServerState, cohort: Sequence[int], updates: Sequence[Update]
    ) -> ServerState:
        """Flag clients whose validation loss under their cluster's model rose by more than
        ``stale_rise`` over its lowest since they were clustered; they re-run the lazy phase
        at the start of the next round."""
        lia = lia_state(server)
        reference = lia.reference.copy()
        stale = set(lia.stale)
        for client, update in zip(cohort, updates, strict=True):
            loss = update.val_loss
            if not math.isfinite(loss):
                continue
            if loss > reference[client] + self.config.stale_rise:
                stale.add(client)
            else:
                reference[client] = min(reference[client], loss)
        return with_lia(server, reference=reference, stale=tuple(sorted(stale)))


def _bool_row(columns: np.ndarray) -> SparseRow:
    """A sparse bool row, True at ``columns``."""
    columns = np.unique(columns)
    return SparseRow(columns, np.ones(len(columns), dtype=bool))
