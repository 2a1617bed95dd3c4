"""FedBABU (Oh, Kim & Yun 2022, "FedBABU: Towards Enhanced Representation for Federated Image
Classification", ICLR 2022; arXiv 2106.06042).

During federated training the classifier head stays at its random initialisation: clients
train only the body (the head frozen), the server averages the bodies, FedAvg style. When the
engine evaluates, every client fine-tunes the whole model (body and head), starting from the
global body and the initial head, for ``finetune_epochs`` epochs on its training split, and
is scored with the result; the rows ``test@global`` score the global body with the initial
head (the model before fine-tuning).

It is composed from parts plural already has: the federated phase is FedRep with no head
fitting (``fedrep`` with ``personal: ['@last']`` and ``head_epochs: 0``, so the head is the
client's initial one and only the body travels), and the evaluation is
:class:`~plural.algorithms.finetune.Finetune` over it without early stopping. With
``finetune_epochs: 0`` it is exactly that FedRep run.

Defaults: 5 fine-tuning epochs at the local learning rate (the paper's evaluation, also the
Flower baseline's ``num-finetune-epochs``). The head is the model's classifier (its last
layer); a model without a body/head split (see
:func:`~plural.models.adapters.body_and_head`) is a ConfigError.

Bytes: the body only, both ways (every client holds the same initial head).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.finetune import Finetune, FinetuneConfig
from plural.config import setting
from plural.core.masks import LAST
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FedBABUConfig(AveragingConfig):
    """FedBABU settings: FedAvg's for the body, and the evaluation's fine-tuning."""

    finetune_epochs: int = setting(
        5,
        help="epochs each client fine-tunes the whole model (body and head) before it is "
        "evaluated (0: the global body with the initial head)",
        ge=0,
    )
    finetune_lr: float | None = setting(
        None, help="fine-tuning learning rate (null: train.lr)", gt=0
    )

    def federated_phase(self) -> dict[str, object]:
        """The registered algorithm that trains the body: FedRep with a frozen initial head."""
        averaging = {f.name: getattr(self, f.name) for f in dataclasses.fields(AveragingConfig)}
        return {"name": "fedrep", "personal": [LAST], "head_epochs": 0, **averaging}


@ALGORITHMS.register(
    "fedbabu",
    FedBABUConfig,
    "FedBABU: body federated with the head frozen at init, whole model fine-tuned to evaluate",
)
class FedBABU(Finetune):
    """FedBABU (Oh et al. 2022): see the module docstring."""

    name = "fedbabu"

    def __init__(self, config: FedBABUConfig) -> None:
        super().__init__(
            FinetuneConfig(
                base=config.federated_phase(),
                epochs=config.finetune_epochs,
                patience=None,
                lr=config.finetune_lr,
            )
        )
        self.settings = config

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The model itself; a ConfigError when it has no body/head split."""
        body_and_head(model)
        return model
