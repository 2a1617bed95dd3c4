"""Local fine-tuning: the simplest personalization (e.g. Wang et al. 2019, "Federated
Evaluation of On-device Personalization"; Yu et al. 2020, "Salvaging Federated Learning by
Local Adaptation").

Any global algorithm (``base``, FedAvg by default) trains as usual. Whenever the engine
evaluates, every client fine-tunes the current global model on its own training split for
at most ``epochs`` epochs, stopping early when its validation loss has not improved for
``patience`` epochs, and is scored with the result. The rows ``test@global`` score the global
model, so accuracy before and after fine-tuning sit side by side. With ``epochs: 0`` this is
exactly the base method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from plural.config import setting
from plural.core.aggregation import AggregationChain
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    ModelMessage,
    RoundContext,
    ServerState,
    Update,
    full_params,
)
from plural.core.params import Params
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    base: dict[str, Any] = setting(
        default_factory=lambda: {"name": "fedavg"},
        help="the global algorithm trained first, with its settings, e.g. {name: fedprox, mu: 0.1}",
    )
    epochs: int = setting(
        5, help="fine-tuning epochs per client, at most (0 = the base method)", ge=0
    )
    patience: int | None = setting(
        2,
        help="stop when the client's validation loss has not improved for this many epochs and "
        "keep the best epoch (null, or a client without validation data: run every epoch)",
        ge=1,
    )
    lr: float | None = setting(None, help="fine-tuning learning rate (null: train.lr)", gt=0)

    def __post_init__(self) -> None:
        if self.base.get("name") == "finetune":
            raise ValueError("base: fine-tuning needs a global algorithm, not 'finetune' itself")
        ALGORITHMS.parse(self.base, "base")


@dataclasses.dataclass(frozen=True)
class FinetuneState:
    """The base algorithm's client state and the client's latest fine-tuned model."""

    base: Any = None
    tuned: Params | None = None


def _base_state(state: FinetuneState | None) -> Any:
    return None if state is None else state.base


@ALGORITHMS.register(
    "finetune", FinetuneConfig, "any global method, then local fine-tuning per client"
)
class Finetune(Algorithm):
    name = "finetune"
    config: FinetuneConfig

    def __init__(self, config: FinetuneConfig) -> None:
        super().__init__(config)
        entry, settings = ALGORITHMS.parse(config.base, "algorithm.base")
        self.base: Algorithm = entry.target(settings)

    @property  # type: ignore[override]
    def aggregation(self) -> AggregationChain:
        """The base algorithm's aggregation chain (the run's chain is set on the base)."""
        return self.base.aggregation

    @aggregation.setter
    def aggregation(self, chain: AggregationChain) -> None:
        self.base.aggregation = chain

    def __getattr__(self, phase: str) -> Callable[..., Any]:
        # Extra client phases of a multi-phase base run with the base's own client state.
        # The base's newcomer step is not one: fine-tuning serves a newcomer itself (every
        # client, unseen ones too, is fine-tuned from the global model at evaluation).
        if phase.startswith("__") or phase in ("base", "newcomer"):
            raise AttributeError(phase)
        return _wrap_phase(getattr(self.base, phase))

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        return self.base.init(params, info, rng)

    def init_client(self, server: ServerState, client_id: int) -> FinetuneState:
        return FinetuneState(self.base.init_client(server, client_id))

    def broadcast(self, server: ServerState) -> Any:
        return self.base.broadcast(server)

    def client_update(
        self,
        message: Any,
        state: FinetuneState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, FinetuneState]:
        return _wrap_phase(self.base.client_update)(message, state, client, trainer, rng)

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        return self.base.aggregate(server, updates, rng)

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        server = self.base.round(server, cohort, ctx)
        if ctx.evaluating and self.config.epochs > 0:
            ctx.map("finetune_client", range(ctx.num_clients), ModelMessage(self._global(server)))
        return server

    def finetune_client(
        self,
        message: ModelMessage,
        state: FinetuneState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[None, FinetuneState]:
        """Fine-tune the received model on the client's data (early stopping on its val split)."""
        cfg = self.config
        fit = trainer.fit(
            full_params(message.params, trainer),
            client.train.x,
            client.train.y,
            rng=rng,
            epochs=cfg.epochs,
            lr=cfg.lr,
            validation=(client.val.x, client.val.y),
            patience=cfg.patience,
        )
        return None, FinetuneState(_base_state(state), fit.params)

    def _global(
        self, server: ServerState, state: FinetuneState | None = None, cid: int = 0
    ) -> Params:
        return self.base.personalized(server, _base_state(state), cid)

    def personalized(
        self, server: ServerState, state: FinetuneState | None, client_id: int
    ) -> Params:
        if state is not None and state.tuned is not None and self.config.epochs > 0:
            return state.tuned
        return self._global(server, state, client_id)

    def evaluated(
        self, server: ServerState, state: FinetuneState | None, client_id: int
    ) -> dict[str, Params]:
        return {
            "": self.personalized(server, state, client_id),
            "global": self._global(server, state, client_id),
        }


def _wrap_phase(phase: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, FinetuneState]]:
    """A base client phase that reads and writes the base part of a :class:`FinetuneState`."""

    def wrapped(
        message: Any,
        state: FinetuneState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Any, FinetuneState]:
        reply, base_state = phase(message, _base_state(state), client, trainer, rng)
        return reply, FinetuneState(base_state, None if state is None else state.tuned)

    return wrapped
