"""FedRoD (Chen & Chao 2022, "On Bridging Generic and Personalized Federated Learning for
Image Classification", ICLR 2022; arXiv 2107.00778).

One model serves both goals: a shared body with a **generic head** (G-head), federated by
FedAvg, and a **personal head** (P-head) per client that never leaves it. On features
``z = body(x)``, the generic model trains with the balanced softmax loss (Ren et al. 2020),
the cross-entropy of ``G(z) + log n_y``-adjusted logits, where ``n`` is the client's class
counts: it learns the class-balanced problem whatever the client's label mix. The personal
head learns the residual on top of it, the cross-entropy of ``G(z) + P(z)`` with ``z`` and
``G(z)`` held constant, so the personal loss never moves the shared part. A client's
prediction is ``G(z) + P(z)``; ``test@global`` rows score the generic model ``G(z)``.

Both losses are one objective of the trainer (one SGD step updates body, G-head and P-head,
the paper's joint update). The model is wrapped by :meth:`FedRoD.prepare_model`: the
configured model becomes ``generic.*`` and its head's twin ``personal_head.*`` (started at
zero, so an untrained client predicts with the generic model). The split is the model's
body/head split (:func:`~plural.models.adapters.body_and_head`); a model without one is a
ConfigError.

``balanced: false`` trains the generic model with plain cross-entropy: its shared part is
then FedAvg's model exactly. Bytes: the generic model, both ways. The paper's variant that
predicts the P-head with a hypernetwork is not included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import ModelMessage, OnClient, ServerState, require_classification
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

GENERIC = "generic"
PERSONAL_HEAD = "personal_head"


@dataclasses.dataclass(frozen=True)
class FedRoDConfig(AveragingConfig):
    balanced: bool = setting(
        True,
        help="train the generic model with the balanced softmax loss (the paper); false: "
        "plain cross-entropy (the shared part is then FedAvg's model)",
    )


class GenericPersonalModel(nn.Module):
    """A model whose classifier is the sum of a generic and a personal linear head."""

    def __init__(self, generic: nn.Module) -> None:
        super().__init__()
        self.generic = generic
        # Split once (fails now, not at the first batch); a tuple is not a submodule, so the
        # entries keep their ``generic.*`` names.
        self._parts = body_and_head(generic)
        head = self._parts[1]
        self.personal_head = nn.Linear(head.in_features, head.out_features)
        nn.init.zeros_(self.personal_head.weight)
        nn.init.zeros_(self.personal_head.bias)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(generic logits ``G(z)``, personal logits ``P(z)`` with ``z`` held constant)."""
        body, head = self._parts
        z = body(x)
        return head(z), self.personal_head(z.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generic, personal = self.branches(x)
        return generic + personal


@dataclasses.dataclass(frozen=True)
class RoDObjective:
    """Balanced-softmax (or plain) cross-entropy of the generic logits plus the cross-entropy
    of ``G(z) + P(z)`` with the generic logits held constant."""

    log_prior: torch.Tensor | None
    """(classes,) log class counts of the client (-inf for absent classes); None: plain CE."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(model, GenericPersonalModel):
            raise TypeError(f"fedrod trains its GenericPersonalModel, got {type(model).__name__}")
        generic, personal = model.branches(x)
        adjusted = generic if self.log_prior is None else generic + self.log_prior
        return F.cross_entropy(adjusted, y) + F.cross_entropy(generic.detach() + personal, y)


def log_class_counts(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``log n_c`` of each class among the labels ``y`` (-inf for a class with no sample: the
    balanced softmax then gives it no probability, so it is not pushed down)."""
    return torch.bincount(y, minlength=num_classes).to(dtype).log()


@ALGORITHMS.register(
    "fedrod",
    FedRoDConfig,
    "FedRoD: generic head (balanced softmax) federated with the body, personal head on top",
)
class FedRoD(PartialFedAvg):
    """FedRoD (Chen & Chao 2022): see the module docstring."""

    name = "fedrod"
    config: FedRoDConfig
    model_heterogeneous = False

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        return GenericPersonalModel(model)

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "fedrod's heads are classifiers")

    def personal_patterns(self) -> tuple[str, ...]:
        return (PERSONAL_HEAD + ".*",)

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """One joint fit of body, generic head and personal head on the two losses."""
        train = client.train
        model = trainer.model
        if not isinstance(model, GenericPersonalModel):
            raise ConfigError("algorithm: fedrod trains the model FedRoD.prepare_model builds")
        head = model.personal_head
        log_prior = None
        if self.config.balanced:
            log_prior = log_class_counts(train.y, head.out_features, head.weight.dtype)
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            objective=RoDObjective(log_prior),
            epochs=budget.epochs,
            steps=budget.steps,
        )

    def evaluated(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> dict[str, Params | OnClient]:
        """The client's ``G + P`` and the generic model (the shared part with the initial,
        zero, personal head)."""
        return {"": self.personalized(server, state, client_id), "global": OnClient(server.params)}
