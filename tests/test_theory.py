"""FedAvg's client-drift bias on quadratic clients, run through the real engine.

With E local gradient steps, FedAvg converges to a fixed point that moves away from the
global optimum as E grows, unless the clients' optima coincide (see plural.diagnostics.theory).
"""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import plural
from plural.diagnostics.theory import QuadraticClients, four_clients, quadratic_federation

LR = 0.1
ROUNDS = 100


def run_fedavg(clients: QuadraticClients, local_steps: int) -> np.ndarray:
    federation = quadratic_federation(clients, samples=16)
    config = {
        "rounds": ROUNDS,
        "algorithm": {"name": "fedavg"},
        "train": {"loss": "mse", "lr": LR, "batch_size": 16, "local_steps": local_steps},
        "eval": {"every": ROUNDS, "splits": ["train"]},
        "backend": {"threads_per_worker": 1},
    }
    results = plural.run(config, dataset=federation, model=nn.Linear(2, 1, bias=False))
    return results.server.params["weight"].double().numpy().reshape(-1)


@pytest.mark.parametrize("local_steps", [1, 5, 20])
def test_fedavg_converges_to_the_predicted_fixed_point(local_steps: int) -> None:
    clients = four_clients()
    reached = run_fedavg(clients, local_steps)
    np.testing.assert_allclose(reached, clients.fedavg_fixed_point(LR, local_steps), atol=1e-4)


def test_bias_grows_with_local_steps_when_optima_differ() -> None:
    clients = four_clients(spread=1.0)
    optimum = clients.global_optimum()
    bias = [np.linalg.norm(run_fedavg(clients, e) - optimum) for e in (1, 5, 20)]
    assert bias[0] < 1e-4  # one local step is gradient descent on the global loss
    assert bias[0] < bias[1] < bias[2], bias
    assert bias[2] > 0.05


def test_no_bias_when_optima_coincide() -> None:
    clients = four_clients(spread=0.0)
    for local_steps in (1, 20):
        reached = run_fedavg(clients, local_steps)
        np.testing.assert_allclose(reached, clients.global_optimum(), atol=1e-4)
