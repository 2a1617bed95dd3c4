"""Local training: every client trains its own model alone; nothing is communicated.

The lower reference of personalized FL (each client's data only), also called Standalone.
Each client starts from its own initial model (the same for every client of one
architecture), so clients may have different architectures (a model family)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from plural.core.algorithm import Algorithm, OnClient, ServerState, Update
from plural.core.params import Params
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    """Local has no settings of its own; training settings are under ``train``."""


@ALGORITHMS.register("local", LocalConfig, "Local: each client trains alone, no communication")
class Local(Algorithm):
    name = "local"
    has_server_model = False  # each client's own model only
    model_heterogeneous = True

    def broadcast(self, server: ServerState) -> None:
        return None

    def client_update(
        self,
        message: None,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        train = client.train
        start = trainer.initial_params if state is None else state
        fit = trainer.fit(start, train.x, train.y, rng=rng)
        return Update(len(train), loss=fit.mean_loss), fit.params

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        return server

    def personalized(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> Params | OnClient:
        """The client's model (its initial model before it has trained)."""
        return OnClient({}) if state is None else state
