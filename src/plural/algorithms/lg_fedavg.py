"""LG-FedAvg (Liang et al. 2020, "Think Locally, Act Globally: Federated Learning with Local
and Global Representations"): local representation layers, a shared top (see
:mod:`plural.algorithms.partial`).

The default shares the classifier only (``shared: ['@last']``), as PFLlib does. The authors'
code shares more of the top (the last 3 of 5 layers of its MNIST MLP: ``shared`` takes name
patterns for such splits) and starts from a model pretrained by FedAvg; here training starts
from the architecture's initial model, as in PFLlib (plural has no setting that loads a
pretrained start; not reproduced)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import (
    PartialFedAvg,
)
from plural.config import ConfigError, setting
from plural.core.algorithm import (
    FederationInfo,
)
from plural.core.masks import LAST, check_patterns, select
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class LGFedAvgConfig(AveragingConfig):
    """LG-FedAvg settings: which entries are shared (the rest stays on the client)."""

    shared: tuple[str, ...] = setting(
        (LAST,),
        help="entries that are averaged; the rest is local. Name patterns ('head.*') or "
        "'@last' (the classifier head)",
    )


@ALGORITHMS.register(
    "lg_fedavg",
    LGFedAvgConfig,
    "LG-FedAvg: local representation layers, shared top layers (works across architectures)",
)
class LGFedAvg(PartialFedAvg):
    """LG-FedAvg (Liang et al. 2020, "Think Locally, Act Globally: Federated Learning with
    Local and Global Representations").

    Each client learns its own representation layers; only the top layers (``shared``,
    default the classifier) are averaged, FedAvg style. Local and shared layers train
    jointly each round. With clients of different architectures (a model family) the shared
    layers must agree in shape, which is what makes it a model-heterogeneous baseline.
    """

    name = "lg_fedavg"
    config: LGFedAvgConfig

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        """Every entry that ``shared`` does not select; an error if it selects nothing or
        everything."""
        try:
            check_patterns(names, self.config.shared, "algorithm.shared")
        except ValueError as err:
            raise ConfigError(str(err)) from err
        shared = select(names, self.config.shared, info.norm_layers)
        if not shared:
            raise ConfigError("algorithm.shared: selects nothing; use algorithm 'local'")
        if shared.issuperset(names):
            raise ConfigError("algorithm.shared: selects every entry; use algorithm 'fedavg'")
        return tuple(n for n in names if n not in shared)
