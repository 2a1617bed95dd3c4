""":class:`IFCA` (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated
Learning"): the server broadcasts all ``k`` models; each client takes the one with the
lowest loss on its training data (ties: lowest index), trains it (FedAvg's local update,
the "model averaging" variant of the paper) and says which one it trained. When the engine
evaluates, every client re-picks its min-loss model from the final models of the round (the
paper's test-time rule) in a cheap extra phase ``choose_cluster`` (no training).

Choices the paper leaves open (IFCA):

* ``init="random"`` (default): model 0 is the run's initial model and model ``j`` is the same
  architecture re-initialised from the derived seed ``(seed, "init", j)``
  (``FederationInfo.fresh_params``), as in the paper's random initialisation. Where the
  engine gives no ``fresh_params`` it falls back to ``"warm"``.
* ``init="warm"``: ``k`` copies of the initial model plus Gaussian noise of scale
  ``init_noise`` drawn from the server's init generator.
* Measured on digits, MLP [64], lr 0.1, momentum 0.9, 15 rounds, full participation, seeds
  0-5: 24 clients in 4 rotation groups, random init reaches ARI 1 on 6/6 seeds (mean test
  accuracy 0.82-0.88). With 12 clients (3 a group) random init merges two groups on 3/6
  seeds and warm init (noise 0.1) on 5/6 (FedAvg there: 0.73-0.77). Label swap, 2 groups,
  12 clients, k=2: ARI 1 on 6/6 seeds. IFCA needs enough clients per group and starts that
  differ enough.
* ``init="spread"`` (beyond the paper; for many groups): round 1 sends the initial model
  to every participant (one model down, not k), each trains it, and the k cluster models are
  the trained models of k participants picked by k-means++ seeding (Arthur, Vassilvitskii
  2007; :func:`sklearn.cluster.kmeans_plusplus`) on their unit-norm update directions, so
  the starts come from different groups. Each participant joins the seed its update is most
  aligned with.
* ``reseed_after: 3`` (beyond the paper): a model no participant chose for 3 rounds in a
  row is replaced by the model the worst-fitting participant (highest mean training loss)
  just trained, one participant per empty model, each from a different cluster where
  possible. Without it, 9 language groups with k=9 collapsed onto 5 models: the 4 unchosen
  models never come back. The model's server-optimizer state is reset.
* ``k=1`` is FedAvg exactly (same server model, same test rows): no loss is evaluated and the
  client's generator is used exactly as FedAvg uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus

from plural.algorithms.clustered import Clustered, ModelsMessage
from plural.algorithms.fedavg import AveragingConfig
from plural.config import setting
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    RoundContext,
    ServerState,
    Update,
    cluster_tensor,
    reported_cluster,
)
from plural.core.params import Params, clone
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["IFCA", "IFCAConfig", "IFCAState", "ifca_state"]

Init = Literal["random", "warm", "spread"]


@dataclasses.dataclass(frozen=True)
class IFCAConfig(AveragingConfig):
    """IFCA's settings; averaging settings (weighting, server optimizer) apply per cluster."""

    k: int = setting(
        2,
        help="number of cluster models (set it to the number of groups you expect; 1 is FedAvg)",
        ge=1,
    )
    init: Init = setting(
        "random",
        help="'random': model j re-initialised from seed (seed, init, j); "
        "'warm': copies of the initial model plus Gaussian noise of scale init_noise; "
        "'spread': round 1 trains the initial model everywhere, then the k models are the "
        "models of k clients whose updates lie far apart (k-means++ on update directions)",
    )
    init_noise: float = setting(0.01, help="'warm': std of the noise added to each copy", ge=0)
    reseed_after: int | None = setting(
        3,
        help="a cluster model that no client chose for this many rounds in a row is replaced "
        "by the new model of the worst-fitting participant (highest training loss), as k-means "
        "re-seeds an empty cluster; stops IFCA from collapsing many groups onto fewer models. "
        "null: never",
        ge=1,
    )


@ALGORITHMS.register(
    "ifca", IFCAConfig, "IFCA: k cluster models, each client trains the one with least loss"
)
class IFCA(Clustered):
    """Iterative Federated Clustering Algorithm (Ghosh et al. 2020), model-averaging variant."""

    name = "ifca"
    config: IFCAConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        return self.start(self.initial_models(params, info, rng), np.full(info.num_clients, -1))

    def initial_models(
        self, params: Params, info: FederationInfo, rng: np.random.Generator
    ) -> list[Params]:
        """Model 0 is ``params``; the others are fresh draws ('random') or noisy copies."""
        k = self.config.k
        if self.config.init == "spread":
            return [params] * k
        if self.config.init == "random" and info.fresh_params is not None:
            return [params] + [info.fresh_params(j) for j in range(1, k)]
        return [params] + [perturbed(params, self.config.init_noise, rng) for _ in range(1, k)]

    def broadcast(self, server: ServerState) -> ModelsMessage:
        return ModelsMessage(tuple(self.models(server)))

    # ---- client side -------------------------------------------------------------------------

    def choose(self, models: Sequence[Params], client: ClientData, trainer: LocalTrainer) -> int:
        """Index of the model with the least loss on the client's training data (ties: the
        lowest index); 0 without evaluating anything when there is one model."""
        if len(models) == 1:
            return 0
        train = client.train
        losses = [trainer.evaluate(p, train.x, train.y).loss for p in models]
        return int(np.argmin(losses))

    def client_update(
        self,
        message: ModelsMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Any]:
        cluster = self.choose(message.models, client, trainer)
        update, _ = super().client_update(
            ModelMessage(message.models[cluster]), state, client, trainer, rng
        )
        extra = {**update.extra, "cluster": cluster_tensor(cluster)}
        return dataclasses.replace(update, extra=extra), cluster

    def choose_cluster(
        self,
        message: ModelsMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[torch.Tensor, int]:
        """IFCA's test-time rule: pick the min-loss model, remember it, tell the server."""
        cluster = self.choose(message.models, client, trainer)
        return cluster_tensor(cluster), cluster

    # ---- server side -------------------------------------------------------------------------

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        spread = self.config.init == "spread" and self.config.k > 1
        if spread and not ifca_state(server).seeded:
            return self.seed_spread(server, cohort, ctx)
        updates = ctx.map("client_update", cohort, self.broadcast(server))
        server = self.aggregate(server, updates, ctx.rng("aggregate"))
        chosen = {cid: reported_cluster(u) for cid, u in zip(cohort, updates, strict=True)}
        if ctx.evaluating and self.config.k > 1:
            everyone = list(ctx.clients)  # unseen clients pick when served (newcomer)
            replies = ctx.map("choose_cluster", everyone, self.broadcast(server))
            chosen = {cid: int(r) for cid, r in zip(everyone, replies, strict=True)}
        assignment = self.assignment(server)
        assignment[list(chosen)] = list(chosen.values())
        server = self.with_clusters(server, assignment=assignment)
        return self.reseed_unused(server, cohort, updates)

    def seed_spread(
        self, server: ServerState, cohort: Sequence[int], ctx: RoundContext
    ) -> ServerState:
        """``init: spread``: everyone trains model 0; k far-apart clients' models become the
        cluster models (see the module docstring)."""
        start = self.models(server)[0]
        updates = ctx.map("client_update", cohort, ModelsMessage((start,)))
        used = [u for u in updates if u.params is not None]
        directions = np.stack([update_direction(u.params, start) for u in used])
        k = min(self.config.k, len(used))
        seed = int(ctx.rng("ifca_spread").integers(2**31))
        _, picks = kmeans_plusplus(directions, n_clusters=k, random_state=seed)
        models = [used[i].params for i in picks]
        models += [start] * (self.config.k - len(models))
        nearest = np.argmax(directions @ directions[picks].T, axis=1)
        assignment = self.assignment(server)
        clients = [c for c, u in zip(cohort, updates, strict=True) if u.params is not None]
        assignment[clients] = nearest
        state = server.with_parts(dataclasses.replace(ifca_state(server), seeded=True))
        return self.with_clusters(state, models=models, assignment=assignment)

    def reseed_unused(
        self, server: ServerState, cohort: Sequence[int], updates: Sequence[Update]
    ) -> ServerState:
        """Replace the models no participant chose for ``reseed_after`` rounds by the models
        of the worst-fitting participants (see the module docstring)."""
        patience = self.config.reseed_after
        if patience is None or self.config.k == 1:
            return server
        kept = ifca_state(server)
        idle = (np.zeros(self.config.k, np.int64) if kept.idle is None else kept.idle) + 1
        picked = [reported_cluster(u) for u in updates]
        idle[np.unique(picked)] = 0
        empty = np.flatnonzero(idle >= patience)
        if not len(empty):
            return server.with_parts(dataclasses.replace(kept, idle=idle))
        models, opts = self.models(server), self.opt_states(server)
        reseeds = list(kept.reseeds)
        for model, donor in zip(empty, worst_fitting(updates, picked), strict=False):
            models[model] = updates[donor].params
            opts[model] = {}
            idle[model] = 0
            reseeds.append({"model": int(model), "client": int(cohort[donor])})
        state = server.with_parts(dataclasses.replace(kept, idle=idle, reseeds=tuple(reseeds)))
        return self.with_clusters(state, models=models, opt_states=opts)

    def cluster_of(self, server: ServerState, state: Any, client_id: int) -> int:
        """The client's own latest choice, else the server's last known cluster, else 0."""
        if state is not None:
            return int(state)
        return super().cluster_of(server, state, client_id)


@dataclasses.dataclass(frozen=True)
class IFCAState:
    """IFCA's own part of the server state (beside :class:`ClusterState`)."""

    KEY: ClassVar[str] = "ifca"
    seeded: bool = False
    """``init: spread``: whether the cluster models were seeded from far-apart clients."""
    idle: np.ndarray | None = None
    """Rounds since each model was last chosen (``reseed_after``)."""
    reseeds: tuple[dict[str, int], ...] = ()
    """Every reseeding: the model replaced and the client whose model replaced it."""


def ifca_state(server: ServerState) -> IFCAState:
    """IFCA's own part of ``server`` (empty before it seeds or reseeds)."""
    return server.part(IFCAState, IFCAState())


def update_direction(params: Params, start: Params) -> np.ndarray:
    """``params - start`` over the floating-point entries, flattened, of unit norm."""
    parts = [
        (params[n].detach().double() - start[n].detach().double()).reshape(-1)
        for n in start
        if start[n].is_floating_point()
    ]
    flat = torch.cat(parts).numpy()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def worst_fitting(updates: Sequence[Update], clusters: Sequence[int]) -> list[int]:
    """Indices of the updates with parameters, highest training loss first, taking one from
    each cluster before a second from any."""
    losses = [u.loss if np.isfinite(u.loss) else -np.inf for u in updates]
    order = [
        int(i) for i in np.argsort(losses, kind="stable")[::-1] if updates[i].params is not None
    ]
    first: list[int] = []
    seen: set[int] = set()
    for i in order:
        if clusters[i] not in seen:
            seen.add(clusters[i])
            first.append(i)
    return first + [i for i in order if i not in first]


def perturbed(params: Params, scale: float, rng: np.random.Generator) -> Params:
    """A copy of ``params`` with N(0, scale^2) noise on every floating-point entry."""
    out = clone(params)
    for name, tensor in out.items():
        if tensor.is_floating_point() and scale > 0:
            noise = rng.normal(0.0, scale, size=tuple(tensor.shape))
            out[name] = tensor + torch.as_tensor(noise, dtype=tensor.dtype)
    return out
