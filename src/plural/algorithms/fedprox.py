"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg
whose local objective adds the proximal term ``mu/2 ||w - w_global||^2``, which keeps local
models near the global one under statistical heterogeneity and makes partial work from
stragglers (``stragglers`` with ``drop_stragglers: false``) safe to average. ``mu = 0`` is
exactly FedAvg."""

from __future__ import annotations

import dataclasses
from typing import Any

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.algorithm import ModelMessage
from plural.core.trainer import LossTerm, proximal_term
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FedProxConfig(AveragingConfig):
    mu: float = setting(
        0.01, help="proximal weight mu (0 = FedAvg; the paper's best on Synthetic(1,1) is 1)", ge=0
    )


@ALGORITHMS.register(
    "fedprox", FedProxConfig, "FedProx: FedAvg plus a proximal term mu/2||w - w_g||^2"
)
class FedProx(FedAvg):
    name = "fedprox"
    config: FedProxConfig

    def loss_terms(self, message: ModelMessage, state: Any) -> list[LossTerm]:
        if self.config.mu == 0:
            return []
        return [proximal_term(message.params, self.config.mu)]
