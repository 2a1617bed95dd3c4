"""FedFomo (Zhang, Sapra, Fidler, Yeung & Alvarez 2021, "Personalized Federated Learning with
First Order Model Optimization", ICLR 2021; arXiv 2012.08565).

Every client keeps its own model. The server stores the latest model each client uploaded
and sends each sampled client ``models_per_client`` (M) of the other clients' models. The
client weighs each candidate ``theta_n`` (the M received models and its own latest trained
model, which it holds) by how much it lowers its own validation loss, against the model it
started its previous local training from (``theta_old``), per unit of distance,

    w_n = max(L(theta_old) - L(theta_n), 0) / ||theta_n - theta_old||,

normalised to sum to 1 (all zero: it keeps its own trained model), moves to
``theta_old + sum_n w_n (theta_n - theta_old)``, trains locally from there (the trainer's
local epochs) and uploads the result with the signed gains of the received models (the
``w_n`` before the max and the normalisation). The server adds them to an affinity matrix
``P`` (``P[i, n] += w_n``, so a model that hurt a client lowers its affinity) and picks whom to
send next: the M clients of highest affinity, or, with probability ``epsilon`` (decaying by
``epsilon_decay`` a round), M clients drawn at random among those with a model
(epsilon-greedy exploration). The baseline ``theta_old`` and the client's own trained model
among the candidates are what the authors' code and PFLlib do (the paper's notation leaves
open whether ``theta_old`` is taken before or after local training): measured against the
freshly trained model instead, a same-group model seldom wins, so the combination and the
affinity lose most of their signal.

Choices and defaults:

* M = 5 (the default of the paper's experiments and of reimplementations such as PFLlib);
  epsilon 0.3 decaying by 0.05 a round (the paper's exploration schedule as we read it).
* ``L`` is the loss on the client's validation split (the paper holds out part of the local
  data); a client without one uses its training split (a warning where ``split.val`` is 0).
* A client that has not trained starts from its architecture's initial model (every client
  has the same one, so nothing needs to be sent; it is both ``theta_old`` and its own
  model); round 1 sends no model. Client state: :class:`FomoClientState` (two models). Ties
  in affinity are broken at random. A client kept out of training (``split.unseen_clients``)
  is served by the same first step, with M random models (see :meth:`FedFomo.newcomer`).
* The server never averages, so aggregation rules and model-poisoning attacks do not apply
  (the engine refuses them). Bytes: downlink M models (fewer while fewer clients have
  uploaded); uplink the client's model and its M gains (float32).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from plural.config import setting
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    OnClient,
    RoundContext,
    ServerState,
    Update,
)
from plural.core.params import Params, distance
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = [
    "FedFomo",
    "FedFomoConfig",
    "FedFomoState",
    "FomoClientState",
    "FomoMessage",
    "fedfomo_state",
]

WEIGHTS_KEY = "weights"
"""``Update.extra``: the signed gains of the models the client received, in their order."""

NO_VALIDATION = (
    "fedfomo: split.val is 0, so clients weigh the models they receive on their training data, "
    "where their own trained model fits best: FedFomo then stays near local training. The "
    "paper and PFLlib hold out part of each client's training data (e.g. split.val: 0.2)"
)


@dataclasses.dataclass(frozen=True)
class FedFomoConfig:
    models_per_client: int = setting(
        5, help="M: other clients' models sent to each sampled client (0: local training)", ge=0
    )
    epsilon: float = setting(
        0.3, help="probability of sending M random models instead of the top M", ge=0, le=1
    )
    epsilon_decay: float = setting(
        0.05, help="epsilon falls by this much each round (not below 0)", ge=0
    )


@dataclasses.dataclass(frozen=True)
class FedFomoState:
    """FedFomo's part of the server state."""

    KEY: ClassVar[str] = "fedfomo"
    models: Params
    """Every client's latest model, each entry stacked over clients."""
    uploaded: torch.Tensor
    """(clients,) bool, which clients have uploaded a model."""
    affinity: torch.Tensor
    """(clients, clients) float64, ``P[i, n]``: summed weights client i gave n."""


@dataclasses.dataclass(frozen=True)
class FomoClientState:
    """What a client keeps: its latest trained model and the model that training started
    from (the baseline ``theta_old`` of the next round's weights)."""

    trained: Params
    start: Params


def fedfomo_state(server: ServerState) -> FedFomoState:
    """FedFomo's part of ``server``."""
    return server.part(FedFomoState)


@dataclasses.dataclass(frozen=True)
class FomoMessage:
    """Server to client: other clients' models, each entry stacked (M, ...) in ``ids`` order."""

    models: Params
    ids: tuple[int, ...]

    def model(self, k: int) -> Params:
        return {name: stacked[k] for name, stacked in self.models.items()}


def gains_per_distance(
    own_loss: float, losses: Sequence[float], distances: Sequence[float]
) -> np.ndarray:
    """Each received model's loss improvement per unit of distance, signed (0 at distance 0):
    what the server adds to the affinity matrix, so that a model that hurt a client lowers
    its affinity (the paper's Algorithm 1; PFLlib and the authors' code add the signed
    values too)."""
    pairs = zip(losses, distances, strict=True)
    return np.array([(own_loss - loss) / d if d > 0 else 0.0 for loss, d in pairs], np.float64)


def first_order_weights(gains: np.ndarray) -> np.ndarray:
    """FedFomo's combination weights: the positive gains, normalised to sum to 1 (all 0 when
    no model improves on the client's own)."""
    raw = np.maximum(gains, 0.0)
    total = raw.sum()
    return raw / total if total > 0 else raw


def combine(own: Params, others: Sequence[Params], weights: np.ndarray) -> Params:
    """``own + sum_n w_n (other_n - own)`` on floating entries (the others kept as own)."""
    out: Params = {}
    for name, tensor in own.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        moved = tensor.double().clone()
        for other, weight in zip(others, weights, strict=True):
            if weight > 0:
                moved += float(weight) * (other[name].double() - tensor.double())
        out[name] = moved.to(tensor.dtype)
    return out


@ALGORITHMS.register(
    "fedfomo",
    FedFomoConfig,
    "FedFomo: own models, each combines other clients' models weighted by validation gain",
)
class FedFomo(Algorithm):
    """FedFomo (Zhang et al. 2021): see the module docstring."""

    name = "fedfomo"
    config: FedFomoConfig

    # ---- server side -------------------------------------------------------------------------

    def check(self, experiment: Any) -> None:
        if experiment.split.val <= 0:  # measured: equal to Local on 2-class clients
            warnings.warn(NO_VALIDATION, stacklevel=2)

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        n = info.num_clients
        models = {name: torch.zeros((n, *t.shape), dtype=t.dtype) for name, t in params.items()}
        uploaded = torch.zeros(n, dtype=torch.bool)
        affinity = torch.zeros(n, n, dtype=torch.float64)
        return ServerState({}).with_parts(FedFomoState(models, uploaded, affinity))

    def epsilon(self, round_index: int) -> float:
        cfg = self.config
        return max(cfg.epsilon - cfg.epsilon_decay * (round_index - 1), 0.0)

    def choose(
        self, server: ServerState, client_id: int, epsilon: float, rng: np.random.Generator
    ) -> tuple[int, ...]:
        """The clients whose models ``client_id`` receives: top affinity, or random."""
        available = np.flatnonzero(fedfomo_state(server).uploaded.numpy())
        available = rng.permutation(available[available != client_id])
        count = min(self.config.models_per_client, len(available))
        explore = rng.random() < epsilon
        if explore or count == len(available):
            return tuple(int(c) for c in sorted(available[:count]))
        affinity = fedfomo_state(server).affinity[client_id].numpy()[available]
        best = available[np.argsort(-affinity, kind="stable")[:count]]
        return tuple(int(c) for c in sorted(best))

    def message(self, server: ServerState, ids: tuple[int, ...]) -> FomoMessage:
        index = torch.tensor(ids, dtype=torch.long)
        models = {name: stacked[index] for name, stacked in fedfomo_state(server).models.items()}
        return FomoMessage(models, ids)

    def broadcast(self, server: ServerState) -> FomoMessage:
        """A message with no model (what a client receives before anyone has uploaded)."""
        return self.message(server, ())

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        rng = ctx.rng("fedfomo-select")
        epsilon = self.epsilon(ctx.round)
        messages = {
            cid: self.message(server, self.choose(server, cid, epsilon, rng)) for cid in cohort
        }
        updates = ctx.map("client_update", cohort, per_client=messages)
        return self.record(server, cohort, messages, updates)

    def record(
        self,
        server: ServerState,
        cohort: Sequence[int],
        messages: Mapping[int, FomoMessage],
        updates: Sequence[Update],
    ) -> ServerState:
        """Store the uploaded models and add the clients' signed gains to the affinity matrix."""
        kept = fedfomo_state(server)
        models = {name: stacked.clone() for name, stacked in kept.models.items()}
        uploaded = kept.uploaded.clone()
        affinity = kept.affinity.clone()
        for cid, update in zip(cohort, updates, strict=True):
            if update.params is None or WEIGHTS_KEY not in update.extra:
                continue
            for name, tensor in update.params.items():
                models[name][cid] = tensor
            uploaded[cid] = True
            ids = list(messages[cid].ids)
            if ids:
                affinity[cid, ids] += update.extra[WEIGHTS_KEY].double()
        return server.with_parts(FedFomoState(models, uploaded, affinity))

    def personalized(
        self, server: ServerState, state: FomoClientState | None, client_id: int
    ) -> Params | OnClient:
        """The client's own trained model (its initial model before it has trained)."""
        return OnClient({}) if state is None else state.trained

    def newcomer(
        self, server: ServerState, client: ClientData, trainer: LocalTrainer, rng: torch.Generator
    ) -> Params | None:
        """A client that never trained (``split.unseen_clients``): the first step FedFomo
        takes for any client, run without uploading. It has no affinity yet, so it receives
        M models drawn at random among those uploaded, weighs them against its initial model
        and trains from the combination. None (its initial model) before anyone uploaded."""
        if not bool(fedfomo_state(server).uploaded.any()):
            return None
        draws = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
        message = self.message(server, self.choose(server, client.client_id, 1.0, draws))
        _, state = self.client_update(message, None, client, trainer, rng)
        return state.trained

    def summary(self, server: ServerState) -> dict[str, Any]:
        return {"clients_with_a_model": int(fedfomo_state(server).uploaded.sum())}

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: FomoMessage,
        state: FomoClientState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, FomoClientState]:
        """Combine the candidates by first-order weights against the last start, then train."""
        initial = trainer.initial_params
        own, old = (initial, initial) if state is None else (state.trained, state.start)
        check = client.val if len(client.val) else client.train
        others = [message.model(k) for k in range(len(message.ids))]
        candidates = [own, *others]
        old_loss = trainer.evaluate(old, check.x, check.y).loss
        losses = [trainer.evaluate(c, check.x, check.y).loss for c in candidates]
        gains = gains_per_distance(old_loss, losses, [distance(c, old) for c in candidates])
        weights = first_order_weights(gains)
        start = combine(old, candidates, weights) if weights.sum() > 0 else own
        train = client.train
        fit = trainer.fit(start, train.x, train.y, rng=rng)
        extra = {WEIGHTS_KEY: torch.as_tensor(gains[1:], dtype=torch.float32)}
        update = Update(len(train), fit.params, extra=extra, loss=fit.mean_loss)
        return update, FomoClientState(fit.params, start)
