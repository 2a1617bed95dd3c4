"""q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning").

It minimises the q-FFL objective ``sum_k p_k F_k^(q+1) / (q+1)``: the larger q, the more the
clients with high loss count. Each client computes its loss ``F_k`` at the global model
``w``, trains locally to ``w_k``, and sends ``Delta_k = F_k^q L (w - w_k)`` and
``h_k = q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q``, with ``L`` the Lipschitz estimate
(``1/lr`` by default, as in the paper). The server steps to ``w - sum Delta_k / sum h_k``
(then through the server optimizer). With ``q = 0`` this is the uniform average of the
client models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.aggregation import AggregationState
from plural.core.algorithm import ModelMessage, ServerState, Update
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class QFedAvgConfig(AveragingConfig):
    q: float = setting(1.0, help="fairness exponent q (0 = uniform averaging)", ge=0)
    lipschitz: float | None = setting(
        None, help="Lipschitz estimate L of the local gradients (null: 1/lr, as in the paper)", gt=0
    )

    def __post_init__(self) -> None:
        if self.weighting != "samples":
            raise ValueError("q-FedAvg weights clients by its own rule; 'weighting' does not apply")


def _power(base: float, exponent: float) -> float:
    """``base ** exponent``, infinite where it overflows (the run then stops as diverged)."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


@ALGORITHMS.register(
    "qfedavg", QFedAvgConfig, "q-FedAvg: fair averaging that favours high-loss clients"
)
class QFedAvg(FedAvg):
    name = "qfedavg"
    config: QFedAvgConfig

    def _start_loss(self, params: Params, client: Any, trainer: LocalTrainer) -> float:
        return trainer.evaluate(params, client.train.x, client.train.y).loss

    def finish_update(
        self,
        update: Update,
        fit: FitResult,
        message: ModelMessage,
        state: Any,
        trainer: LocalTrainer,
    ) -> tuple[Update, Any]:
        q = self.config.q
        lipschitz = self.config.lipschitz or 1.0 / trainer.config.lr
        loss = max(update.start_loss, 1e-12)
        step = {
            n: lipschitz * (w - fit.params[n])
            for n, w in message.params.items()
            if w.is_floating_point()
        }
        sq_norm = float(sum(s.double().pow(2).sum() for s in step.values()))
        delta = {n: s * _power(loss, q) for n, s in step.items()}
        h = (q * _power(loss, q - 1) * sq_norm if q > 0 else 0.0) + lipschitz * _power(loss, q)
        extra = {"delta": delta, "h": torch.tensor(h, dtype=torch.float64)}
        return dataclasses.replace(update, params=None, extra=extra), state

    def combine(
        self,
        server: ServerState,
        updates: list[Update],
        rng: np.random.Generator | None = None,
        state: AggregationState | None = None,
    ) -> tuple[Params, AggregationState]:
        """q-FFL's own step (its rule replaces the aggregation chain's weighted mean)."""
        total_h = sum(float(u.extra["h"]) for u in updates)
        target = dict(server.params)
        for name, w in server.params.items():
            if w.is_floating_point():
                total = sum(u.extra["delta"][name].double() for u in updates)
                target[name] = (w.double() - total / total_h).to(w.dtype)
        return target, dict(state or {})
