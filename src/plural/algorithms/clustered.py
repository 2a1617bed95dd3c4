"""Clustered federated learning: one model per cluster of clients, FedAvg inside each cluster.

:class:`Clustered` is the shared base: the server keeps ``k`` models (:class:`ClusterState`,
``server.params`` is model 0) and each client's last known cluster (``-1`` for unknown).
Every cluster's model is the FedAvg (:class:`~plural.algorithms.fedavg.FedAvg` weights,
target and server optimizer) of the updates of its members; a cluster without members this
round keeps its model. A client is evaluated with its cluster's model. Subclasses only say
how clients find their cluster.

Subclasses: :class:`~plural.algorithms.ifca.IFCA`, :class:`~plural.algorithms.oracle.Oracle`,
:class:`~plural.algorithms.pfedlia.PFedLIA`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from plural.algorithms.fedavg import FedAvg
from plural.core.aggregation import GROUP_SHARE, group_generators
from plural.core.algorithm import ServerState, Update, reported_cluster
from plural.core.params import Params
from plural.core.server_opt import AveragingState, averaging, server_step

__all__ = ["ClusterState", "Clustered", "ModelsMessage", "cluster_state"]


@dataclasses.dataclass(frozen=True)
class ModelsMessage:
    """Server to client: every cluster's model (``k`` models down)."""

    models: tuple[Params, ...]


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """A clustered method's part of the server state."""

    KEY: ClassVar[str] = "clusters"
    models: tuple[Params, ...]
    assignment: np.ndarray
    """Each client's last known cluster, -1 where unknown."""
    opt_states: tuple[dict[str, Any], ...]
    """Each model's server-optimizer state."""


def cluster_state(server: ServerState) -> ClusterState:
    """The clusters of a clustered method's server state."""
    return server.part(ClusterState)


class Clustered(FedAvg):
    """Per-cluster models, per-cluster FedAvg aggregation, evaluation by cluster."""

    # ---- server state ------------------------------------------------------------------------

    @staticmethod
    def models(server: ServerState) -> list[Params]:
        return list(cluster_state(server).models)

    @staticmethod
    def opt_states(server: ServerState) -> list[dict[str, Any]]:
        return list(cluster_state(server).opt_states)

    def server_models(self, server: ServerState) -> dict[str, Params]:
        """The cluster models, for scoring on the server's test set."""
        return {f"cluster{k}": model for k, model in enumerate(self.models(server))}

    @staticmethod
    def assignment(server: ServerState) -> np.ndarray:
        return cluster_state(server).assignment.copy()  # a copy: states are immutable

    @staticmethod
    def with_clusters(
        server: ServerState,
        models: Sequence[Params] | None = None,
        assignment: np.ndarray | None = None,
        opt_states: Sequence[dict[str, Any]] | None = None,
    ) -> ServerState:
        """A new server state with the given parts replaced (``params``: model 0)."""
        kept = cluster_state(server)
        part = ClusterState(
            kept.models if models is None else tuple(models),
            kept.assignment if assignment is None else np.array(assignment, dtype=np.int64),
            kept.opt_states if opt_states is None else tuple(opt_states),
        )
        return server.with_parts(part, params=part.models[0])

    def start(self, models: list[Params], assignment: np.ndarray) -> ServerState:
        """The initial server state from ``k`` models and an initial assignment."""
        assignment = np.array(assignment, dtype=np.int64)
        part = ClusterState(tuple(models), assignment, tuple({} for _ in models))
        return ServerState(models[0]).with_parts(part)

    # ---- aggregation -------------------------------------------------------------------------

    def aggregate_clusters(
        self,
        server: ServerState,
        updates: Sequence[Update],
        clusters: Sequence[int],
        rng: np.random.Generator | None = None,
    ) -> ServerState:
        """FedAvg of each cluster's updates; clusters without updates keep their model."""
        feeds = [
            [u for u, c in zip(updates, clusters, strict=True) if c == j]
            for j in range(len(self.models(server)))
        ]
        return self.step_models(server, feeds, rng)

    def step_models(
        self,
        server: ServerState,
        feeds: Sequence[Sequence[Update]],
        rng: np.random.Generator | None = None,
    ) -> ServerState:
        """Model ``j`` takes one FedAvg step (weights, aggregation chain and server optimizer
        of :class:`FedAvg`) on the updates ``feeds[j]``; a model without updates is kept.
        Each cluster runs the chain on its own, with its own chain state and generator."""
        models = self.models(server)
        opt_states = self.opt_states(server)
        kept = averaging(server)
        chain_states = cluster_chain_states(kept.aggregation, len(models))
        generators = group_generators(rng, len(models), self.aggregation.needs_rng)
        settings = self.config.server_settings()
        shares = self.group_shares(server, len(models))
        for j, members in enumerate(feeds):
            used = self.used_updates(list(members))
            if not used:
                continue
            state = {**chain_states[j], GROUP_SHARE: shares[j]}
            target, state = self.combine(ServerState(models[j]), used, generators[j], state)
            chain_states[j] = {k: v for k, v in state.items() if k != GROUP_SHARE}
            models[j], opt_states[j] = server_step(models[j], target, opt_states[j], settings)
        server = self.with_clusters(server, models=models, opt_states=opt_states)
        if any(chain_states):
            server = server.with_parts(AveragingState(kept.server_opt, chain_states))
        return server

    def group_shares(self, server: ServerState, count: int) -> list[float]:
        """The share of the clients each of ``count`` models serves, from the server's last
        known assignment (before any, an equal split): known before the round's updates
        arrive, so a fixed DP denominator per cluster stays a fixed one."""
        assignment = np.asarray(self.assignment(server))
        known = assignment[assignment >= 0]
        if len(known) == 0:
            return [1.0 / count] * count
        return [float(np.mean(known == j)) for j in range(count)]

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        """Aggregation from the clusters the clients reported in ``Update.extra``."""
        return self.aggregate_clusters(server, updates, [reported_cluster(u) for u in updates], rng)

    # ---- evaluation --------------------------------------------------------------------------

    def cluster_of(self, server: ServerState, state: Any, client_id: int) -> int:
        """The cluster that evaluates ``client_id``: the server's last known one, else 0."""
        known = int(self.assignment(server)[client_id])
        return known if known >= 0 else 0

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return self.models(server)[self.cluster_of(server, state, client_id)]

    def cluster_assignment(self, server: ServerState) -> np.ndarray | None:
        return self.assignment(server).copy()


def cluster_chain_states(stored: Any, count: int) -> list[dict[str, Any]]:
    """One aggregation-chain state per model: the stored list, extended for new clusters;
    a single state (left by global FedAvg rounds before clustering, e.g. pFedLIA's warm-up)
    is inherited by every cluster."""
    if isinstance(stored, list):
        return [dict(s) for s in stored] + [{} for _ in range(count - len(stored))]
    return [dict(stored or {}) for _ in range(count)]
