"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): clients run local SGD from the global model; the server takes the
weighted mean of the returned models."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from plural.config import setting
from plural.core.aggregators import Weighting, client_weight, weighted_mean
from plural.core.algorithm import Algorithm, ModelMessage, ServerState, Update
from plural.core.trainer import LocalTrainer, LossTerm
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    weighting: Weighting = setting(
        "samples",
        help="'samples': weight clients by training-set size (the paper); "
        "'uniform': every client counts the same (fairer to small clients)",
    )


@ALGORITHMS.register("fedavg", FedAvgConfig, "FedAvg: local SGD, weighted model averaging")
class FedAvg(Algorithm):
    """Federated averaging. Subclasses change the local objective through
    :meth:`loss_terms` or the aggregation weights, not the loop."""

    name = "fedavg"
    config: FedAvgConfig

    def loss_terms(self, message: ModelMessage, state: object) -> list[LossTerm]:
        """Extra local loss terms (none for FedAvg)."""
        return []

    def client_update(
        self,
        message: ModelMessage,
        state: object,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, object]:
        train = client.train
        fit = trainer.fit(
            message.params, train.x, train.y, rng=rng, loss_terms=self.loss_terms(message, state)
        )
        return Update(len(train), fit.params, loss=fit.mean_loss), state

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        weighting = self.config.weighting
        mean = weighted_mean([(u.params, client_weight(u.num_samples, weighting)) for u in updates])
        return ServerState(params=mean, extra=server.extra)
