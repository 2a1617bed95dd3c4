"""FedAS (Yang et al. 2024, "FedAS: Bridging Inconsistency in Personalized Federated
Learning", CVPR).

The model is split into a shared feature extractor (body) and a personal classifier (head),
the split the zoo's models expose (:func:`~plural.models.adapters.body_and_head`). Two
additions to FedPer-style training bridge the inconsistencies the paper names:

* **Parameter alignment** (client side): before training, a client that has trained before
  aligns the received global body to its own knowledge. It computes the class prototypes of
  its data (mean representation per class) with its previous local body, then trains the
  received body for ``align_epochs`` passes, step ``align_lr``, to bring each sample's
  representation to its class's prototype (sum over the batch's classes of the mean squared
  error). The aligned body and the client's own head are then trained together as in FedAvg.
* **Client synchronization** (server side): the bodies are averaged with weights
  proportional to each client's Fisher information, the trace of the empirical Fisher matrix
  of its trained model (the sum over minibatches of the squared gradient norm of the mean
  negative log-likelihood, in evaluation mode), which the client sends with its body.

Defaults ``align_lr = 0.01`` and ``align_epochs = 1`` are the official implementation's
(PFLlib); the alignment minibatches have the trainer's batch size (PFLlib: 16). A client is
evaluated with its own last trained model (body and head), as in PFLlib, where evaluation
precedes the next alignment. With ``align_epochs: 0`` and ``fisher: false`` (weights from
``weighting``) the shared body is FedPer's exactly.

Bytes: down, the body; up, the body plus the Fisher trace (one float32).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    OnClient,
    ServerState,
    Update,
    require_classification,
)
from plural.core.masks import LAST, select
from plural.core.params import Params, clone, subset
from plural.core.prototypes import class_prototypes
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

__all__ = ["FedAS", "FedASConfig", "FedASState"]

FISHER = "fisher_trace"
"""``Update.extra`` key of the client's Fisher information trace."""


@dataclasses.dataclass(frozen=True)
class FedASConfig(AveragingConfig):
    align_epochs: int = setting(
        1, help="passes aligning the received body to the client's prototypes (0: none)", ge=0
    )
    align_lr: float = setting(0.01, help="SGD step of the parameter alignment", gt=0)
    fisher: bool = setting(
        True,
        help="weight the bodies by the clients' Fisher information traces (false: 'weighting')",
    )


@dataclasses.dataclass(frozen=True)
class FedASState:
    """A client's last trained model (body and head)."""

    model: Params


@dataclasses.dataclass
class PrototypeAlignment:
    """``sum_c MSE(body(x_c), prototype_c)`` over the classes ``c`` of the minibatch that
    have a prototype."""

    prototypes: torch.Tensor
    present: torch.Tensor

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = body_and_head(model)[0](x)
        loss = h.sum() * 0.0  # keeps the graph when no class of the batch has a prototype
        for c in torch.unique(y).tolist():
            if bool(self.present[c]):
                rows = h[y == c]
                loss = loss + F.mse_loss(rows, self.prototypes[c].expand_as(rows).to(h.dtype))
        return loss


def fisher_trace(trainer: LocalTrainer, params: Params, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over the trainer's minibatches (data order) of the squared norm of the gradient of
    the mean negative log-likelihood, evaluation mode: the empirical Fisher trace."""
    total = 0.0
    size = trainer.config.batch_size
    for start in range(0, len(y), size):
        grads = trainer.gradient(params, x[start : start + size], y[start : start + size])
        total += float(sum(g.double().pow(2).sum() for g in grads.values()))
    return total


@ALGORITHMS.register(
    "fedas",
    FedASConfig,
    "FedAS: personal head, body aligned to local prototypes, Fisher-weighted body averaging",
)
class FedAS(FedAvg):
    name = "fedas"
    config: FedASConfig

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "fedas aligns class prototypes")
        if self.config.fisher and self.config.weighting != "samples":
            raise ConfigError(
                f"algorithm.weighting: {self.config.weighting!r} has no effect while fedas "
                "weights the bodies by Fisher traces (fisher: true); set fisher: false to use it"
            )

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        body_and_head(model)  # a ConfigError now for a model without a body/head split
        return model

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """The body (the head stays on the clients; nothing else is kept)."""
        head = head_names(list(params))
        return ServerState({n: t for n, t in params.items() if n not in head})

    def weights(self, updates: list[Update]) -> np.ndarray:
        """Shares of the Fisher traces (``fisher: true``), else FedAvg's weights."""
        if not self.config.fisher:
            return super().weights(updates)
        traces = np.array([float(u.extra[FISHER]) for u in updates], dtype=np.float64)
        if not np.all(np.isfinite(traces)) or traces.sum() <= 0:
            return np.full(len(updates), 1.0 / len(updates))
        return traces / traces.sum()

    def personalized(
        self, server: ServerState, state: FedASState | None, client_id: int
    ) -> Params | OnClient:
        """The client's last trained model (the global body on its initial head before)."""
        return OnClient(server.params) if state is None else state.model

    def evaluated(
        self, server: ServerState, state: FedASState | None, client_id: int
    ) -> dict[str, Params | OnClient]:
        """The client's own model, and the global body with the client's head."""
        own = self.personalized(server, state, client_id)
        if state is None:
            return {"": own, "global": own}
        head = {n: t for n, t in state.model.items() if n not in server.params}
        return {"": own, "global": {**server.params, **head}}

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: ModelMessage,
        state: FedASState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, FedASState]:
        """Align the received body (from the second participation on), train body and own
        head, send the body and the Fisher trace."""
        own = trainer.initial_params if state is None else state.model
        head = {n: t for n, t in own.items() if n not in message.params}
        body = message.params
        if state is not None and self.config.align_epochs > 0:
            body = self.aligned_body(message.params, state.model, client, trainer, rng)
        update, _ = super().client_update(
            ModelMessage({**body, **head}), None, client, trainer, rng
        )
        assert update.params is not None
        trained = update.params
        shared = subset(trained, list(message.params))
        extra = {}
        if self.config.fisher:
            trace = fisher_trace(trainer, trained, client.train.x, client.train.y)
            extra[FISHER] = torch.tensor(trace, dtype=torch.float32)
        update = dataclasses.replace(update, params=shared, extra=extra)
        return update, FedASState(trained)

    def aligned_body(
        self,
        received: Params,
        local: Params,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> Params:
        """The received body trained towards the prototypes of the client's previous model."""
        train = client.train
        classes = body_and_head(trainer.model)[1].out_features
        prototypes, counts = class_prototypes(trainer, local, train.x, train.y, classes)
        objective = PrototypeAlignment(prototypes, counts > 0)
        view = trainer.view(
            lr=self.config.align_lr, momentum=0.0, weight_decay=0.0, local_steps=None
        )
        start = {**clone(local), **received}
        fit = view.fit(
            start,
            train.x,
            train.y,
            rng=rng,
            objective=objective,
            trainable=received.__contains__,
            epochs=self.config.align_epochs,
        )
        return subset(fit.params, list(received))


def head_names(names: Sequence[str]) -> tuple[str, ...]:
    """The classifier's entries (the last layer), in model order."""
    chosen = select(list(names), (LAST,))
    return tuple(n for n in names if n in chosen)
