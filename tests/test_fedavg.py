"""FedAvg and Local: reductions that must hold exactly, and accuracy that must be reached."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import plural
from plural.core.params import max_abs_difference
from plural.data.datasets import DigitsConfig, from_arrays, load_digits


def test_fedavg_with_one_client_equals_local_training(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(partition={"name": "iid", "num_clients": 1}, sampling={}, rounds=3)
    fedavg = plural.run(tiny_config)
    tiny_config["algorithm"] = {"name": "local"}
    local = plural.run(tiny_config)
    assert max_abs_difference(fedavg.server.params, local.server.params) > 0  # local keeps init
    local_model = local.final("test")
    fedavg_model = fedavg.final("test")
    assert local_model["loss"].tolist() == fedavg_model["loss"].tolist()


def test_uniform_and_sample_weighting_agree_only_on_equal_sizes(
    tiny_config: dict[str, Any],
) -> None:
    digits = load_digits(DigitsConfig(), np.random.default_rng(0))
    first_400 = from_arrays(digits.x[:400], digits.y[:400])  # 4 clients of exactly 100

    def final_params(partition: dict[str, Any], weighting: str) -> dict[str, torch.Tensor]:
        cfg = {**tiny_config, "partition": partition, "sampling": {}, "rounds": 1}
        cfg["algorithm"] = {"name": "fedavg", "weighting": weighting}
        return plural.run(cfg, dataset=first_400).server.params

    equal = {"name": "iid", "num_clients": 4}
    skewed = {"name": "quantity", "num_clients": 4, "sigma": 2.0}
    for partition, same in ((equal, True), (skewed, False)):
        diff = max_abs_difference(
            final_params(partition, "samples"), final_params(partition, "uniform")
        )
        assert (diff < 1e-6) == same, (partition, diff)


def test_fedavg_learns_digits_iid(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(
        partition={"name": "iid", "num_clients": 10},
        sampling={},
        rounds=15,
        model={"name": "mlp", "hidden": [64]},
        train={"lr": 0.1, "momentum": 0.9, "batch_size": 16},
        eval={"every": 15},
    )
    results = plural.run(tiny_config)
    assert results.summary["test"]["accuracy"]["mean"] >= 0.9


def test_local_beats_fedavg_under_strong_label_skew(tiny_config: dict[str, Any]) -> None:
    # Two classes per client: each client's own classifier only needs to separate two digits.
    tiny_config.update(
        partition={"name": "classes_per_client", "num_clients": 10, "classes": 2},
        sampling={},
        rounds=10,
        model={"name": "mlp", "hidden": [32]},
        eval={"every": 10},
    )
    fedavg = plural.run(tiny_config).summary["test"]["accuracy"]["mean"]
    tiny_config["algorithm"] = {"name": "local"}
    local = plural.run(tiny_config).summary["test"]["accuracy"]["mean"]
    assert local > fedavg + 0.05, (local, fedavg)
