"""Partial personalization: part of the model is federated, the rest never leaves the client.

The model is split by parameter name (:mod:`plural.core.masks`) into a **shared** part,
federated exactly as FedAvg federates a whole model, and a **personal** part, which lives in
the engine's client-state store and is never sent. Every client starts its personal part
from the same initial values (the server keeps them, untouched, for clients not seen yet),
and each client is evaluated with the shared part merged with its own personal part.

* ``fedper`` (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"):
  personal classifier head (``@last``), body and head trained jointly each round.
* ``shared_body``: the same method read as multi-task learning with hard parameter sharing
  (Caruana 1997, "Multitask Learning"): one shared feature extractor, one task head per client.
* ``fedrep`` (Collins et al. 2021, "Exploiting Shared Representations for Personalized
  Federated Learning"): the head is first fitted with the body frozen, then the body is
  trained with the head frozen.
* ``lg_fedavg`` (Liang et al. 2020, "Think Locally, Act Globally: Federated Learning with
  Local and Global Representations"): the reverse split, local representation layers and a
  shared top (default the classifier, ``@last``); with a model family (``cnn_family``) it
  federates clients of different architectures through the layers whose shapes agree.
* ``fedbn`` (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
  Normalization"): personal normalisation layers (affine parameters and running statistics),
  for feature skew; needs a model with normalisation layers (``batch_norm: true``).

Only the shared entries cross the network, both ways, so ``bytes_up`` / ``bytes_down`` count
the shared part alone. Every :class:`~plural.algorithms.fedavg.AveragingConfig` setting
(weighting, server optimizer, stragglers) applies to the shared part. A straggler keeps the
personal part it trained even when ``drop_stragglers`` discards its shared update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import (
    FederationInfo,
    ModelMessage,
    OnClient,
    ServerState,
    Update,
    check_shared_shapes,
    personal_state,
)
from plural.core.masks import LAST, NORM, check_patterns, select
from plural.core.params import Params, subset
from plural.core.trainer import FitResult, LocalTrainer, Trainable
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = [
    "FedPer",
    "FedPerConfig",
    "PartialFedAvg",
    "PartialState",
    "RestrictedTrainer",
    "SharedBody",
    "SharedModelMessage",
    "partial_state",
    "personal_names",
]

PERSONAL_HELP = (
    "entries that stay on the client; the rest is shared and averaged. Name patterns "
    "('fc3.*', '*.bias') or '@last' (the last layer: the classifier head) or '@norm' "
    "(normalisation layers); [] is FedAvg"
)


@dataclasses.dataclass(frozen=True)
class FedPerConfig(AveragingConfig):
    """FedPer and shared-body settings: which entries are personal."""

    personal: tuple[str, ...] = setting((LAST,), help=PERSONAL_HELP)


@dataclasses.dataclass(frozen=True)
class SharedModelMessage(ModelMessage):
    """Server to client: the shared entries only (the personal ones never travel)."""


@dataclasses.dataclass(frozen=True)
class PartialState:
    """Partial personalization's part of the server state."""

    KEY: ClassVar[str] = "partial"
    personal: tuple[str, ...]
    """The personal entry names that :meth:`PartialFedAvg.init` resolved, in model order."""


def partial_state(server: ServerState) -> PartialState:
    """Partial personalization's part of ``server``."""
    return server.part(PartialState)


def personal_names(server: ServerState) -> tuple[str, ...]:
    """The personal entry names that :meth:`PartialFedAvg.init` resolved."""
    return partial_state(server).personal


class RestrictedTrainer(LocalTrainer):
    """A view of ``trainer`` that trains only the parameters ``only`` selects, and, if
    ``epochs`` is set, for that many epochs (overriding ``local_epochs`` and ``local_steps``).

    The model and every other setting are ``trainer``'s: FedAvg's local update run through
    this view is FedAvg's update of part of the model, stragglers included.
    """

    def __init__(self, trainer: LocalTrainer, only: Trainable, epochs: int | None = None) -> None:
        config = trainer.config
        if epochs is not None:
            config = dataclasses.replace(config, local_epochs=epochs, local_steps=None)
        super().__init__(trainer.model, config, trainer.initial_params, trainer.meter)
        self.only = only

    def fit(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        trainable: Trainable | None = None,
        **kwargs: Any,
    ) -> FitResult:
        def allowed(name: str) -> bool:
            return self.only(name) and (trainable is None or trainable(name))

        return super().fit(params, x, y, trainable=allowed, **kwargs)


class PartialFedAvg(FedAvg):
    """FedAvg of the shared entries; the personal entries are the client's state.

    The server holds the shared entries only; each client starts its personal entries from
    its own initial model, so clients may have different architectures as long as the shared
    entries agree in shape (LG-FedAvg sharing the classifier of a model family).

    Subclasses say which entries are personal (:meth:`personal_patterns`). The client's state
    is a dict of its personal entries; its update carries the shared entries only.
    """

    config: AveragingConfig
    model_heterogeneous = True

    def personal_patterns(self) -> tuple[str, ...]:
        """Name patterns (see :mod:`plural.core.masks`) of the personal entries."""
        raise NotImplementedError

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """The shared entries and the resolved personal names; a ConfigError for patterns that
        match nothing, or for shared entries whose shapes differ between architectures."""
        personal = self.resolve_personal(list(params), info)
        shared = {n: t for n, t in params.items() if n not in set(personal)}
        check_shared_shapes(info, list(shared), "algorithm")
        return ServerState(shared).with_parts(PartialState(personal))

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        """The personal entry names among ``names`` (model order), checked."""
        patterns = self.personal_patterns()
        try:
            check_patterns(names, patterns, "algorithm.personal")
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if NORM in patterns and not info.norm_layers:
            raise ConfigError(
                "algorithm.personal: '@norm' matches nothing: the model has no normalisation "
                "layers; use a model with batch_norm: true"
            )
        chosen = select(names, patterns, info.norm_layers)
        if chosen and chosen.issuperset(info.parameters or names):
            raise ConfigError(
                "algorithm.personal: every parameter is personal, nothing would be shared; "
                "use algorithm 'local' for purely local training"
            )
        return tuple(n for n in names if n in chosen)

    def broadcast(self, server: ServerState) -> SharedModelMessage:
        return SharedModelMessage(server.params)

    def personalized(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> Params | OnClient:
        """The shared entries with the client's own personal ones (its initial ones, which
        only the client holds, for a client that has not trained yet)."""
        if state is None:
            return OnClient(server.params)
        return {**server.params, **state}

    def newcomer(
        self, server: ServerState, client: ClientData, trainer: LocalTrainer, rng: torch.Generator
    ) -> Params | None:
        """A client that never trained (``split.unseen_clients``): the shared entries with a
        new personal part fitted on its training split, the shared part frozen (the head step
        of FedRep, Collins et al. 2021); None for subclasses without a personal part."""
        part = server.part(PartialState, None)
        if part is None:
            return None
        personal = set(part.personal)
        start = {**server.params, **subset(trainer.initial_params, sorted(personal))}
        fitter = RestrictedTrainer(trainer, lambda name: name in personal)
        return fitter.fit(start, client.train.x, client.train.y, rng=rng).params

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: ModelMessage,
        state: Params,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        """FedAvg's local update of the client's whole model (shared and personal jointly)."""
        state = personal_state(message, state, trainer)
        model = ModelMessage({**message.params, **state})
        return super().client_update(model, state, client, trainer, rng)

    def finish_update(
        self,
        update: Update,
        fit: FitResult,
        message: ModelMessage,
        state: Params,
        trainer: LocalTrainer,
    ) -> tuple[Update, Params]:
        """Send the shared entries; keep the personal ones as the new state."""
        shared = {n: t for n, t in fit.params.items() if n not in state}
        return dataclasses.replace(update, params=shared), subset(fit.params, list(state))


@ALGORITHMS.register(
    "fedper", FedPerConfig, "FedPer: shared body averaged, personal head (or other layers) local"
)
class FedPer(PartialFedAvg):
    """FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers").

    The base layers are federated by FedAvg; the personalization layers (``personal``,
    default the classifier head) stay on each client. Each round a sampled client trains
    body and head jointly with SGD, sends the body and keeps the head. This is also
    multi-task learning with hard parameter sharing (see :class:`SharedBody`). With
    ``personal: []`` it is FedAvg exactly.
    """

    name = "fedper"
    config: FedPerConfig

    def personal_patterns(self) -> tuple[str, ...]:
        return self.config.personal


@ALGORITHMS.register(
    "shared_body",
    FedPerConfig,
    "multi-task learning, hard parameter sharing: federated body, one task head per client",
)
class SharedBody(FedPer):
    """Multi-task learning with hard parameter sharing (Caruana 1997, "Multitask Learning";
    Ruder 2017, "An Overview of Multi-Task Learning in Deep Neural Networks").

    Each client is a task: the shared layers (the feature extractor) are learned by all
    clients together, federated by FedAvg, and each task has its own output head
    (``personal``, default ``@last``) trained only on its own data. The algorithm is FedPer's;
    this name is the multi-task reading of it, for heads that differ in meaning between
    clients (different label sets or tasks over the same inputs) rather than only in the label
    mix.
    """

    name = "shared_body"
    in_demo = False  # the demo would show FedPer's row twice
