"""pFedGraph (Ye et al. 2023, "Personalized Federated Learning with Inferred Collaboration
Graphs", ICML).

The server learns a collaboration graph ``A`` between clients and gives each client its own
aggregate ``sum_j A_ij w_j`` of the models of this round's cohort. Per round:

1. Each sampled client trains, from its aggregate (the server's plain average before it has
   one), on its loss minus ``lam * cos(w, c_i)``, with ``c_i = sum_j A_ij w_j / ||w_j||`` the
   direction of its neighbours' models, and sends its model ``w_i``.
2. For each sampled ``i`` the server infers row ``A_i`` over the cohort by solving

       min_a  alpha * ||a - p||^2 + sum_j a_j d_ij    over the probability simplex,

   with ``p`` the cohort's sample shares and ``d_ij = -cos(w_i - w_0, w_j - w_0)`` (updates
   from the initial model ``w_0``; ``-1`` when the cosine exceeds 0.9). The minimiser is the
   Euclidean projection of ``p - d_i / (2 alpha)`` onto the simplex (exact, closed form; the
   authors solve the same quadratic program with CVXPY).
3. The server stores each sampled client's aggregate and direction for its next round.

Defaults: ``alpha = 0.8`` and ``lam = 0.01``, the official code's. Choices: the similarity
uses every parameter (the official code's ``difference_measure: all``; its other option is the
dense layers only). The official code adds ``+lam * cos`` to the loss, which read literally
pushes the local model away from its neighbours; the paper describes (and this does) a pull
towards them. ``server.params`` is the sample-weighted mean of the last cohort's models: what
a client that has never been sampled is scored with and starts from. With a huge ``alpha`` the
graph is ``p`` for everyone and, with every client sampled and ``lam = 0``, pFedGraph is FedAvg.

Bytes: down, the client's aggregate and (from its second round) the direction ``c_i`` (a
model's worth of parameters); up, the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from plural.config import setting
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    RoundContext,
    ServerState,
    Update,
)
from plural.core.params import Params, flat
from plural.core.simplex import project_to_simplex
from plural.core.trainer import LocalTrainer, LossTerm
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["GraphMessage", "PFedGraph", "PFedGraphConfig", "PFedGraphState", "pfedgraph_state"]

SAME_DIRECTION = 0.9
"""A cosine above this counts as 1 (the official code's rule)."""


@dataclasses.dataclass(frozen=True)
class PFedGraphConfig:
    alpha: float = setting(
        0.8, help="weight alpha of ||a - p||^2 in the graph inference (larger: closer to p)", gt=0
    )
    lam: float = setting(
        0.01, help="weight of the pull -lam * cos(w, neighbours' direction) in local training", ge=0
    )


@dataclasses.dataclass(frozen=True)
class PFedGraphState:
    """pFedGraph's part of the server state (``server.params``: the cohort's weighted mean)."""

    KEY: ClassVar[str] = "pfedgraph"
    initial: Params
    """The initial model: client updates are measured from it."""
    names: tuple[str, ...]
    """The floating-point trainable entries that updates and directions flatten, in order."""
    graph: np.ndarray
    """(clients, clients) the collaboration graph, row ``i``: client ``i``'s weights."""
    models: Mapping[int, Params] = dataclasses.field(default_factory=dict)
    """Each client's latest aggregate (its starting and evaluated model)."""
    directions: Mapping[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Each client's neighbours' direction: its graph row over the unit client models."""


def pfedgraph_state(server: ServerState) -> PFedGraphState:
    """pFedGraph's part of ``server``."""
    return server.part(PFedGraphState)


@dataclasses.dataclass(frozen=True)
class GraphMessage:
    """Server to client: its starting model and its neighbours' direction (None at first)."""

    params: Params
    direction: torch.Tensor | None = None


def cosine_pull(direction: torch.Tensor, lam: float) -> LossTerm:
    """``-lam * <w, direction> / ||w||`` over the trained parameters (model order)."""

    def term(live: Mapping[str, nn.Parameter]) -> torch.Tensor:
        vector = torch.cat([p.reshape(-1) for p in live.values()])  # differentiable
        return -lam * torch.dot(direction.to(vector.dtype), vector) / vector.norm().clamp_min(1e-12)

    return term


def graph_rows(updates: np.ndarray, shares: np.ndarray, alpha: float) -> np.ndarray:
    """Row ``i``: the simplex point minimising ``alpha ||a - p||^2 + a . d_i`` (see above);
    ``updates`` is (cohort, d), ``shares`` the cohort's ``p``."""
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    unit = updates / np.clip(norms, 1e-300, None)
    cosine = np.clip(unit @ unit.T, -1.0, 1.0)
    difference = np.where(cosine > SAME_DIRECTION, -1.0, -cosine)
    return np.stack([project_to_simplex(shares - d / (2 * alpha)) for d in difference])


@ALGORITHMS.register(
    "pfedgraph",
    PFedGraphConfig,
    "pFedGraph: per-client aggregation over an inferred collaboration graph",
)
class PFedGraph(Algorithm):
    name = "pfedgraph"
    config: PFedGraphConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        n = info.num_clients
        graph = np.full((n, n), 1.0 / max(n - 1, 1))
        np.fill_diagonal(graph, 0.0)
        names = [k for k in (info.parameters or tuple(params)) if params[k].is_floating_point()]
        return ServerState(params).with_parts(PFedGraphState(params, tuple(names), graph))

    def message(self, server: ServerState, client_id: int) -> GraphMessage:
        kept = pfedgraph_state(server)
        start = kept.models.get(client_id, server.params)
        return GraphMessage(start, kept.directions.get(client_id))

    def broadcast(self, server: ServerState) -> GraphMessage:
        """pFedGraph's messages are per client; this is the message of a client never seen."""
        return GraphMessage(server.params)

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        messages = {cid: self.message(server, cid) for cid in cohort}
        updates = ctx.map("client_update", cohort, per_client=messages)
        return self.aggregate_cohort(server, list(cohort), updates)

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        raise NotImplementedError("pFedGraph runs its own round; see PFedGraph.round")

    def aggregate_cohort(
        self, server: ServerState, cohort: list[int], updates: list[Update]
    ) -> ServerState:
        """Infer the cohort's graph rows; store each client's aggregate and direction."""
        models = [u.params for u in updates]
        assert all(m is not None for m in models)
        kept = pfedgraph_state(server)
        names, initial = kept.names, kept.initial
        vectors = torch.stack([flat(m, names) for m in models])  # type: ignore[arg-type]
        start = flat(initial, names)
        counts = np.array([u.num_samples for u in updates], dtype=np.float64)
        shares = (
            counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
        )
        rows = graph_rows((vectors - start).numpy(), shares, self.config.alpha)
        unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-300)
        graph = kept.graph.copy()
        stored, directions = dict(kept.models), dict(kept.directions)
        for i, cid in enumerate(cohort):
            graph[cid, cohort] = rows[i]
            stored[cid] = weighted_models(models, rows[i], own=models[i])  # type: ignore[arg-type]
            directions[cid] = (torch.from_numpy(rows[i]) @ unit).to(torch.float32)
        mean = weighted_models(models, shares, own=models[0])  # type: ignore[arg-type]
        part = dataclasses.replace(kept, graph=graph, models=stored, directions=directions)
        return server.with_parts(part, params=mean)

    def client_update(
        self,
        message: GraphMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, None]:
        terms = []
        if message.direction is not None and self.config.lam > 0:
            terms.append(cosine_pull(message.direction, self.config.lam))
        train = client.train
        fit = trainer.fit(message.params, train.x, train.y, rng=rng, loss_terms=terms)
        return Update(len(train), fit.params, loss=fit.mean_loss), None

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return pfedgraph_state(server).models.get(client_id, server.params)

    def summary(self, server: ServerState) -> dict[str, Any]:
        return {"clients_with_aggregate": len(pfedgraph_state(server).models)}


def weighted_models(models: Sequence[Params], weights: np.ndarray, own: Params) -> Params:
    """``sum_j weights[j] * models[j]`` on floating-point entries (others: ``own``'s)."""
    out = {}
    for name, tensor in own.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        total = torch.zeros_like(tensor, dtype=torch.float64)
        for weight, model in zip(weights, models, strict=True):
            total += float(weight) * model[name].double()
        out[name] = total.to(tensor.dtype)
    return out
