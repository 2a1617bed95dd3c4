"""Shared fixtures: tiny federations that run in well under a second."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tiny models run fastest on one thread, and two test processes then do not fight.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_CONFIG)
