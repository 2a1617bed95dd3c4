"""FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization"): personal normalisation layers (see :mod:`plural.algorithms.partial`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import (
    PartialFedAvg,
)
from plural.config import ConfigError
from plural.core.algorithm import (
    FederationInfo,
)
from plural.core.masks import NORM
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FedBNConfig(AveragingConfig):
    """FedBN's personal part is fixed: the normalisation layers (``@norm``)."""


@ALGORITHMS.register(
    "fedbn", FedBNConfig, "FedBN: normalisation layers local (feature skew); needs batch_norm"
)
class FedBN(PartialFedAvg):
    """FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
    Normalization").

    Every normalisation layer (BatchNorm affine parameters and running statistics) stays on
    its client; everything else is averaged. Designed for feature skew (clients whose inputs
    differ in scale, contrast, style), where local statistics undo each client's shift. Use a
    model with normalisation layers (``model: {name: mlp, batch_norm: true}``; ``cnn`` and
    ``lenet`` have the setting too).
    """

    name = "fedbn"
    in_demo = False
    config: FedBNConfig

    def personal_patterns(self) -> tuple[str, ...]:
        return (NORM,)

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        """The normalisation layers; a model without any is an error (FedBN would be FedAvg)."""
        if not info.norm_layers:
            raise ConfigError(
                "algorithm: fedbn keeps normalisation layers local, but the model has none; "
                "use a model with batch_norm: true (mlp, cnn, lenet) or your own with BatchNorm"
            )
        return super().resolve_personal(names, info)
