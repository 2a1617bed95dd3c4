"""The server set: official test sets and held-out shares, server rows per evaluated round
(client -1, one per cluster model for clustered methods), summary and cost_to_target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.config import ConfigError
from plural.core.rng import numpy_rng
from plural.core.trainer import LocalTrainer
from plural.experiment import load_config
from plural.report.efficiency import cost_to_target
from plural.runner import build_algorithm, build_client_models, build_federation


def with_server(tiny_config: dict[str, Any], server: Any, **overrides: Any) -> dict[str, Any]:
    cfg = {**tiny_config, "rounds": 4, "eval": {"every": 2}, **overrides}
    cfg["split"] = {**cfg.get("split", {}), "server": server}
    return cfg


@pytest.mark.parametrize(("share", "seed"), [(0.1, 0), (0.25, 4)])
def test_a_share_of_the_pool_is_held_out_before_partitioning(
    tiny_config: dict[str, Any], share: float, seed: int
) -> None:
    cfg = load_config(with_server(tiny_config, share, seed=seed))
    federation = build_federation(cfg)
    plain = build_federation(load_config({**tiny_config, "seed": seed}))
    assert federation.server is not None and plain.server is None
    assert len(federation.server) == round(share * 1797)
    held = sum(int(federation.sizes(s).sum()) for s in ("train", "val", "test"))
    assert held + len(federation.server) == 1797
    clients_x = np.concatenate(
        [
            c.split(s).x.numpy().reshape(-1, 64)
            for c in federation.clients
            for s in ("train", "val", "test")
        ]
    )
    server_x = federation.server.x.numpy().reshape(-1, 64)
    client_rows = {r.tobytes() for r in clients_x}
    # digits has a few duplicate images; nearly every server image is in no client's data
    assert sum(r.tobytes() in client_rows for r in server_x) <= 2


def test_official_test_set_of_mnist_is_the_server_set(tiny_config: dict[str, Any]) -> None:
    cfg = with_server(
        tiny_config, "official", dataset={"name": "mnist", "max_samples": 1500}, model="logreg"
    )
    federation = build_federation(load_config(cfg))
    assert federation.server is not None
    # the subset is drawn from the run's data seed: count the official samples it kept
    loader = plural.DATASETS.get("mnist").target
    pool = loader(load_config(cfg).dataset.settings, numpy_rng(cfg["seed"], "dataset"))
    assert len(federation.server) == int(pool.official_test.sum()) > 0
    held = sum(int(federation.sizes(s).sum()) for s in ("train", "val", "test"))
    assert held == 1500 - len(federation.server)


def test_official_needs_a_dataset_with_one(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"'digits' has no official test set.*mnist"):
        build_federation(load_config(with_server(tiny_config, "official")))


def test_server_rows_score_the_global_model_each_evaluated_round(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    results = plural.run(with_server(tiny_config, 0.2), out=tmp_path / "run")
    metrics = results.metrics
    server = metrics[metrics["split"] == "server"]
    assert sorted(server["round"]) == [2, 4]
    assert (server["client"] == -1).all() and "model" not in metrics.columns
    assert (server["samples"] == round(0.2 * 1797)).all()
    # the last row is the final global model scored on the server set
    cfg = load_config(with_server(tiny_config, 0.2))
    federation = build_federation(cfg)
    models = build_client_models(cfg, federation, build_algorithm(cfg))
    trainer = LocalTrainer(models.members[0], cfg.train)
    again = trainer.evaluate(results.server.params, federation.server.x, federation.server.y)
    assert again.accuracy == server[server["round"] == 4]["accuracy"].item()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["server"]["accuracy"]["mean"] == pytest.approx(again.accuracy)
    # cost_to_target works on the server rows
    by_round = server.set_index("round")["accuracy"]
    target = float(by_round[4])
    cost = cost_to_target(metrics, target, split="server")
    assert cost.round == (2 if by_round[2] >= target else 4)
    fit = metrics[(metrics["split"] == "fit") & (metrics["round"] <= cost.round)]
    assert cost.bytes == float(fit["bytes_up"].sum() + fit["bytes_down"].sum()) > 0
    assert not cost_to_target(metrics, 1.01, split="server").reached


def test_clustered_methods_write_one_row_per_cluster_model(tiny_config: dict[str, Any]) -> None:
    cfg = with_server(tiny_config, 0.1, algorithm={"name": "ifca", "k": 3})
    server = plural.run(cfg).metrics.query("split == 'server'")
    assert len(server) == 2 * 3
    assert sorted(set(server["model"])) == ["cluster0", "cluster1", "cluster2"]
    assert (server["client"] == -1).all()


def test_methods_without_a_server_model_write_no_server_rows(tiny_config: dict[str, Any]) -> None:
    metrics = plural.run(with_server(tiny_config, 0.1, algorithm="local")).metrics
    assert not (metrics["split"] == "server").any()
    assert (metrics["client"] >= 0).all()
