"""The tiny federation most tests run on (the ``tiny_config`` fixture returns a copy), and the
helpers the algorithm tests share to change and run it."""

from __future__ import annotations

import copy
from typing import Any

TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "fedavg"},
    "train": {"lr": 0.05, "momentum": 0.5, "batch_size": 16},
    "sampling": {"fraction": 0.5},
    "backend": {"threads_per_worker": 1},
}


def two_classes_per_client(config: dict[str, Any], seed: int, clients: int, rounds: int) -> None:
    """Turn ``config`` into a label-skew federation (each client holds 2 digits), every client
    every round, an MLP [32], evaluated at the last round: where personalization shows."""
    config.update(
        seed=seed,
        partition={"name": "classes_per_client", "num_clients": clients, "classes": 2},
        sampling={},
        rounds=rounds,
        model={"name": "mlp", "hidden": [32]},
        eval={"every": rounds},
    )


def run_algorithm(config: dict[str, Any], algorithm: dict[str, Any], **changes: Any) -> Any:
    """``plural.run`` of a copy of ``config`` with ``algorithm`` and top-level ``changes``."""
    import plural

    return plural.run({**copy.deepcopy(config), "algorithm": algorithm, **changes})
