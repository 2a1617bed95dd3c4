"""FedFomo: clients combine other clients' models by first-order validation gain."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.fedfomo import (
    combine,
    fedfomo_state,
    first_order_weights,
    gains_per_distance,
)
from plural.core.params import nbytes, state_of
from plural.experiment import load_config
from plural.report.rundir import deterministic
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run


def scores(results: plural.Results) -> pd.DataFrame:
    metrics = deterministic(results.metrics)
    rows = metrics[metrics["split"] != "fit"].reset_index(drop=True)
    return rows[["round", "client", "split", "loss", "accuracy", "samples"]]


def test_no_model_received_is_local_training(tiny_config: dict[str, Any]) -> None:
    fomo = run(tiny_config, {"name": "fedfomo", "models_per_client": 0})
    local = run(tiny_config, {"name": "local"})
    pd.testing.assert_frame_equal(scores(fomo), scores(local))
    fit = fomo.metrics.query("split == 'fit'")
    assert (fit["bytes_down"] == 0).all()


def test_without_a_validation_split_fedfomo_warns(
    tiny_config: dict[str, Any],
) -> None:
    config = {**tiny_config, "split": {**tiny_config.get("split", {}), "val": 0.0}}
    with pytest.warns(UserWarning, match="split.val is 0"):
        run(config, {"name": "fedfomo"})
    with_val = {**tiny_config, "split": {**tiny_config.get("split", {}), "val": 0.2}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run(with_val, {"name": "fedfomo"})


def test_weights_are_positive_gain_per_distance_normalised() -> None:
    gains = gains_per_distance(1.0, [0.5, 1.5, 0.8, 0.9], [1.0, 1.0, 0.5, 0.0])
    # gains 0.5/1, -0.5/1 (worse: signed, for the affinity), 0.2/0.5 = 0.4, and a model at
    # distance 0 gets nothing
    np.testing.assert_allclose(gains, [0.5, -0.5, 0.4, 0.0])
    np.testing.assert_allclose(first_order_weights(gains), [0.5 / 0.9, 0.0, 0.4 / 0.9, 0.0])
    assert not first_order_weights(gains_per_distance(1.0, [1.2, 1.0], [1.0, 2.0])).any()
    own = {"w": torch.zeros(3), "steps": torch.tensor(4)}
    others = [
        {"w": torch.ones(3), "steps": torch.tensor(9)},
        {"w": -torch.ones(3) * 2, "steps": torch.tensor(1)},
    ]
    moved = combine(own, others, np.array([0.75, 0.25]))
    torch.testing.assert_close(moved["w"], torch.full((3,), 0.75 - 0.5))
    assert int(moved["steps"]) == 4  # non-floating entries stay the client's own


@pytest.mark.parametrize("m", [2, 5])
def test_bytes_are_the_models_received_and_the_model_and_weights_sent(
    tiny_config: dict[str, Any], m: int
) -> None:
    parsed = load_config(tiny_config)
    model_bytes = nbytes(state_of(build_model(parsed, build_federation(parsed))))
    results = run(tiny_config, {"name": "fedfomo", "models_per_client": m}, rounds=3, sampling={})
    fit = results.metrics.query("split == 'fit'").set_index(["round", "client"])
    first, later = fit.loc[1], fit.drop(index=1, level="round")
    assert (first["bytes_down"] == 0).all() and (first["bytes_up"] == model_bytes).all()
    # every client uploaded in round 1, so each later receives M of the 5 others
    assert (later["bytes_down"] == m * model_bytes).all()
    assert (later["bytes_up"] == model_bytes + 4 * m).all()


@pytest.mark.parametrize(("seed", "clients"), [(0, 8), (1, 12)])
def test_same_group_clients_get_the_weight_on_a_grouped_federation(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    """Two groups whose labels are permuted against each other: another group's model only
    hurts, so all weight goes within a group, and FedFomo beats FedAvg's one model."""
    tiny_config.update(
        seed=seed,
        partition={"name": "iid", "num_clients": clients},
        transforms=[{"name": "label_swap", "groups": 2}],
        sampling={},
        rounds=8,
        model={"name": "mlp", "hidden": [32]},
        eval={"every": 8},
        train={"lr": 0.1, "momentum": 0.5, "batch_size": 16},
    )
    fomo = run(tiny_config, {"name": "fedfomo"})
    groups = build_federation(load_config(tiny_config)).groups
    affinity = fedfomo_state(fomo.server).affinity.numpy()
    others = ~np.eye(clients, dtype=bool)
    same = (groups[:, None] == groups[None, :]) & others
    cross = (groups[:, None] != groups[None, :]) & others
    assert affinity[same].mean() > 0 and affinity[same].mean() > 10 * affinity[cross].mean()
    # a model that hurt lowers its affinity (signed gains, as in the paper's Algorithm 1):
    # every other group's model that was sent and scored has a negative affinity
    scored_cross = cross & (affinity != 0)
    assert scored_cross.any() and (affinity[scored_cross] < 0).all()
    fedavg = run(tiny_config, {"name": "fedavg"})
    accuracy = fomo.summary["test"]["accuracy"]["mean"]
    assert accuracy > fedavg.summary["test"]["accuracy"]["mean"] + 0.2
