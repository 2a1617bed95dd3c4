"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), option II.

The server keeps a control variate ``c`` and each client its own ``c_i`` (in the engine's
client-state store). Local steps follow ``g_i(y) - c_i + c``, which is plain SGD on the
local loss plus the linear term ``<c - c_i, y>``. After ``K`` steps of size ``eta`` a client
sets ``c_i+ = c_i - c + (x - y) / (K eta)`` and sends ``y`` and ``c_i+ - c_i``; the server
moves ``x`` by ``server_lr`` towards the averaged ``y`` and ``c`` by ``|S|/N`` times the
averaged control change. The formula for ``c_i+`` divides by the distance plain SGD would
travel; with local momentum ``beta`` the step size is taken as the heavy-ball effective rate
``eta / (1 - beta)`` (exact for a constant gradient; without it the control variates come out
``1/(1 - beta)`` times too large and training diverges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.core.algorithm import FederationInfo, RoundContext, ServerState, Update
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, LossTerm
from plural.registry import ALGORITHMS

__all__ = ["Scaffold", "ScaffoldConfig", "ScaffoldMessage", "ScaffoldState", "scaffold_state"]


@dataclasses.dataclass(frozen=True)
class ScaffoldConfig(AveragingConfig):
    """SCAFFOLD's server learning rate is ``server_lr`` (1 in the paper's experiments)."""


@dataclasses.dataclass(frozen=True)
class ScaffoldMessage:
    """The global model and the server's control variate."""

    params: Params
    control: Params


@dataclasses.dataclass(frozen=True)
class ScaffoldState:
    """SCAFFOLD's part of the server state."""

    KEY: ClassVar[str] = "scaffold"
    control: Params
    """The server's control variate ``c`` (one entry per trainable parameter)."""
    num_clients: int
    """``N``, the clients that train (``split.unseen_clients`` left out, set at the first
    round): ``c`` moves by ``|S|/N`` of the mean control change, so it stays the mean of the
    clients' control variates."""


def scaffold_state(server: ServerState) -> ScaffoldState:
    """SCAFFOLD's part of ``server``."""
    return server.part(ScaffoldState)


def correction_term(server_control: Params, client_control: Params | None) -> LossTerm:
    """``<c - c_i, w>``: its gradient turns the local gradient g_i into g_i - c_i + c."""
    shift = {
        n: c - client_control[n] if client_control is not None else c
        for n, c in server_control.items()
    }

    def term(live: Mapping[str, nn.Parameter]) -> torch.Tensor:
        return sum((p * shift[n]).sum() for n, p in live.items() if n in shift)

    return term


@ALGORITHMS.register("scaffold", ScaffoldConfig, "SCAFFOLD: control variates correct client drift")
class Scaffold(FedAvg):
    name = "scaffold"
    config: ScaffoldConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        names = info.parameters or tuple(n for n, t in params.items() if t.is_floating_point())
        control = {n: torch.zeros_like(params[n]) for n in names}
        return ServerState(params).with_parts(ScaffoldState(control, info.num_clients))

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        kept = scaffold_state(server)
        if kept.num_clients != len(ctx.clients):  # unseen clients never hold a control variate
            server = server.with_parts(dataclasses.replace(kept, num_clients=len(ctx.clients)))
        return super().round(server, cohort, ctx)

    def broadcast(self, server: ServerState) -> ScaffoldMessage:
        return ScaffoldMessage(server.params, scaffold_state(server).control)

    def loss_terms(self, message: ScaffoldMessage, state: Params | None) -> list[LossTerm]:
        return [correction_term(message.control, state)]

    def finish_update(
        self,
        update: Update,
        fit: FitResult,
        message: ScaffoldMessage,
        state: Params | None,
        trainer: LocalTrainer,
    ) -> tuple[Update, Params | None]:
        if fit.steps == 0:
            return dataclasses.replace(
                update, extra={"control_delta": _zeros(message.control)}
            ), state
        effective_lr = trainer.config.lr / (1.0 - trainer.config.momentum)
        scale = 1.0 / (fit.steps * effective_lr)
        old = state if state is not None else _zeros(message.control)
        new = {
            n: old[n] - c + (message.params[n] - fit.params[n]) * scale
            for n, c in message.control.items()
        }
        delta = {n: new[n] - old[n] for n in new}
        return dataclasses.replace(update, extra={"control_delta": delta}), new

    def finish_aggregate(self, server: ServerState, updates: list[Update]) -> ServerState:
        kept = scaffold_state(server)
        fraction = len(updates) / kept.num_clients
        new_control = {
            n: c + fraction * torch.stack([u.extra["control_delta"][n] for u in updates]).mean(0)
            for n, c in kept.control.items()
        }
        return server.with_parts(dataclasses.replace(kept, control=new_control))


def _zeros(like: Params) -> Params:
    return {n: torch.zeros_like(t) for n, t in like.items()}
