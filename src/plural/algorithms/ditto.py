"""Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

The global model is trained exactly as FedAvg: the same local update, drawing from the
client's generator first, so the server's model and the ``test@global`` rows are bit-identical
to FedAvg's for any ``lam``. Then each sampled client trains its personal model ``v_k`` (its
state in the engine's store; the received global model the first time) on the local loss
plus ``lam/2 ||v - w||^2``, with ``w`` the global model it received this round (Algorithm 1 of
the paper). Only the global model is sent back, so the bytes are FedAvg's.

Choices the paper leaves open:

* ``personal_epochs``: the paper runs the same number of local iterations for ``v_k`` as for
  the global update; null does that (``train.local_epochs``, or ``train.local_steps`` when
  set). A number gives that many passes over the client's data.
* The personal model uses the trainer's settings (``train.lr``, momentum, batch size), like
  the global update; the paper uses one learning rate for both.
* Stragglers (``stragglers``) shorten only the global update, the work the server waits
  for; the personal update always does its full work.
* ``lam``: the paper tunes lambda per data set on validation data; the default 0.1 is this
  library's choice (it personalises well on label-skewed digits, see the tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.algorithm import ModelMessage, ServerState, Update
from plural.core.params import Params
from plural.core.trainer import LocalTrainer, proximal_term
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class DittoConfig(AveragingConfig):
    lam: float = setting(
        0.1, help="weight lambda of the personal models' pull lambda/2 ||v - w||^2", ge=0
    )
    personal_epochs: int | None = setting(
        None,
        help="passes over the client's data for the personal model per round "
        "(null: the same local work as the global model)",
        ge=0,
    )


class PersonalModels:
    """Evaluation for methods whose client state is a personal model: every client is scored
    with its own model (the global one until it has trained) and with the global model."""

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return server.params if state is None else state

    def evaluated(self, server: ServerState, state: Any, client_id: int) -> dict[str, Params]:
        return {"": self.personalized(server, state, client_id), "global": server.params}


@ALGORITHMS.register(
    "ditto", DittoConfig, "Ditto: FedAvg global model plus proximal personal models"
)
class Ditto(PersonalModels, FedAvg):
    name = "ditto"
    config: DittoConfig

    def client_update(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        update, _ = super().client_update(message, state, client, trainer, rng)
        return update, self._train_personal(message, state, client, trainer, rng)

    def _train_personal(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> Params:
        train = client.train
        fit = trainer.fit(
            message.params if state is None else state,
            train.x,
            train.y,
            rng=rng,
            loss_terms=[proximal_term(message.params, self.config.lam)],
            epochs=self.config.personal_epochs,
        )
        return fit.params
