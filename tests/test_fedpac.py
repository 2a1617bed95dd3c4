"""FedPAC: features aligned to global class centroids, heads combined by a per-client QP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.fedpac import (
    collaboration_weights,
    combine_heads,
    fedpac_state,
    variance_term,
)
from plural.core.masks import last_module_names
from plural.core.params import max_abs_difference, nbytes, state_of
from plural.experiment import load_config
from plural.report.rundir import deterministic
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run
from tiny_config import two_classes_per_client


def scores(results: plural.Results) -> pd.DataFrame:
    metrics = deterministic(results.metrics)
    rows = metrics[metrics["split"] != "fit"].reset_index(drop=True)
    return rows[["round", "client", "split", "loss", "accuracy", "samples"]]


@pytest.mark.parametrize("seed", [3, 8])
def test_without_alignment_and_collaboration_it_is_fedrep(
    tiny_config: dict[str, Any], seed: int
) -> None:
    tiny_config["seed"] = seed
    pac = run(tiny_config, {"name": "fedpac", "lam": 0, "collaboration": False})
    fedrep = run(tiny_config, {"name": "fedrep", "head_epochs": 1})
    assert max_abs_difference(pac.server.params, fedrep.server.params) == 0.0
    pd.testing.assert_frame_equal(scores(pac), scores(fedrep))


def test_bytes(tiny_config: dict[str, Any]) -> None:
    parsed = load_config(tiny_config)
    params = state_of(build_model(parsed, build_federation(parsed)))
    head = last_module_names(list(params))
    head_bytes = nbytes({n: params[n] for n in head})
    body_bytes = nbytes(params) - head_bytes
    classes, width = params[next(n for n in head if params[n].dim() == 2)].shape
    centroids = classes * width * 4
    fit = run(tiny_config, {"name": "fedpac"}).metrics.query("split == 'fit'")
    assert len(fit) == 2 * 3
    # body + head + centroids + counts + the variance term; body + centroids + presence mask,
    # then the combined head
    assert (fit["bytes_up"] == body_bytes + head_bytes + centroids + classes * 4 + 4).all()
    assert (fit["bytes_down"] == body_bytes + centroids + classes + head_bytes).all()


def test_the_qp_weighs_clients_with_the_same_label_mix() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(2, 3, 4))
    terms = np.stack([mix[0], mix[0], mix[1], mix[0]])  # 0, 1, 3 alike; 2 differs
    weights = collaboration_weights(np.full(4, 0.05), terms, 0)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[2] < 0.01 and weights[[0, 1, 3]].min() > 0.2
    # A noisy own estimate (large variance) shifts weight to the alike clients.
    noisy = collaboration_weights(np.array([1.0, 0.05, 0.05, 0.05]), terms, 0)
    assert noisy[0] < weights[0]
    # No variance and nobody alike: the client keeps its own head.
    alone = collaboration_weights(np.zeros(3), rng.normal(size=(3, 3, 4)), 1)
    np.testing.assert_allclose(alone, [0.0, 1.0, 0.0])
    heads = [{"w": torch.ones(2)}, {"w": torch.full((2,), 3.0)}]
    torch.testing.assert_close(
        combine_heads(heads, np.array([0.25, 0.75]))["w"], torch.full((2,), 2.5)
    )


def test_variance_term() -> None:
    counts = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    squared = torch.tensor([2.0, 5.0, 0.0], dtype=torch.float64)
    p = torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64)
    expected = float((p * squared - p**2 * means.pow(2).sum(1)).sum()) / 4
    assert variance_term(counts, means, squared) == pytest.approx(expected)


@pytest.mark.parametrize(("seed", "clients"), [(0, 10), (1, 16)])
def test_fedpac_beats_fedavg_and_pulls_features_to_the_centroids(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    two_classes_per_client(tiny_config, seed, clients, rounds=5)
    pac = run(tiny_config, {"name": "fedpac"})
    fedavg = run(tiny_config, {"name": "fedavg"})
    assert (
        pac.summary["test"]["accuracy"]["mean"] > fedavg.summary["test"]["accuracy"]["mean"] + 0.1
    )
    assert bool(fedpac_state(pac.server).present.all())
