"""Unseen clients never train and are served as newcomers; their rows carry unseen == True
and summary.json summarises them apart (test_unseen)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import plural
from plural.config import ConfigError
from plural.core.trainer import LocalTrainer
from plural.experiment import load_config
from plural.runner import build_algorithm, build_client_models, build_federation


def with_unseen(tiny_config: dict[str, Any], share: float, **overrides: Any) -> dict[str, Any]:
    cfg = {**tiny_config, "rounds": 3, "sampling": {"fraction": 1.0}, **overrides}
    cfg["split"] = {"unseen_clients": share}
    return cfg


def trainer_and_federation(cfg: dict[str, Any]) -> tuple[LocalTrainer, Any]:
    parsed = load_config(cfg)
    federation = build_federation(parsed)
    models = build_client_models(parsed, federation, build_algorithm(parsed))
    return LocalTrainer(models.members[0], parsed.train), federation


@pytest.mark.parametrize(("share", "clients", "seed"), [(0.2, 6, 3), (0.5, 10, 8)])
def test_unseen_clients_never_train_and_are_scored_apart(
    tiny_config: dict[str, Any], tmp_path: Path, share: float, clients: int, seed: int
) -> None:
    partition = {**tiny_config["partition"], "num_clients": clients}
    cfg = with_unseen(tiny_config, share, partition=partition, seed=seed)
    results = plural.run(cfg, out=tmp_path / "run")
    federation = build_federation(load_config(cfg))
    unseen = set(federation.unseen)
    assert len(unseen) == round(share * clients) >= 1
    metrics = results.metrics
    fit = metrics[metrics["split"] == "fit"]
    assert not set(fit["client"]) & unseen  # never sampled, though fraction is 1
    assert set(fit["client"]) == set(range(clients)) - unseen
    test = metrics[metrics["split"] == "test"]
    assert (test["unseen"] == test["client"].isin(unseen)).all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_unseen"]["accuracy"]["clients"] == len(unseen)
    assert summary["test"]["accuracy"]["clients"] == clients - len(unseen)
    # FedAvg serves a newcomer the global model
    trainer, federation = trainer_and_federation(cfg)
    last = results.final("test").set_index("client")
    for cid in unseen:
        data = federation.client(cid).test
        expected = trainer.evaluate(results.server.params, data.x, data.y).accuracy
        assert last.loc[cid, "accuracy"] == expected


def test_clustered_newcomers_join_the_cluster_that_fits_their_training_data(
    tiny_config: dict[str, Any],
) -> None:
    cfg = with_unseen(tiny_config, 0.5, algorithm={"name": "ifca", "k": 3})
    results = plural.run(cfg)
    trainer, federation = trainer_and_federation(cfg)
    models = results.server.extra["models"]
    last = results.final("test").set_index("client")
    for cid in federation.unseen:
        client = federation.client(cid)
        losses = [trainer.evaluate(m, client.train.x, client.train.y).loss for m in models]
        best = models[min(range(len(models)), key=losses.__getitem__)]
        expected = trainer.evaluate(best, client.test.x, client.test.y).accuracy
        assert last.loc[cid, "accuracy"] == expected


def test_unseen_share_must_leave_clients_on_both_sides(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unseen_clients"):
        build_federation(load_config(with_unseen(tiny_config, 0.05)))
    with pytest.raises(ConfigError, match="unseen_clients"):
        load_config(with_unseen(tiny_config, 1.0))


def test_runs_without_unseen_clients_have_no_unseen_column(tiny_config: dict[str, Any]) -> None:
    results = plural.run(tiny_config)
    assert "unseen" not in results.metrics.columns and "test_unseen" not in results.summary


@pytest.mark.parametrize("seed", [3, 5])
def test_fedper_newcomers_get_a_new_head_fitted_on_their_training_split(
    tiny_config: dict[str, Any], seed: int
) -> None:
    """FedPer-style methods serve a newcomer the shared body with a personal head fitted on
    its own training split: far better on label-skewed clients than the untrained head."""
    cfg = with_unseen(tiny_config, 0.5, algorithm={"name": "fedper"}, seed=seed, rounds=4)
    results = plural.run(cfg)
    trainer, federation = trainer_and_federation(cfg)
    shared = results.server.params
    untrained_head = {**trainer.initial_params, **shared}
    last = results.final("test").set_index("client")
    gains = []
    for cid in federation.unseen:
        client = federation.client(cid)
        before = trainer.evaluate(untrained_head, client.test.x, client.test.y).accuracy
        gains.append(last.loc[cid, "accuracy"] - before)
    assert sum(gains) / len(gains) > 0.05, gains  # measured: 0.13 and 0.22
