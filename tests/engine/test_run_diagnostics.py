"""Drift and gradient dissimilarity measured during a run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import plural
from plural.core.moments import GradientMoments
from plural.data.federated import ClientData, FederatedDataset
from plural.runner import build_federation


def test_drift_is_recorded_for_participants(tiny_config: dict[str, Any]) -> None:
    results = plural.run(tiny_config)
    fit = results.metrics[results.metrics["split"] == "fit"]
    assert (fit["drift"] > 0).all()
    per_round = results.diagnostics.set_index("round")
    for r, rows in fit.groupby("round"):
        assert per_round.loc[r, "drift_mean"] == pytest.approx(rows["drift"].mean())
        assert per_round.loc[r, "drift_max"] == pytest.approx(rows["drift"].max())
    tiny_config["train"]["local_epochs"] = 0
    still = plural.run(tiny_config).metrics
    assert (still[still["split"] == "fit"]["drift"] == 0).all()


def test_local_training_has_no_drift_to_measure(tiny_config: dict[str, Any]) -> None:
    tiny_config["algorithm"] = {"name": "local"}
    fit = plural.run(tiny_config).metrics.query("split == 'fit'")
    assert fit["drift"].isna().all()


def test_gradient_dissimilarity_is_measured_on_schedule(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(rounds=4, diagnostics={"gradient_every": 2})
    diagnostics = plural.run(tiny_config).diagnostics
    measured = diagnostics.dropna(subset=["g2"])
    assert measured["round"].tolist() == [2, 4]
    assert (measured["g2"] > 0).all() and (measured["b2"] >= 1).all()


def test_identical_clients_have_zero_dissimilarity(tiny_config: dict[str, Any]) -> None:
    base = build_federation(plural.load_config(tiny_config))
    same = base.clients[0]
    clones = [ClientData(cid, same.train, same.val, same.test) for cid in range(4)]
    federation = FederatedDataset("same", clones, base.num_classes, base.input_shape)
    tiny_config.update(rounds=1, diagnostics={"gradient_every": 1})
    measured = plural.run(tiny_config, dataset=federation).diagnostics.iloc[0]
    assert measured["g2"] == pytest.approx(0.0, abs=1e-10)
    assert measured["b2"] == pytest.approx(1.0)


def test_streaming_moments_equal_the_definition() -> None:
    gen = np.random.default_rng(0)
    grads = [gen.normal(size=5) for _ in range(4)]
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    p = weights / weights.sum()
    mean = sum(pk * g for pk, g in zip(p, grads, strict=True))
    g2 = sum(pk * np.sum((g - mean) ** 2) for pk, g in zip(p, grads, strict=True))
    b2 = sum(pk * np.sum(g**2) for pk, g in zip(p, grads, strict=True)) / np.sum(mean**2)
    moments = GradientMoments()
    for g, w in zip(grads, weights, strict=True):
        moments.add(torch.from_numpy(g), float(w))
    result = moments.result()
    assert result["g2"] == pytest.approx(g2) and result["b2"] == pytest.approx(b2)
    assert math.isnan(GradientMoments().result()["g2"])
