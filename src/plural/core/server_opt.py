"""Server optimizers: how the server moves the global model towards the clients' average.

The averaged client model ``mean`` gives the pseudo-gradient ``delta = mean - x`` (Reddi et
al. 2021, "Adaptive Federated Optimization", Algorithm 2, with ``delta`` their Delta_t):

* ``sgd``: ``x + lr * delta`` (plain FedAvg when ``lr = 1``: the average itself);
* ``momentum``: ``m = momentum * m + delta``, ``x + lr * m`` (FedAvgM, Hsu et al. 2019);
* ``adam``: ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta^2``;
* ``yogi``: as adam but ``v = v - (1 - b2) delta^2 sign(v - delta^2)``;
* ``adagrad``: ``v = v + delta^2``;

and the adaptive ones step ``x + lr * m / (sqrt(v) + tau)``, without bias correction, as in
the paper. ``v`` starts at ``initial_accumulator``. With ``b1 = 0``, ``b2 = 1``,
``initial_accumulator = 0`` and ``tau = 1``, adam's step is ``x + lr * delta``: FedAvg with a
server learning rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from plural.core.aggregation import AggregationState
from plural.core.algorithm import ServerState
from plural.core.params import Params

ServerOptimizer = Literal["sgd", "momentum", "adam", "yogi", "adagrad"]
ADAPTIVE = ("adam", "yogi", "adagrad")


@dataclasses.dataclass(frozen=True)
class ServerOptimizerSettings:
    name: ServerOptimizer = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    initial_accumulator: float = 0.0


def _second_moment(name: str, v: torch.Tensor, sq: torch.Tensor, beta2: float) -> torch.Tensor:
    if name == "adam":
        return beta2 * v + (1 - beta2) * sq
    if name == "yogi":
        return v - (1 - beta2) * sq * torch.sign(v - sq)
    return v + sq  # adagrad


def server_step(
    params: Mapping[str, torch.Tensor],
    mean: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    s: ServerOptimizerSettings,
) -> tuple[Params, dict[str, Any]]:
    """The new global parameters and optimizer state (``state``: ``m`` and ``v`` dicts)."""
    if s.name == "sgd" and s.lr == 1.0:
        return dict(mean), {}
    new: Params = {}
    m_state: dict[str, torch.Tensor] = dict(state.get("m", {}))
    v_state: dict[str, torch.Tensor] = dict(state.get("v", {}))
    for name, x in params.items():
        if not x.is_floating_point():
            new[name] = mean[name]
            continue
        delta = mean[name] - x
        if s.name == "sgd":
            new[name] = x + s.lr * delta
            continue
        m_prev = m_state.get(name, torch.zeros_like(x))
        if s.name == "momentum":
            m_state[name] = s.momentum * m_prev + delta
            new[name] = x + s.lr * m_state[name]
            continue
        m_state[name] = s.beta1 * m_prev + (1 - s.beta1) * delta
        v_prev = v_state.get(name, torch.full_like(x, s.initial_accumulator))
        v_state[name] = _second_moment(s.name, v_prev, delta * delta, s.beta2)
        new[name] = x + s.lr * m_state[name] / (v_state[name].sqrt() + s.tau)
    return new, {"m": m_state, "v": v_state}


@dataclasses.dataclass(frozen=True)
class AveragingState:
    """The averaging part of a server state (FedAvg's and every averaging algorithm's): the server
    optimizer's state and the aggregation chain's (one per model for clustered methods)."""

    KEY: ClassVar[str] = "fedavg"
    server_opt: Mapping[Any, Any] = dataclasses.field(default_factory=dict)
    aggregation: AggregationState | list[AggregationState] | None = None


def averaging(server: ServerState) -> AveragingState:
    """The averaging part of ``server`` (empty before the first step)."""
    return server.part(AveragingState, AveragingState())
