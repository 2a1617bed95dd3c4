"""CFL's server: per-cluster FedAvg and recursive splits (see the package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from plural.algorithms.cfl.config import CFLConfig
from plural.algorithms.fedavg import FedAvg
from plural.core.aggregation import group_generators
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    RoundContext,
    ServerState,
    Update,
)
from plural.core.params import Params
from plural.core.server_opt import server_step
from plural.core.similarity import (
    bipartition,
    cosine_similarities,
    flat_delta,
    separation_gap,
    update_alignment,
    update_norms,
)
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class CFLState:
    """CFL's part of the server state (see the module docstring)."""

    KEY: ClassVar[str] = "cfl"
    names: tuple[str, ...]
    """The entries whose updates are compared (the trainable ones)."""
    clusters: tuple[tuple[int, ...], ...]
    models: tuple[Params, ...]
    opt: tuple[dict[str, Any], ...]
    updates: Mapping[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Each client's latest flat update."""
    norms: tuple[dict[str, float], ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    splits: tuple[dict[str, Any], ...] = ()
    proposals: Mapping[int, Mapping[int, int]] = dataclasses.field(default_factory=dict)
    """The bipartition last proposed for each cluster (client -> side), for ``repeated_split``."""


def cfl_state(server: ServerState) -> CFLState:
    """CFL's part of ``server``."""
    return server.part(CFLState)


@dataclasses.dataclass(frozen=True)
class ClusterRound:
    """One cluster's participants this round: client ids, updates and their flat deltas."""

    index: int
    clients: list[int]
    updates: list[Update]
    deltas: torch.Tensor  # (participants, dim) float32


@ALGORITHMS.register(
    "cfl", CFLConfig, "CFL: FedAvg in clusters split recursively by update similarity"
)
class CFL(FedAvg):
    """Clustered Federated Learning (Sattler et al. 2020); see the module docstring."""

    name = "cfl"
    config: CFLConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        names = list(info.parameters) or [n for n, t in params.items() if t.is_floating_point()]
        clients = tuple(range(info.num_clients))
        state = CFLState(tuple(names), (clients,), (params,), ({},))
        return ServerState(params).with_parts(state)

    def _cluster_of(self, server: ServerState) -> dict[int, int]:
        return {c: k for k, members in enumerate(cfl_state(server).clusters) for c in members}

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        """The model of the client's cluster."""
        return cfl_state(server).models[self._cluster_of(server)[client_id]]

    def server_models(self, server: ServerState) -> dict[str, Params]:
        """The cluster models, for scoring on the server's test set."""
        return {f"cluster{k}": model for k, model in enumerate(cfl_state(server).models)}

    def cluster_assignment(self, server: ServerState) -> np.ndarray:
        cluster_of = self._cluster_of(server)  # the clusters partition the clients
        return np.array([cluster_of[c] for c in range(len(cluster_of))], dtype=np.int64)

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        """Train every participant from its cluster's model, average per cluster, then split
        the clusters that meet the criteria (Sattler et al. 2020, Algorithm 1)."""
        cluster_of = self._cluster_of(server)
        models = cfl_state(server).models
        per_client = {c: ModelMessage(models[cluster_of[c]]) for c in cohort}
        replies = ctx.map("client_update", cohort, per_client=per_client)
        drop = self.config.drop_stragglers
        used = [(c, u) for c, u in zip(cohort, replies, strict=True) if u.complete or not drop]
        return self._aggregate_clusters(server, used, ctx.round, ctx.rng("aggregate"))

    def _aggregate_clusters(
        self,
        server: ServerState,
        used: list[tuple[int, Update]],
        round_index: int,
        rng: np.random.Generator | None = None,
    ) -> ServerState:
        kept = cfl_state(server)
        names = list(kept.names)
        clusters = [list(m) for m in kept.clusters]
        models, opt = list(kept.models), list(kept.opt)
        stored = dict(kept.updates)
        cluster_of = self._cluster_of(server)
        rounds: list[ClusterRound] = []
        for k in range(len(clusters)):
            mine = [(c, u) for c, u in used if cluster_of[c] == k]
            if not mine:
                continue
            deltas = torch.stack([flat_delta(u.params, models[k], names) for _, u in mine])
            rounds.append(ClusterRound(k, [c for c, _ in mine], [u for _, u in mine], deltas))
            stored.update({c: deltas[i].clone() for i, (c, _) in enumerate(mine)})
        norms: list[dict[str, float]] = [{} for _ in clusters]
        splits = list(kept.splits)
        proposals = {k: dict(v) for k, v in kept.proposals.items()}
        generators = group_generators(rng, len(clusters), self.aggregation.needs_rng)
        for cr in rounds:
            weights = self.weights(cr.updates)
            mean_norm, max_norm = update_norms(cr.deltas, weights)
            alignment = update_alignment(cr.deltas, weights)
            norms[cr.index] = {"mean": mean_norm, "max": max_norm, "alignment": alignment}
            old = models[cr.index]
            models[cr.index], opt[cr.index] = self._step(
                old, cr.updates, opt[cr.index], generators[cr.index]
            )
            if not self._should_split(norms[cr.index], round_index, len(clusters)):
                continue
            record = self._split(
                cr, clusters, models, opt, stored, old, proposals, generators[cr.index]
            )
            if record is not None:
                splits.append(
                    {"round": round_index, "cluster": cr.index, **norms[cr.index], **record}
                )
                norms.append(dict(norms[cr.index]))
        state = CFLState(
            kept.names,
            tuple(tuple(m) for m in clusters),
            tuple(models),
            tuple(opt),
            stored,
            tuple(norms),
            (*kept.history, {"round": round_index, "norms": norms}),
            tuple(splits),
            proposals,
        )
        return server.with_parts(state, params=models[0])

    def _step(
        self,
        params: Params,
        updates: list[Update],
        state: dict[str, Any],
        rng: np.random.Generator | None = None,
    ) -> tuple[Params, dict[str, Any]]:
        """FedAvg on one cluster: the weighted mean of its models, through the server optimizer."""
        target = self.target(ServerState(params), updates, rng)
        return server_step(params, target, state, self.config.server_settings())

    def _should_split(self, norms: dict[str, float], round_index: int, num_clusters: int) -> bool:
        """Sattler et al.'s split criteria: absolute when eps1 is set, else scale-free."""
        cfg = self.config
        if round_index < cfg.min_rounds:
            return False
        if cfg.max_clusters is not None and num_clusters >= cfg.max_clusters:
            return False
        if cfg.eps2 is not None and norms["max"] <= cfg.eps2:
            return False
        if cfg.eps1 is not None:
            return norms["mean"] < cfg.eps1
        return norms["alignment"] < cfg.max_alignment

    def _split(
        self,
        cr: ClusterRound,
        clusters: list[list[int]],
        models: list[Params],
        opt: list[dict[str, Any]],
        stored: dict[int, torch.Tensor],
        old: Params,
        proposals: dict[int, dict[int, int]],
        rng: np.random.Generator | None = None,
    ) -> dict[str, Any] | None:
        """Split cluster ``cr.index`` in two (in place); None when a child would be too small.

        Both children start from the parent's model before this round averaged with their
        own participants' models (FedAvg on each child)."""
        members = sorted(clusters[cr.index])
        known = [c for c in members if c in stored]
        if len(known) < 2:
            return None
        similarity = cosine_similarities(torch.stack([stored[c] for c in known]))
        labels = bipartition(similarity)
        proposal = dict(zip(known, labels.tolist(), strict=True))
        repeated = self._repeats(proposal, proposals.get(cr.index))
        proposals[cr.index] = proposal
        parts = [[c for c, lab in zip(known, labels, strict=True) if lab == s] for s in (0, 1)]
        parts[0] = sorted(set(members) - set(parts[1]))  # unseen members join the first child
        if min(len(p) for p in parts) < self.config.min_cluster_size:
            return None
        cross = similarity[np.ix_(labels == 0, labels == 1)]
        gap = separation_gap(similarity, labels)
        if not self._separated(gap, repeated):
            return None  # the two parts are not more alike inside than across: no real groups
        del proposals[cr.index]
        for side, part in enumerate(parts):
            mine = [u for c, u in zip(cr.clients, cr.updates, strict=True) if c in part]
            model, state = (
                self._step(old, mine, opt[cr.index], rng) if mine else (old, opt[cr.index])
            )
            if side == 0:
                clusters[cr.index], models[cr.index], opt[cr.index] = part, model, state
            else:
                clusters.append(part)
                models.append(model)
                opt.append(state)
        return {
            "children": parts,
            "max_cross_similarity": float(cross.max()),
            "separation_gap": gap,
            "repeated": repeated,
        }

    def _separated(self, gap: float, repeated: bool) -> bool:
        """Whether the children are apart enough: a gap above ``min_separation``, or above
        half of it for a bipartition proposed at the cluster's previous check too."""
        threshold = self.config.min_separation
        if threshold is None:
            return True
        return gap > threshold or (self.config.repeated_split and repeated and gap > threshold / 2)

    def _repeats(self, proposal: Mapping[int, int], previous: Mapping[int, int] | None) -> bool:
        """Whether ``proposal`` splits the clients both proposals saw as ``previous`` did
        (ARI >= 0.9): true groups propose the same split round after round, IID clients a
        new one each time."""
        if previous is None:
            return False
        common = sorted(set(proposal) & set(previous))
        if len(common) < 2 * self.config.min_cluster_size:
            return False
        now, before = [proposal[c] for c in common], [previous[c] for c in common]
        return bool(adjusted_rand_score(before, now) >= 0.9)
