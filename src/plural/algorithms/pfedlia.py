"""pFedLIA (Rokvic, Danassis, Faltings 2025, "Lazy But Effective: Collaborative Personalized
Federated Learning with Heterogeneous Data", arXiv 2505.02540): clients cluster themselves by
a lazy influence approximation, then train FedAvg inside their cluster.

The run, round by round:

1. **Warm-up** (rounds ``1..warmup_rounds``): FedAvg over the whole federation gives the
   shared start ``theta0`` (the initial model when ``warmup_rounds`` is 0).
2. **Lazy phase** (start of round ``warmup_rounds + 1``, every client takes part whatever the
   sampling): client ``j`` trains ``lazy_epochs`` epochs from ``theta0`` on its training split
   and uploads ``theta_j - theta0`` (optionally compressed: ``compression``). The server relays
   to each client the lazy models it is to score (all others, or a random ``peers_scored``
   share of them).
3. **Influence**: client ``i`` scores each lazy model on its *own* validation split,
   ``S[i, j] = L_i(theta0) - L_i(theta_j)`` (``score: accuracy``: ``A_i(theta_j) -
   A_i(theta0)``); positive means ``j``'s data helps ``i``. It scores its own lazy model too.
4. **Clustering**, once by default:

   * ``variant: central``: clients send their score rows (raw, sign votes, or differentially
     private votes by randomized response, as in the lazy-influence paper, Rokvic et al.
     2022, arXiv 2205.11518); the server clusters them with OPTICS on the normalised rows
     (``normalize``, ``symmetrize``; the default), which resolves small close groups but
     cuts groups of 50+ clients apart, or (``clustering: spectral``) spectrally on the graph
     of mutually helpful scores, finding the number of clusters itself
     (:mod:`plural.algorithms.score_graph`; ``clusters`` sets it instead), which holds for
     large well-separated groups but merges close small ones.
   * ``variant: decentral`` (peer to peer): each client clusters its own row with 1-D
     k-means (k=2) and keeps the helpful side as its peers. Its scores never leave it.
5. **Training** (same round onwards): FedAvg inside each cluster (central), or for each client
   the FedAvg of its peers' models (decentral: each client has its own neighbourhood model).
   The updates are FedAvg's (weights, server optimizer, stragglers all apply).

Beyond the paper: ``recluster: stale`` watches each client's validation loss under its
cluster's model and re-runs the lazy phase for the clients whose loss rose by more than
``stale_rise`` over its lowest since they were clustered (data drift), then re-clusters with
their new rows and columns; ``peers_scored`` and ``compression`` cut the lazy phase's traffic;
``votes: private`` gives epsilon-DP votes.

Choices the paper leaves open, and why:

* ``normalize: row`` (default): each row divided by its largest absolute score, so clients
  whose validation loss moves a lot (small or hard validation sets) do not dominate the
  distances; the pattern of who helps whom is what groups clients.
* ``clustering: optics`` (default) or ``spectral``, see :mod:`plural.algorithms.score_graph`
  (neither is right for every federation yet: see the ``clustering`` setting); a client
  with no mutually helpful peer becomes its own cluster (``noise: own``) or joins the
  cluster it scores highest (``noise: nearest``). With ``clustering: optics``:
  OPTICS ``min_samples: 3``, ``xi: 0.05`` (scikit-learn's default ``xi``); a client OPTICS
  leaves as noise becomes its own cluster (``noise: own``) so a client that no one helps
  (e.g. one with corrupted labels) trains on its own, or joins the nearest cluster
  (``noise: nearest``). Missing scores (``peers_scored < 1``) are handled by NaN-aware
  Euclidean distances. ``peers_scored`` above 1 is a count of peers (e.g. 20), so that
  each client's scoring work and the relayed bytes stay bounded as the federation grows.
* Decentral training is simulated with the server as a relay: a client receives the average
  of its peers' models (one model down, one up); ``peer_exchange_bytes`` in the lazy-phase
  record is what a true peer-to-peer exchange of lazy models costs.
* The lazy phase's cost is recorded separately from training (``server.extra["lia_records"]``
  and ``summary.json``): client compute as samples trained and evaluated, wall time, and bytes.
  The round's metric rows count all bytes, lazy phase included.

Measured defaults: see ``benchmarks/README.md`` (pFedLIA section).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from plural.algorithms.clustered import Clustered
from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.influence import (
    CompressedDelta,
    Compression,
    NoisePolicy,
    Normalize,
    compress,
    decompress,
    fixed_clusters,
    influence_features,
    keep_probability,
    kmeans_peers,
    mutual_components,
    neighbourhood_quality,
    optics_clusters,
    randomized_response,
    row_epsilon,
    sign_votes,
)
from plural.algorithms.score_graph import graph_clusters
from plural.config import ConfigError, setting
from plural.core.aggregators import weighted_mean
from plural.core.algorithm import FederationInfo, ModelMessage, RoundContext, ServerState, Update
from plural.core.batched_eval import evaluate_stacked, stack_params
from plural.core.params import Params, nbytes
from plural.core.trainer import EvalResult, LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["PFedLIA", "PFedLIAConfig", "lia_records"]

Variant = Literal["central", "decentral"]
ScoreKind = Literal["loss", "accuracy"]
Votes = Literal["raw", "sign", "private"]
Recluster = Literal["never", "stale"]
Clustering = Literal["spectral", "optics"]


@dataclasses.dataclass(frozen=True)
class PFedLIAConfig(AveragingConfig):
    """pFedLIA's settings; averaging settings (weighting, server optimizer) apply per cluster."""

    variant: Variant = setting(
        "central",
        help="'central': the server clusters the clients' score rows with OPTICS; "
        "'decentral': each client keeps the peers on the helpful side of its own row (k-means, "
        "k=2) and trains with their models",
    )
    warmup_rounds: int = setting(
        5, help="FedAvg rounds over the whole federation before the lazy phase", ge=0
    )
    lazy_epochs: int = setting(
        1, help="k: local epochs each client trains from theta0 in the lazy phase", ge=1
    )
    lazy_lr: float | None = setting(
        None, help="learning rate of the lazy training (null: train.lr)", gt=0
    )
    score: ScoreKind = setting(
        "loss",
        help="'loss': S_ij = L_i(theta0) - L_i(theta_j); 'accuracy': A_i(theta_j) - A_i(theta0), "
        "on client i's validation split",
    )
    normalize: Normalize = setting(
        "row",
        help="central: 'row' divides each score row by its largest absolute value; 'helpful' "
        "zeroes the negative scores first (rows say only who helps, and how much); 'none'",
    )
    symmetrize: bool | None = setting(
        None,
        help="central: cluster (S + S^T) / 2 instead of S (a pair scored one way only keeps that "
        "score); null: only when peers_scored < 1, where it fills in missing scores",
    )
    clustering: Clustering = setting(
        "optics",
        help="central: 'optics' clusters the score rows with OPTICS (min_samples, xi; "
        "resolves small, close groups but cuts large groups apart); 'spectral' clusters the "
        "graph of mutually helpful scores (eigengap and a modularity test choose the number "
        "of clusters; holds from 20 to 1,000 clients of well-separated groups, but merges "
        "close small groups such as English and German in the fortunes federation)",
    )
    clusters: int | None = setting(
        None,
        help="central: null finds the number of clusters; a number k forces k clusters "
        "(spectral: k eigenvectors; optics: average linkage on the row distances; 1 is FedAvg)",
        ge=1,
    )
    min_samples: int = setting(
        3,
        help="OPTICS: neighbours that make a client a cluster core, and the smallest cluster "
        "(2 split true groups of 4 clients into pairs in our measurements; 3 did not)",
        ge=2,
    )
    xi: float = setting(0.05, help="OPTICS: minimum steepness of a cluster boundary", gt=0, lt=1)
    noise: NoisePolicy = setting(
        "own",
        help="clients OPTICS leaves unclustered: 'own' (a cluster of their own) or 'nearest' "
        "(the nearest cluster)",
    )
    votes: Votes = setting(
        "raw",
        help="central: what clients send: 'raw' scores, 'sign' votes (+1 helps, -1 not), or "
        "'private' sign votes by randomized response (epsilon-DP per vote)",
    )
    epsilon: float = setting(1.0, help="'private': privacy budget of each vote", gt=0)
    peers_scored: float = setting(
        1.0,
        help="how many of the other clients each client scores (a random subset; fewer lazy "
        "models relayed): a share if at most 1 (1: all), else a count (e.g. 20; all if fewer)",
        gt=0,
    )
    compression: Compression = setting(
        "none",
        help="lazy updates theta_j - theta0 as sent: 'none', 'topk' (largest entries, "
        "topk_fraction of each tensor) or 'int8' (8-bit quantisation)",
    )
    topk_fraction: float = setting(
        0.1, help="'topk': share of each tensor's entries kept", gt=0, le=1
    )
    recluster: Recluster = setting(
        "never",
        help="'never': cluster once; 'stale': re-run the lazy phase for clients whose "
        "validation loss under their cluster's model rose by stale_rise (drift)",
    )
    stale_rise: float = setting(
        0.5,
        help="'stale': rise of the validation loss (loss units) over its lowest since the "
        "client was clustered that marks the client's cluster as stale",
        gt=0,
    )

    def __post_init__(self) -> None:
        if self.variant == "decentral" and self.votes != "raw":
            raise ConfigError(
                f"votes: {self.votes!r} applies to the central variant only (in the decentral "
                "variant scores never leave the client); use votes: raw or variant: central"
            )
        if self.variant == "decentral" and self.clusters is not None:
            raise ConfigError(
                "clusters: applies to the central variant only (decentral clients choose their "
                "peers from their own scores); use clusters: null or variant: central"
            )


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
    votes as int8, 0 = not scored; decentral: its peers' ids). ``scores`` is its full row,
    kept for measurement only: it is not communication and not counted."""

    released: torch.Tensor
    scores: np.ndarray
    evaluated: int


@dataclasses.dataclass(frozen=True)
class LIAClientState:
    """What a client keeps: ``theta0`` and its lazy update between the lazy phase and its
    scoring, and its own score row (decentral clients re-choose peers from it)."""

    theta0: Params | None = None
    delta: CompressedDelta | None = None
    row: np.ndarray | None = None


NO_VALIDATION = (
    "pfedlia: client {client} has no validation samples; each client scores the lazy models on "
    "its own validation split, so use split.val > 0 (e.g. 0.1) or give clients more data"
)


def lia_records(server: ServerState) -> list[dict[str, Any]]:
    """Every lazy phase of a pFedLIA run: round, scores (the influence matrix), assignment,
    peers (decentral), cost, privacy and cluster quality (``Results.server``)."""
    return list(server.extra.get("lia_records", []))


@ALGORITHMS.register(
    "pfedlia",
    PFedLIAConfig,
    "pFedLIA: clients cluster by lazy influence, then FedAvg per cluster or neighbourhood",
)
class PFedLIA(Clustered):
    """pFedLIA (Rokvic et al. 2025); see the module docstring."""

    name = "pfedlia"
    config: PFedLIAConfig
    needs_validation = True  # clients score the lazy models on their validation split

    # ---- state -------------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        server = self.start([params], np.zeros(info.num_clients, dtype=np.int64))
        server.extra.update(
            lia_clustered=False,
            lia_theta0=None,
            lia_deltas={},
            lia_scores=np.full((info.num_clients,) * 2, np.nan),
            lia_released=np.full((info.num_clients,) * 2, np.nan),
            lia_peers=None,
            lia_records=[],
            lia_reference=np.full(info.num_clients, np.inf),
            lia_stale=[],
            lia_groups=None if info.groups is None else np.asarray(info.groups),
        )
        return server

    def check(self, experiment: Any) -> None:
        cfg = self.config
        if cfg.warmup_rounds >= experiment.rounds:
            raise ConfigError(
                f"algorithm.warmup_rounds: {cfg.warmup_rounds} warm-up rounds leave no round "
                f"for pFedLIA's clustering (rounds = {experiment.rounds}); use warmup_rounds < "
                "rounds"
            )
        if experiment.split.val <= 0:
            raise ConfigError(
                "split.val: pfedlia scores lazy models on each client's validation split; "
                f"use split.val > 0 (e.g. 0.1), got {experiment.split.val}"
            )

    def model_index(self, server: ServerState, client_id: int) -> int:
        """Which of ``server.extra['models']`` client ``client_id`` trains and is scored with."""
        if not server.extra["lia_clustered"]:
            return 0
        if self.config.variant == "decentral":
            return client_id
        return int(self.assignment(server)[client_id])

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return self.models(server)[self.model_index(server, client_id)]

    def cluster_assignment(self, server: ServerState) -> np.ndarray:
        """Clusters (central), or the groups of mutual peers (decentral); -1 before the lazy
        phase."""
        if not server.extra["lia_clustered"]:
            return np.full(len(self.assignment(server)), -1, dtype=np.int64)
        return self.assignment(server).copy()

    # ---- round -------------------------------------------------------------------------------

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        extra = server.extra
        if not extra["lia_clustered"] and ctx.round > self.config.warmup_rounds:
            server = self.lazy_phase(server, list(range(ctx.num_clients)), ctx)
        elif extra["lia_stale"]:
            server = self.lazy_phase(server, sorted(extra["lia_stale"]), ctx)
        return self.train(server, cohort, ctx)

    def train(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        """One FedAvg round inside every cluster (or neighbourhood)."""
        models = self.models(server)
        index = {c: self.model_index(server, c) for c in cohort}
        messages = {c: ModelMessage(models[index[c]]) for c in cohort}
        updates = ctx.map("client_update", cohort, per_client=messages)
        feeds = self.feeds(server, cohort, updates, len(models))
        server = self.step_models(server, feeds, ctx.rng("aggregate"))
        if self.config.recluster == "stale" and server.extra["lia_clustered"]:
            server = self.watch_staleness(server, cohort, updates)
        return server

    def feeds(
        self, server: ServerState, cohort: Sequence[int], updates: Sequence[Update], count: int
    ) -> list[list[Update]]:
        """The updates each model averages: its cluster's (central, warm-up) or, decentral,
        those of the client's peers."""
        if server.extra["lia_clustered"] and self.config.variant == "decentral":
            peers = server.extra["lia_peers"]
            return [
                [u for c, u in zip(cohort, updates, strict=True) if peers[i, c]]
                for i in range(count)
            ]
        index = [self.model_index(server, c) for c in cohort]
        return [[u for u, k in zip(updates, index, strict=True) if k == j] for j in range(count)]

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Any]:
        """FedAvg's local update; with ``recluster: stale`` the client also reports the
        validation loss of the model it received (metadata, for the staleness check)."""
        update, state = super().client_update(message, state, client, trainer, rng)
        if self.config.recluster != "stale" or len(client.val) == 0:
            return update, state
        loss = trainer.evaluate(message.params, client.val.x, client.val.y).loss
        return dataclasses.replace(update, extra={**update.extra, "val_loss": loss}), state

    def lazy_train(
        self,
        message: ModelMessage,
        state: LIAClientState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[LazyReply, LIAClientState]:
        """Train ``lazy_epochs`` from ``theta0`` and send the (compressed) change."""
        cfg, theta0 = self.config, message.params
        train = client.train
        fit = trainer.fit(theta0, train.x, train.y, rng=rng, epochs=cfg.lazy_epochs, lr=cfg.lazy_lr)
        delta = compress(
            {n: fit.params[n] - theta0[n] for n in theta0}, cfg.compression, cfg.topk_fraction
        )
        row = state.row if state is not None else None
        return LazyReply(delta, fit.samples_seen), LIAClientState(theta0, delta, row)

    def score(
        self,
        message: ScoreMessage,
        state: LIAClientState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[ScoreReply, LIAClientState]:
        """Score the relayed lazy models (and its own) on the client's validation split."""
        val = client.val
        if len(val) == 0:
            raise ValueError(NO_VALIDATION.format(client=client.client_id))
        state = state or LIAClientState()
        theta0 = message.theta0 if message.theta0 is not None else state.theta0
        if theta0 is None:
            raise ValueError("pfedlia: a client was asked to score without theta0")
        row = np.full(message.num_clients, np.nan) if state.row is None else state.row.copy()
        peers, deltas = list(message.peers), list(message.deltas)
        if state.delta is not None:
            peers.append(client.client_id)
            deltas.append(state.delta)
        base = trainer.evaluate(theta0, val.x, val.y)
        for peer, result in zip(peers, lazy_results(trainer, theta0, deltas, val), strict=True):
            row[peer] = self.influence(base, result)
        reply = ScoreReply(
            self.release(row, client.client_id, rng), row, (len(peers) + 1) * len(val)
        )
        return reply, LIAClientState(row=row)

    def influence(self, base: EvalResult, lazy: EvalResult) -> float:
        """How much the lazy model helps: drop in loss, or gain in accuracy."""
        if self.config.score == "accuracy":
            return lazy.accuracy - base.accuracy
        return base.loss - lazy.loss

    def release(self, row: np.ndarray, client_id: int, rng: torch.Generator) -> torch.Tensor:
        """What the client sends about its row (see :class:`ScoreReply`)."""
        cfg = self.config
        if cfg.variant == "decentral":
            peers = np.flatnonzero(kmeans_peers(row, client_id))
            return torch.as_tensor(peers, dtype=torch.int32)
        if cfg.votes == "raw":
            return torch.as_tensor(row, dtype=torch.float32)
        votes = sign_votes(row)
        if cfg.votes == "private":
            seed = int(torch.randint(0, 2**62, (1,), generator=rng))
            votes = randomized_response(votes, cfg.epsilon, np.random.default_rng(seed))
        return torch.as_tensor(np.nan_to_num(votes, nan=0.0), dtype=torch.int8)

    # ---- server side: the lazy phase -----------------------------------------------------------

    def lazy_phase(
        self, server: ServerState, lazy_clients: list[int], ctx: RoundContext
    ) -> ServerState:
        """Lazy training of ``lazy_clients``, scoring, and (re-)clustering."""
        started = time.perf_counter()
        extra = dict(server.extra)
        first = not extra["lia_clustered"]
        theta0 = server.params if first else extra["lia_theta0"]
        broadcast = ModelMessage(theta0)
        lazy = ctx.map("lazy_train", lazy_clients, broadcast)
        deltas = {
            **extra["lia_deltas"],
            **{c: r.delta for c, r in zip(lazy_clients, lazy, strict=True)},
        }
        plan = self.scoring_plan(lazy_clients, first, ctx.num_clients, ctx.rng("lia_peers"))
        fresh = set(lazy_clients)
        messages = {
            i: ScoreMessage(
                None if i in fresh else theta0,
                tuple(peers),
                tuple(deltas[j] for j in peers),
                ctx.num_clients,
            )
            for i, peers in plan.items()
        }
        scorers = sorted(plan)
        replies = ctx.map("score", scorers, per_client=messages)
        extra["lia_scores"] = extra["lia_scores"].copy()
        extra["lia_released"] = extra["lia_released"].copy()
        for i, reply in zip(scorers, replies, strict=True):
            extra["lia_scores"][i] = reply.scores
            if self.config.variant == "central":
                extra["lia_released"][i] = decoded(reply.released, self.config.votes)
        server = ServerState(server.params, extra)
        server = self.regroup(server, theta0, first, lazy_clients, scorers, replies)
        extra = server.extra
        extra.update(
            lia_clustered=True,
            lia_theta0=theta0,
            lia_deltas=deltas if self.config.recluster == "stale" else {},
            lia_stale=[],
        )
        reference = extra["lia_reference"].copy()
        reference[lazy_clients] = np.inf
        extra["lia_reference"] = reference
        cost = {
            "lazy_clients": len(lazy_clients),
            "scorers": len(scorers),
            "lazy_samples": int(sum(r.samples for r in lazy)),
            "eval_samples": int(sum(r.evaluated for r in replies)),
            "seconds": time.perf_counter() - started,
            "bytes_up": sum(nbytes(r) for r in lazy) + sum(nbytes(r) for r in replies),
            "bytes_down": nbytes(broadcast) * len(lazy_clients)
            + sum(nbytes(m) for m in messages.values()),
            "peer_exchange_bytes": sum(nbytes(m.deltas) for m in messages.values()),
            "model_bytes": nbytes(theta0),
        }
        extra["lia_records"] = [
            *extra["lia_records"],
            self.record(server, ctx.round, first, lazy_clients, cost, plan),
        ]
        return server

    def scoring_plan(
        self, lazy_clients: list[int], first: bool, num_clients: int, rng: np.random.Generator
    ) -> dict[int, list[int]]:
        """Which lazy models each client scores (its own is scored from its state).

        First clustering: every client scores all others, or a random ``peers_scored`` share.
        Re-clustering: the re-trained clients score all others (their rows are new) and every
        other client scores the re-trained ones (their columns are new)."""
        plan: dict[int, list[int]] = {}
        for i in range(num_clients):
            if first or i in lazy_clients:
                others = [j for j in range(num_clients) if j != i]
                count = self.peer_count(len(others))
                if first and count < len(others):
                    others = sorted(rng.choice(others, size=count, replace=False).tolist())
                plan[i] = others
            else:
                plan[i] = list(lazy_clients)
        return plan

    def peer_count(self, others: int) -> int:
        """How many of ``others`` peers a client scores: ``peers_scored`` as a share (<= 1) or
        a count (> 1), at least 1, at most all."""
        share = self.config.peers_scored
        if share == 1 or others == 0:
            return others
        if share < 1:
            return max(1, round(share * others))
        return min(others, round(share))

    def partial_scoring(self) -> bool:
        """Whether clients score only some of their peers (then scores are symmetrized)."""
        return self.config.peers_scored < 1 or self.config.peers_scored > 1

    def regroup(
        self,
        server: ServerState,
        theta0: Params,
        first: bool,
        lazy_clients: list[int],
        scorers: list[int],
        replies: Sequence[ScoreReply],
    ) -> ServerState:
        """New clusters (central) or neighbourhoods (decentral), with the models they start
        from: ``theta0`` the first time; on re-clustering, the models the clusters had."""
        n = len(self.assignment(server))
        if self.config.variant == "decentral":
            peers = np.zeros((n, n), dtype=bool) if first else server.extra["lia_peers"].copy()
            for i, reply in zip(scorers, replies, strict=True):
                peers[i] = False
                peers[i, reply.released.numpy()] = True
            server.extra["lia_peers"] = peers
            labels = mutual_components(peers)
            if first:
                return self.with_clusters(server, [theta0] * n, labels, [{} for _ in range(n)])
            return self.with_clusters(
                server,
                models=self.rejoined_neighbours(server, peers, lazy_clients),
                assignment=labels,
            )
        labels = self.central_clusters(server.extra["lia_released"])
        k = int(labels.max()) + 1
        if first:
            return self.with_clusters(server, [theta0] * k, labels, [{} for _ in range(k)])
        source = inherited_clusters(self.assignment(server), labels, set(lazy_clients))
        models, opts = self.models(server), server.extra["server_opts"]
        return self.with_clusters(
            server, [models[s] for s in source], labels, [dict(opts[s]) for s in source]
        )

    def central_clusters(self, released: np.ndarray) -> np.ndarray:
        cfg = self.config
        symmetrize = self.partial_scoring() if cfg.symmetrize is None else cfg.symmetrize
        features = influence_features(released, cfg.normalize, symmetrize)
        if cfg.clustering == "spectral":
            return graph_clusters(released, cfg.clusters, cfg.noise)
        if cfg.clusters is None:
            return optics_clusters(features, cfg.min_samples, cfg.xi, cfg.noise)
        return fixed_clusters(features, cfg.clusters)

    def rejoined_neighbours(
        self, server: ServerState, peers: np.ndarray, moved: list[int]
    ) -> list[Params]:
        """Decentral re-clustering: a re-scored client starts from the mean of its new peers'
        models (its own model fitted the data it had before)."""
        models = self.models(server)
        for i in moved:
            others = [j for j in np.flatnonzero(peers[i]) if j != i]
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
    ) -> dict[str, Any]:
        """What one lazy phase found and cost (see :func:`lia_records`)."""
        extra, cfg = server.extra, self.config
        assignment = self.assignment(server)
        record: dict[str, Any] = {
            "round": round_index,
            "kind": "cluster" if first else "recluster",
            "lazy_clients": list(lazy_clients),
            "scores": extra["lia_scores"],  # a lazy phase copies before it writes
            "assignment": assignment.tolist(),
            "clusters": len(np.unique(assignment)),
            "cost": cost,
        }
        if cfg.variant == "central" and cfg.votes != "raw":
            record["released"] = extra["lia_released"]
        if cfg.votes == "private":
            per_row = max(len(p) for p in plan.values()) + 1
            record["privacy"] = {
                "epsilon_per_vote": cfg.epsilon,
                "votes_per_row": per_row,
                "epsilon_per_row": row_epsilon(cfg.epsilon, per_row),
                "keep_probability": keep_probability(cfg.epsilon),
            }
        groups = extra["lia_groups"]
        if cfg.variant == "decentral":
            record["peers"] = [np.flatnonzero(p).tolist() for p in extra["lia_peers"]]
            if groups is not None:
                record["neighbourhoods"] = neighbourhood_quality(extra["lia_peers"], groups)
        if groups is not None:
            record["ari"] = float(adjusted_rand_score(groups, assignment))
            record["nmi"] = float(normalized_mutual_info_score(groups, assignment))
        return record

    # ---- server side: staleness ----------------------------------------------------------------

    def watch_staleness(
        self, server: ServerState, cohort: Sequence[int], updates: Sequence[Update]
    ) -> ServerState:
        """Flag clients whose validation loss under their cluster's model rose by more than
        ``stale_rise`` over its lowest since they were clustered; they re-run the lazy phase
        at the start of the next round."""
        extra = dict(server.extra)
        reference = extra["lia_reference"].copy()
        stale = set(extra["lia_stale"])
        for client, update in zip(cohort, updates, strict=True):
            loss = update.extra.get("val_loss")
            if loss is None or not math.isfinite(loss):
                continue
            if loss > reference[client] + self.config.stale_rise:
                stale.add(client)
            else:
                reference[client] = min(reference[client], loss)
        extra.update(lia_reference=reference, lia_stale=sorted(stale))
        return ServerState(server.params, extra)

    # ---- results -------------------------------------------------------------------------------

    def artifacts(self, server: ServerState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for record in lia_records(server):
            tag = f"round{record['round']:04d}"
            out[f"influence_{tag}"] = record["scores"]
            if "released" in record:
                out[f"released_{tag}"] = record["released"]
            out[f"lia_{tag}"] = json_record(record)
        return out

    def summary(self, server: ServerState) -> dict[str, Any]:
        records = lia_records(server)
        if not records:
            return {}
        costs = [r["cost"] for r in records]
        totals = {
            key: sum(c[key] for c in costs)
            for key in (
                "lazy_samples",
                "eval_samples",
                "seconds",
                "bytes_up",
                "bytes_down",
                "peer_exchange_bytes",
            )
        }
        out = {
            "lazy_phases": len(records),
            "lazy_cost": totals,
            "last_lazy_phase": json_record(records[-1]),
        }
        if "neighbourhoods" in records[-1]:  # decentral: purity and recall, not clusters
            out["neighbourhoods"] = records[-1]["neighbourhoods"]
        return out


def json_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A lazy-phase record without its matrices (those are saved as arrays)."""
    return {k: v for k, v in record.items() if not isinstance(v, np.ndarray)}


def decoded(released: torch.Tensor, votes: Votes) -> np.ndarray:
    """A central client's released row as floats (votes: 0, i.e. not scored, becomes NaN)."""
    values = released.double().numpy()
    if votes == "raw":
        return values
    return np.where(values == 0, np.nan, values)


def lazy_results(
    trainer: LocalTrainer, theta0: Params, deltas: Sequence[CompressedDelta], val: Any
) -> list[EvalResult]:
    """Each lazy model ``theta0 + delta`` evaluated on the client's validation split, all at
    once (:mod:`plural.core.batched_eval`; measured 4x+ faster at 200 clients), or one by one
    where the model cannot be vectorised by ``torch.func.vmap``."""
    if not deltas:
        return []
    lazy = [with_delta(theta0, decompress(d)) for d in deltas]
    try:
        return evaluate_stacked(trainer, stack_params(lazy), val.x, val.y)
    except (RuntimeError, NotImplementedError):  # e.g. data-dependent control flow in forward
        return [trainer.evaluate(params, val.x, val.y) for params in lazy]


def with_delta(theta0: Params, delta: Mapping[str, torch.Tensor]) -> Params:
    """``theta0 + delta``, entry by entry, in ``theta0``'s dtypes."""
    return {n: (t + delta[n]).to(t.dtype) for n, t in theta0.items()}


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
