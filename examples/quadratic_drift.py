"""FedAvg's client-drift bias, shown on four quadratic clients.

Each client's loss is (w - c_k)^T A_k (w - c_k). With E local gradient steps per round,
FedAvg converges to a fixed point that moves away from the global optimum as E grows, and
does not move at all when the clients' optima coincide (see plural.diagnostics.theory).

    .venv/bin/python examples/quadratic_drift.py
"""

from __future__ import annotations

import numpy as np
from torch import nn

import plural
from plural.diagnostics.theory import QuadraticClients, four_clients, quadratic_federation

LR, ROUNDS = 0.1, 100


def fedavg_limit(clients: QuadraticClients, local_steps: int) -> np.ndarray:
    config = {
        "rounds": ROUNDS,
        "algorithm": {"name": "fedavg"},
        "train": {"loss": "mse", "lr": LR, "batch_size": 16, "local_steps": local_steps},
        "eval": {"every": ROUNDS, "splits": ["train"]},
    }
    federation = quadratic_federation(clients, samples=16)
    results = plural.run(config, dataset=federation, model=nn.Linear(2, 1, bias=False))
    return results.server.params["weight"].double().numpy().reshape(-1)


def main() -> None:
    print(f"FedAvg, 4 quadratic clients, full-batch local GD, lr {LR}, {ROUNDS} rounds")
    print(f"{'optima':>10} {'E':>3} {'|w - w*| run':>14} {'|w - w*| theory':>16}")
    for label, spread in (("differ", 1.0), ("coincide", 0.0)):
        clients = four_clients(spread)
        optimum = clients.global_optimum()
        for local_steps in (1, 2, 5, 10, 20):
            reached = fedavg_limit(clients, local_steps)
            predicted = clients.fedavg_fixed_point(LR, local_steps)
            print(
                f"{label:>10} {local_steps:>3} {np.linalg.norm(reached - optimum):>14.5f} "
                f"{np.linalg.norm(predicted - optimum):>16.5f}"
            )


if __name__ == "__main__":
    main()
