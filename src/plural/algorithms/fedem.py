"""FedEM (Marfoq et al. 2021, "Federated Multi-Task Learning under a Mixture of
Distributions"): every client's data is a mixture of ``M`` shared underlying distributions;
the server learns one model per distribution (a *component*) and each client learns its own
mixing weights ``pi`` (its state). A client's prediction mixes the components' predicted class
probabilities, ``p(y|x) = sum_m pi_m softmax(f_m(x))``.

One round for a sampled client (the paper's Algorithm 1, federated EM):

1. E-step: responsibilities ``q_im ∝ pi_m exp(-loss_m(x_i, y_i))`` on its training split
   (the loss is the negative log-likelihood); then ``pi <- mean_i q_i``.
2. M-step: each component ``m`` trains on the loss weighted by ``q_im`` (the trainer's
   ``sample_weights``) for the usual local epochs or steps; the client sends all ``M``
   components back (``M`` models of bytes up and down).

The server averages each component over the clients that took part with the configured
``weighting`` (default: by samples, ``n_t / n`` as in the paper's Algorithm 1), then applies
the server optimizer per component (``sgd`` with ``server_lr`` 1 is plain averaging).

Choices the paper leaves open, and departures:

* Initialisation: component 0 is the initial model; component ``m > 0`` is the initial model
  with the entries of every floating-point tensor randomly permuted (a draw of the server's
  init generator). For the usual i.i.d. initialisations this is another draw from the same
  distribution, so components start distinct (identical components would stay identical).
* ``server.params`` holds component 0 (what diagnostics see); the evaluated model is the
  client's :class:`~plural.core.trainer.Mixture`.
* A client that has never taken part is evaluated with uniform weights ``1/M``; the paper
  runs the E-step on a new client first (that needs its data, hence a client phase).
* The training loss reported per client is the EM surrogate ``sum_m mean_i(q_im loss_im)``.
* Stragglers do the same shortened work on every component.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.aggregators import weighted_mean
from plural.core.algorithm import FederationInfo, ServerState, Update
from plural.core.params import Params
from plural.core.server_opt import AveragingState, averaging, server_step
from plural.core.trainer import LocalTrainer, Mixture
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["ComponentsMessage", "FedEM", "FedEMConfig", "FedEMState", "fedem_state"]

COMPONENTS = "components"
"""``Update.extra`` key of the client's ``M`` trained components."""


@dataclasses.dataclass(frozen=True)
class FedEMConfig(AveragingConfig):
    components: int = setting(3, help="number M of mixture components (shared models)", ge=1)


@dataclasses.dataclass(frozen=True)
class ComponentsMessage:
    """Server to client: the ``M`` component models."""

    components: tuple[Params, ...]


@dataclasses.dataclass(frozen=True)
class FedEMState:
    """FedEM's part of the server state (the server optimizer's state per component, keyed by
    component index, is :class:`~plural.core.server_opt.AveragingState`'s ``server_opt``)."""

    KEY: ClassVar[str] = "fedem"
    components: tuple[Params, ...]
    """The ``M`` component models (``server.params`` is component 0)."""


def fedem_state(server: ServerState) -> FedEMState:
    """FedEM's part of ``server``."""
    return server.part(FedEMState)


def permuted(params: Params, rng: np.random.Generator) -> Params:
    """``params`` with the entries of every floating-point tensor randomly permuted."""
    out = {}
    for name, tensor in params.items():
        if tensor.is_floating_point() and tensor.numel() > 1:
            order = torch.from_numpy(rng.permutation(tensor.numel()))
            out[name] = tensor.reshape(-1)[order].reshape(tensor.shape).clone()
        else:
            out[name] = tensor.clone()
    return out


def responsibilities(losses: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """E-step: ``q_im ∝ pi_m exp(-losses_im)``, rows normalised; ``losses`` is (n, M)."""
    log_pi = pi.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    return torch.softmax(log_pi - losses.double(), dim=1)


NEWCOMER_EM_STEPS = 50
"""E-steps fitting a newcomer's mixture weights (each is cheap: the losses are computed once)."""


def uniform(components: int) -> torch.Tensor:
    """The mixing weights of a client that has not taken part yet."""
    return torch.full((components,), 1.0 / components, dtype=torch.float64)


@ALGORITHMS.register(
    "fedem", FedEMConfig, "FedEM: M shared components, per-client mixture weights (federated EM)"
)
class FedEM(FedAvg):
    """Federated EM over a mixture of ``M`` component models; client state: ``pi`` (M,)."""

    name = "fedem"
    config: FedEMConfig

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        components = [params] + [permuted(params, rng) for _ in range(self.config.components - 1)]
        return ServerState(components[0]).with_parts(FedEMState(tuple(components)))

    def broadcast(self, server: ServerState) -> ComponentsMessage:
        return ComponentsMessage(fedem_state(server).components)

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        used = self.used_updates(updates)
        if not used:
            return server
        weights = self.weights(used)
        kept = averaging(server)
        components, new_opt = [], {}
        for m, current in enumerate(fedem_state(server).components):
            target = weighted_mean(
                [(u.extra[COMPONENTS][m], float(w)) for u, w in zip(used, weights, strict=True)]
            )
            params, state = server_step(
                current, target, kept.server_opt.get(m, {}), self.config.server_settings()
            )
            components.append(params)
            if state:
                new_opt[m] = state
        parts: list[Any] = [FedEMState(tuple(components))]
        if new_opt:
            parts.append(AveragingState(new_opt, kept.aggregation))
        return server.with_parts(*parts, params=components[0])

    def server_models(self, server: ServerState) -> dict[str, Mixture]:
        """The global model: the components mixed with uniform weights (a newcomer's)."""
        return {"": Mixture(list(fedem_state(server).components), uniform(self.config.components))}

    def newcomer(
        self, server: ServerState, client: ClientData, trainer: LocalTrainer, rng: torch.Generator
    ) -> Mixture:
        """A client that never trained (``split.unseen_clients``): its mixture weights
        fitted by EM on its training split with the components fixed, as FedEM serves a
        new client (Marfoq et al. 2021: clients unseen in training learn only their weights)."""
        components = list(fedem_state(server).components)
        pi = uniform(len(components))
        train = client.train
        if len(train):
            losses = torch.stack(
                [trainer.sample_losses(c, train.x, train.y) for c in components], dim=1
            ).cpu()
            for _ in range(NEWCOMER_EM_STEPS):
                pi = responsibilities(losses, pi).mean(dim=0)
        return Mixture(components, pi)

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Mixture:  # type: ignore[override]
        pi = uniform(self.config.components) if state is None else state
        return Mixture(list(fedem_state(server).components), pi)

    # ---- client side -------------------------------------------------------------------------

    def client_update(  # type: ignore[override]
        self,
        message: ComponentsMessage,
        state: torch.Tensor | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, torch.Tensor]:
        train = client.train
        budget = self.work_budget(trainer, rng)
        # The E-step runs on the CPU: the mixture weights are small, and a backend may hand the
        # client's state over on the training device.
        pi = (uniform(len(message.components)) if state is None else state).cpu()
        losses = torch.stack(
            [trainer.sample_losses(c, train.x, train.y) for c in message.components], dim=1
        ).cpu()
        q = responsibilities(losses, pi)
        new_pi = q.mean(dim=0) if len(q) else pi.clone()
        fits = [
            trainer.fit(
                component,
                train.x,
                train.y,
                rng=rng,
                sample_weights=q[:, m].float().to(train.x.device),
                epochs=budget.epochs,
                steps=budget.steps,
            )
            for m, component in enumerate(message.components)
        ]
        update = Update(
            len(train),
            extra={COMPONENTS: [fit.params for fit in fits]},
            loss=sum(fit.mean_loss for fit in fits),
            reported_samples=self._report(len(train), trainer, rng),
            start_loss=self._mixture_loss(losses, pi),
            complete=budget.complete,
        )
        return update, new_pi

    def _mixture_loss(self, losses: torch.Tensor, pi: torch.Tensor) -> float:
        """'fair' weighting: the mixture's mean training loss ``-log sum_m pi_m e^-loss_m``."""
        if self.config.weighting != "fair" or len(losses) == 0:
            return float("nan")
        log_pi = pi.double().clamp_min(torch.finfo(torch.float64).tiny).log()
        return float(-torch.logsumexp(log_pi - losses.double(), dim=1).mean())
