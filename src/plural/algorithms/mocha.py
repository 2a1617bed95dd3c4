"""MOCHA (Smith et al. 2017, "Federated Multi-Task Learning"): every client ``t`` keeps its
own model ``w_t``; the models are coupled through a learnt task-relationship matrix
``Omega`` (K x K, symmetric PSD, trace 1):

    min_{W, Omega}  sum_t loss_t(w_t) + lam * tr(W^T Omega^-1 W) + ridge/2 * sum_t ||w_t||^2

with ``W`` the K x d matrix whose rows are the clients' flattened models (the paper's ``W`` is
d x K, hence its ``tr(W Omega^-1 W^T)``). The method alternates

(a) with ``Omega`` fixed, each sampled client minimises its part of the objective. With the
    other models fixed, the coupling term in ``w_t`` is
    ``lam * [(Omega^-1)_tt ||w_t||^2 + 2 sum_{s != t} (Omega^-1)_ts <w_t, w_s>]``
    (:func:`coupling_term`), so the server sends client ``t`` only
    ``c_t = sum_{s != t} (Omega^-1)_ts w_s`` and the scalar ``(Omega^-1)_tt``; the client
    trains ``w_t`` (its state) and sends it back; the server keeps ``W``, as MOCHA's does;
(b) every ``omega_every`` rounds the server sets ``Omega = (W W^T)^(1/2) / tr((W W^T)^(1/2))``
    (the closed-form minimiser; :func:`relationship`), computed by an eigendecomposition.

Departures and choices:

* Local solver: MOCHA solves the dual of each local subproblem with a CoCoA-style
  coordinate method (which needs a convex loss); here the client runs the one
  :class:`~plural.core.trainer.LocalTrainer` SGD loop on the same primal objective. The
  method is meant for convex models (``logreg``); with any other model it still runs and
  couples all trainable parameters, flattened, but then carries no guarantee.
* ``Omega`` starts at ``I/K`` (tasks unrelated), as in the authors' code. To keep
  ``Omega^-1`` bounded, ``omega_eps`` times ``tr(S)/K`` is added to the diagonal of
  ``S = (W W^T)^(1/2)`` before normalising to trace 1.
* Partial participation: only clients that have reported are rows of ``W``; every other
  client's row is the mean of the reported models (the initial model before any report).
  ``server.params`` is that mean, and personalizes clients that have not trained yet.
* ``lam`` multiplies the coupling with ``Omega`` of trace 1, so ``(Omega^-1)_tt`` is about
  ``K``: the penalty grows with the number of clients, as in the paper's objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from plural.config import setting
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    RoundContext,
    ServerState,
    Update,
)
from plural.core.params import Params, flat
from plural.core.trainer import LocalTrainer, LossTerm
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["MOCHA", "CouplingMessage", "MOCHAConfig", "MOCHAState", "mocha_state"]


@dataclasses.dataclass(frozen=True)
class MOCHAConfig:
    lam: float = setting(0.01, help="coupling strength lam of tr(W^T Omega^-1 W)", ge=0)
    ridge: float = setting(1e-4, help="ridge weight: adds ridge/2 ||w_t||^2 per client", ge=0)
    omega_every: int = setting(1, help="rounds between updates of Omega", ge=1)
    omega_eps: float = setting(
        0.1, help="added to Omega's diagonal (relative to its mean eigenvalue) so it inverts", gt=0
    )


@dataclasses.dataclass(frozen=True)
class MOCHAState:
    """MOCHA's part of the server state (``server.params``: the mean of the reported models)."""

    KEY: ClassVar[str] = "mocha"
    names: tuple[str, ...]
    """The coupled entries (floating-point, trainable), in the order ``W``'s rows flatten them."""
    omega: torch.Tensor
    """(K, K) float64 the task-relationship matrix ``Omega``."""
    models: Mapping[int, Params] = dataclasses.field(default_factory=dict)
    """The rows of ``W``: each reported client's latest model."""


def mocha_state(server: ServerState) -> MOCHAState:
    """MOCHA's part of ``server``."""
    return server.part(MOCHAState)


@dataclasses.dataclass(frozen=True)
class CouplingMessage:
    """Server to client ``t``: ``c_t = sum_{s != t} (Omega^-1)_ts w_s`` and ``(Omega^-1)_tt``."""

    neighbours: Params
    self_weight: float


def coupling_term(message: CouplingMessage, lam: float, ridge: float) -> LossTerm:
    """``lam * [(Omega^-1)_tt ||w||^2 + 2 <c_t, w>] + ridge/2 ||w||^2`` over the coupled
    parameters (client ``t``'s part of MOCHA's objective with the other models fixed)."""

    def term(live: Mapping[str, nn.Parameter]) -> torch.Tensor:
        total = torch.zeros(())
        for name, c in message.neighbours.items():
            p = live[name]
            square = p.pow(2).sum()
            total = total + lam * (message.self_weight * square + 2 * (p * c).sum())
            total = total + 0.5 * ridge * square
        return total

    return term


def unflatten(vector: torch.Tensor, like: Params, names: Sequence[str]) -> Params:
    out, start = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vector[start : start + size].reshape(like[n].shape).to(like[n].dtype)
        start += size
    return out


def relationship(w: torch.Tensor, eps: float) -> torch.Tensor:
    """``Omega = (S + eps tr(S)/K I) / tr(...)`` with ``S = (W W^T)^(1/2)``; ``W`` is (K, d)."""
    gram = w.double() @ w.double().T
    values, vectors = torch.linalg.eigh((gram + gram.T) / 2)
    root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    k = len(gram)
    shift = eps * max(float(torch.trace(root)), 1e-12) / k
    omega = root + shift * torch.eye(k, dtype=torch.float64)
    omega = (omega + omega.T) / 2
    return omega / torch.trace(omega)


@ALGORITHMS.register(
    "mocha", MOCHAConfig, "MOCHA: per-client models coupled by a learnt task relationship Omega"
)
class MOCHA(Algorithm):
    """Federated multi-task learning with a learnt relationship matrix; state: ``w_t``."""

    name = "mocha"
    has_server_model = False  # one model per task; the server's is not a model of any
    in_demo = False  # for convex models; the demo trains an MLP
    config: MOCHAConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        names = [n for n in (info.parameters or tuple(params)) if params[n].is_floating_point()]
        k = info.num_clients
        omega = torch.eye(k, dtype=torch.float64) / k
        return ServerState(params).with_parts(MOCHAState(tuple(names), omega))

    def init_client(self, server: ServerState, client_id: int) -> Params:
        return server.params

    def broadcast(self, server: ServerState) -> CouplingMessage:
        """MOCHA's messages are per client (:meth:`messages`); this is client 0's."""
        return self.messages(server, [0])[0]

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        messages = self.messages(server, cohort)
        updates = ctx.map("client_update", cohort, per_client=messages)
        kept = mocha_state(server)
        models = dict(kept.models)
        for cid, update in zip(cohort, updates, strict=True):
            models[cid] = update.params
        kept = dataclasses.replace(kept, models=models)
        server = server.with_parts(kept, params=self._mean(server, models))
        if ctx.round % self.config.omega_every == 0:
            omega = relationship(self._matrix(server), self.config.omega_eps)
            server = server.with_parts(dataclasses.replace(kept, omega=omega))
        return server

    def messages(self, server: ServerState, cohort: Sequence[int]) -> dict[int, CouplingMessage]:
        """Each sampled client's ``c_t`` and ``(Omega^-1)_tt``."""
        names = mocha_state(server).names
        w = self._matrix(server)
        inverse = torch.linalg.inv(mocha_state(server).omega)
        out = {}
        for t in cohort:
            row = inverse[t].clone()
            row[t] = 0.0
            out[t] = CouplingMessage(unflatten(row @ w, server.params, names), float(inverse[t, t]))
        return out

    def _matrix(self, server: ServerState) -> torch.Tensor:
        """``W`` (K, d): reported models; the mean model for clients that have not reported."""
        kept = mocha_state(server)
        names, models, k = kept.names, kept.models, len(kept.omega)
        mean = flat(server.params, names)
        rows = [flat(models[c], names) if c in models else mean for c in range(k)]
        return torch.stack(rows)

    def _mean(self, server: ServerState, models: Mapping[int, Params]) -> Params:
        if not models:
            return server.params
        ordered = [models[c] for c in sorted(models)]
        return {
            n: torch.stack([m[n].double() for m in ordered]).mean(0).to(t.dtype)
            if t.is_floating_point()
            else t
            for n, t in server.params.items()
        }

    def client_update(
        self,
        message: CouplingMessage,
        state: Params,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        train = client.train
        term = coupling_term(message, self.config.lam, self.config.ridge)
        fit = trainer.fit(state, train.x, train.y, rng=rng, loss_terms=[term])
        return Update(len(train), fit.params, loss=fit.mean_loss), fit.params

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        raise NotImplementedError("MOCHA runs its own round; see MOCHA.round")

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return server.params if state is None else state
