"""plural.flower deployed for real on this machine: a SuperLink, three SuperNodes, flwr run.

The nodes read their clients' data from data specs (``plural flower export``), the server
writes the run directory; it must equal the sequential backend's. FedAvg runs in insecure
mode (also with SecAgg+), Ditto over TLS with SuperNode authentication (each deployed run
costs a ClientApp process per node and message, so each algorithm is deployed once). Every
process started is stopped, also when a test fails.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from flower_cluster import LocalDeployment
from flower_helpers import assert_same_run_directory, config

import plural

pytestmark = pytest.mark.flower
pytest.importorskip("flwr")
flower_cli = pytest.importorskip("plural.flower.cli")

NODES = 3
RUN_LIMIT = 900.0  # seconds for one deployed run (a slow, shared CI machine)


def job(name: str, **changes: Any) -> dict[str, Any]:
    from tiny_config import TINY_CONFIG

    base = copy.deepcopy(TINY_CONFIG)
    base["name"] = f"deployed-{name}"
    base["sampling"] = {"fraction": 1.0}  # every node gets work in every round
    base["eval"] = {"every": 3}
    return config(base, name, **changes)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each client's data in its own file, as on the devices."""
    from plural.experiment import load_config
    from plural.flower.data import export_clients
    from plural.runner import build_federation

    folder = tmp_path_factory.mktemp("specs")
    export_clients(build_federation(load_config(job("fedavg"))), folder)
    return folder


def node_configs(specs: Path) -> list[str]:
    data = (specs / "client-{client}.npz").as_posix()
    return [f"partition-id={k} num-partitions={NODES} data='{data}'" for k in range(NODES)]


def deploy_and_compare(cluster: LocalDeployment, root: Path, cfg: dict[str, Any]) -> Path:
    """Run ``cfg`` on the cluster and sequentially; the deployed run's directory."""
    path = root / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / f"flower-{cfg['name']}"
    flower_cli.write_app(root / f"app-{cfg['name']}", path, out)
    run_id = cluster.submit(root / f"app-{cfg['name']}")
    assert cluster.wait(run_id, RUN_LIMIT) == "finished:completed"
    sequential = root / f"seq-{cfg['name']}"
    plural.run(cfg, out=sequential)
    assert_same_run_directory(sequential, out)
    return out


@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory, specs: Path) -> Any:
    root = tmp_path_factory.mktemp("insecure")
    with LocalDeployment(root, node_configs(specs)) as cluster:
        yield cluster
    assert cluster.alive() == []


def test_deployed_fedavg_equals_sequential(insecure: LocalDeployment) -> None:
    deploy_and_compare(insecure, insecure.root, job("fedavg"))


def test_deployed_fedavg_with_secagg_matches_sequential(insecure: LocalDeployment) -> None:
    """SecAgg+ across the SuperNode processes (Flower's mod in each ClientApp): the run
    matches the plain sequential run up to Flower's quantization. Runs before the test that
    kills a node."""
    cfg = job("fedavg")
    cfg["name"] = "deployed-secagg"
    root = insecure.root
    path = root / "secagg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "flower-secagg"
    flower_cli.write_app(root / "app-secagg", path, out, secagg=True)
    run_id = insecure.submit(root / "app-secagg")
    assert insecure.wait(run_id, RUN_LIMIT) == "finished:completed"
    plain = plural.run(cfg, out=root / "seq-secagg").metrics
    masked = pd.read_parquet(out / "metrics.parquet")
    keys = ["round", "client", "split"]
    plain, masked = plain.sort_values(keys), masked.sort_values(keys)
    assert plain[keys].to_numpy().tolist() == masked[keys].to_numpy().tolist()
    np.testing.assert_allclose(masked["loss"], plain["loss"], atol=2e-3, equal_nan=True)


def run_killing_node_2(cluster: LocalDeployment, name: str, secagg: bool = False) -> Path:
    """A 3-round FedAvg run on ``cluster`` whose SuperNode 2 (clients 2 and 5) is killed
    once round 1 is written; its run directory."""
    cfg = job("fedavg", faults={"max_failures": 10})
    cfg["name"] = f"deployed-{name}"
    root = cluster.root
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / f"flower-{name}"
    flower_cli.write_app(root / f"app-{name}", path, out, timeout=600, secagg=secagg)
    run_id = cluster.submit(root / f"app-{name}")
    deadline = time.monotonic() + RUN_LIMIT
    while not (out / "timeline.jsonl").is_file() or not (out / "timeline.jsonl").read_text():
        assert time.monotonic() < deadline, "round 1 did not finish"
        time.sleep(0.5)
    cluster.kill_node(2)
    status = cluster.wait(run_id, RUN_LIMIT)
    assert status == "finished:completed", cluster.logs(run_id)
    return out


def test_a_killed_supernode_is_a_dropout(insecure: LocalDeployment) -> None:
    """SuperNode 2 (clients 2 and 5) is killed during round 2: the rounds complete with the
    other clients, which are the only ones trained and scored from then on."""
    out = run_killing_node_2(insecure, "dropout")
    metrics = pd.read_parquet(out / "metrics.parquet")
    trained = metrics[(metrics["split"] == "fit") & (metrics["samples"] > 0)]
    assert set(trained[trained["round"] == 1]["client"]) == set(range(6))
    for round_index in (2, 3):
        assert set(trained[trained["round"] == round_index]["client"]) == {0, 1, 3, 4}
    scored = metrics[(metrics["round"] == 3) & (metrics["split"] == "test")]
    assert set(scored["client"]) == {0, 1, 3, 4}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_done"] == 3 and summary["complete"]
    records = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    failed = {f["client"] for r in records for f in r.get("failed", [])}
    assert failed == {2, 5}


def test_a_supernode_killed_during_secagg_rounds_is_a_dropout(tmp_path: Path, specs: Path) -> None:
    """With SecAgg+, the nodes left finish the masked rounds without the killed one (Flower's
    protocol unmasks without it; plural plays the round again without its clients)."""
    with LocalDeployment(tmp_path, node_configs(specs)) as cluster:
        out = run_killing_node_2(cluster, "secagg-dropout", secagg=True)
    assert cluster.alive() == []
    metrics = pd.read_parquet(out / "metrics.parquet")
    trained = metrics[(metrics["split"] == "fit") & (metrics["samples"] > 0)]
    for round_index in (2, 3):
        assert set(trained[trained["round"] == round_index]["client"]) == {0, 1, 3, 4}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_done"] == 3 and summary["complete"]
    environment = json.loads((out / "environment.json").read_text())[-1]  # this start
    assert environment["flower_secagg"] is True
    assert len(environment["flower_secagg_nodes_left_out"]) == 1


def test_deployed_ditto_with_tls_and_node_authentication_equals_sequential(
    tmp_path: Path, specs: Path
) -> None:
    """Ditto (personal models kept in the nodes' Context.state between rounds) over TLS, each
    SuperNode authenticated by a key registered with the SuperLink."""
    pytest.importorskip("cryptography")
    with LocalDeployment(tmp_path, node_configs(specs), tls=True, auth=True) as cluster:
        deploy_and_compare(cluster, tmp_path, job("ditto"))
    assert cluster.alive() == []
