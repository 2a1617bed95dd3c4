"""FedProto (Tan et al. 2022, "FedProto: Federated Prototype Learning across Heterogeneous
Clients", AAAI; arXiv 2105.00243).

Clients exchange class prototypes, never model parameters. A prototype of class ``c`` is the
mean representation ``h = body(x)`` of the samples of class ``c`` (the model's output before
its linear classifier, see :func:`~plural.models.adapters.body_and_head`). Each round a
sampled client trains its own model (its state; its architecture's initial model the first
time) on

    CE(head(h), y) + lam * MSE(h, P[y])

with ``P`` the global prototypes it received; the second term covers only the samples whose
class has a global prototype (none in round 1). It then sends its per-class mean
representations over its training data (evaluation mode, after training) and their sample
counts; the server combines them class by class. Models never leave their clients, so clients
may have different architectures as long as every architecture has the same representation
width. Each client is evaluated with its own model.

Choices the paper leaves open, and the reasons for the defaults:

* ``lam`` (default 1): the paper's best value for MNIST and FEMNIST (0.1 for CIFAR-10,
  Appendix A), also the official code's ``--ld`` in its MNIST and FEMNIST commands.
* The distance: the official code's ``nn.MSELoss`` between each sample's representation and
  its class's global prototype, averaged over the batch and the representation width; a
  sample whose class has no global prototype contributes 0 but still counts in the mean (the
  code replaces its target by the representation itself). ``lam`` was tuned with this scale.
* ``proto_weighting`` (default ``counts``): the paper's aggregation (its Eq. for
  ``C-bar^(j)`` and the weights ``q_i`` of its convergence analysis) weights each client's
  class-``c`` prototype by its number of class-``c`` samples, i.e. the global prototype is
  the mean representation over all reporting clients' class-``c`` samples. (Taken literally
  the displayed equation also divides by the number of clients, which would shrink the
  prototypes; the appendix's weights sum to 1, which this follows.) ``clients`` is the
  official code's ``proto_aggregation``: a plain mean over the clients that have the class.
* A class nobody reported this round keeps its previous global prototype (no prototype until
  some client has reported it); the paper samples every client every round, so the case does
  not arise there.
* Local prototypes are computed after training, in evaluation mode, with the paper's
  definition (the official code averages the representations seen during the last training
  epoch instead, before each optimizer step).
* Each client is scored twice: with its own classifier (rows ``test``, the method's
  result) and by the paper's inference, the class of the nearest global prototype to the
  sample's representation (rows ``test@prototypes``; what PFLlib reports as FedProto's
  accuracy). The second is the client's model with its classifier replaced by the linear
  layer ``2 P h - ||P||^2`` (:func:`prototype_classifier`), whose largest logit is the
  nearest prototype, and whose softmax is that of the negative squared distances, so its
  loss is a cross-entropy too. A class without a global prototype gets a logit of -1e9: it
  is never predicted, and its samples count as wrong (PFLlib's rule). Clients that never
  trained have no representation of their own, and models whose classifier has no bias
  cannot hold the rule: both are scored with the classifier only.

Bytes: downlink ``C x d`` prototypes plus a ``C``-entry boolean mask of the classes that have
one; uplink ``C x d`` prototypes plus ``C`` counts (the prototypes' dtype).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from plural.config import ConfigError, setting
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    OnClient,
    ServerState,
    Update,
    require_classification,
)
from plural.core.masks import last_module_names
from plural.core.params import Params
from plural.core.prototypes import (
    PrototypeObjective,
    ProtoWeighting,
    aggregate_prototypes,
    class_prototypes,
)
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = [
    "FedProto",
    "FedProtoConfig",
    "FedProtoState",
    "PrototypeMessage",
    "fedproto_state",
    "prototype_classifier",
]

PROTOTYPES_KEY = "prototypes"
"""``Update.extra`` key of the client's (classes, width) prototypes."""
COUNTS_KEY = "counts"
"""``Update.extra`` key of the (classes,) training sample counts behind the prototypes."""


@dataclasses.dataclass(frozen=True)
class FedProtoConfig:
    """FedProto settings (see the module docstring for the sources of the defaults)."""

    lam: float = setting(
        1.0,
        help="weight lambda of the prototype term lambda * MSE(h, global prototype of y)",
        ge=0,
    )
    proto_weighting: ProtoWeighting = setting(
        "counts",
        help="how the server combines the clients' prototypes of a class: 'counts' weights "
        "each by its number of samples of the class (the paper); 'clients': plain mean over "
        "the clients that report the class (the official code)",
    )


@dataclasses.dataclass(frozen=True)
class FedProtoState:
    """FedProto's part of the server state (there is no global model)."""

    KEY: ClassVar[str] = "fedproto"
    prototypes: torch.Tensor
    """(classes, width) the global prototypes; rows of classes without one are meaningless."""
    present: torch.Tensor
    """(classes,) bool, which classes have a global prototype."""


def fedproto_state(server: ServerState) -> FedProtoState:
    """FedProto's part of ``server``."""
    return server.part(FedProtoState)


@dataclasses.dataclass(frozen=True)
class PrototypeMessage:
    """Server to client: the global prototypes and which classes have one."""

    prototypes: torch.Tensor
    """(classes, width); rows of classes without a prototype are meaningless."""
    present: torch.Tensor
    """(classes,) bool."""


def head_weight_name(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The classifier's weight among a model's entries: the 2-D entry of its last module."""
    last = last_module_names([n for n in names if not n.endswith("num_batches_tracked")])
    weights = [n for n in names if n in last and len(shapes[n]) == 2]
    if len(weights) != 1:
        raise ConfigError(
            "model: fedproto needs a model that ends in a Linear classifier (its input is the "
            f"representation); the last module's entries are {sorted(last)}"
        )
    return weights[0]


ABSENT_CLASS_LOGIT = -1e9
"""The nearest-prototype classifier's logit for a class without a global prototype."""


def prototype_classifier(
    params: Params, prototypes: torch.Tensor, present: torch.Tensor
) -> Params | None:
    """``params`` with the classifier replaced by nearest-prototype inference: weight ``2 P``,
    bias ``-||P||^2`` (``argmax`` of ``2 P h - ||P||^2`` is ``argmin ||h - P||``), classes
    without a prototype at :data:`ABSENT_CLASS_LOGIT`; None for a classifier without a bias
    (the rule needs one)."""
    weight_name = head_weight_name(list(params), {n: tuple(t.shape) for n, t in params.items()})
    bias_name = weight_name.removesuffix("weight") + "bias"
    if bias_name not in params:
        return None
    wide = prototypes.to(torch.float64) * present.unsqueeze(1)
    absent = torch.tensor(ABSENT_CLASS_LOGIT, dtype=wide.dtype)
    bias = torch.where(present, -(wide**2).sum(1), absent)
    dtype = params[weight_name].dtype
    return {**params, weight_name: (2 * wide).to(dtype), bias_name: bias.to(dtype)}


def representation_width(params: Params, info: FederationInfo) -> int:
    """The representation width every architecture shares (the classifier's input width);
    a ConfigError when architectures differ in it or the classifier has the wrong outputs."""
    members = info.member_shapes or ({n: tuple(t.shape) for n, t in params.items()},)
    widths = []
    for member in members:
        classes, width = member[head_weight_name(list(member), member)]
        if classes != info.num_classes:
            raise ConfigError(
                f"model: fedproto needs a classifier with {info.num_classes} outputs (one per "
                f"class); the last layer has {classes}"
            )
        widths.append(width)
    if len(set(widths)) > 1:
        raise ConfigError(
            "model: fedproto exchanges class prototypes in the representation space, so every "
            f"architecture needs the same representation width; architectures 1..{len(widths)} "
            f"have widths {widths} (for cnn_family they share model.representation)"
        )
    return widths[0]


@ALGORITHMS.register(
    "fedproto",
    FedProtoConfig,
    "FedProto: own models (any architecture), class prototypes exchanged and regularised",
)
class FedProto(Algorithm):
    """FedProto (Tan et al. 2022): see the module docstring."""

    name = "fedproto"
    has_server_model = False  # models never leave their clients
    config: FedProtoConfig
    model_heterogeneous = True

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "fedproto learns class prototypes")

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """No global model: zero prototypes, none present; a ConfigError if architectures
        differ in representation width."""
        width = representation_width(params, info)
        shapes = {n: tuple(t.shape) for n, t in params.items()}
        dtype = params[head_weight_name(list(params), shapes)].dtype
        prototypes = torch.zeros(info.num_classes, width, dtype=dtype)
        present = torch.zeros(info.num_classes, dtype=torch.bool)
        return ServerState({}).with_parts(FedProtoState(prototypes, present))

    def broadcast(self, server: ServerState) -> PrototypeMessage:
        kept = fedproto_state(server)
        return PrototypeMessage(kept.prototypes, kept.present)

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        kept = fedproto_state(server)
        prototypes, present = aggregate_prototypes(
            kept.prototypes,
            kept.present,
            [(u.extra[PROTOTYPES_KEY], u.extra[COUNTS_KEY]) for u in updates],
            self.config.proto_weighting,
        )
        return server.with_parts(FedProtoState(prototypes, present))

    def personalized(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> Params | OnClient:
        """The client's own model (its initial model before it has trained)."""
        return OnClient({}) if state is None else state

    def evaluated(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> dict[str, Params | OnClient]:
        """The client's own model, and (``prototypes``) the paper's nearest-prototype
        inference with its representation, once it has trained and prototypes exist."""
        kept = fedproto_state(server)
        models: dict[str, Params | OnClient] = {"": self.personalized(server, state, client_id)}
        if state is not None and bool(kept.present.any()):
            nearest = prototype_classifier(state, kept.prototypes, kept.present)
            if nearest is not None:
                models["prototypes"] = nearest
        return models

    def summary(self, server: ServerState) -> dict[str, Any]:
        return {"classes_with_prototype": int(fedproto_state(server).present.sum())}

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: PrototypeMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        """Train the own model with the prototype term; send its class prototypes."""
        train = client.train
        start = trainer.initial_params if state is None else state
        objective = None
        if self.config.lam > 0 and bool(message.present.any()):
            objective = PrototypeObjective(message.prototypes, message.present, self.config.lam)
        fit = trainer.fit(start, train.x, train.y, rng=rng, objective=objective)
        prototypes, counts = class_prototypes(
            trainer, fit.params, train.x, train.y, message.prototypes.shape[0]
        )
        update = Update(
            len(train),
            extra={PROTOTYPES_KEY: prototypes, COUNTS_KEY: counts},
            loss=fit.mean_loss,
        )
        return update, fit.params
