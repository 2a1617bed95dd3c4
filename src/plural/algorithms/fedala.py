"""FedALA (Zhang et al. 2023, "FedALA: Adaptive Local Aggregation for Personalized Federated
Learning", AAAI; arXiv 2212.01197).

FedAvg whose clients do not overwrite their local model with the global one. Before local
training, a client mixes the received global model ``G`` into its previous local model ``L``
element by element (adaptive local aggregation, ALA):

    start = L + (G - L) * W        on the top ``layers`` layers,
    start = G                      on the layers below them,

with learnt weights ``W`` in [0, 1] (one per parameter entry, starting at 1 and kept by the
client between rounds). ``W`` is trained by SGD with step ``eta`` on the loss of ``start`` over
a random ``rand_percent`` % of the client's training data, with ``L`` and ``G`` fixed; then
the client trains ``start`` as FedAvg does and sends it back; the server averages. The
client's model (evaluated as its personalized model) is the one it trained last.

Defaults and choices:

* ``eta = 1.0``, ``rand_percent = 80`` and ``layers = 1`` (the classifier, weight and bias:
  the official code's ``layer_idx = 2`` parameter tensors) are the paper's settings.
* The paper trains ``W`` until its loss stops moving the first time ALA runs (the start
  phase) and one pass afterwards; here the start phase is ``start_epochs`` passes (a bound
  instead of a convergence test) and later rounds one pass.
* The official code projects ``W`` on [0, 1] after every step; the trainer has no per-step
  projection hook (the vectorized backend batches this fit too), so here the mixed model
  clamps ``W`` in its forward pass with the gradient of the identity
  (:func:`~plural.core.params.clamp_passing_gradient`: an entry a step pushed outside acts
  as the boundary value and still gets gradient, so a later step can bring it back) and
  the weights are projected after every pass (the start phase runs its passes one at a
  time). With a plain clamp and one projection after the whole start phase, entries a step
  pushed outside got no gradient and stayed there for all its passes (20 of 24 head weights
  of a small model after 10 passes).
* The random sample is a random subset (the official code takes a contiguous slice at a
  random offset).
* A client's first participation has no local model yet (``L = G``): ALA is skipped, as in
  the official code, and the start phase happens at its second participation.
* ``start`` is computed as ``G - (G - L) * (1 - W)``, equal in value, so that ``W = 1``
  gives ``G`` bit for bit: with ``eta = 0`` (weights fixed at 1) FedALA is FedAvg followed by
  local training, and its global model is FedAvg's exactly.

Bytes: FedAvg's (the model both ways); ``W`` never leaves the client.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import FederationInfo, ModelMessage, ServerState, Update
from plural.core.masks import module_prefix, top_module_names
from plural.core.params import Params, clamp_passing_gradient, clone
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

TEMPLATE = "template."
WEIGHTS = "weights."


@dataclasses.dataclass(frozen=True)
class FedALAConfig(AveragingConfig):
    eta: float = setting(
        1.0, help="step size of the ALA weights (paper: 1.0); 0 keeps them at 1 (FedAvg)", ge=0
    )
    rand_percent: float = setting(
        80.0, help="percent of the client's training data ALA trains on (paper: 80)", gt=0, le=100
    )
    layers: int = setting(
        1, help="top layers aggregated adaptively; lower layers take the global model", ge=1
    )
    start_epochs: int = setting(
        10, help="passes training the ALA weights the first time (later: one pass)", ge=1
    )


@dataclasses.dataclass(frozen=True)
class FedALAState:
    """A client's local model, its ALA weights, and whether the start phase is over."""

    model: Params
    weights: Params
    started: bool = False


def _key(name: str) -> str:
    return name.replace(".", "__")


class AdaptiveMix(nn.Module):
    """``G - (G - L) * (1 - clamp(W, 0, 1))`` on the ``top`` entries, ``G`` elsewhere, run
    through a copy of the model; trainable in ``W`` only (state: ``template.*``, ``weights.*``)."""

    def __init__(self, template: nn.Module, received: Params, local: Params, top: list[str]):
        super().__init__()
        self.template = copy.deepcopy(template)
        self.received, self.local, self.top = clone(received), local, top
        self.weights = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.ones_like(received[n])) for n in top}
        )

    def mixed(self) -> Params:
        out = dict(self.received)
        for name in self.top:
            weight = clamp_passing_gradient(self.weights[_key(name)], 0.0, 1.0)
            gap = self.received[name] - self.local[name]
            out[name] = self.received[name] - gap * (1 - weight)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, self.mixed(), (x,))


def top_entries(params: Params, trainer: LocalTrainer, layers: int) -> list[str]:
    """The floating-point parameter entries of the top ``layers`` layers, in model order."""
    parameters = {n for n, _ in trainer.model.named_parameters()}
    names = [n for n in params if n in parameters]
    top = top_module_names(names, layers)
    return [n for n in names if n in top and params[n].is_floating_point()]


@ALGORITHMS.register(
    "fedala", FedALAConfig, "FedALA: FedAvg with learnt element-wise adaptive local aggregation"
)
class FedALA(FedAvg):
    name = "fedala"
    config: FedALAConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """FedAvg's; a ConfigError when ``layers`` exceeds the model's layers."""
        names = [n for n in params if n in set(info.parameters or params)]
        available = len({module_prefix(n) for n in names})
        if self.config.layers > available:
            raise ConfigError(
                f"algorithm.layers: {self.config.layers}, but the model has only {available} "
                "layers with parameters"
            )
        return super().init(params, info, rng)

    def client_update(
        self,
        message: ModelMessage,
        state: FedALAState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, FedALAState]:
        """ALA (from the second participation on, unless ``eta = 0``), then FedAvg's update."""
        if state is None:
            top = top_entries(message.params, trainer, self.config.layers)
            state = FedALAState(
                message.params, {n: torch.ones_like(message.params[n]) for n in top}
            )
            start = message.params  # no local model yet: ALA would give G whatever W is
        elif self.config.eta > 0:
            start, weights = self.adaptive_start(message.params, state, client, trainer, rng)
            state = FedALAState(state.model, weights, started=True)
        else:
            start = message.params  # W fixed at 1: the start is G
        update, _ = super().client_update(ModelMessage(start), None, client, trainer, rng)
        assert update.params is not None
        return update, dataclasses.replace(state, model=update.params)

    def adaptive_start(
        self,
        received: Params,
        state: FedALAState,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Params, Params]:
        """The ALA-mixed starting model and the trained weights."""
        top = list(state.weights)
        mix = AdaptiveMix(trainer.model, received, state.model, top)
        train = client.train
        size = max(1, math.ceil(len(train) * self.config.rand_percent / 100))
        sample = torch.randperm(len(train), generator=rng)[:size]
        view = trainer.view(
            lr=self.config.eta, momentum=0.0, weight_decay=0.0, max_grad_norm=None, local_steps=None
        )
        ala = LocalTrainer(mix, view.config, {}, trainer.meter)
        weights = dict(state.weights)
        for _ in range(1 if state.started else self.config.start_epochs):
            # one pass at a time, projected on [0, 1] after each: an entry a step pushed out
            # would get no gradient through the forward pass's clamp and stay stuck there
            params = {TEMPLATE + n: t for n, t in received.items()}
            params.update({WEIGHTS + _key(n): weights[n] for n in top})
            fit = ala.fit(
                params,
                train.x[sample],
                train.y[sample],
                rng=rng,
                epochs=1,
                trainable=lambda n: n.startswith(WEIGHTS),
            )
            weights = {n: fit.params[WEIGHTS + _key(n)].clamp(0.0, 1.0) for n in top}
        mix.weights.load_state_dict({_key(n): w for n, w in weights.items()})
        with torch.no_grad():
            start = {n: t.detach().clone() for n, t in mix.mixed().items()}
        return start, weights

    def personalized(
        self, server: ServerState, state: FedALAState | None, client_id: int
    ) -> Params:
        return server.params if state is None else state.model

    def evaluated(
        self, server: ServerState, state: FedALAState | None, client_id: int
    ) -> dict[str, Params]:
        return {"": self.personalized(server, state, client_id), "global": server.params}
