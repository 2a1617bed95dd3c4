"""IFCA and Oracle: reductions to FedAvg that hold exactly, recovery of true groups, bytes."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import pytest

import plural
from plural.algorithms.clustered import cluster_state
from plural.algorithms.ifca import ifca_state
from plural.core.params import max_abs_difference, nbytes

# 24 clients in 4 rotation groups: with 3 clients a group (12 clients) IFCA's random init
# merges two groups on 3 of 6 seeds; with 6 a group it recovers them on 6 of 6 (ARI 1).
ROTATED: dict[str, Any] = {
    "name": "rotated",
    "seed": 0,
    "rounds": 15,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 24},
    "transforms": [{"name": "rotation", "groups": 4}],
    "model": {"name": "mlp", "hidden": [64]},
    "train": {"lr": 0.1, "momentum": 0.9, "batch_size": 16},
    "eval": {"every": 15},
    "backend": {"threads_per_worker": 1},
}


def with_algorithm(cfg: dict[str, Any], **algorithm: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    out["algorithm"] = algorithm
    return out


def mean_accuracy(results: plural.Results) -> float:
    return float(results.final("test")["accuracy"].mean())


def assert_equals_fedavg(other: plural.Results, fedavg: plural.Results) -> None:
    assert max_abs_difference(other.server.params, fedavg.server.params) == 0.0
    cols = ["round", "client", "loss", "accuracy", "samples"]
    pd.testing.assert_frame_equal(other.final("test")[cols], fedavg.final("test")[cols])


def test_ifca_with_one_cluster_equals_fedavg(tiny_config: dict[str, Any]) -> None:
    tiny_config["rounds"] = 3
    fedavg = plural.run(tiny_config)
    ifca = plural.run(with_algorithm(tiny_config, name="ifca", k=1))
    assert_equals_fedavg(ifca, fedavg)


def test_oracle_with_one_group_equals_fedavg(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(rounds=3, transforms=[{"name": "rotation", "groups": 1}])
    fedavg = plural.run(tiny_config)
    oracle = plural.run(with_algorithm(tiny_config, name="oracle"))
    assert_equals_fedavg(oracle, fedavg)
    assert oracle.summary["clustering"]["clusters"] == 1


def test_oracle_without_groups_warns_and_runs_fedavg(tiny_config: dict[str, Any]) -> None:
    fedavg = plural.run(tiny_config)
    with pytest.warns(UserWarning, match="oracle needs a federation with known groups"):
        oracle = plural.run(with_algorithm(tiny_config, name="oracle"))
    assert_equals_fedavg(oracle, fedavg)


def test_ifca_and_oracle_recover_rotation_groups_and_beat_fedavg() -> None:
    fedavg = mean_accuracy(plural.run(with_algorithm(ROTATED, name="fedavg")))
    ifca = plural.run(with_algorithm(ROTATED, name="ifca", k=4))
    oracle = plural.run(with_algorithm(ROTATED, name="oracle"))
    assert ifca.summary["clustering"]["ari"] >= 0.9
    assert oracle.summary["clustering"]["ari"] == 1.0
    assert mean_accuracy(ifca) > fedavg + 0.05
    assert mean_accuracy(oracle) > fedavg + 0.05


def test_ifca_recovers_label_swap_groups_and_beats_fedavg() -> None:
    cfg = copy.deepcopy(ROTATED)
    cfg.update(
        partition={"name": "iid", "num_clients": 12},
        transforms=[{"name": "label_swap", "groups": 2}],
    )
    fedavg = mean_accuracy(plural.run(with_algorithm(cfg, name="fedavg")))
    ifca = plural.run(with_algorithm(cfg, name="ifca", k=2))
    assert ifca.diagnostics["ari"].iloc[-1] >= 0.9
    assert mean_accuracy(ifca) > fedavg + 0.1


def test_ifca_sends_k_models_and_records_the_clients_choices(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(rounds=2, sampling={"fraction": 0.5}, eval={"every": 2})
    results = plural.run(with_algorithm(tiny_config, name="ifca", k=3))
    model_bytes = nbytes(results.server.params)
    fit = results.metrics[results.metrics["split"] == "fit"]
    first = fit[fit["round"] == 1]
    assert len(first) == 3  # half of 6 clients, no evaluation phase in round 1
    assert (first["bytes_down"] == 3 * model_bytes).all()
    assert (first["bytes_up"] == model_bytes + 8).all()  # model + int64 cluster id
    # Round 1: exactly the sampled clients have a cluster; after the evaluation round, all.
    after_first = results.diagnostics["assignment"].iloc[0]
    assert sorted(c for c, a in enumerate(after_first) if a >= 0) == sorted(first["client"])
    final = results.diagnostics["assignment"].iloc[-1]
    assert all(0 <= a < 3 for a in final)
    # Round 2 evaluates: all 6 clients also receive the 3 models to choose theirs.
    second = fit[fit["round"] == 2]
    assert len(second) == 6 and (second["bytes_down"] >= 3 * model_bytes).all()


def test_ifca_finds_8_label_swap_groups_with_k_8() -> None:
    cfg = copy.deepcopy(ROTATED)
    cfg.update(
        dataset={"name": "mnist", "max_samples": 7200},
        partition={"name": "iid", "num_clients": 48},
        transforms=[{"name": "label_swap", "groups": 8}],
        model={"name": "mlp", "hidden": [32]},
    )
    ifca = plural.run(with_algorithm(cfg, name="ifca", k=8))
    assert ifca.summary["clustering"]["clusters"] == 8
    assert ifca.summary["clustering"]["ari"] >= 0.9


def test_unused_models_are_reseeded_from_the_worst_fitting_clients() -> None:
    cfg = copy.deepcopy(ROTATED)
    cfg.update(rounds=4, eval={"every": 4}, partition={"name": "iid", "num_clients": 8})
    # 8 models for 8 clients of 4 groups: some are never picked and must be replaced.
    ifca = plural.run(with_algorithm(cfg, name="ifca", k=8, reseed_after=1))
    reseeds = ifca_state(ifca.server).reseeds
    assert reseeds and all(0 <= r["client"] < 8 for r in reseeds)
    # The first re-seed uses a different client for each unused model.
    first = reseeds[: 8 - len(set(ifca.diagnostics["assignment"].iloc[0]))]
    assert len({r["client"] for r in first}) == len(first)
    never = plural.run(with_algorithm(cfg, name="ifca", k=8, reseed_after=None))
    assert ifca_state(never.server).reseeds == ()


def test_spread_init_seeds_k_models_from_far_apart_clients() -> None:
    cfg = copy.deepcopy(ROTATED)
    cfg.update(rounds=1, eval={"every": 1}, transforms=[{"name": "label_swap", "groups": 2}])
    ifca = plural.run(with_algorithm(cfg, name="ifca", k=2, init="spread"))
    models = cluster_state(ifca.server).models
    assert max_abs_difference(models[0], models[1]) > 0  # two different clients' models
    fit = ifca.metrics[(ifca.metrics["split"] == "fit") & (ifca.metrics["round"] == 1)]
    assert (fit["bytes_down"] >= nbytes(models[0])).all()
