"""FedDBE (Zhang et al. 2023, "Eliminating Domain Bias for Federated Learning in Representation
Space", NeurIPS; arXiv 2311.14975): FedAvg with the Domain Bias Eliminator.

The model is split into a feature extractor (body) and a classifier (head), the split the zoo's
models expose (:func:`~plural.models.adapters.body_and_head`). DBE adds two things:

* **Personalized representation bias memory (PRBM)**: a vector ``m_i`` as wide as the
  representation, added to it before the head: ``head(body(x) + m_i)``. It is learnt with the
  model and never leaves the client (entry ``prbm``); body and head are averaged as FedAvg.
* **Mean regularization (MR)**: ``kappa * mean_k(0.5 * (z_bar - g)_k^2)`` added to the loss,
  with ``z_bar`` a running mean of the minibatch mean representations
  (``z_bar <- (1 - momentum) z_bar + momentum * mean(body(x))``, restarted every round) and
  ``g`` the global mean representation.

The global mean is set once: in round 1 clients train plain FedAvg (no PRBM, no MR, as in the
official initialisation period) and also send their mean representation over their training
data; the server keeps the sample-weighted mean of those as ``g`` for the rest of the run. (The
official code runs that initial pass over every client before round 1; here it is round 1's
cohort.) With ``kappa = 0`` there is no MR, hence no global mean and no initial period.

Defaults ``kappa = 50`` and ``momentum = 1`` (``z_bar`` is the minibatch mean) are the official
command for Fashion-MNIST with Dirichlet(0.1) and the 4-layer CNN. ``prbm: false`` with
``kappa: 0`` is FedAvg exactly.

Bytes: down, body and head (plus ``g``, one representation, from round 2); up, body and head
(plus the mean representation in round 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg
from plural.config import setting
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    ServerState,
    Update,
    personal_state,
    require_classification,
)
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

__all__ = ["DBEMessage", "FedDBE", "FedDBEConfig", "FedDBEState", "feddbe_state"]

PRBM = "prbm"
"""The entry of the personalized representation bias memory."""
MEAN = "mean_representation"
"""``Update.extra`` key of a client's mean representation (initial period)."""


@dataclasses.dataclass(frozen=True)
class FedDBEConfig(AveragingConfig):
    kappa: float = setting(50.0, help="weight kappa of the mean regularization (MR)", ge=0)
    momentum: float = setting(
        1.0, help="running-mean momentum of the representation mean (1: minibatch mean)", gt=0, le=1
    )
    prbm: bool = setting(
        True, help="learn a personal representation bias memory (PRBM) before the head"
    )


@dataclasses.dataclass(frozen=True)
class FedDBEState:
    """FedDBE's own part of the server state (beside partial personalization's)."""

    KEY: ClassVar[str] = "feddbe"
    global_mean: torch.Tensor | None = None
    """The global mean representation ``g``, set once from the first reports (None before)."""


def feddbe_state(server: ServerState) -> FedDBEState:
    """FedDBE's own part of ``server`` (empty before the global mean is set)."""
    return server.part(FedDBEState, FedDBEState())


@dataclasses.dataclass(frozen=True)
class DBEMessage(ModelMessage):
    """Server to client: the shared model and the global mean representation (None at first)."""

    global_mean: torch.Tensor | None = None


class BiasMemoryModel(nn.Module):
    """A model whose head reads ``body(x) + prbm``; its other entries keep their names."""

    def __init__(self, model: nn.Module, memory: bool) -> None:
        super().__init__()
        body, head = body_and_head(model)
        for name, child in model.named_children():
            self.add_module(name, child)
        self._parts = (body, head)  # a tuple is not a submodule: entries keep their names
        if memory:
            self.prbm = nn.Parameter(torch.zeros(head.in_features))

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self._parts[0](x)

    def classify(self, representation: torch.Tensor) -> torch.Tensor:
        memory = getattr(self, PRBM, None)
        return self._parts[1](representation if memory is None else representation + memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.representation(x))


@dataclasses.dataclass
class MeanRegularizedLoss:
    """The minibatch loss with MR: ``CE(head(z + m), y) + kappa * mean(0.5 (z_bar - g)^2)``."""

    global_mean: torch.Tensor
    kappa: float
    momentum: float
    running: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, BiasMemoryModel)
        z = model.representation(x)
        batch_mean = z.mean(dim=0)
        previous = torch.zeros_like(batch_mean) if self.running is None else self.running
        running = (1 - self.momentum) * previous + self.momentum * batch_mean
        self.running = running.detach()
        regular = (0.5 * (running - self.global_mean.to(z.dtype)) ** 2).mean()
        return F.cross_entropy(model.classify(z), y) + self.kappa * regular


@torch.no_grad()
def mean_representation(trainer: LocalTrainer, params: Params, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``body(x)`` over ``x`` at ``params`` (evaluation mode), in float64."""
    model = trainer.model
    assert isinstance(model, BiasMemoryModel)
    model.load_state_dict(params)
    model.eval()
    total = None
    for start in range(0, len(x), 1024):
        part = model.representation(x[start : start + 1024]).double().sum(dim=0)
        total = part if total is None else total + part
    assert total is not None
    return total / max(len(x), 1)


@ALGORITHMS.register(
    "feddbe",
    FedDBEConfig,
    "FedDBE: FedAvg with a personal representation bias and mean regularization",
)
class FedDBE(PartialFedAvg):
    name = "feddbe"
    config: FedDBEConfig
    model_heterogeneous = False

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "feddbe regularizes a classifier's representation")

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The model with the PRBM before its head (a ConfigError without a body/head split)."""
        return BiasMemoryModel(model, self.config.prbm)

    def personal_patterns(self) -> tuple[str, ...]:
        return (PRBM,) if self.config.prbm else ()

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        return tuple(n for n in names if n == PRBM)

    def broadcast(self, server: ServerState) -> DBEMessage:
        return DBEMessage(server.params, feddbe_state(server).global_mean)

    def client_update(
        self,
        message: DBEMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        state = personal_state(message, state, trainer)
        whole = DBEMessage({**message.params, **state}, message.global_mean)
        update, personal = super(PartialFedAvg, self).client_update(
            whole, state, client, trainer, rng
        )
        if self.initial_period(message):  # the server still needs the global mean
            assert update.params is not None
            trained = {**update.params, **personal}
            mean = mean_representation(trainer, trained, client.train.x)
            update = dataclasses.replace(update, extra={MEAN: mean.float()})
        return update, personal

    def initial_period(self, message: ModelMessage) -> bool:
        """Whether the server has no global mean yet and MR needs one (``kappa > 0``)."""
        assert isinstance(message, DBEMessage)
        return self.config.kappa > 0 and message.global_mean is None

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """Round 1: plain training with the PRBM frozen at 0; then CE through the PRBM plus MR
        (with ``kappa = 0``: CE through the PRBM from the start)."""
        train, cfg = client.train, self.config
        objective, trainable = None, None
        if self.initial_period(message):
            trainable = (lambda n: n != PRBM) if cfg.prbm else None
        elif cfg.kappa > 0:
            assert message.global_mean is not None
            objective = MeanRegularizedLoss(message.global_mean, cfg.kappa, cfg.momentum)
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            objective=objective,
            trainable=trainable,
            epochs=budget.epochs,
            steps=budget.steps,
        )

    def finish_aggregate(self, server: ServerState, updates: list[Update]) -> ServerState:
        """Fix the global mean representation from the first updates that carry one."""
        if feddbe_state(server).global_mean is not None:
            return server
        reports = [(u.num_samples, u.extra[MEAN]) for u in updates if MEAN in u.extra]
        if not reports:
            return server
        total = sum(n for n, _ in reports)
        mean = sum(n * m.double() for n, m in reports) / max(total, 1)
        assert isinstance(mean, torch.Tensor)
        return server.with_parts(FedDBEState(mean.float()))

    def summary(self, server: ServerState) -> dict[str, Any]:
        mean = feddbe_state(server).global_mean
        return {"global_mean_norm": None if mean is None else float(mean.norm())}
