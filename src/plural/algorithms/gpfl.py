"""GPFL (Zhang et al. 2023, "GPFL: Simultaneously Learning Global and Personalized Feature
Information for Personalized Federated Learning", ICCV; arXiv 2308.10279).

The model is split into a feature extractor and a classifier, the split the zoo's models expose
(:func:`~plural.models.adapters.body_and_head`), and gains two shared modules:

* the **global category embedding** layer (GCE): one embedding ``e_c`` per class, as wide as
  the representation;
* the **conditional valve** (CoV): from a conditional input ``u`` it makes a scale and a shift
  (``gamma(u)``, ``beta(u)``: each a linear layer, ReLU and LayerNorm) and turns a feature
  vector ``f`` into ``relu(f * (1 + gamma(u)) + beta(u))``.

With ``f = body(x)`` and two conditional inputs, the generic ``u_g`` (the mean embedding) and
the personalized ``u_p`` (embeddings weighted by the client's class shares), a client trains
body, own head, GCE and CoV on

    CE(head(CoV(f, u_p)), y) + CE(cos(CoV(f, u_g), e), y) + lam * ||CoV(f, u_g) - e'_y||

(the middle term: softmax over the cosine similarities to the embeddings; ``e'`` the received
embeddings, fixed; the norm is over the whole minibatch) plus ``mu/2`` times the squared norm
of the GCE and CoV parameters (the official code's SGD weight decay ``mu`` on them). Body, GCE
and CoV are averaged as in FedAvg; the head stays on the client. After training a client
computes its next conditional inputs from its trained embeddings (zeros before its first round,
as in the official code) and is evaluated with ``head(CoV(body(x), u_p))``.

Defaults ``lam = 0.01`` and ``mu = 0.1`` are the official command for MNIST with Dirichlet(0.1)
and the 4-layer CNN. No setting reduces GPFL exactly to an existing method.

Entries: ``body.*``, ``gce.weight``, ``cov.*`` (shared), ``head.*``, ``generic_input`` and
``personal_input`` (personal). Bytes: down and up, body, GCE and CoV.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import FederationInfo, ModelMessage, Update, require_classification
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, LossTerm, WorkBudget
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

HEAD, GCE, COV = "head.", "gce.", "cov."
GENERIC, PERSONAL = "generic_input", "personal_input"


@dataclasses.dataclass(frozen=True)
class GPFLConfig(AveragingConfig):
    lam: float = setting(0.01, help="weight of the pull of generic features to embeddings", ge=0)
    mu: float = setting(0.1, help="L2 weight decay of the GCE and CoV parameters", ge=0)


def _conditional(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.LayerNorm(width))


class ConditionalValve(nn.Module):
    """``relu(f * (1 + gamma(u)) + beta(u))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = _conditional(width)
        self.beta = _conditional(width)

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return F.relu(features * (1 + self.gamma(condition)) + self.beta(condition))


class GPFLModel(nn.Module):
    """Body, own head, GCE, CoV and the two conditional inputs (module docstring)."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        body, head = body_and_head(model)
        if not isinstance(body, nn.Module):
            raise ConfigError("model: gpfl needs the model's body as a module")
        width = head.in_features
        self.body, self.head = body, head
        self.gce = nn.Embedding(num_classes, width)
        self.cov = ConditionalValve(width)
        self.register_buffer(GENERIC, torch.zeros(width))
        self.register_buffer(PERSONAL, torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cov(self.body(x), getattr(self, PERSONAL)))


@dataclasses.dataclass
class GPFLObjective:
    """The minibatch loss of the module docstring (without the weight decay term)."""

    received_embeddings: torch.Tensor
    lam: float

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, GPFLModel)
        features = model.body(x)
        personal = model.cov(features, getattr(model, PERSONAL))
        generic = model.cov(features, getattr(model, GENERIC))
        cosine = F.normalize(generic, dim=1) @ F.normalize(model.gce.weight, dim=1).T
        loss = F.cross_entropy(model.head(personal), y) + F.cross_entropy(cosine, y)
        if self.lam > 0:
            target = self.received_embeddings[y].to(generic.dtype)
            loss = loss + self.lam * torch.linalg.norm(generic - target)
        return loss


def weight_decay(mu: float, prefixes: Sequence[str]) -> LossTerm:
    """``mu/2 ||w||^2`` over the trained parameters whose names start with ``prefixes``."""

    def term(live: Mapping[str, nn.Parameter]) -> torch.Tensor:
        chosen = [p for n, p in live.items() if n.startswith(tuple(prefixes))]
        return 0.5 * mu * sum(p.pow(2).sum() for p in chosen)  # type: ignore[return-value]

    return term


@ALGORITHMS.register(
    "gpfl", GPFLConfig, "GPFL: global category embeddings and a conditional valve, personal head"
)
class GPFL(PartialFedAvg):
    name = "gpfl"
    config: GPFLConfig
    model_heterogeneous = False

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "gpfl learns class embeddings")

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The model with GCE and CoV (a ConfigError without a body/head split)."""
        return GPFLModel(model, num_classes)

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        return tuple(n for n in names if n.startswith(HEAD) or n in (GENERIC, PERSONAL))

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        train, cfg = client.train, self.config
        terms = [weight_decay(cfg.mu, (GCE, COV))] if cfg.mu > 0 else []
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            objective=GPFLObjective(message.params[GCE + "weight"], cfg.lam),
            loss_terms=terms,
            epochs=budget.epochs,
            steps=budget.steps,
        )

    def client_update(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        """PartialFedAvg's update; then the next conditional inputs from the trained GCE."""
        update, personal = super().client_update(message, state, client, trainer, rng)
        assert update.params is not None
        embeddings = update.params[GCE + "weight"]
        labels = client.train.y
        shares = torch.bincount(labels, minlength=len(embeddings)).to(embeddings.dtype)
        shares = shares / shares.sum().clamp_min(1)
        personal = {
            **personal,
            GENERIC: embeddings.mean(dim=0),
            PERSONAL: shares @ embeddings,
        }
        return update, personal
