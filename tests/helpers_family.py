"""A tiny model-heterogeneous federation shared by the tests of model-heterogeneous methods."""

from __future__ import annotations

import copy
from typing import Any

CLASSES, WIDTH = 10, 16
# Three architectures of the five-CNN family shrunk to run in a second; clients 0..5 get
# architectures 1, 2, 3, 1, 2, 3. Each client holds three of the ten digits.
TINY_FAMILY: dict[str, Any] = {
    "name": "mh",
    "seed": 1,
    "rounds": 3,
    "dataset": {"name": "mnist", "max_samples": 600},
    "partition": {"name": "classes_per_client", "num_clients": 6, "classes": 3},
    "model": {
        "name": "cnn_family",
        "architectures": [[4, 32], [8, 24], [4, 16]],
        "representation": WIDTH,
        "conv1": 4,
    },
    "train": {"lr": 0.05, "momentum": 0.5, "batch_size": 16},
    "sampling": {"fraction": 0.5},
    "backend": {"threads_per_worker": 1},
}


def family(algorithm: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The tiny family config with ``algorithm`` and top-level ``changes``."""
    cfg = copy.deepcopy(TINY_FAMILY)
    cfg["algorithm"] = algorithm
    cfg.update(changes)
    return cfg
