"""Per-round heterogeneity diagnostics measured during any run.

Every ``diagnostics.gradient_every`` rounds the engine asks every client for the full-batch
gradient of its training loss at the global model (through the backend, like any client
work) and reduces them in a streaming way, so memory stays at two parameter vectors however
many clients there are:

* gradient dissimilarity ``G^2 = sum_k p_k ||grad F_k(w) - grad F(w)||^2`` with
  ``p_k = n_k / n`` and ``grad F = sum_k p_k grad F_k`` (Li et al. 2020, "On the Convergence
  of FedAvg on Non-IID Data");
* B-local dissimilarity ``B^2 = sum_k p_k ||grad F_k||^2 / ||grad F||^2`` (Li et al. 2020,
  "Federated Optimization in Heterogeneous Networks"); 1 when all clients agree.

Both come from :class:`plural.core.moments.GradientMoments`, which ``plural diagnose`` uses
too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from plural.core.params import Params, flat
from plural.engine.backends import WorkerEnv


@dataclasses.dataclass(frozen=True)
class GradientWork:
    """Ask one client for its full-batch training gradient at ``params`` (entries the server
    does not hold, such as personal layers, at the client's initial values)."""

    client_id: int
    round: int
    params: Params


def client_gradient(env: WorkerEnv, work: GradientWork) -> tuple[int, torch.Tensor]:
    """(training samples, flattened gradient of the mean training loss) of one client."""
    train = env.federation.client(work.client_id, work.round).train
    if len(train) == 0:
        return 0, torch.zeros(0)
    trainer = env.trainer_for(work.client_id)
    params = trainer.complete(work.params)
    grads = trainer.gradient(params, train.x, train.y, env.eval_batch_size)
    return len(train), flat(grads)


def drift_summary(drift: Mapping[int, float]) -> dict[str, float]:
    """Mean and max client drift ||w_k - w|| of a round's participants."""
    values = [v for v in drift.values() if not math.isnan(v)]
    if not values:
        return {}
    return {"drift_mean": sum(values) / len(values), "drift_max": max(values)}
