"""The tiny federation most tests run on (the ``tiny_config`` fixture returns a copy)."""

from __future__ import annotations

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
