"""FedPAC (Xu, Tong & Huang 2023, "Personalized Federated Learning with Feature Alignment and
Classifier Collaboration", ICLR 2023; arXiv 2306.11867).

The feature extractor (body) is shared and averaged, FedAvg style; each client keeps its own
linear classifier (head). Each round a sampled client

1. fits its head for ``head_epochs`` with the received body frozen (cross-entropy);
2. trains the body for the trainer's local epochs with its head frozen on
   ``CE + lam * MSE(z, c_y)``, which aligns its features ``z`` with the global class
   centroids ``c`` (the prototype term FedProto uses);
3. sends its body, its head, its class centroids with their counts, and the variance term
   ``v_i = sum_k p_k (E||z||^2 | k) - p_k^2 ||mu_k||^2) / n_i`` of its features.

The server averages the bodies, combines the centroids class by class (weighted by counts),
and for each sampled client ``i`` solves the paper's quadratic program over the cohort,

    min_a  sum_j a_j^2 v_j + sum_k || sum_j a_j (h_ik - h_jk) ||^2,   a >= 0, sum_j a_j = 1,

with ``h_jk = p_j(k) mu_jk`` (the bias-variance estimate of a combined classifier's loss),
and sends client ``i`` its new head ``sum_j a_j head_j`` (weights below 1e-3 dropped and the
rest renormalised, as the authors' code drops them).

Defaults are the paper's: ``lam = 1``, one head epoch. ``lam: 0`` with ``collaboration:
false`` (its two ablations together) is FedRep with one head epoch. Choices: the statistics
are computed after local training, on the model that is sent; SciPy's SLSQP solves the QP.
Clients are evaluated with the global body and their own head, the model's classifier (its
body/head split, :func:`~plural.models.adapters.body_and_head`; none is a ConfigError).
Bytes: downlink the body, the centroids and their presence mask, then the new head; uplink
the body, the head, the centroids, their counts and ``v_i``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg, PartialState
from plural.config import ConfigError, setting
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    RoundContext,
    ServerState,
    Update,
    require_classification,
)
from plural.core.masks import LAST
from plural.core.params import Params
from plural.core.prototypes import PrototypeObjective, aggregate_prototypes, feature_moments
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

__all__ = ["FedPAC", "FedPACConfig", "FedPACState", "fedpac_state"]

CENTROIDS_KEY, COUNTS_KEY, VARIANCE_KEY, HEAD_KEY = "centroids", "counts", "variance", "head"
SMALL_WEIGHT = 1e-3


@dataclasses.dataclass(frozen=True)
class FedPACConfig(AveragingConfig):
    lam: float = setting(1.0, help="weight lambda of the feature alignment term", ge=0)
    head_epochs: int = setting(1, help="epochs fitting the head, body frozen, each round", ge=0)
    collaboration: bool = setting(
        True, help="combine the cohort's heads by the QP (false: each keeps its own head)"
    )


@dataclasses.dataclass(frozen=True)
class FedPACState:
    """FedPAC's part of the server state (beside partial personalization's)."""

    KEY: ClassVar[str] = "fedpac"
    centroids: torch.Tensor
    """(classes, width) the global class centroids."""
    present: torch.Tensor
    """(classes,) bool, which classes have a global centroid."""


def fedpac_state(server: ServerState) -> FedPACState:
    """FedPAC's part of ``server``."""
    return server.part(FedPACState)


@dataclasses.dataclass(frozen=True)
class CentroidMessage(ModelMessage):
    """Server to client: the shared body and the global class centroids."""

    centroids: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    present: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))


@dataclasses.dataclass(frozen=True)
class HeadMessage:
    """Server to client: its new head, the weighted combination of the cohort's heads."""

    head: Params


def collaboration_weights(
    variances: np.ndarray, centroid_terms: np.ndarray, client: int
) -> np.ndarray:
    """The QP's solution ``a`` for ``client`` (module docstring): ``variances`` (m,) and
    ``centroid_terms`` (m, classes, width) hold each cohort member's ``v_j`` and ``h_j``."""
    differences = (centroid_terms[client][None] - centroid_terms).reshape(len(variances), -1)
    quadratic = differences @ differences.T + np.diag(variances)
    count = len(variances)
    result = minimize(
        lambda a: (float(a @ quadratic @ a), 2 * quadratic @ a),
        np.full(count, 1.0 / count),
        jac=True,
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
        bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0}],
    )
    weights = np.clip(result.x, 0.0, None)
    weights[weights < SMALL_WEIGHT] = 0.0
    if weights.sum() <= 0:  # no solution: the client keeps its own head
        weights = np.eye(count)[client]
    return weights / weights.sum()


def variance_term(counts: torch.Tensor, means: torch.Tensor, squared: torch.Tensor) -> float:
    """``sum_k p_k E||z||^2_k - p_k^2 ||mu_k||^2``, divided by the number of samples."""
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts / total
    return float((p * squared - p.pow(2) * means.pow(2).sum(dim=1)).sum()) / total


def combine_heads(heads: Sequence[Params], weights: np.ndarray) -> Params:
    """``sum_j weights_j heads_j`` entry by entry (in float64, returned in each dtype)."""
    combined: Params = {}
    for name, tensor in heads[0].items():
        total = torch.zeros(tensor.shape, dtype=torch.float64)
        for weight, head in zip(weights, heads, strict=True):
            total += float(weight) * head[name].double()
        combined[name] = total.to(tensor.dtype)
    return combined


@ALGORITHMS.register(
    "fedpac",
    FedPACConfig,
    "FedPAC: body aligned to global class centroids, heads combined by a per-client QP",
)
class FedPAC(PartialFedAvg):
    """FedPAC (Xu et al. 2023): see the module docstring."""

    name = "fedpac"
    config: FedPACConfig
    model_heterogeneous = False

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The model itself; a ConfigError when it has no body/head split."""
        body_and_head(model)
        return model

    def check(self, experiment: Any) -> None:
        require_classification(
            experiment, "fedpac aligns class centroids and combines classifier heads"
        )

    def personal_patterns(self) -> tuple[str, ...]:
        return (LAST,)

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        server = super().init(params, info, rng)
        personal = server.part(PartialState).personal
        weight = [params[n] for n in personal if params[n].dim() == 2]
        if len(weight) != 1 or weight[0].shape[0] != info.num_classes:
            raise ConfigError(
                "model: fedpac needs a model ending in a Linear classifier with one output per "
                f"class ({info.num_classes}); its last layer is {personal}"
            )
        centroids = torch.zeros(weight[0].shape, dtype=weight[0].dtype)
        present = torch.zeros(weight[0].shape[0], dtype=torch.bool)
        return server.with_parts(FedPACState(centroids, present))

    def broadcast(self, server: ServerState) -> CentroidMessage:
        kept = fedpac_state(server)
        return CentroidMessage(server.params, kept.centroids, kept.present)

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        updates = ctx.map("client_update", cohort, self.broadcast(server))
        server = self.aggregate(server, updates, ctx.rng("aggregate"))
        reported = [(c, u) for c, u in zip(cohort, updates, strict=True) if HEAD_KEY in u.extra]
        if reported and self.config.collaboration:
            heads = self.collaborate([u for _, u in reported])
            members = [c for c, _ in reported]
            ctx.map("receive_head", members, per_client=dict(zip(members, heads, strict=True)))
        return server

    def finish_aggregate(self, server: ServerState, updates: list[Update]) -> ServerState:
        """Combine the clients' class centroids, weighted by their counts."""
        kept = fedpac_state(server)
        reports = [u.extra for u in updates if CENTROIDS_KEY in u.extra]
        centroids, present = aggregate_prototypes(
            kept.centroids, kept.present, [(r[CENTROIDS_KEY], r[COUNTS_KEY]) for r in reports]
        )
        return server.with_parts(FedPACState(centroids, present))

    def collaborate(self, updates: Sequence[Update]) -> list[HeadMessage]:
        """Each reporting client's new head: the QP-weighted combination of the cohort's."""
        variances = np.array([float(u.extra[VARIANCE_KEY][0]) for u in updates])
        terms = []
        for u in updates:
            counts = u.extra[COUNTS_KEY].double()
            share = counts / counts.sum().clamp_min(1)
            terms.append((share.unsqueeze(1) * u.extra[CENTROIDS_KEY].double()).numpy())
        centroid_terms = np.stack(terms)
        heads = [u.extra[HEAD_KEY] for u in updates]
        weights = [collaboration_weights(variances, centroid_terms, i) for i in range(len(updates))]
        return [HeadMessage(combine_heads(heads, w)) for w in weights]

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: CentroidMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        """Head epochs with the body frozen, then body epochs with the head frozen and the
        alignment term; send the body, the head and the feature statistics."""
        own = trainer.initial_params if state is None else state
        head = {n: t for n, t in own.items() if n not in message.params}
        train = client.train
        budget = self.work_budget(trainer, rng)  # stragglers shorten the body's training
        start_loss = self._start_loss({**message.params, **head}, client, trainer)
        fitted = trainer.fit(
            {**message.params, **head},
            train.x,
            train.y,
            rng=rng,
            trainable=head.__contains__,
            epochs=self.config.head_epochs,
            steps=self.config.head_epochs * -(-len(train) // trainer.config.batch_size),
        )
        objective = None
        if self.config.lam > 0 and bool(message.present.any()):
            objective = PrototypeObjective(message.centroids, message.present, self.config.lam)
        fit = trainer.fit(
            fitted.params,
            train.x,
            train.y,
            rng=rng,
            trainable=lambda name: name not in head,
            objective=objective,
            epochs=budget.epochs,
            steps=budget.steps,
        )
        classes = len(message.present)
        moments, dtype = feature_moments(trainer, fit.params, train.x, train.y, classes)
        new_head = {n: fit.params[n] for n in head}
        variance = variance_term(moments.counts, moments.means, moments.squared_norms)
        extra = {
            HEAD_KEY: new_head,
            CENTROIDS_KEY: moments.means.to(dtype),
            COUNTS_KEY: moments.counts.to(dtype),
            VARIANCE_KEY: torch.tensor([variance], dtype=dtype),
        }
        body = {n: t for n, t in fit.params.items() if n not in head}
        update = Update(
            len(train),
            body,
            extra=extra,
            loss=fit.mean_loss,
            reported_samples=self._report(len(train), trainer, rng),
            start_loss=start_loss,
            complete=budget.complete,
        )
        return update, new_head

    def receive_head(
        self,
        message: HeadMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[None, Params]:
        """Keep the combined head the server sent."""
        return None, dict(message.head)
